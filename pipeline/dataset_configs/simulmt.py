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


# The card's column table (pipeline/columns.py): path -> (unit, meaning); <lang> is each target language's field.
COLUMNS = {
    "id": ("", "the utterance id, as in `offline` and `simulst`"),
    "latency": ("", "the latency level of this row (`low`, `medium`, `high`, ...): one row per utterance and level"),
    "source_chunks": ("", "the source text cut into chunks; joined with spaces they give the source text"),
    "target_chunks": ("", "one field per target language"),
    "target_chunks.<lang>": ("", "the reference translation cut into as many chunks, chunk k translating source "
                                 "chunk k; null where the utterance has no translation into `<lang>`"),
    "text": ("", "one field per target language"),
    "text.<lang>": ("", f"the read/write training string: `c1{END_OF_READ}t1{END_OF_WRITE} "
                        f"c2{END_OF_READ}t2{END_OF_WRITE} ...` (source chunk, then its translation); null "
                        "where the language is missing"),
    "offline": ("", "one field per target language"),
    "offline.<lang>": ("", f"the offline sample in the same format, one chunk: `<source>{END_OF_READ}<reference>"
                           f"{END_OF_WRITE}`, the reference being the corpus's translation; null where missing"),
}


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
