"""Labels of a simulated conversation: the segment table, SOT strings and RTTM.

Serialized output training (SOT) writes what everyone said as one string, first in first out
by start time, each segment led by its speaker's token: "<SELF> how are you <OTHER> fine".
The translation targets use the same order and tokens, so segment k of the transcript and of
every translation belong together.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..settings import ConfigError
from .records import Utterance

if TYPE_CHECKING:
    from pyannote.core import Annotation

SELF, OTHER = "SELF", "OTHER"  # speaker roles in segments and RTTM: the wearer and the partner


@dataclass
class LabelSettings:
    self_token: str
    other_token: str

    def validate(self, where: str) -> None:
        for name in ("self_token", "other_token"):
            token = getattr(self, name)
            if not token or re.search(r"\s", token):
                raise ConfigError(
                    f"{where}.{name}: a speaker token must be non-empty without spaces, got {token!r}"
                )
        if self.self_token == self.other_token:
            raise ConfigError(f"{where}: self_token and other_token are both {self.self_token!r}")

    def tokens(self) -> dict[str, str]:
        return {SELF: self.self_token, OTHER: self.other_token}


def segment_table(turns: Iterable[tuple[str, int, int, Utterance]]) -> list[dict[str, Any]]:
    """Rows for (role, start_ms, end_ms, utterance) turns, first in first out.

    Times are whole milliseconds (as seconds), so the table, the audio and the RTTM agree exactly.
    """
    rows = [
        {
            "speaker": role,
            "source_speaker": utt.speaker,
            "start_s": start_ms / 1000,
            "end_s": end_ms / 1000,
            "utterance_id": utt.id,
            "text": utt.source_text.strip(),
            "translations": {lang: text.strip() for lang, text in sorted(utt.translations.items())},
        }
        for role, start_ms, end_ms, utt in turns
    ]
    return sorted(rows, key=_fifo)


def _fifo(segment: dict[str, Any]) -> tuple:
    return segment["start_s"], segment["end_s"], segment["speaker"]


def sot_text(segments: list[dict[str, Any]], tokens: dict[str, str]) -> str:
    """The transcript as one SOT string."""
    return _serialize((tokens[s["speaker"]], s["text"]) for s in sorted(segments, key=_fifo))


def sot_translations(segments: list[dict[str, Any]], tokens: dict[str, str]) -> dict[str, str]:
    """One SOT string per language that every segment has a translation into."""
    shared = set.intersection(*(set(s["translations"]) for s in segments)) if segments else set()
    ordered = sorted(segments, key=_fifo)
    return {
        lang: _serialize((tokens[s["speaker"]], s["translations"][lang]) for s in ordered)
        for lang in sorted(shared)
    }


def _serialize(pieces: Iterable[tuple[str, str]]) -> str:
    return " ".join(f"{token} {text}" if text else token for token, text in pieces)


def split_sot(text: str, tokens: dict[str, str]) -> list[tuple[str, str]]:
    """The (role, text) pieces of an SOT string, in order; the inverse of the serialisation above."""
    role_of = {token: role for role, token in tokens.items()}
    pattern = "(" + "|".join(re.escape(token) for token in tokens.values()) + ")"
    parts = re.split(pattern, text)
    if parts[0].strip():
        raise ValueError(f"SOT text does not start with a speaker token: {text[:60]!r}")
    return [(role_of[token], body.strip()) for token, body in zip(parts[1::2], parts[2::2], strict=True)]


def annotation(uri: str, segments: list[dict[str, Any]]) -> Annotation:
    """Who speaks when, as a pyannote Annotation labelled SELF / OTHER."""
    from pyannote.core import Annotation, Segment  # imports matplotlib: only runs that simulate pay for it

    result = Annotation(uri=uri)
    for track, s in enumerate(segments):
        result[Segment(s["start_s"], s["end_s"]), track] = s["speaker"]
    return result


def rttm_text(uri: str, segments: list[dict[str, Any]]) -> str:
    return annotation(uri, segments).to_rttm()


def overlap_s(segments: list[dict[str, Any]]) -> float:
    """Seconds during which two or more people talk."""
    return annotation("", segments).get_overlap().duration()
