"""Rows of the text-only `simulmt` config: one per utterance and latency level.

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

from .records import Segmentation, Utterance

END_OF_READ = "<|end-of-read|>"
END_OF_WRITE = "<|end-of-write|>"


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


def simulmt_features(languages: list[str]):
    """`datasets.Features` of the rows above (imported lazily: only publishing needs datasets)."""
    from datasets import Features, List, Value

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
