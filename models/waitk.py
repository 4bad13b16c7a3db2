"""The wait-k family: one streaming encoder, and one decoder per target language or one for all.

Configs bilingual*, separate* and unified* of configs/models/ are this family, as `decoder_mode`:
- `single`: a bilingual baseline (one target language, one decoder).
- `separate`: multilingual, a shared encoder and one decoder per target language (arXiv 2503.11080).
- `unified`: multilingual, one shared decoder started by a target-language tag (`<2de>`).

Training (task `st`) is joint and synchronous: the encoder runs once per utterance and every target
language's decoder learns from it in the same batch. Each language gets its own wait-k lag
(`waitk={"de": 3, "es": 5}`): the same k for all is synchronous training, different ks is the
paper's asynchronous training. Token u (0-based) may attend to the first k + u encoder blocks.

Inference reads one encoder block at a time (`read`) and writes one token per language at a time
(`write`), all with explicit state. `WaitkAgent` decodes every target language at once (joint
decoding: one encoder pass shared by every decoder) under wait-k, EDAtt or AlignAtt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simulforge.eval.agent import Agent, DecodeOptions, Emit
from simulforge.eval.policies import AlignAtt, CrossAttention, EDAtt, WaitK
from simulforge.training.config import ConfigError
from simulforge.training.data import get, pad
from simulforge.training.tasks import Task, batch_features, check_languages
from simulforge.training.tokenizer import lang_tag

from .blocks import lengths_to_mask
from .decoder import DecoderConfig, DecoderState, TransformerDecoder, make_decoder
from .encoder import EncoderConfig, EncoderState, make_encoder
from .family import Family
from .hf_encoder import HFEncoderState

MODES = ("single", "separate", "unified")


@dataclass
class WaitkConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    languages: list[str] = field(default_factory=lambda: ["de"])
    decoder_mode: str = "single"
    # Token ids, filled from the tokenizer by the trainer.
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    lang_token_ids: dict[str, int] = field(default_factory=dict)  # unified mode: `<2xx>` per language

    def validate(self) -> None:
        if self.decoder_mode not in MODES:
            raise ValueError(f"model.decoder_mode must be one of {', '.join(MODES)}, got {self.decoder_mode!r}")
        if self.decoder_mode == "single" and len(self.languages) != 1:
            raise ValueError(f"model.decoder_mode single is bilingual: one language, got {self.languages}")
        if self.decoder_mode == "unified":
            missing = [lang for lang in self.languages if lang not in self.lang_token_ids]
            if missing:
                raise ValueError(f"model.lang_token_ids lacks a tag for {', '.join(missing)}")


def waitk_mask(token_len: int, memory_lengths: Tensor, block_len: int | Callable[[int], int],
               k: int | None) -> Tensor:
    """(B, U, S) cross-attention mask: token u sees the frames complete after k + u blocks (and valid).

    `block_len`: encoder frames per block, or the encoder's `frames_after(blocks)` (a pretrained encoder's
    first block gives fewer frames than the others). k=None is offline: every valid frame.
    memory_lengths: (B,) valid encoder frames.
    """
    S = int(memory_lengths.max())
    valid = lengths_to_mask(memory_lengths, S)[:, None, :]  # (B, 1, S)
    if k is None:
        return valid.expand(-1, token_len, -1)
    frames = torch.arange(S, device=memory_lengths.device)
    after = block_len if callable(block_len) else (lambda blocks: blocks * block_len)
    visible = torch.tensor([after(k + u) for u in range(token_len)], device=memory_lengths.device)[:, None]
    return valid & (frames[None, :] < visible)[None]


@dataclass
class WaitkState:
    """Streaming state: the encoder's cache, the frames read so far, one decoder cache per language."""

    encoder: EncoderState | HFEncoderState
    memory: Tensor  # (B, S, D) every encoder frame read so far
    decoders: dict[str, DecoderState]


