"""Rows and features of the published `conversations` config (DESIGN.md §5).

One row is one simulated conversation. `audio` is the C-channel FLAC, which `datasets`
decodes to (channels, samples); per-language columns are structs with one field per requested
language, so the schema is the same in every shard (a language a conversation lacks is null).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Audio, Features, List, Value

from .records import Conversation
from .sot import rttm_text


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
