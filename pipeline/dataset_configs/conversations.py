"""The `conversations` config (docs/architecture.md §3): one row per simulated conversation.

`audio` is the C-channel FLAC, which `datasets` decodes to (channels, samples); per-language
columns are structs with one field per requested language, so the schema is the same in every
shard (a language a conversation lacks is null).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Audio, Features, List, Value

from ...transforms.records import Conversation
from ...transforms.sot import rttm_text
from .. import plots

NAME = "conversations"
SOURCE = "simulate"
ROW = ("one simulated two-talker conversation: multi-channel audio, SOT transcript and translations, room, "
       "RTTM")
USAGE = 'row["audio"].get_all_samples().data.shape, row["sot_text"]'
LANGUAGE_COLUMN = "sot_translation"
FIGURE_COLUMNS = ("room", "segments")


def enabled(settings) -> bool:
    return NAME in settings.configs and settings.simulate.enabled


def _per_language(languages: Sequence[str]) -> dict[str, Value]:
    return {lang: Value("string") for lang in languages}


def conversation_features(languages: Sequence[str], sampling_rate: int) -> Features:
    """The `conversations` schema for conversations translated into `languages`."""
    segment = {
        "speaker": Value("string"),  # SELF or OTHER
        "source_speaker": Value("string"),  # the corpus speaker id
        "start_s": Value("float64"),
        "end_s": Value("float64"),
        "utterance_id": Value("string"),
        "text": Value("string"),
    }
    translations = {"sot_translation": _per_language(languages)} if languages else {}
    if languages:
        segment["translations"] = _per_language(languages)
    point = List(Value("float64"))
    return Features(
        {
            "id": Value("string"),
            "split": Value("string"),
            "duration": Value("float64"),
            "audio": Audio(sampling_rate=sampling_rate),
            "segments": List(segment),
            "sot_text": Value("string"),
            **translations,
            "room": {
                "index": Value("int32"),
                "array": Value("string"),
                "dims_m": point,
                "rt60_s": Value("float64"),
                "absorption": Value("float64"),
                "max_order": Value("int32"),
                "mic_positions_m": List(point),
                "source_positions_m": {"self": point, "other": point},
                "snr_db": Value("float64"),
                "channel_names": List(Value("string")),
            },
            "rttm": Value("string"),
        }
    )


_SEGMENT_SCALARS = ("speaker", "source_speaker", "start_s", "end_s", "utterance_id", "text")


def _segment(segment: dict[str, Any], languages: Sequence[str]) -> dict[str, Any]:
    out = {k: segment[k] for k in _SEGMENT_SCALARS}
    if languages:
        out["translations"] = {lang: segment["translations"].get(lang) for lang in languages}
    return out


def row(conversation: Conversation, languages: Sequence[str]) -> dict[str, Any]:
    """The published row of `conversation`, matching `conversation_features(languages, ...)`."""
    translations = (
        {"sot_translation": {lang: conversation.sot_translations.get(lang) for lang in languages}}
        if languages
        else {}
    )
    return {
        "id": conversation.id,
        "split": conversation.split,
        "duration": max(s["end_s"] for s in conversation.segments),
        "audio": {"bytes": conversation.flac, "path": f"{conversation.id}.flac"},
        "segments": [_segment(s, languages) for s in conversation.segments],
        "sot_text": conversation.sot_text,
        **translations,
        "room": conversation.room,
        "rttm": rttm_text(conversation.id, conversation.segments),
    }


def features(settings) -> Features:
    return conversation_features(settings.languages, settings.simulate.sampling_rate)


def rows(conversation: Conversation, settings) -> list[dict[str, Any]]:
    return [row(conversation, settings.languages)]


def _overlap_ratios(segments: pa.Array, durations) -> list[float]:
    """Overlapped time / conversation time, as the simulate stage counts it: only consecutive
    turns overlap, by how far a turn starts before the previous one ends."""
    out = []
    for turns, duration in zip(segments.to_pylist(), durations, strict=True):
        spans = sorted((t["start_s"], t["end_s"]) for t in turns or [])
        overlap = sum(max(0.0, a_end - b_start) for (_, a_end), (b_start, _) in pairwise(spans))
        if duration:
            out.append(overlap / duration)
    return out


def add_figures(table: pa.Table, figures: plots.Figures, langs: list[str], published: dict) -> None:
    """RT60 and SNR of the simulated rooms, and the turn overlap of each conversation."""
    if {"room", "segments", "duration"} <= set(table.column_names):
        room = table["room"].combine_chunks()
        for key in ("rt60_s", "snr_db"):
            values = pc.struct_field(room, key).to_pylist()
            figures.rooms.setdefault(key, []).extend(v for v in values if v is not None)
        durations = table["duration"].to_numpy(zero_copy_only=False)
        figures.rooms.setdefault("overlap_ratio", []).extend(
            _overlap_ratios(table["segments"].combine_chunks(), durations))