class WaitkST(nn.Module):
    def __init__(self, cfg: WaitkConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = make_encoder(cfg.encoder)  # the project's own, or a pretrained one (encoder.kind: hf)
        cfg.encoder.d_model = self.encoder.d_model  # a pretrained backbone's width
        names = cfg.languages if cfg.decoder_mode == "separate" else ["shared"]
        self.decoders = nn.ModuleDict({n: make_decoder(cfg.decoder, cfg.encoder.d_model) for n in names})  # kind: own|mbart

    # -- parts -----------------------------------------------------------------------------
    @property
    def feature_norm(self):
        return self.encoder.norm

    def decoder_for(self, lang: str) -> TransformerDecoder:
        if lang not in self.cfg.languages:
            raise KeyError(f"the model does not translate into {lang!r}; it knows {self.cfg.languages}")
        return self.decoders[lang if self.cfg.decoder_mode == "separate" else "shared"]

    def start_token(self, lang: str) -> int:
        return self.cfg.lang_token_ids[lang] if self.cfg.decoder_mode == "unified" else self.cfg.bos_id

    # -- training --------------------------------------------------------------------------
    def forward(self, feats: Tensor, feat_lengths: Tensor, targets: dict[str, Tensor],
                waitk: dict[str, int | None]) -> tuple[Tensor, dict[str, float]]:
        """Joint wait-k cross-entropy over every target language.

        Args:
            feats: (B, T, F) frames of what the encoder takes (its `input_kind`); feat_lengths: (B,).
            targets: {lang: (B, U) token ids padded with pad_id}; an all-pad row means the
                utterance has no translation into that language (it is skipped).
            waitk: {lang: k} in encoder blocks (None: offline attention).
        Returns:
            token-averaged loss and {"loss/<lang>": value, "tokens/<lang>": count}.
        """
        memory, memory_lengths = self.encoder(feats, feat_lengths)
        total, count, metrics = memory.new_zeros(()), 0, {}
        for lang, tgt in targets.items():
            lengths = (tgt != self.cfg.pad_id).sum(1)
            rows = lengths > 0
            if not rows.any():
                continue
            tgt, lengths = tgt[rows], lengths[rows]
            start = torch.full_like(tgt[:, :1], self.start_token(lang))
            inputs = torch.cat([start, tgt], dim=1)
            labels = torch.cat([tgt, torch.full_like(start, self.cfg.pad_id)], dim=1)
            labels[torch.arange(len(labels)), lengths] = self.cfg.eos_id
            labels = labels.masked_fill(~lengths_to_mask(lengths + 1, labels.shape[1]), -100)
            mask = waitk_mask(inputs.shape[1], memory_lengths[rows], self.encoder.frames_after, waitk.get(lang))
            logits = self.decoder_for(lang)(inputs, memory[rows][:, : mask.shape[2]], mask)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
            n = int((labels != -100).sum())
            total, count = total + nll, count + n
            metrics[f"loss/{lang}"], metrics[f"tokens/{lang}"] = nll.item() / n, n
        return total / max(count, 1), metrics

    # -- streaming inference ---------------------------------------------------------------
    def init_state(self, languages: list[str], batch: int = 1, device=None) -> WaitkState:
        d = self.encoder.d_model
        return WaitkState(encoder=self.encoder.init_state(batch, device),
                          memory=torch.zeros(batch, 0, d, device=device),
                          decoders={lang: self.decoder_for(lang).init_state() for lang in languages})

    def read(self, block_feats: Tensor, state: WaitkState) -> WaitkState:
        """Encode one block of frames (B, <= block_frames, F); the prefix is never re-encoded."""
        out, enc = self.encoder.forward_block(block_feats, state.encoder)
        return WaitkState(enc, torch.cat([state.memory, out], dim=1), dict(state.decoders))

    def write(self, lang: str, token: Tensor, state: WaitkState) -> tuple[Tensor, WaitkState]:
        """Feed one token (B,) (the start token first, then each emitted one) -> next-token logits (B, V)."""
        logits, dec = self.decoder_for(lang).step(token[:, None], state.memory, state.decoders[lang])
        return logits[:, -1], WaitkState(state.encoder, state.memory, {**state.decoders, lang: dec})


# -- training ------------------------------------------------------------------------------------
@dataclass
class StOptions:
    languages: list[str] | None = None  # None: every language of the model
    waitk: int | dict[str, int | None] | None = None  # None: offline; one k for all (synchronous) or per language
    column: str = "translation"  # {lang: text}


class WaitkStTask(Task):
    options_cls = StOptions

    def __init__(self, options, model_cfg, where):
        super().__init__(options, model_cfg, where)
        self.st_cfg = getattr(model_cfg, "st", model_cfg)  # SAMU wraps a wait-k model
        self.langs = check_languages(self.opts.languages, self.st_cfg.languages, where)
        k = self.opts.waitk
        self.waitk = {lang: (k.get(lang) if isinstance(k, dict) else k) for lang in self.langs}
        if isinstance(k, dict) and set(k) - set(self.langs):
            raise ConfigError(f"{where}.waitk names languages not trained here: {sorted(set(k) - set(self.langs))}")
        bad = {lang: v for lang, v in self.waitk.items() if v is not None and v < 1}
        if bad:
            raise ConfigError(f"{where}.waitk: k must be >= 1 (blocks), got {bad}")

    def columns(self):
        return ["audio"] + [f"{self.opts.column}.{lang}" for lang in self.langs]

    text_columns = columns

    def specials(self):
        return [lang_tag(lang) for lang in self.langs] if self.st_cfg.decoder_mode == "unified" else []

    def keep(self, row):
        return any(get(row, f"{self.opts.column}.{lang}") for lang in self.langs)

    def collate(self, rows, variants):
        feats, lengths = batch_features(rows)
        targets = {lang: pad([self.encode(get(r, f"{self.opts.column}.{lang}")) for r in rows], self.tok.pad_id)
                   for lang in self.langs}
        return {"feats": feats, "lengths": lengths, "targets": targets}

    def loss(self, model, batch):
        return model(batch["feats"], batch["lengths"], batch["targets"], self.waitk)


# -- simultaneous decoding ------------------------------------------------------------------------
@dataclass
class WaitkDecoding:
    """One utterance being decoded: the model's state, and per language the last token fed, the tokens
    written and whether it is done; the blocks read."""

    model: WaitkState
    last: dict[str, Tensor]
    written: dict[str, int]
    done: dict[str, bool]
    blocks: int = 0


class WaitkAgent(Agent):
    """Every language under its policy (one for all, or {lang: policy}): wait-k, EDAtt or AlignAtt.

    A candidate token that the policy refuses (or an end of sentence before the source has ended) is
    dropped without touching the cache of the tokens before it (only the projection of the new memory
    frames is kept), and is decoded again once more audio is read."""

    def __init__(self, model: WaitkST, languages: list[str], policy, options: DecodeOptions):
        self.model, self.max_len = model, options.max_len
        self.policies = {lang: policy[lang] if isinstance(policy, Mapping) else policy for lang in languages}
        self.languages, self.block_frames = list(languages), model.cfg.encoder.block_frames
        self.device = next(model.parameters()).device
        self.attention: dict[str, CrossAttention] = {}
        by_decoder: dict[int, CrossAttention] = {}  # a unified decoder serves every language: one hook
        for lang, p in self.policies.items():
            if isinstance(p, EDAtt | AlignAtt):
                decoder = model.decoder_for(lang)
                if id(decoder) not in by_decoder:
                    by_decoder[id(decoder)] = CrossAttention(decoder.layers[-1].cross_attn)
                self.attention[lang] = by_decoder[id(decoder)]

    def close(self) -> None:
        for hook in {id(a): a for a in self.attention.values()}.values():
            hook.close()

    def _token(self, token: int) -> Tensor:
        return torch.tensor([[token]], device=self.device)

    def init_state(self) -> WaitkDecoding:
        langs = self.languages
        return WaitkDecoding(self.model.init_state(langs, 1, self.device),
                             {lang: self._token(self.model.start_token(lang)) for lang in langs},
                             dict.fromkeys(langs, 0), dict.fromkeys(langs, False))

    def read(self, state: WaitkDecoding, block: Tensor) -> WaitkDecoding:
        return replace(state, model=self.model.read(block, state.model), blocks=state.blocks + 1)

    def write(self, state: WaitkDecoding, emit: Emit) -> WaitkDecoding:
        return self._write(state, emit, finished=False)

    def finish(self, state: WaitkDecoding, emit: Emit) -> WaitkDecoding:
        return self._write(state, emit, finished=True)

    def _write(self, state: WaitkDecoding, emit: Emit, finished: bool) -> WaitkDecoding:
        eos, memory = self.model.cfg.eos_id, state.model.memory
        decoders, last, written, done = (dict(state.model.decoders), dict(state.last), dict(state.written),
                                         dict(state.done))
        for lang, policy in self.policies.items():
            decoder = self.model.decoder_for(lang)
            while not done[lang]:
                if isinstance(policy, WaitK) and not policy.ready(state.blocks, written[lang], finished):
                    break
                before = decoders[lang]
                logits, after = decoder.step(last[lang], memory, before)
                token = int(logits[0, -1].argmax())
                if token == eos and finished:
                    done[lang] = True
                elif token == eos or (lang in self.attention
                                      and not policy.accept(self.attention[lang].weights, finished)):
                    # Not yet: drop the candidate, keep the new memory frames' projection.
                    decoders[lang] = DecoderState(before.self_kv, after.memory_kv, before.offset)
                    break
                else:
                    decoders[lang], last[lang] = after, self._token(token)
                    emit(lang, token)
                    written[lang] += 1
                    done[lang] = written[lang] >= self.max_len
        return WaitkDecoding(WaitkState(state.model.encoder, memory, decoders), last, written, done, state.blocks)

    def offline(self, feats: Tensor, emit: Emit) -> None:
        """The encoder over the whole utterance in one call, then greedy decoding per language."""
        memory, _ = self.model.encoder(feats, torch.tensor([feats.shape[1]], device=self.device))
        for lang in self.languages:
            decoder = self.model.decoder_for(lang)
            state, token = decoder.init_state(), self._token(self.model.start_token(lang))
            for _ in range(self.max_len):
                logits, state = decoder.step(token, memory, state)
                next_token = int(logits[0, -1].argmax())
                if next_token == self.model.cfg.eos_id:
                    break
                emit(lang, next_token)
                token = self._token(next_token)


def check_encoder_path(cfg: EncoderConfig, where: str) -> None:
    """A pretrained encoder's folder must exist here: it is never downloaded."""
    if cfg.kind == "hf" and not (cfg.path and Path(cfg.path).is_dir()):
        raise ConfigError(f"{where}.path: the local model folder {cfg.path} does not exist")


def check_decoder_path(cfg: DecoderConfig, where: str) -> None:
    """A pretrained decoder's folder must exist here too."""
    if cfg.kind == "mbart" and not (cfg.path and Path(cfg.path).is_dir()):
        raise ConfigError(f"{where}.path: the local model folder {cfg.path} does not exist")


# -- the registry entry ---------------------------------------------------------------------------
class WaitkFamily(Family):
    name = "waitk"
    model, config = WaitkST, WaitkConfig
    tasks = {"st": WaitkStTask}
    policies = ("waitk", "edatt", "alignatt", "offline")

    def specials(self, cfg: WaitkConfig) -> list[str]:
        return [lang_tag(lang) for lang in cfg.languages] if cfg.decoder_mode == "unified" else []

    def finalize(self, cfg: WaitkConfig, tok) -> None:
        cfg.decoder.vocab_size = tok.vocab_size
        cfg.pad_id, cfg.bos_id, cfg.eos_id = tok.pad_id, tok.bos_id, tok.eos_id
        if cfg.decoder_mode == "unified":
            cfg.lang_token_ids = {lang: tok.piece_id(lang_tag(lang)) for lang in cfg.languages}

    def check_paths(self, cfg: WaitkConfig) -> None:
        st = getattr(cfg, "st", cfg)  # SAMU wraps a wait-k model
        prefix = "model.st" if st is not cfg else "model"
        check_encoder_path(st.encoder, f"{prefix}.encoder")
        check_decoder_path(st.decoder, f"{prefix}.decoder")

    def languages(self, model: WaitkST, tok, available, requested) -> list[str]:
        return list(model.cfg.languages)

    def agent(self, model: WaitkST, languages, policy, options) -> WaitkAgent:
        return WaitkAgent(model, languages, policy, options)


FAMILY = WaitkFamily()
