"""Tasks: what one training stage reads from the dataset, how rows become a batch, and its loss.

A task names its dataset config and the columns it needs (checked before training), the text
it contributes to tokenizer training, the special tokens it needs, and turns rows into
batches. Options come from the stage's `options:` in the YAML and are checked here. Each family
defines its own tasks beside its model (models/<family>.py) and lists them in its registry entry;
a stage's `task:` names one of them.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import ConfigError, build
from .data import iter_texts, pad_features


class Task:
    """Base: subclasses set `options_cls` and implement the hooks they need."""

    options_cls: type = object
    needs_audio = True

    def __init__(self, options: dict[str, Any], model_cfg: Any, where: str):
        self.opts = build(self.options_cls, options, where)
        self.model_cfg, self.where = model_cfg, where
        self.tok = None  # set once the tokenizer exists
        self.mono = True
        self.rate = None  # the published audio's sampling rate (fit_to_data)
        self.taken_from: dict[str, str] = {}  # model config key -> the data it was taken from (fit_to_data)

    def columns(self) -> list[str]:
        return []

    def text_columns(self) -> list[str]:
        return []

    def texts(self, ds):
        """Text for tokenizer training."""
        return iter_texts(ds, self.text_columns())

    def check_features(self, features) -> None:
        """Checks beyond column presence (widths, nested fields); raise ConfigError."""

    def take_from_data(self, key: str, found: Any, source: str, holds: str) -> None:
        """`model.<key>` left null takes what the data `holds` (`found`); a value given must equal it."""
        given = getattr(self.model_cfg, key)
        if given is None:
            setattr(self.model_cfg, key, found)
            self.taken_from[key] = f"taken from the {source}"
        elif given != found:
            why = self.taken_from.get(key, "leave it null to take the dataset's")
            raise ConfigError(f"{self.where}: {holds} but model.{key} is {given} ({why})")

    def fit_to_data(self, ds, source: str) -> None:
        """What the model takes from the dataset (`source` names it in errors): here the audio's rate."""
        if self.needs_audio:
            from .data import audio_rate

            self.rate = audio_rate(ds)

    def specials(self) -> list[str]:
        return []

    def keep(self, row: dict) -> bool:
        return True

    def examples(self, n_rows: int) -> list[tuple[int, Any]]:
        """(row index, variant) pairs the batches index into; one per row by default."""
        return [(i, None) for i in range(n_rows)]

    def text_length(self, row: dict) -> int:
        return 1

    def collate(self, rows: list[dict], variants: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    # helpers
    def encode(self, text: str | None) -> list[int]:
        return [] if not text else self.tok.encode(text)

    def special(self, token: str) -> int:
        i = self.tok.piece_id(token)
        assert i is not None, f"{token} is checked before training"
        return i


def batch_features(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' features, padded (B, T, F), and their lengths (B,)."""
    return pad_features([r["features"] for r in rows])


def check_languages(opts_langs: list[str] | None, model_langs: list[str], where: str) -> list[str]:
    langs = list(opts_langs or model_langs)
    unknown = [lang for lang in langs if lang not in model_langs]
    if unknown:
        raise ConfigError(f"{where}.languages: {', '.join(unknown)} not among the model's languages {model_langs}")
    return langs


