"""Model names -> (model class, config dataclass). A YAML config's `family` picks one."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Entry:
    model: type[nn.Module]
    config: type
    summary: str


def _entries() -> dict[str, Entry]:
    from .easist import Easist, EasistConfig
    from .samu import Samu, SamuConfig
    from .transducer import Jstar, JstarConfig
    from .waitk import WaitkConfig, WaitkST

    return {
        "waitk": Entry(WaitkST, WaitkConfig, "block-causal encoder + wait-k decoder(s): bilingual, separate, unified"),
        "jstar": Entry(Jstar, JstarConfig, "fast/slow cascaded encoders with ASR and ST transducers (JSTAR)"),
        "samu": Entry(Samu, SamuConfig, "semantic distillation to sentence embeddings, then ST with adapters"),
        "easist": Entry(Easist, EasistConfig, "streaming encoder + block conv adapter + decoder-only LM + policy"),
    }


MODELS = ("waitk", "jstar", "samu", "easist")


def get(name: str) -> Entry:
    entries = _entries()
    if name not in entries:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(entries)}")
    return entries[name]
