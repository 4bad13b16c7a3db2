"""Block-causal streaming speech encoder (wav2vec-S style: absolute sinusoidal positions,
block-wise self-attention, a KV cache so a stream never re-encodes its prefix).

    log-mel (B, T, 80) -> FeatureNorm -> CausalConvSubsampling (x4) -> + sinusoids
        -> BlockCausalTransformer -> LayerNorm -> (B, T/4, D)

`forward` encodes whole utterances with a block-causal mask; `forward_block` encodes one block
given the state of the blocks before it and returns the new state. Both give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import (
    KV,
    BlockStream,
    CausalConvSubsampling,
    EncoderLayer,
    block_causal_mask,
    lengths_to_mask,
    sinusoids,
)

KINDS = ("own", "hf")


@dataclass
class EncoderConfig:
    n_mels: int = 80
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 6
    d_ff: int = 1024
    block_frames: int = 32  # feature frames (10 ms) per block, a multiple of 4; 32 -> 320 ms
    left_blocks: int | None = None  # earlier blocks visible to attention; None = all (unbounded cache)
    dropout: float = 0.1
    adapter_dim: int = 0  # bottleneck adapter in every layer (0: none)
    # The backbone: `own` (this module) or `hf`, a pretrained `transformers` model in the local folder
    # `path` (models/hf_encoder.py; its width replaces d_model). `streaming`: block_causal | full.
    kind: str = "own"
    path: str | None = None
    streaming: str = "block_causal"
    block_ms: int | None = None  # the block in ms (10 ms frames); when set it decides block_frames

    def __post_init__(self) -> None:
        if self.block_ms is not None and self.block_ms > 0 and self.block_ms % 10 == 0:
            self.block_frames = self.block_ms // 10

    def validate(self, where: str = "encoder") -> None:
        if self.block_ms is not None and (self.block_ms <= 0 or self.block_ms % 10):
            raise ValueError(f"{where}.block_ms must be a positive multiple of 10, got {self.block_ms}")
        if self.kind not in KINDS:
            raise ValueError(f"{where}.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "hf":
            if not self.path:
                raise ValueError(f"{where}.path: the hf encoder needs a local model folder")
            return
        if self.block_frames <= 0 or self.block_frames % CausalConvSubsampling.FACTOR:
            raise ValueError(f"{where}.block_frames must be a positive multiple of 4, got {self.block_frames}")
        if self.d_model % self.n_heads:
            raise ValueError(f"{where}.d_model {self.d_model} must be divisible by n_heads {self.n_heads}")

    @property
    def block_len(self) -> int:
        """Encoder frames per block."""
        return self.block_frames // CausalConvSubsampling.FACTOR


@dataclass
class TransformerState:
    """KV cache of a block-causal transformer: one (keys, values) per layer, and the number of
    positions encoded so far (the absolute position of the next one)."""

    kv: list[KV | None]
    offset: int = 0


@dataclass
class EncoderState:
    conv: list[Tensor]  # left context of each subsampling convolution
    transformer: TransformerState


class FeatureNorm(nn.Module):
    """Fixed per-dimension mean/std normalisation; the trainer sets the statistics from data."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class BlockCausalTransformer(nn.Module):
    """A stack of encoder layers whose attention is block-causal, with a KV cache for streaming."""

    def __init__(self, d_model: int, n_heads: int, n_layers: int, d_ff: int, block_len: int,
                 left_blocks: int | None = None, dropout: float = 0.0, adapter_dim: int = 0):
        super().__init__()
        self.block_len, self.left_blocks = block_len, left_blocks
        self.layers = nn.ModuleList([EncoderLayer(d_model, n_heads, d_ff, dropout, adapter_dim) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.d_model = d_model

    def init_state(self) -> TransformerState:
        return TransformerState(kv=[None] * len(self.layers), offset=0)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x: (B, T, D) embeddings without positions, lengths: (B,) -> (B, T, D)."""
        T = x.shape[1]
        x = x + sinusoids(torch.arange(T, device=x.device), self.d_model).to(x.dtype)
        mask = block_causal_mask(T, self.block_len, self.left_blocks, x.device)[None, None]
        mask = mask & lengths_to_mask(lengths, T)[:, None, None, :]
        # Padding queries must still see something (their output is ignored): let them see themselves.
        mask = mask | torch.eye(T, dtype=torch.bool, device=x.device)[None, None]
        for layer in self.layers:
            x, _ = layer(x, mask)
        return self.norm(x)

    def forward_block(self, x: Tensor, state: TransformerState) -> tuple[Tensor, TransformerState]:
        """One block (B, L <= block_len, D) -> (B, L, D) and the new state."""
        L = x.shape[1]
        x = x + sinusoids(torch.arange(state.offset, state.offset + L, device=x.device), self.d_model).to(x.dtype)
        new_kv = []
        for layer, cache in zip(self.layers, state.kv, strict=True):
            x, kv = layer(x, None, cache)  # the block sees its cache and itself: no mask needed
            new_kv.append(self._trim(kv))
        return self.norm(x), TransformerState(kv=new_kv, offset=state.offset + L)

    def _trim(self, kv: KV) -> KV:
        """Keep what the next block may see: the last `left_blocks` blocks."""
        if self.left_blocks is None:
            return kv
        start = max(0, kv[0].shape[2] - self.left_blocks * self.block_len)
        return kv[0][:, :, start:], kv[1][:, :, start:]


class StreamingEncoder(BlockStream, nn.Module):
    """Log-mel features -> block-causal encoder frames (4x fewer), offline or block by block."""

    input_kind = "logmel"

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.norm = FeatureNorm(cfg.n_mels)
        self.subsample = CausalConvSubsampling(cfg.n_mels, cfg.d_model)
        self.transformer = BlockCausalTransformer(cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.d_ff, cfg.block_len,
                                                  cfg.left_blocks, cfg.dropout, cfg.adapter_dim)

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def frames_after(self, blocks: int) -> int:
        """Encoder frames complete once `blocks` whole blocks have been read."""
        return blocks * self.cfg.block_len

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        """Encoder frames for `lengths` feature frames (padded up to a multiple of 4)."""
        return torch.div(lengths + 3, 4, rounding_mode="floor")

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats: (B, T, n_mels), lengths: (B,) -> (B, T', D), (B,) with T' = ceil(T / 4)."""
        pad = (-feats.shape[1]) % 4
        feats = self.norm(feats)
        feats = feats * lengths_to_mask(lengths, feats.shape[1])[..., None]  # zeros past the end, as a stream pads
        if pad:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, pad))
        x, _ = self.subsample(feats)
        out_lengths = self.output_lengths(lengths)
        return self.transformer(x, out_lengths), out_lengths

    def init_state(self, batch: int = 1, device=None, dtype=None) -> EncoderState:
        return EncoderState(conv=self.subsample.init_cache(batch, device, dtype), transformer=self.transformer.init_state())

    def forward_block(self, block_feats: Tensor, state: EncoderState) -> tuple[Tensor, EncoderState]:
        """One block of features (B, <= block_frames, n_mels) -> (B, <= block_len, D), new state.

        The last block of a stream may be shorter; it is zero-padded to a multiple of 4 frames.
        """
        assert block_feats.shape[1] <= self.cfg.block_frames, "one block at a time"
        pad = (-block_feats.shape[1]) % 4
        x = self.norm(block_feats)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        x, conv = self.subsample(x, state.conv)
        x, transformer = self.transformer.forward_block(x, state.transformer)
        return x, EncoderState(conv=conv, transformer=transformer)



def make_encoder(cfg: EncoderConfig) -> nn.Module:
    """The backbone `cfg.kind` names; each has `d_model`, `input_kind`, `norm`, `forward`, `forward_block`,
    `init_state` and `frames_after`."""
    cfg.validate()
    if cfg.kind == "hf":
        from .hf_encoder import load

        return load(cfg)
    return StreamingEncoder(cfg)
