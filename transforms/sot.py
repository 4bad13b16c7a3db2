"""Labels of a simulated conversation: the segment table, SOT strings, timed words and RTTM.

Serialized output training (SOT) writes what everyone said as one string with speaker tokens, in
one of two orders (`simulate.sot.mode`):

- `word` (the default): every word of both speakers in the order a streaming model can emit it,
  by the time it ends in the conversation (its turn's start plus its aligned end), with a speaker
  token at each change of speaker: "<SELF> how are <OTHER> fine <SELF> you". The translations
  likewise: each target chunk of one latency level (`simulate.sot.latency_level`) is placed where
  its source chunk ends, so the model is asked to translate what it has heard, and by whom.
- `utterance`: whole utterances first in first out by start time, each led by its speaker's token
  ("<SELF> how are you <OTHER> fine"); segment k of the transcript and of every translation
  belong together.

Either way each speaker's own words keep their order, so per speaker both transcripts hold the same
text; they differ where turns overlap. Times are whole milliseconds, as the turns' placement is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..settings import ConfigError
from .records import StageError, Utterance
from .timing import spoken_words, token_word

if TYPE_CHECKING:
    from pyannote.core import Annotation

SELF, OTHER = "SELF", "OTHER"  # speaker roles in segments and RTTM: the wearer and the partner
_ROLE_RANK = {SELF: 0, OTHER: 1}  # who goes first when two units end at the same time


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


@dataclass
class SotSettings:
    mode: Literal["word", "utterance"]  # the order of sot_text and sot_translation (see the module's docstring)
    latency_level: str  # word mode: the segment level whose target chunks the translations place in time


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


# -- Word level: units placed in the conversation ---------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A word of the transcript, or a target chunk of a translation, placed in the conversation."""

    role: str  # SELF or OTHER
    start_ms: int  # where the word (the chunk's first source word) starts
    end_ms: int  # where the word (the chunk's last source word) ends: the earliest it can be emitted
    turn: int  # its turn's place in the conversation's start order
    index: int  # its place in its utterance
    text: str


def emission_key(unit: Unit) -> tuple:
    """Word order. A streaming model can emit a word once it has heard it, so units go by their end
    time: none is asked for before it ends, and none later than it must be (by start time, a long
    word would hold back a short one that ended first). Ties (both speakers ending in the same
    millisecond, or a punctuation token sharing its word's times) go by start time, then SELF before
    OTHER, then turn and position, so the order depends on the times alone."""
    return unit.end_ms, unit.start_ms, _ROLE_RANK[unit.role], unit.turn, unit.index


def utterance_key(unit: Unit) -> tuple:
    """Utterance order: turns first in first out, each utterance's units in their own order."""
    return unit.turn, unit.index


ORDERS: dict[str, Callable[[Unit], tuple]] = {"word": emission_key, "utterance": utterance_key}


def _ms(t: float, duration_ms: int) -> int:
    """Clip seconds as whole milliseconds inside the clip (trimmed to whole milliseconds when placed)."""
    return min(max(round(t * 1000), 0), duration_ms)


def word_spans(utt: Utterance, duration_ms: int) -> list[tuple[str, int, int]]:
    """(token, start ms, end ms) of every whitespace token of the source text, clip-relative.

    A token is timed by the aligned word it speaks; a token of punctuation alone (no word, see
    timing.py) by the word before it, or the one after it at the start. StageError when the
    utterance has no word times or they are not its text's words.
    """
    if utt.timing is None:
        raise StageError("not_aligned", "the utterance has no word times (the align stage did not pass it); "
                                        "conversations are built from aligned utterances only")
    tokens = utt.source_text.split()
    spoken = [token_word(t) for t in tokens]
    words = utt.timing.words
    if [w for w in spoken if w] != [w for w, _, _ in words]:
        raise StageError("aligned_words_differ", f"{len(words)} aligned words are not the source text's "
                                                 f"{sum(map(bool, spoken))} spoken words")
    if not words:
        raise StageError("not_aligned", "the utterance has no spoken word to time")
    times, k = [], 0
    for w in spoken:
        if w:
            times.append((_ms(words[k][1], duration_ms), _ms(words[k][2], duration_ms)))
            k += 1
        else:
            times.append(None)
    first = next(t for t in times if t is not None)
    spans, last = [], first
    for token, t in zip(tokens, times, strict=True):
        last = t or last
        spans.append((token, *last))
    return spans


def chunk_spans(utt: Utterance, level: str, duration_ms: int) -> dict[str, list[tuple[str, int, int]]]:
    """Per language, (target chunk, start ms, end ms) of each chunk of `level`, clip-relative: the chunk
    starts where its source chunk's first word does and ends where the level's chunk end says."""
    seg = utt.segmentations.get(level)
    ends = utt.timing.chunk_end_s.get(level) if utt.timing else None
    if seg is None or ends is None:
        raise StageError("no_latency_level", f"the utterance has no {level!r} chunks with end times "
                                             f"(it has {sorted(utt.segmentations)})")
    counts = [len(spoken_words(c)) for c in seg.source_chunks]
    words = utt.timing.words
    if sum(counts) != len(words) or len(ends) != len(counts) or not all(counts):
        raise StageError("chunks_do_not_match_words", f"the {level} chunks hold {counts} spoken words and "
                                                      f"{len(ends)} end times for {len(words)} aligned words")
    starts, k = [], 0
    for n in counts:
        starts.append(_ms(words[k][1], duration_ms))
        k += n
    out = {}
    for lang, chunks in sorted(seg.target_chunks.items()):
        if len(chunks) != len(counts):
            raise StageError("chunks_do_not_match_words", f"{len(chunks)} {lang} chunks for {len(counts)} "
                                                          f"source chunks at level {level}")
        out[lang] = [(c.strip(), s, _ms(e, duration_ms)) for c, s, e in zip(chunks, starts, ends, strict=True)]
    return out


