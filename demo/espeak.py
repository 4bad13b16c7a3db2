"""Speech synthesis with libespeak-ng (through ctypes) and *true* word timings.

The demo corpora need ground-truth word times to score a forced aligner to
±20 ms, so timings are not estimated: they come from the synthesizer's own
event stream, whose ``sample`` field is the exact sample index (at espeak's
22050 Hz) at which each marker is executed by the wave generator.

Timing semantics of :func:`synthesize` (seconds from the first sample of the
returned audio; espeak's silence is digital zero, which makes "sound" exact):

* Between words spoken without a pause the boundary is the second word's
  ``espeakEVENT_WORD``: espeak executes it exactly where that word's first
  sound is queued. So ``end`` of one word equals ``start`` of the next, and a
  stop closure at the boundary belongs to the word of its stop (the usual
  phonetic convention). The word event rather than the first phoneme event is
  used because espeak emits the phoneme event of a vowel that follows a liquid
  or nasal only after the vowel's onset has been generated.
* Where a pause follows (the pause phonemes ``_``/``_:`` of commas and
  sentence ends) or the audio ends, ``end`` is the word's last non-silent
  sample (+1): the pause is never part of the word.
* After a pause, and for the first word, ``start`` is the word's first
  non-silent sample: a stop closure or espeak's short pre-pause there cannot be
  told apart from the pause.
* Silence inside a word (stop closures) stays inside it.

Words are the whitespace tokens of the text with surrounding punctuation
(apostrophes included) stripped, see :func:`text_words`; the result has exactly
one entry per such word, in order. espeak's dictionary pronounces some word
pairs ("in the", "of the") as one unit with a single word event; where that
happens a zero-width space is inserted between them and the text synthesized
again, so every word gets its own boundary.

Determinism: libespeak-ng runs in a helper process that forks a fresh engine for every
message (see espeak_engine.py), so same arguments give bit-identical audio and timings.
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from . import espeak_engine
from .espeak_engine import EV_END, EV_PHONEME, EV_WORD, EspeakError, load_library, recv, send

__all__ = [
    "EspeakError",
    "Synthesis",
    "SAMPLE_RATE",
    "synthesize",
    "text_words",
]

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Synthesis:
    """Mono float32 audio at :data:`SAMPLE_RATE` plus its word timings."""

    samples: np.ndarray
    words: list[tuple[str, float, float]] = field(default_factory=list)
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


# Surrounding punctuation of a token; apostrophes inside a word are kept.
_EDGE = re.compile(r"^[^\w]+|[^\w]+$", re.UNICODE)


def text_words(text: str) -> list[str]:
    """The words a timing list refers to: whitespace tokens, edge punctuation stripped."""
    return [w for w in (_EDGE.sub("", t) for t in text.split()) if w]


# --------------------------------------------------------------------------
# The helper process, from this side.


class _Client:
    def __init__(self) -> None:
        # Fail early, in this process, with the install hint.
        load_library()
        code = (
            "import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('_simulforge_espeak', sys.argv[1])\n"
            "mod = importlib.util.module_from_spec(spec)\n"
            "sys.modules[spec.name] = mod\n"
            "spec.loader.exec_module(mod)\n"
            "mod.zygote_main()\n"
        )
        # Loaded by path so no package __init__ (and nothing heavy) is imported.
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", code, os.path.abspath(espeak_engine.__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        self.owner = os.getpid()
        self.resolved: dict[str, str] = {}
        atexit.register(self.close)

    def synth(self, text, voice, rate, pitch, pitch_range):
        request = (text, voice, self.resolved.get(voice), rate, pitch, pitch_range)
        try:
            send(self.proc.stdin.fileno(), request)
            ok, value = recv(self.proc.stdout.fileno())
        except BaseException as exc:
            # Interrupted or broken mid-exchange: the pipes are out of step, so
            # this helper is dropped and the next call starts a fresh one.
            self.proc.kill()
            self.proc.wait()
            if isinstance(exc, (EOFError, OSError)):
                raise EspeakError("the espeak helper process died") from exc
            raise
        if not ok:
            raise EspeakError(value)
        rate_hz, resolved, audio, events = value
        self.resolved[voice] = resolved
        return rate_hz, audio, events

    def close(self) -> None:
        if self.owner == os.getpid() and self.proc.poll() is None:
            self.proc.stdin.close()  # EOF ends the helper's loop
            self.proc.wait(timeout=10)
            self.proc.stdout.close()


_client: _Client | None = None
_lock = threading.Lock()


def _client_for_this_process() -> _Client:
    global _client
    # A forked copy of this process must not share the parent's helper pipes.
    if _client is None or _client.owner != os.getpid() or _client.proc.poll() is not None:
        _client = _Client()
    return _client


def _reset_lock_in_child() -> None:
    # A fork taken while another thread synthesizes would inherit a held lock.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


# --------------------------------------------------------------------------
# Timings.

_ZWSP = "\u200b"


def _word_spans(text: str) -> list[tuple[str, int, int, int]]:
    """(word, first char, end char, token end) per word; offsets into ``text``."""
    spans = []
    for m in re.finditer(r"\S+", text):
        tok = m.group()
        word = _EDGE.sub("", tok)
        if word:
            a = m.start() + re.match(r"[^\w]*", tok).end()
            spans.append((word, a, a + len(word), m.end()))
    return spans


def _group_events(spans, events) -> dict[int, tuple[int, int]]:
    """Per word index: (sample of its word event, index in ``events`` of its
    last sounding phoneme).

    A word event belongs to the word whose characters hold its text position;
    espeak may split a token into several word events (all land in the same
    word) or merge several tokens into one (the later ones then get nothing).
    Zero-length word events (emitted at some clause ends) carry no word.
    """
    markers: dict[int, int] = {}
    last: dict[int, int] = {}
    current = None
    for k, (kind, pos, length, sample, name) in enumerate(events):
        if kind == EV_WORD and length > 0:
            ci = pos - 1  # text_position is 1-based
            current = next((i for i, s in enumerate(spans) if s[1] <= ci < s[2]), None)
            if current is None:  # position on punctuation: the next word
                current = next((i for i, s in enumerate(spans) if s[1] >= ci), None)
            if current is not None:
                markers.setdefault(current, sample)
        elif kind == EV_PHONEME and current is not None and not name.startswith("_"):
            last[current] = k
    return {i: (markers[i], k) for i, k in last.items()}


def _word_bounds(spans, groups, events, audio) -> list[tuple[str, int, int]]:
    """Apply the start/end rules of the module docstring (engine samples)."""
    n = len(audio)
    out = []
    prev_end = 0
    for i, (word, *_rest) in enumerate(spans):
        marker, last = groups[i]
        # The word's sound stops at the event queued right after its last
        # phoneme: a pause phoneme, the next word, the clause end (or the end
        # of the audio). Queue order matters, not sample order: a final "l"
        # before a comma, for one, has zero length and shares its sample with
        # the pause.
        end = next(
            (e[3] for e in events[last + 1:] if e[0] in (EV_WORD, EV_PHONEME, EV_END)), n
        )
        following = groups[i + 1][0] if i + 1 < len(spans) else None
        if following is not None and end >= following:
            # Spoken on into the next word (zero-length link phonemes such as
            # ";" can sit on its event): the boundary is that word's event, and
            # a word-final closure before it stays in this word.
            end = following
        else:
            # A pause or the end follows: the word ends with its last sound.
            while end > marker + 1 and audio[end - 1] == 0:
                end -= 1
        start = marker
        if i == 0 or prev_end < marker:
            # After a pause the word begins at its first sound.
            while start < end - 1 and audio[start] == 0:
                start += 1
        out.append((word, start, end))
        prev_end = end
    return out


def _synth_timed(client: _Client, text: str, voice, rate, pitch, pitch_range):
    """(engine rate, int16 audio, [(word, start, end)] in engine samples)."""
    base = _word_spans(text)
    if not base:
        raise EspeakError(f"no words to synthesize in {text!r}")
    breaks: set[int] = set()
    for _attempt in range(len(base)):
        spoken = text
        for i in sorted(breaks, reverse=True):
            cut = base[i][3]
            spoken = spoken[:cut] + _ZWSP + spoken[cut:]
        spans = _word_spans(spoken)
        rate_hz, raw, events = client.synth(spoken, voice, rate, pitch, pitch_range)
        groups = _group_events(spans, events)
        missing = [i for i in range(len(spans)) if i not in groups]
        if not missing:
            break
        # A word without events was merged into the previous one.
        new = {i - 1 for i in missing if i > 0} - breaks
        if not new:
            raise EspeakError(
                f"espeak gave no sound for word {missing[0]} ({spans[missing[0]][0]!r}) of {text!r}"
            )
        breaks |= new
    else:
        raise EspeakError(f"could not separate the words of {text!r}")
    audio = np.frombuffer(raw, dtype="<i2")
    return rate_hz, audio, _word_bounds(spans, groups, events, audio)


def synthesize(
    text: str,
    voice: str = "en-us",
    rate: int = 175,
    pitch: int = 50,
    pitch_range: int = 50,
) -> Synthesis:
    """Synthesize ``text``; return 16 kHz mono float32 audio and true word timings.

    ``voice`` is an espeak-ng voice file or language name, optionally with a
    variant (``"en-us"``, ``"en-gb+f3"``, ``"en-gb-scotland+m3"``); ``rate`` is
    in words per minute (80-450); ``pitch`` and ``pitch_range`` are 0-99.
    ``words`` follows the timing semantics in the module docstring. Thread-safe
    (calls are serialized on one engine per process) and deterministic.
    """
    with _lock:
        client = _client_for_this_process()
        src_rate, raw, stamps = _synth_timed(client, text, voice, rate, pitch, pitch_range)
    audio = raw.astype(np.float32) / 32768.0
    ratio = Fraction(SAMPLE_RATE, src_rate)
    if ratio != 1:
        # Zero-phase polyphase filter: no delay, so the timings carry over.
        audio = resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)
    words = [(w, round(s / src_rate, 6), round(e / src_rate, 6)) for w, s, e in stamps]
    return Synthesis(samples=audio, words=words, sample_rate=SAMPLE_RATE)
