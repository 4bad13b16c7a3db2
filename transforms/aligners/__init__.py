"""Forced aligners behind one interface: train on a sample of a language, then align clips.

A backend turns clips (audio plus the words spoken in them) into word timings. `train`
runs once per source language on a bounded sample and returns a picklable model, which
Beam hands to every worker as a side input (a `sharded` backend's training runs as rounds over
shards of the sample on all workers instead: transforms/align.py); `align` then takes a batch of clips and
returns, per clip, the word timings or the reason it could not align them.

Backends: `gmm` (built in: a GMM-HMM trained on the corpus itself, nothing downloaded) and
`mfa` (the Montreal Forced Aligner, when its `mfa` command is installed).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..records import StageError

# name -> "module:class", imported on first use so a backend's dependencies load only when chosen.
BACKENDS = {"gmm": "gmm:GmmBackend", "mfa": "mfa:MfaBackend"}


@dataclass
class Clip:
    """One utterance to align: mono samples and the words spoken, in order."""

    id: str
    samples: np.ndarray
    rate: int
    words: list[str]
    speaker: str = ""  # clips of one speaker share MFA's speaker adaptation

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate


@dataclass
class Aligned:
    """Word timings of one clip, in seconds from its start."""

    words: list[tuple[str, float, float]]
    retried: bool = False  # the first beam lost the path and a wider one found it
    # How well the audio fits the words, from 0 (worst) to 1, for the clip and for each word; None where
    # the backend gives none (the GMM backend: the share of held-out clips or words that fit no better).
    confidence: float | None = None
    word_confidence: list[float] | None = None


@dataclass
class TrainReport:
    """What training used and left out."""

    clips: int = 0
    audio_s: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> clips left out of training

    def plus(self, other: TrainReport) -> TrainReport:
        skipped = dict(self.skipped)
        for reason, n in other.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
        return TrainReport(self.clips + other.clips, self.audio_s + other.audio_s, skipped)


class Backend(ABC):
    """What the align stage calls."""

    name = ""
    # Trains by summing statistics over shards of the sample (gmm: `GmmBackend.prepare`, `begin`,
    # `accumulate`, `estimate`, `score`, `finish`), which the align stage spreads over the workers.
    sharded = False

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Any) -> Backend:
        """Built from the align stage's settings."""

    @abstractmethod
    def train(self, lang: str, clips: list[Clip]) -> tuple[Any, TrainReport]:
        """A model of `lang` from a sample of its clips; raises StageError when none can be had."""

    @abstractmethod
    def align(self, model: Any, clips: list[Clip]) -> list[Aligned | StageError]:
        """Per clip, its word timings or why it has none."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release per-worker resources (helper processes)."""


def make_backend(settings: Any) -> Backend:
    """The backend `settings.backend` names, built from the align settings."""
    if settings.backend not in BACKENDS:
        raise ValueError(f"unknown aligner backend {settings.backend!r}; known: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[settings.backend].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls).from_settings(settings)


def batch_size(settings: Any) -> int:
    """Clips per `align` call: each backend's settings section (named as the backend) says."""
    return getattr(settings, settings.backend).batch_size
