"""The SAMU family: SAMU-XLS-R style semantic distillation (Khurana et al.), then speech translation.

Stage 1 (task `distill`, `distill_loss`): the speech encoder, attention-pooled to one vector and
projected to the text embedding's size, learns to land where a sentence-embedding model put the
transcript (the published `embedding` column, L2-normalised): loss = 1 - cos.

    features -> StreamingEncoder (B, T', D) -> AttentionPooling (B, D) -> Linear, tanh -> (B, E)

Stage 2 (task `st`, `forward`): an encoder-decoder ST model (a wait-k model, see waitk.py) whose
encoder is the distilled one; bottleneck adapters in the encoder (and decoder) layers let the recipe
freeze the distilled weights and train only adapters and decoder. The decoder may be a local mBART's
(`decoder.kind: mbart`, hf_decoder.py), as in the paper. Decoding is the wait-k family's, on `st`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simulforge.training.config import ConfigError
from simulforge.training.tasks import Task, batch_features

from .blocks import lengths_to_mask
from .encoder import FeatureNorm
from .waitk import WaitkConfig, WaitkFamily, WaitkST, WaitkStTask


@dataclass
class SamuConfig:
    st: WaitkConfig = field(default_factory=WaitkConfig)  # set encoder.adapter_dim / decoder.adapter_dim
    embedding_dim: int | None = None  # the teacher's width; None: the `distill` stage reads the published column's


class AttentionPooling(nn.Module):
    """(B, T, D), lengths -> (B, D): a learned score per frame, softmax over valid frames, weighted sum."""

    def __init__(self, d_model: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, 1))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        scores = self.score(x).squeeze(-1).masked_fill(~lengths_to_mask(lengths, x.shape[1]), float("-inf"))
        return torch.einsum("bt,btd->bd", scores.softmax(dim=-1), x)


class Samu(nn.Module):
    def __init__(self, cfg: SamuConfig):
        super().__init__()
        self.cfg = cfg
        if not cfg.embedding_dim:
            raise ValueError("model.embedding_dim is null and no `distill` stage took it from the data's `embedding` "
                             "column; set it to the teacher's width")
        self.st = WaitkST(cfg.st)
        d = cfg.st.encoder.d_model
        self.pool = AttentionPooling(d)
        self.project = nn.Linear(d, cfg.embedding_dim)

    @property
    def encoder(self):
        return self.st.encoder

    @property
    def feature_norm(self) -> FeatureNorm:
        return self.st.encoder.norm

    def embed(self, feats: Tensor, feat_lengths: Tensor) -> Tensor:
        """Utterance embedding (B, E), in the text embedding's space."""
        enc, lengths = self.st.encoder(feats, feat_lengths)
        return torch.tanh(self.project(self.pool(enc, lengths)))

    def distill_loss(self, feats: Tensor, feat_lengths: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Stage 1: mean (1 - cosine) between the speech embedding and `target` (B, E)."""
        cos = F.cosine_similarity(self.embed(feats, feat_lengths).float(), target.float(), dim=-1)
        loss = (1 - cos).mean()
        return loss, {"cosine": cos.mean().item()}

    def forward(self, feats: Tensor, feat_lengths: Tensor, targets: dict[str, Tensor],
                waitk: dict[str, int | None]) -> tuple[Tensor, dict[str, float]]:
        """Stage 2: the ST model's joint cross-entropy (see `WaitkST.forward`)."""
        return self.st(feats, feat_lengths, targets, waitk)


# -- training: stage 1 (stage 2 is the wait-k family's `st`) ----------------------------------------
@dataclass
class DistillOptions:
    column: str = "embedding"


class DistillTask(Task):
    options_cls = DistillOptions

    def columns(self):
        return ["audio", self.opts.column]

    def keep(self, row):
        return row.get(self.opts.column) is not None

    def fit_to_data(self, ds, source: str) -> None:
        """model.embedding_dim left null takes the published vectors' width; a width given must be theirs."""
        super().fit_to_data(ds, source)
        width = getattr(ds.features[self.opts.column], "length", None)
        if width in (None, -1):
            raise ConfigError(f"{self.where}: column {self.opts.column} of {source} is not a fixed-length vector "
                              f"({ds.features[self.opts.column]}); the teacher's width cannot be read from it")
        self.take_from_data("embedding_dim", width, source,
                            f"column {self.opts.column} of {source} holds {width}-dim vectors")

    def collate(self, rows, variants):
        feats, lengths = batch_features(rows)
        target = torch.tensor([r[self.opts.column] for r in rows], dtype=torch.float32)
        return {"feats": feats, "lengths": lengths, "target": target}

    def loss(self, model, batch):
        return model.distill_loss(batch["feats"], batch["lengths"], batch["target"])


# -- the registry entry: the wait-k family's, on the ST model ---------------------------------------
class SamuFamily(WaitkFamily):
    name = "samu"
    model, config = Samu, SamuConfig
    tasks = {"distill": DistillTask, "st": WaitkStTask}

    def specials(self, cfg: SamuConfig) -> list[str]:
        return super().specials(cfg.st)

    def finalize(self, cfg: SamuConfig, tok) -> None:
        super().finalize(cfg.st, tok)

    def languages(self, model: Samu, tok, available, requested) -> list[str]:
        return super().languages(model.st, tok, available, requested)

    def agent(self, model: Samu, languages, policy, options):
        return super().agent(model.st, languages, policy, options)


FAMILY = SamuFamily()