def check_timed(utt: Utterance, duration_ms: int, settings: SotSettings) -> None:
    """StageError unless the utterance has what its conversation's labels need (pairing checks it,
    so that one utterance cannot cost a conversation)."""
    word_spans(utt, duration_ms)
    if settings.mode == "word":
        chunk_spans(utt, settings.latency_level, duration_ms)


Turns = Sequence[tuple[str, int, int, Utterance]]  # (role, start ms, end ms, utterance)


def _in_start_order(turns: Turns) -> list[tuple[str, int, int, Utterance]]:
    return sorted(turns, key=lambda t: (t[1], t[2], t[0]))  # as segment_table orders its rows


def word_units(turns: Turns) -> list[Unit]:
    """Every token of both speakers, placed in the conversation."""
    return [
        Unit(role, start + s, start + e, k, i, token)
        for k, (role, start, end, utt) in enumerate(_in_start_order(turns))
        for i, (token, s, e) in enumerate(word_spans(utt, end - start))
    ]


def chunk_units(turns: Turns, level: str) -> dict[str, list[Unit]]:
    """Per language that every turn is translated into, its target chunks of `level`, placed."""
    placed: dict[str, list[Unit]] = {}
    spans = [(k, role, start, chunk_spans(utt, level, end - start))
             for k, (role, start, end, utt) in enumerate(_in_start_order(turns))]
    shared = set.intersection(*(set(by_lang) for *_, by_lang in spans)) if spans else set()
    for k, role, start, by_lang in spans:
        for lang in sorted(shared):
            placed.setdefault(lang, []).extend(
                Unit(role, start + s, start + e, k, i, text) for i, (text, s, e) in enumerate(by_lang[lang]))
    return placed


def serialize(units: Iterable[Unit], tokens: dict[str, str], order: Callable[[Unit], tuple] = emission_key) -> str:
    """The units in `order` as one SOT string, a speaker token at each change of speaker (empty
    units, such as a target chunk with no words, are skipped)."""
    pieces, role = [], None
    for unit in sorted(units, key=order):
        if not unit.text:
            continue
        if unit.role != role:
            pieces.append(tokens[unit.role])
            role = unit.role
        pieces.append(unit.text)
    return " ".join(pieces)


def waits_ms(units: Iterable[Unit], order: Callable[[Unit], tuple]) -> list[int]:
    """Per unit, in `order`: how long after its end a streaming model could first emit it, since
    every unit before it in the target must have ended too (0 throughout in word order)."""
    heard, waits = 0, []
    for unit in sorted(units, key=order):
        heard = max(heard, unit.end_ms)
        waits.append(heard - unit.end_ms)
    return waits


def timed_words(units: Iterable[Unit]) -> list[dict[str, Any]]:
    """The published `words`: {word, speaker, start_s, end_s} in word order (conversation seconds)."""
    return [{"word": u.text, "speaker": u.role, "start_s": u.start_ms / 1000, "end_s": u.end_ms / 1000}
            for u in sorted(units, key=emission_key)]


def timed_chunks(units: Iterable[Unit], order: Callable[[Unit], tuple]) -> list[dict[str, Any]]:
    """The published `translation_chunks` of one language: {text, speaker, start_s, end_s} of each
    non-empty unit, in the order `serialize` writes them, so that their texts are the SOT translation's."""
    return [{"text": u.text, "speaker": u.role, "start_s": u.start_ms / 1000, "end_s": u.end_ms / 1000}
            for u in sorted(units, key=order) if u.text]


@dataclass
class Labels:
    """What a conversation publishes of its speech, in the settings' order."""

    sot_text: str
    sot_translations: dict[str, str]
    words: list[dict[str, Any]]
    # per language, the units of its SOT translation with their times: the target chunks of
    # `latency_level` in word order, whole turns in utterance order
    translation_chunks: dict[str, list[dict[str, Any]]]
    reordered: bool  # word order differs from utterance order (utterance-level SOT would be non-causal)
    waits_ms: dict[str, list[int]]  # per order (word, utterance): each word's wait in that order


def labels(turns: Turns, tokens: dict[str, str], settings: SotSettings) -> Labels:
    """SOT transcript and translations of the turns, their timed words, and how the two orders differ."""
    words = word_units(turns)
    if settings.mode == "word":
        text = serialize(words, tokens)
        by_lang = chunk_units(turns, settings.latency_level)
        translations = {lang: serialize(units, tokens) for lang, units in by_lang.items()}
        chunks = {lang: timed_chunks(units, emission_key) for lang, units in by_lang.items()}
    else:
        segments = segment_table(turns)
        text, translations = sot_text(segments, tokens), sot_translations(segments, tokens)
        chunks = {lang: timed_chunks(turn_units(turns, lang), utterance_key) for lang in translations}
    by_word, by_utterance = (sorted(words, key=key) for key in (emission_key, utterance_key))
    return Labels(text, translations, timed_words(words), chunks, by_word != by_utterance,
                  {name: waits_ms(words, key) for name, key in ORDERS.items()})


def turn_units(turns: Turns, lang: str) -> list[Unit]:
    """Each turn's whole translation into `lang`, placed where the turn is (utterance order's units)."""
    return [Unit(role, start, end, k, 0, utt.translations[lang].strip())
            for k, (role, start, end, utt) in enumerate(_in_start_order(turns))]


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
