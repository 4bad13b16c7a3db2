"""Building blocks shared by every model: attention with a KV cache, masks, causal conv subsampling.

Shapes use B (batch), T (time or tokens), S (keys), H (heads), D (model width), C (channels).
Boolean masks are True where attention is allowed. Streaming state is always passed in and
returned; nothing here keeps state between calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]  # (keys, values), each (B, H, S, D/H)


def sinusoids(positions: Tensor, dim: int) -> Tensor:
    """Absolute sinusoidal position encodings.

    Args:
        positions: (T,) integer positions.
        dim: even width.
    Returns:
        (T, dim) float tensor.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def lengths_to_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """(B,) lengths -> (B, T) bool, True at valid positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def block_causal_mask(length: int, block: int, left_blocks: int | None = None, device=None) -> Tensor:
    """(T, T) mask: position i sees every position of its own block and of earlier blocks.

    With `left_blocks`, only that many earlier blocks are visible (a bounded KV cache).
    """
    b = torch.arange(length, device=device) // block
    mask = b[None, :] <= b[:, None]
    if left_blocks is not None:
        mask &= b[None, :] >= b[:, None] - left_blocks
    return mask


def causal_mask(length: int, device=None) -> Tensor:
    """(T, T) lower-triangular mask for autoregressive decoding."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


class MultiHeadAttention(nn.Module):
    """Multi-head attention; self-attention may extend a KV cache, cross-attention may reuse
    keys/values projected once from the memory (`project_kv`)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, kv_dim: int | None = None):
        super().__init__()
        assert d_model % n_heads == 0, f"d_model {d_model} must be divisible by n_heads {n_heads}"
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(kv_dim or d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, H, T, D/H)
        B, T, D = x.shape
        return x.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)

    def project_kv(self, source: Tensor) -> KV:
        """(B, S, D_kv) -> keys and values, each (B, H, S, D/H)."""
        k, v = self.kv(source).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: Tensor, source: Tensor | None = None, mask: Tensor | None = None,
                cache: KV | None = None, kv: KV | None = None) -> tuple[Tensor, KV]:
        """Attend from `x` (B, T, D).

        Args:
            source: what to attend to (B, S, D_kv); None for self-attention over `x`.
            mask: bool, broadcastable to (B, H, T, S_total), True = may attend.
            cache: earlier keys/values to prepend (self-attention with a KV cache).
            kv: ready keys/values (cross-attention over a cached memory); `source` is then unused.
        Returns:
            (B, T, D) output and the keys/values it attended to (the new cache).
        """
        q = self._heads(self.q(x))
        if kv is None:
            kv = self.project_kv(x if source is None else source)
            if cache is not None:
                kv = (torch.cat([cache[0], kv[0]], dim=2), torch.cat([cache[1], kv[1]], dim=2))
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        B, H, T, Dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * Dh)), kv


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Adapter(nn.Module):
    """Bottleneck adapter (down, ReLU, up, residual); starts as the identity (zero up-projection)."""

    def __init__(self, d_model: int, bottleneck: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(F.relu(self.down(self.norm(x))))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward, with an optional adapter after them."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, adapter_dim: int = 0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)
        self.adapter = Adapter(d_model, adapter_dim) if adapter_dim else None

    def forward(self, x: Tensor, mask: Tensor | None, cache: KV | None = None) -> tuple[Tensor, KV]:
        a, kv = self.attn(self.norm1(x), mask=mask, cache=cache)
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.norm2(x)))
        if self.adapter is not None:
            x = self.adapter(x)
        return x, kv


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention over the encoder memory, feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, memory_dim: int | None = None,
                 adapter_dim: int = 0):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, kv_dim=memory_dim)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)
        self.adapter = Adapter(d_model, adapter_dim) if adapter_dim else None

    def forward(self, x: Tensor, self_mask: Tensor | None, memory_kv: KV, cross_mask: Tensor | None,
                cache: KV | None = None) -> tuple[Tensor, KV]:
        a, kv = self.self_attn(self.norm1(x), mask=self_mask, cache=cache)
        x = x + self.drop(a)
        c, _ = self.cross_attn(self.norm2(x), mask=cross_mask, kv=memory_kv)
        x = x + self.drop(c)
        x = x + self.drop(self.ff(self.norm3(x)))
        if self.adapter is not None:
            x = self.adapter(x)
        return x, kv


class CausalConvSubsampling(nn.Module):
    """Two causal 1-D convolutions (kernel 3, stride 2): (B, T, F) -> (B, T/4, D).

    Each convolution only looks back, so a stream of blocks gives exactly the offline output
    when the last `kernel - 1` input frames of each convolution are carried to the next block.
    T must be a multiple of 4 (callers pad).
    """

    KERNEL, STRIDE, FACTOR = 3, 2, 4

    def __init__(self, in_dim: int, d_model: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(in_dim, d_model, self.KERNEL, self.STRIDE),
                                    nn.Conv1d(d_model, d_model, self.KERNEL, self.STRIDE)])
        self.proj = nn.Linear(d_model, d_model)

    def init_cache(self, batch: int, device=None, dtype=None) -> list[Tensor]:
        """Zero left context for each convolution: [(B, C_in, kernel-1)]."""
        return [torch.zeros(batch, conv.in_channels, self.KERNEL - 1, device=device, dtype=dtype) for conv in self.convs]

    def forward(self, x: Tensor, cache: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        """x: (B, T, F) with T % 4 == 0 -> (B, T/4, D) and the new cache."""
        assert x.shape[1] % self.FACTOR == 0, f"frames {x.shape[1]} must be a multiple of {self.FACTOR}"
        if cache is None:
            cache = self.init_cache(x.shape[0], x.device, x.dtype)
        h, new_cache = x.transpose(1, 2), []
        for conv, left in zip(self.convs, cache, strict=True):
            h = torch.cat([left, h], dim=2)
            new_cache.append(h[:, :, h.shape[2] - (self.KERNEL - 1):])
            h = F.gelu(conv(h))
        return self.proj(h.transpose(1, 2)), new_cache


class BlockStream:
    """`stream`: an encoder's input fed block by block through its `init_state` and `forward_block`, as
    an online system feeds it; what its streaming tests compare with its offline forward."""

    def stream(self, feats: Tensor) -> Tensor:
        """(B, T, F) input frames -> (B, T', D) encoder frames."""
        state, outs = self.init_state(feats.shape[0], feats.device, feats.dtype), []
        for start in range(0, feats.shape[1], self.cfg.block_frames):
            out, state = self.forward_block(feats[:, start:start + self.cfg.block_frames], state)
            outs.append(out)
        return torch.cat(outs, dim=1)

