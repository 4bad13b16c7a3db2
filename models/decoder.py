"""Autoregressive transformer decoder over an encoder memory, with a KV cache for streaming.

    tokens (B, U) -> embedding + sinusoids -> [causal self-attn, cross-attn(memory), FF] x N
        -> LayerNorm -> logits (B, U, V)

`forward` is teacher forcing with any cross-attention mask (wait-k, offline); `step` decodes
new tokens given a `DecoderState` holding the self-attention cache and the memory's projected
keys/values, which grow as the encoder reads more speech: only memory frames not yet projected
are projected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import KV, DecoderLayer, causal_mask, sinusoids

KINDS = ("own", "mbart")


@dataclass
class DecoderConfig:
    vocab_size: int | None = None  # None: taken from the tokenizer
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 6
    d_ff: int = 1024
    dropout: float = 0.1
    tie_embeddings: bool = True
    adapter_dim: int = 0  # > 0: a bottleneck adapter after each layer
    kind: str = "own"  # own, or mbart: a local MBartForConditionalGeneration's decoder layers (hf_decoder.py)
    path: str | None = None  # mbart: the local model folder (its shape replaces d_model..d_ff)

    def validate(self, where: str = "decoder") -> None:
        if not self.vocab_size:
            raise ValueError(f"{where}.vocab_size is not set (the tokenizer sets it)")
        if self.kind not in KINDS:
            raise ValueError(f"{where}.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"{where}.d_model {self.d_model} must be divisible by n_heads {self.n_heads}")


@dataclass
class DecoderState:
    self_kv: list[KV | None]  # per layer, the tokens decoded so far
    memory_kv: list[KV | None]  # per layer, the projected memory frames seen so far
    offset: int = 0  # tokens decoded so far (the position of the next one)

    @property
    def memory_len(self) -> int:
        return 0 if self.memory_kv[0] is None else self.memory_kv[0][0].shape[2]


class TransformerDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, memory_dim: int | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)  # unit-scale after the sqrt(D) factor
        self.layers = nn.ModuleList([
            DecoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, memory_dim, cfg.adapter_dim)
            for _ in range(cfg.n_layers)
        ])
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out.weight = self.embed.weight
        self.drop = nn.Dropout(cfg.dropout)

    def _embed(self, tokens: Tensor, offset: int) -> Tensor:
        pos = sinusoids(torch.arange(offset, offset + tokens.shape[1], device=tokens.device), self.cfg.d_model)
        return self.drop(self.embed(tokens) * math.sqrt(self.cfg.d_model) + pos)

    def forward(self, tokens: Tensor, memory: Tensor, cross_mask: Tensor) -> Tensor:
        """Teacher forcing.

        Args:
            tokens: (B, U) decoder inputs (language tag or BOS, then the target shifted right).
            memory: (B, S, D_mem) encoder output.
            cross_mask: (B, U, S) bool, True where token u may attend to frame s.
        Returns:
            (B, U, V) logits.
        """
        x = self._embed(tokens, 0)
        self_mask = causal_mask(tokens.shape[1], tokens.device)
        cross = cross_mask[:, None]
        for layer in self.layers:
            x, _ = layer(x, self_mask, layer.cross_attn.project_kv(memory), cross)
        return self.out(self.norm(x))

    def init_state(self) -> DecoderState:
        n = len(self.layers)
        return DecoderState(self_kv=[None] * n, memory_kv=[None] * n, offset=0)

    def step(self, tokens: Tensor, memory: Tensor, state: DecoderState,
             memory_mask: Tensor | None = None) -> tuple[Tensor, DecoderState]:
        """Decode `tokens` (B, n) after those in `state`, attending to all of `memory`.

        Args:
            tokens: (B, n) the next decoder inputs.
            memory: (B, S, D_mem) every encoder frame read so far (a superset of the last call's).
            memory_mask: (B, S) bool, valid frames (batched streams of different lengths); None = all.
        Returns:
            (B, n, V) logits and the new state.
        """
        n = tokens.shape[1]
        x = self._embed(tokens, state.offset)
        self_mask = None
        if n > 1:  # several new tokens: causal among themselves, all of the cache before them
            self_mask = torch.ones(n, state.offset + n, dtype=torch.bool, device=tokens.device).tril(state.offset)
        cross = None if memory_mask is None else memory_mask[:, None, None, :]
        self_kv, memory_kv = [], []
        for layer, cache, mem in zip(self.layers, state.self_kv, state.memory_kv, strict=True):
            mem = self._extend_memory(layer, memory, mem)
            x, kv = layer(x, self_mask, mem, cross, cache)
            self_kv.append(kv)
            memory_kv.append(mem)
        return self.out(self.norm(x)), DecoderState(self_kv, memory_kv, state.offset + n)

    @staticmethod
    def _extend_memory(layer: DecoderLayer, memory: Tensor, cached: KV | None) -> KV:
        seen = 0 if cached is None else cached[0].shape[2]
        if seen == memory.shape[1]:
            return cached
        k, v = layer.cross_attn.project_kv(memory[:, seen:])
        if cached is None:
            return k, v
        return torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)


def make_decoder(cfg: DecoderConfig, memory_dim: int | None = None) -> TransformerDecoder:
    """The decoder `cfg.kind` names: the own one, or a local mBART's (same calls, same state)."""
    cfg.validate()
    if cfg.kind == "mbart":
        from .hf_decoder import MBartDecoder

        return MBartDecoder(cfg, memory_dim)
    return TransformerDecoder(cfg, memory_dim)
