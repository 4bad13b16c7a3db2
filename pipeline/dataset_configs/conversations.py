"""The `conversations` config (docs/architecture.md §3): one row per simulated conversation.

`audio` is the C-channel FLAC, which `datasets` decodes to (channels, samples); per-language
columns are structs with one field per requested language, so the schema is the same in every
shard (a language a conversation lacks is null). `sot_text` and `sot_translation` follow
`simulate.sot.mode` (transforms/sot.py); `words` lists every word of both speakers with its
speaker and conversation times, in word order (by end time), for speaker-attributed and
time-constrained scoring; `translation_chunks` does the same for each SOT translation's units, so a
streaming model can be kept from emitting a translation before its source has been heard.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Audio, Features, List, Value

from ...transforms import files
from ...transforms.records import Conversation
from ...transforms.sot import rttm_text
from .. import plots

NAME = "conversations"
SOURCE = "simulate"
ROW = ("one simulated two-talker conversation: multi-channel audio, SOT transcript and translations (time-ordered "
       "by default), every word's speaker and times, room, RTTM")
USAGE = 'row["audio"].get_all_samples().data.shape, row["sot_text"]'
LANGUAGE_COLUMN = "sot_translation"
FIGURE_COLUMNS = ("room", "segments")


def enabled(settings) -> bool:
    return NAME in settings.configs and settings.simulate.enabled


# The card's column table (pipeline/columns.py): path -> (unit, meaning); the type comes from the features
# below. <lang> is each target language's field. Every column needs an entry: the tests check it.
COLUMNS = {
    "id": ("", "conversation id, `<split>/conv-<hash of its turns>`"),
    "split": ("", "the split the conversation belongs to; its turns all come from that split"),
    "duration": ("s", "length of the conversation: the end of its last turn"),
    "audio": ("", "the multi-channel mix as FLAC, one channel per `room.channel_names` entry (microphones, then "
                  "any beamformer outputs); decodes to a float32 tensor (channels, samples)"),
    "segments": ("", "the turns, one per utterance spoken, by start time"),
    "segments[].speaker": ("", "who speaks the turn: `SELF` (wears the array) or `OTHER` (the partner)"),
    "segments[].source_speaker": ("", "the corpus's speaker id of the utterance (as `speaker` in `offline`)"),
    "segments[].start_s": ("s", "where the turn starts in the conversation"),
    "segments[].end_s": ("s", "where the turn ends in the conversation"),
    "segments[].utterance_id": ("", "the `id` of the utterance in `offline` and `simulst`"),
    "segments[].text": ("", "the turn's English transcript"),
    "segments[].translations": ("", "one field per target language"),
    "segments[].translations.<lang>": ("", "the turn's reference translation; null where it has none"),
    "sot_text": ("", "serialized output training (SOT) transcript of both speakers, a speaker token (see "
                     "*Special tokens*) before each change of speaker, in the order `simulate.sot.mode` says"),
    "sot_translation": ("", "one field per target language"),
    "sot_translation.<lang>": ("", "the SOT translation, same tokens and order; null where a turn of the "
                                   "conversation has no translation into `<lang>`"),
    "words": ("", "every word of both speakers, by when it ends in the conversation"),
    "words[].word": ("", "the word as written in the turn's `text`"),
    "words[].speaker": ("", "`SELF` or `OTHER`"),
    "words[].start_s": ("s", "where the word starts in the conversation"),
    "words[].end_s": ("s", "where the word ends in the conversation"),
    "translation_chunks": ("", "one field per target language"),
    "translation_chunks.<lang>": ("", "the units of `sot_translation.<lang>` in its order, speaker tokens left out: "
                                      "target chunks of `simulate.sot.latency_level` in word order, whole turns in "
                                      "utterance order; null where `sot_translation.<lang>` is"),
    "translation_chunks.<lang>[].text": ("", "the unit's text, as it stands in `sot_translation.<lang>`"),
    "translation_chunks.<lang>[].speaker": ("", "`SELF` or `OTHER`"),
    "translation_chunks.<lang>[].start_s": ("s", "where its source (chunk or turn) starts in the conversation"),
    "translation_chunks.<lang>[].end_s": ("s", "where its source ends: the earliest a streaming model can have "
                                               "heard what it translates"),
    "room": ("", "the simulated room and array (pyroomacoustics image-source model)"),
    "room.index": ("", "the room's index in the run's room pool"),
    "room.array": ("", "the microphone array preset (`glasses`, `circular` or `custom`)"),
    "room.dims_m": ("m", "room length, width, height"),
    "room.rt60_s": ("s", "reverberation time RT60 the room was built for"),
    "room.absorption": ("", "energy absorption coefficient of every surface, in [0, 1] (inverse Sabine)"),
    "room.max_order": ("", "image-source reflection order simulated"),
    "room.mic_positions_m": ("m", "each microphone's x, y, z in the room"),
    "room.source_positions_m": ("", "the two talkers' mouths"),
    "room.source_positions_m.self": ("m", "x, y, z of SELF's mouth"),
    "room.source_positions_m.other": ("m", "x, y, z of OTHER's mouth"),
    "room.snr_db": ("dB", "signal-to-noise ratio of OTHER's speech against the diffuse background noise"),
    "room.channel_names": ("", "the name of each audio channel, in order (`mic0`, ..., `beam_self`)"),
    "rttm": ("", "who speaks when, as RTTM text: one `SPEAKER` line per turn (onset and duration in seconds), "
                 "labelled `SELF` or `OTHER`"),
}


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
    chunk = List({"text": Value("string"), "speaker": Value("string"), "start_s": Value("float64"),
                  "end_s": Value("float64")})
    translations = ({"sot_translation": _per_language(languages),
                     "translation_chunks": {lang: chunk for lang in languages}} if languages else {})
    if languages:
        segment["translations"] = _per_language(languages)
    point = List(Value("float64"))
    return Features(
        {
            "id": Value("string"),
            "split": Value("string"),
            "duration": Value("float32"),  # as in offline: one type per meaning
            "audio": Audio(sampling_rate=sampling_rate),
            "segments": List(segment),
            "sot_text": Value("string"),
            **translations,
            "words": List({"word": Value("string"), "speaker": Value("string"), "start_s": Value("float64"),
                           "end_s": Value("float64")}),
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


_WORD_FIELDS = ("word", "speaker", "start_s", "end_s")
_SEGMENT_SCALARS = ("speaker", "source_speaker", "start_s", "end_s", "utterance_id", "text")


def _segment(segment: dict[str, Any], languages: Sequence[str]) -> dict[str, Any]:
    out = {k: segment[k] for k in _SEGMENT_SCALARS}
    if languages:
        out["translations"] = {lang: segment["translations"].get(lang) for lang in languages}
    return out


def row(conversation: Conversation, languages: Sequence[str]) -> dict[str, Any]:
    """The published row of `conversation`, matching `conversation_features(languages, ...)`."""
    translations = (
        {"sot_translation": {lang: conversation.sot_translations.get(lang) for lang in languages},
         "translation_chunks": {lang: conversation.translation_chunks.get(lang) for lang in languages}}
        if languages
        else {}
    )
    return {
        "id": conversation.id,
        "split": conversation.split,
        "duration": max(s["end_s"] for s in conversation.segments),
        "audio": {"bytes": files.read_bytes(conversation.audio.path), "path": f"{conversation.id}.flac"},
        "segments": [_segment(s, languages) for s in conversation.segments],
        "sot_text": conversation.sot_text,
        **translations,
        "words": [{k: w[k] for k in _WORD_FIELDS} for w in conversation.words],
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
