"""A local pretrained mBART decoder in place of the project's own (`decoder: {kind: mbart, path: DIR}`).

SAMU (Khurana et al.) decodes with mBART's decoder, fine-tuned through bottleneck adapters. Here the
decoder layers of a local `MBartForConditionalGeneration` (never downloaded) run on the project's masks
and caches, so wait-k training, the KV-cached `step` and the policies' cross-attention hook are the own
decoder's (`TransformerDecoder`, which this subclasses):

    tokens -> embedding * scale + learned positions -> LayerNorm
        -> [mBART layer: self-attn, cross-attn(bridge(memory)), FF; then an adapter] x N -> LayerNorm -> logits

- `bridge`: a Linear from the speech encoder's width to mBART's d_model when they differ.
- Vocabulary: the project's tokenizer, not mBART's (not available offline), so the token embedding is
  a fresh one of the tokenizer's size, tied to the output projection as mBART ties them; the layers'
  weights are mBART's.
- Adapters (`adapter_dim` > 0) follow each layer and start as the identity; a stage's `trainable`
  patterns decide what is frozen (the paper: adapters, plus here the fresh embedding and bridge).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import KV, Adapter
from .decoder import DecoderConfig, DecoderState, TransformerDecoder


class MBartAttentionView(nn.Module):
    """An mBART attention's projections, called as the own `MultiHeadAttention` is (masks: True = may
    attend; `project_kv` for a memory projected once; `q` and `n_heads` for the policies' hook)."""

    def __init__(self, attn: nn.Module, dropout: float):
        super().__init__()
        self.q, self.k, self.v, self.out = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        self.n_heads, self.dropout = attn.num_heads, dropout

    def _heads(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)

    def project_kv(self, source: Tensor) -> KV:
        return self._heads(self.k(source)), self._heads(self.v(source))

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KV | None = None,
                kv: KV | None = None) -> tuple[Tensor, KV]:
        if kv is None:  # self-attention: this call's keys after the cached ones
            kv = self.project_kv(x)
            if cache is not None:
                kv = torch.cat([cache[0], kv[0]], dim=2), torch.cat([cache[1], kv[1]], dim=2)
        y = F.scaled_dot_product_attention(self._heads(self.q(x)), kv[0], kv[1], attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        B, H, T, Dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * Dh)), kv


class MBartLayer(nn.Module):
    """One mBART decoder layer (pre-norm, as mBART is) with the own `DecoderLayer`'s call, then an adapter."""

    def __init__(self, layer: nn.Module, dropout: float, activation_dropout: float, adapter_dim: int):
        super().__init__()
        self.self_attn = MBartAttentionView(layer.self_attn, layer.self_attn.dropout)
        self.cross_attn = MBartAttentionView(layer.encoder_attn, layer.encoder_attn.dropout)
        self.norm1, self.norm2, self.norm3 = (layer.self_attn_layer_norm, layer.encoder_attn_layer_norm,
                                              layer.final_layer_norm)
        self.fc1, self.fc2, self.act = layer.fc1, layer.fc2, layer.activation_fn
        self.drop, self.act_drop = nn.Dropout(dropout), nn.Dropout(activation_dropout)
        self.adapter = Adapter(layer.embed_dim, adapter_dim) if adapter_dim else None

    def forward(self, x: Tensor, self_mask: Tensor | None, memory_kv: KV, cross_mask: Tensor | None,
                cache: KV | None = None) -> tuple[Tensor, KV]:
        a, kv = self.self_attn(self.norm1(x), mask=self_mask, cache=cache)
        x = x + self.drop(a)
        c, _ = self.cross_attn(self.norm2(x), mask=cross_mask, kv=memory_kv)
        x = x + self.drop(c)
        x = x + self.drop(self.fc2(self.act_drop(self.act(self.fc1(self.norm3(x))))))
        if self.adapter is not None:
            x = self.adapter(x)
        return x, kv


def load_mbart(path: str):
    """The local model folder's `MBartForConditionalGeneration` (never downloaded)."""
    from transformers import MBartForConditionalGeneration

    if not (path and Path(path).is_dir()):
        raise ValueError(f"model.decoder.path: the local model folder {path} does not exist")
    return MBartForConditionalGeneration.from_pretrained(path, local_files_only=True)


class MBartDecoder(TransformerDecoder):
    def __init__(self, cfg: DecoderConfig, memory_dim: int | None = None):
        nn.Module.__init__(self)
        if not cfg.vocab_size:
            raise ValueError("decoder.vocab_size is not set (the tokenizer sets it)")
        hf = load_mbart(cfg.path)
        conf, dec = hf.config, hf.model.decoder
        d = conf.d_model
        cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.d_ff = d, conf.decoder_attention_heads, conf.decoder_layers, \
            conf.decoder_ffn_dim  # recorded: the pretrained model's shape, not the config's
        self.cfg = cfg
        self.scale = math.sqrt(d) if conf.scale_embedding else 1.0
        self.embed = nn.Embedding(cfg.vocab_size, d)  # the project's vocabulary (see the module docstring)
        nn.init.normal_(self.embed.weight, std=conf.init_std)
        self.positions = dec.embed_positions
        self.embed_norm = dec.layernorm_embedding
        self.layers = nn.ModuleList([MBartLayer(layer, conf.dropout, conf.activation_dropout, cfg.adapter_dim)
                                     for layer in dec.layers])
        self.norm = dec.layer_norm
        self.out = nn.Linear(d, cfg.vocab_size, bias=False)
        if conf.tie_word_embeddings:
            self.out.weight = self.embed.weight
        self.drop = nn.Dropout(conf.dropout)
        self.bridge = nn.Linear(memory_dim, d) if memory_dim and memory_dim != d else nn.Identity()

    def _embed(self, tokens: Tensor, offset: int) -> Tensor:
        return self.drop(self.embed_norm(self.embed(tokens) * self.scale + self.positions(tokens, offset)))

    def forward(self, tokens: Tensor, memory: Tensor, cross_mask: Tensor) -> Tensor:
        return super().forward(tokens, self.bridge(memory), cross_mask)

    def step(self, tokens: Tensor, memory: Tensor, state: DecoderState,
             memory_mask: Tensor | None = None) -> tuple[Tensor, DecoderState]:
        # Only the frames not yet projected are bridged (a per-frame map), as only they are projected.
        new = self.bridge(memory[:, state.memory_len:])
        seen = memory.new_zeros(memory.shape[0], state.memory_len, new.shape[-1])
        return super().step(tokens, torch.cat([seen, new], dim=1), state, memory_mask)
