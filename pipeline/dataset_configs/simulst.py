"""The `simulst` config (docs/architecture.md §3): one row per aligned utterance, its audio stored once with
every latency level:

  latency.<level>    source_chunks, target_chunks.<lang>, chunk_end_s (clip-relative
                     seconds), speech_seg_size (cumulative samples read before writing each
                     chunk: its end rounded up to an encoder block, see timing.py) and labels
                     (one per block read: 0 read, 1 write), as EASiST trains on them
  words              [{word, start, end, confidence}] from forced alignment
  alignment_confidence  the clip's fit to its transcript, 0 to 1 (null where the aligner gives none)
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Features, List, Value

from ...transforms.records import Utterance
from ...transforms.timing import policy_labels, speech_seg_sizes
from .. import plots
from .offline import COLUMNS as OFFLINE_COLUMNS
from .offline import embedding_dim, offline_features, offline_row

NAME = "simulst"
SOURCE = "align"
ROW = "one utterance with every latency level: audio once, per level the chunks and where they end"
USAGE = 'row["audio"].get_all_samples(), row["words"]'
LANGUAGE_COLUMN = "translation"
LEVELS = "latency"  # the struct of latency levels, each with its chunks and their end times
FIGURE_COLUMNS = (LEVELS,)


def enabled(settings) -> bool:
    return NAME in settings.configs


# The card's column table (pipeline/columns.py): the offline columns and these; <level> is each latency
# level's field, <lang> each target language's.
COLUMNS = {
    **OFFLINE_COLUMNS,
    "block_samples": ("samples", "the encoder block, at the audio's rate, that `speech_seg_size` and `labels` "
                                 "were computed for (`align.block_samples`)"),
    "latency": ("", "one field per latency level, lowest latency (most, shortest chunks) first; a level "
                    "never has more chunks than the one before it"),
    "latency.<level>": ("", "this level's chunking of the utterance; null where the utterance has none"),
    "latency.<level>.source_chunks": ("", "the source text cut into chunks; joined with spaces they give "
                                          "`source_text`"),
    "latency.<level>.target_chunks": ("", "one field per target language"),
    "latency.<level>.target_chunks.<lang>": ("", "the reference translation cut into as many chunks, chunk k "
                                                 "translating source chunk k (spans of the reference, nothing "
                                                 "invented); null where the language is missing"),
    "latency.<level>.chunk_end_s": ("s", "where each source chunk's last word ends in the clip (forced "
                                         "alignment)"),
    "latency.<level>.speech_seg_size": ("samples", "per chunk, the samples read before writing it: its end "
                                                   "rounded up to a whole block of `block_samples`, at most the "
                                                   "clip's length; cumulative, so non-decreasing"),
    "latency.<level>.labels": ("", "the read/write policy per encoder block read: 1 where a chunk ends in "
                                   "that block (write it), 0 where the model reads on; "
                                   "ceil(last `speech_seg_size` / `block_samples`) labels"),
    "words": ("", "every word of `source_text` with its forced-aligned times, in order"),
    "words[].word": ("", "the word as written in `source_text`"),
    "words[].start": ("s", "where the word starts in the clip"),
    "words[].end": ("s", "where the word ends in the clip"),
    "words[].confidence": ("", "how well the audio fits the word's aligned phones, 0 to 1: the share of the "
                               "words of held-out clips (kept out of the aligner's training; its training clips "
                               "when the sample is too small to spare them) that fit no better, by mean "
                               "per-frame log-likelihood lost against the best-fitting phone state; null where "
                               "the aligner gives none (mfa)"),
    "alignment_confidence": ("", "the same for the whole clip, against held-out clips: 0.5 is a typical clip; "
                                 "filter on it (e.g. >= 0.05) to drop the clips that fit their transcript worst "
                                 "(a partly wrong transcript, poor audio); it says little about how precise the "
                                 "word times are"),
    "monotonicity": ("", "per latency level and language, how monotone the chunked pair is"),
    "monotonicity.<level>": ("", "one field per target language"),
    "monotonicity.<level>.<lang>": ("", "crossing rate in [0, 1]: of the comparable pairs of word links, the "
                                        "share whose source words lie in different chunks and are translated "
                                        "in the opposite order, from an independent re-alignment (0: "
                                        "monotone); null where not measured"),
}


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
        "words": List({"word": Value("string"), "start": Value("float64"), "end": Value("float64"),
                       "confidence": Value("float64")}),
        "alignment_confidence": Value("float64"),
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
        "words": [{"word": w, "start": s, "end": e, "confidence": c}
                  for (w, s, e), c in zip(utt.timing.words, word_confidence(utt.timing), strict=True)],
        "alignment_confidence": utt.timing.confidence,
        "monotonicity": {name: {lang: measured.get(name, {}).get(lang) for lang in languages}
                         for name in levels},
    })
    return out


def word_confidence(timing) -> list[float | None]:
    """Per word, the aligner's confidence, or None where it gives none."""
    return list(timing.word_confidence) if timing.word_confidence is not None else [None] * len(timing.words)


def features(settings) -> Features:
    return simulst_features(settings.languages, settings.segment.levels, settings.sampling_rate,
                            embedding_dim(settings))


def rows(utt: Utterance, settings) -> list[dict[str, Any]]:
    return [row(utt, settings.languages, settings.segment.levels, block_samples=settings.align.block_samples,
                sampling_rate=settings.sampling_rate,
                monotonicity={level: seg.crossing for level, seg in utt.segmentations.items()})]


def _seconds_per_chunk(ends: pa.Array) -> np.ndarray:
    """Each chunk's speech: its end minus the previous chunk's end (the first starts at 0)."""
    ends = ends.filter(pc.is_valid(ends))
    values = pc.list_flatten(ends).to_numpy(zero_copy_only=False).astype(float)
    if not len(values):
        return values
    seconds = np.diff(values, prepend=0.0)
    offsets = ends.offsets.to_numpy()
    starts = offsets[:-1][offsets[:-1] < offsets[1:]] - offsets[0]
    seconds[starts] = values[starts]
    return seconds


def add_figures(table: pa.Table, figures: plots.Figures, langs: list[str], published: dict) -> None:
    """Seconds of speech per chunk and level; words per chunk too, unless `simulmt` (one row per
    level) is published and counts the same chunks."""
    if LEVELS not in table.column_names:
        return
    container = table[LEVELS].combine_chunks()
    for i in range(container.type.num_fields):
        level, struct = container.type.field(i).name, pc.struct_field(container, i)
        if "simulmt" not in published and struct.type.get_field_index("source_chunks") >= 0:
            counts = plots.words_per_chunk(pc.struct_field(struct, "source_chunks"))
            figures.chunk_words.setdefault(level, []).extend(int(n) for n in counts)
        if struct.type.get_field_index("chunk_end_s") >= 0:
            seconds = _seconds_per_chunk(pc.struct_field(struct, "chunk_end_s"))
            figures.chunk_seconds.setdefault(level, []).extend(float(s) for s in seconds)
