"""Rows and features of the published `simulst` config (DESIGN.md §5).

One row is one aligned utterance with its audio stored once and every latency level:

  latency.<level>    source_chunks, target_chunks.<lang>, chunk_end_s (clip-relative
                     seconds), speech_seg_size (cumulative samples read before writing each
                     chunk: its end rounded up to an encoder block, see timing.py) and labels
                     (one per block read: 0 read, 1 write), as EASiST trains on them
  words              [{word, start, end}] from forced alignment
  block_samples      the encoder block the sizes and labels were computed for
  monotonicity       <level>.<lang>: the chunked pair's crossing rate as the segment stage
                     measured it (null where it was not measured)

plus every column of the `offline` config.

Per-level and per-language columns are structs with a field for every configured level and
requested language, so every shard has the same schema; what an utterance lacks is null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Features, List, Value

from .publish import offline_features, offline_row
from .records import Utterance
from .timing import policy_labels, speech_seg_sizes


def simulst_features(languages: Sequence[str], levels: Sequence[str], sampling_rate: int,
                     embedding_dim: int | None = None) -> Features:
    strings = List(Value("string"))
    level = {
        "source_chunks": strings,
        "target_chunks": {lang: strings for lang in languages},
        "chunk_end_s": List(Value("float64")),
        "speech_seg_size": List(Value("int64")),
        "labels": List(Value("int8")),
    }
    features = offline_features(list(languages), sampling_rate, embedding_dim)
    features.update({
        "block_samples": Value("int32"),
        "latency": {name: level for name in levels},
        "words": List({"word": Value("string"), "start": Value("float64"), "end": Value("float64")}),
        "monotonicity": {name: {lang: Value("float64") for lang in languages} for name in levels},
    })
    return features


def row(utt: Utterance, languages: Sequence[str], levels: Sequence[str], *, block_samples: int,
        sampling_rate: int, monotonicity: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The `simulst` row of an aligned utterance (`utt.timing` set by the align stage)."""
    if utt.timing is None:
        raise ValueError(f"{utt.id}: not aligned; only the align stage's output has a simulst row")
    num_samples = round(utt.duration_s * sampling_rate)
    latency = {}
    for name in levels:
        seg = utt.segmentations.get(name)
        if seg is None:
            latency[name] = None
            continue
        ends = utt.timing.chunk_end_s[name]
        sizes = speech_seg_sizes(ends, num_samples, sampling_rate, block_samples)
        latency[name] = {
            "source_chunks": list(seg.source_chunks),
            "target_chunks": {lang: list(seg.target_chunks[lang]) if lang in seg.target_chunks else None
                              for lang in languages},
            "chunk_end_s": list(ends),
            "speech_seg_size": sizes,
            "labels": policy_labels(sizes, block_samples),
        }
    measured = monotonicity or {}
    out = offline_row(utt, list(languages))
    out.update({
        "block_samples": block_samples,
        "latency": latency,
        "words": [{"word": w, "start": s, "end": e} for w, s, e in utt.timing.words],
        "monotonicity": {name: {lang: measured.get(name, {}).get(lang) for lang in languages}
                         for name in levels},
    })
    return out
