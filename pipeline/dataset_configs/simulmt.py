"""The text-only `simulmt` config: one row per utterance and latency level.

Columns:
  id             the utterance id
  latency        the level name (low, medium, high, ...)
  source_chunks  [str]
  target_chunks  {lang: [str]}, None for a language the utterance lacks
  text           {lang: interleaved training string}, EASiST's read/write format:
                 "c1<|end-of-read|>t1<|end-of-write|> c2<|end-of-read|>t2<|end-of-write|>"
  offline        {lang: the offline MT sample in the same format with a single chunk}:
                 "<whole source><|end-of-read|><reference translation><|end-of-write|>"
                 so one template serves simultaneous and offline MT training (EASiST stage I
                 mixes both); the reference is the corpus translation, not the chunked one.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Features, List, Value

from ...transforms.records import Segmentation, Utterance
from .. import plots

NAME = "simulmt"
SOURCE = "segment"
ROW = "one text-only sample per utterance and latency level, reads and writes interleaved"
USAGE = 'row["latency"], row["text"]["{lang}"]'
LANGUAGE_COLUMN = "text"
FIGURE_COLUMNS = ("latency", "source_chunks")

END_OF_READ = "<|end-of-read|>"
END_OF_WRITE = "<|end-of-write|>"


def enabled(settings) -> bool:
    return NAME in settings.configs


def interleave(source_chunks: list[str], target_chunks: list[str]) -> str:
    """The read/write training string of one chunked pair."""
    return " ".join(
        f"{s}{END_OF_READ}{t}{END_OF_WRITE}" for s, t in zip(source_chunks, target_chunks, strict=True)
    )


def offline_text(source: str, translation: str) -> str:
    """The offline MT sample: the whole sentence read, then the whole reference written."""
    return interleave([" ".join(source.split())], [" ".join(translation.split())])


def simulmt_rows(utt: Utterance, languages: list[str]) -> list[dict[str, Any]]:
    """One row per latency level of a segmented utterance, with a key for every language."""
    rows = []
    for level, seg in utt.segmentations.items():
        rows.append(
            {
                "id": utt.id,
                "latency": level,
                "source_chunks": list(seg.source_chunks),
                "target_chunks": {lang: _chunks(seg, lang) for lang in languages},
                "text": {
                    lang: interleave(seg.source_chunks, seg.target_chunks[lang])
                    if lang in seg.target_chunks
                    else None
                    for lang in languages
                },
                "offline": {
                    lang: offline_text(utt.source_text, utt.translations[lang])
                    if lang in utt.translations
                    else None
                    for lang in languages
                },
            }
        )
    return rows


def _chunks(seg: Segmentation, lang: str) -> list[str] | None:
    return list(seg.target_chunks[lang]) if lang in seg.target_chunks else None


def simulmt_features(languages: list[str]) -> Features:
    strings = List(Value("string"))
    return Features(
        {
            "id": Value("string"),
            "latency": Value("string"),
            "source_chunks": strings,
            "target_chunks": {lang: strings for lang in languages},
            "text": {lang: Value("string") for lang in languages},
            "offline": {lang: Value("string") for lang in languages},
        }
    )


def features(settings) -> Features:
    return simulmt_features(settings.languages)


def rows(utt: Utterance, settings) -> list[dict[str, Any]]:
    return simulmt_rows(utt, settings.languages)


def add_figures(table: pa.Table, figures: plots.Figures, langs: list[str], published: dict) -> None:
    """Source words per chunk, per latency level."""
    if {"latency", "source_chunks"} <= set(table.column_names):
        chunks = table["source_chunks"].combine_chunks()
        levels = pc.take(table["latency"], pc.list_parent_indices(chunks)).to_pylist()
        for level, n in zip(levels, plots.words_per_chunk(chunks), strict=True):
            figures.chunk_words.setdefault(level, []).append(int(n))
