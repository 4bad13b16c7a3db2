"""SAMU-XLS-R style semantic distillation (Khurana et al.), then speech translation.

Stage 1 (`distill_loss`): the speech encoder, attention-pooled to one vector and projected to
the text embedding's size, learns to land where a sentence-embedding model put the
transcript (the published `embedding` column, L2-normalised): loss = 1 - cos.

    features -> StreamingEncoder (B, T', D) -> AttentionPooling (B, D) -> Linear, tanh -> (B, E)

Stage 2 (`forward`): an encoder-decoder ST model (a unified multilingual wait-k model, see
waitk.py) whose encoder is the distilled one; bottleneck adapters in the encoder (and decoder)
layers let the recipe freeze the distilled weights and train only adapters and decoder.
Streaming inference is the wait-k model's (`st.read`, `st.write`, `st.simultaneous_generate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import lengths_to_mask
from .encoder import FeatureNorm
from .waitk import WaitkConfig, WaitkST


@dataclass
class SamuConfig:
    st: WaitkConfig = field(default_factory=WaitkConfig)  # set encoder.adapter_dim / decoder.adapter_dim
    embedding_dim: int = 384  # the published `embedding` width


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
