"""A causal language model as a family's backbone: loaded from a local Hugging Face folder (never
downloaded) or built from a small config and trained from scratch (EASiST, models/easist.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class LMConfig:
    path: str | None = None  # a local Hugging Face causal-LM folder (e.g. Llama-3-8B-Instruct)
    config: dict[str, Any] | None = None  # or a small HF config (with model_type) trained from scratch
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if (self.path is None) == (self.config is None):
            raise ValueError("model.lm: give exactly one of path (local pretrained LM) or config (from scratch)")
        if self.path is not None and not Path(self.path).is_dir():
            raise FileNotFoundError(f"model.lm.path: local LM folder {self.path} does not exist")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("model.lm.config needs a model_type (e.g. llama)")


def build_lm(cfg: LMConfig, vocab_size: int) -> nn.Module:
    """The causal LM: loaded from a local folder (never downloaded) or built from a small config."""
    cfg.validate()
    from transformers import AutoConfig, AutoModelForCausalLM  # imported only by the models that need it

    dtype = getattr(torch, cfg.dtype)
    if cfg.path is not None:
        lm = AutoModelForCausalLM.from_pretrained(cfg.path, local_files_only=True, dtype=dtype)
    else:
        options = dict(cfg.config)
        lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), vocab_size=vocab_size,
                                                                   **options), dtype=dtype)
    if lm.get_input_embeddings().num_embeddings < vocab_size:
        lm.resize_token_embeddings(vocab_size)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
    return lm


def new_cache():
    """An empty KV cache for incremental decoding."""
    from transformers import DynamicCache

    return DynamicCache()
