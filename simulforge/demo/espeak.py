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

Determinism: espeak's wave generator keeps state across messages (pitch
flutter phase, amplitude smoothing), so the same text would not sound the same
twice in one process. The engine therefore lives in a small helper process (a
"zygote", one per Python process, started lazily) that initializes
libespeak-ng once and forks a fresh child for every message: each synthesis
starts from the same pristine state and same arguments give bit-identical
audio and timings. The helper imports nothing but the standard library so
that forking it is cheap.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy/scipy are imported lazily: the helper must stay small
    import numpy as np

__all__ = [
    "EspeakError",
    "Synthesis",
    "SAMPLE_RATE",
    "synthesize",
    "text_words",
]

SAMPLE_RATE = 16000

# speak_lib.h constants (API revision 12, espeak-ng 1.49+).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EV_LIST_TERMINATED = 0
_EV_WORD = 1
_EV_END = 5
_EV_PHONEME = 7
_P_RATE, _P_VOLUME, _P_PITCH, _P_RANGE, _P_PUNCTUATION, _P_WORDGAP = 1, 2, 3, 4, 5, 7
_EE_OK = 0
_LIBRARY_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so")
_MISSING = "libespeak-ng not found; install it with `apt-get install libespeak-ng1`"


class EspeakError(RuntimeError):
    """libespeak-ng is missing or refused a request."""


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
# The engine: runs only inside the helper process (and its forked children).


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    # Layout of espeak_EVENT in speak_lib.h.
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    # Layout of espeak_VOICE in speak_lib.h; `languages` is a packed list.
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _load_library() -> ctypes.CDLL:
    found = ctypes.util.find_library("espeak-ng")
    for name in _LIBRARY_NAMES + ((found,) if found else ()):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise EspeakError(_MISSING)


class _Engine:
    """libespeak-ng initialized for synchronous synthesis with phoneme events."""

    def __init__(self) -> None:
        lib = self.lib = _load_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        self.rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT
        )
        if self.rate <= 0:
            raise EspeakError("espeak_Initialize failed (is espeak-ng-data installed?)")
        self.chunks: list[bytes] = []
        self.events: list[tuple[int, int, int, int, str]] = []
        # Keep a reference: ctypes frees the C trampoline with the object.
        self._cb = _CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._cb)

    def _collect(self, wav, numsamples, events) -> int:
        # espeak reuses its buffer after we return: copy the samples out now.
        if wav and numsamples > 0:
            self.chunks.append(ctypes.string_at(wav, numsamples * 2))
        i = 0
        while events[i].type != _EV_LIST_TERMINATED:
            ev = events[i]
            name = ev.id.string.decode("utf-8", "replace") if ev.type == _EV_PHONEME else ""
            self.events.append((ev.type, ev.text_position, ev.length, ev.sample, name))
            i += 1
        return 0  # 0 = go on synthesizing

    def _list_voices(self, languages: bytes | None) -> list[_Voice]:
        spec = None
        if languages is not None:
            spec = ctypes.byref(
                _Voice(languages=ctypes.cast(ctypes.c_char_p(languages), ctypes.c_void_p))
            )
        voices = self.lib.espeak_ListVoices(spec)
        out, i = [], 0
        while voices[i]:
            out.append(voices[i].contents)
            i += 1
        return out

    def _language_voice(self, language: str) -> str | None:
        """Voice file of the preferred non-MBROLA voice speaking ``language``."""
        best = None
        for v in self._list_voices(None):
            ident = (v.identifier or b"").decode()
            p = v.languages
            while ident and not ident.startswith("mb/") and p:
                prio = ctypes.string_at(p, 1)[0]
                if prio == 0:
                    break
                lang = ctypes.string_at(p + 1).decode()
                if lang.lower() == language.lower() and (best is None or prio < best[0]):
                    best = (prio, ident)
                p += 2 + len(lang)
        return best[1] if best else None

    def resolve_voice(self, voice: str) -> str:
        """A name espeak_SetVoiceByName accepts for ``voice`` ("en-gb+f3" style)."""
        base, plus, variant = voice.partition("+")
        if variant:
            variants = {
                (v.identifier or b"").decode().rsplit("/", 1)[-1].lower()
                for v in self._list_voices(b"variant")
            }
            if variant.lower() not in variants:
                # espeak would silently fall back to the plain voice.
                raise EspeakError(f"espeak-ng has no voice variant {variant!r}")
        if self.lib.espeak_SetVoiceByName(voice.encode()) == _EE_OK:
            return voice
        # SetVoiceByName knows voice files and names but not language codes
        # such as "en-gb"; map those to their voice file, as the CLI does.
        ident = self._language_voice(base)
        if ident is None:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        return ident + plus + variant

    def synth(self, text: str, voice: str, resolved: str | None, rate, pitch, pitch_range):
        """(resolved voice, int16 little-endian audio bytes, events) for one message."""
        lib = self.lib
        resolved = resolved or self.resolve_voice(voice)
        # Voice first: selecting a voice resets rate/pitch to its defaults.
        if lib.espeak_SetVoiceByName(resolved.encode()) != _EE_OK:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        for param, value in (
            (_P_RATE, rate), (_P_PITCH, pitch), (_P_RANGE, pitch_range),
            (_P_VOLUME, 100), (_P_PUNCTUATION, 0), (_P_WORDGAP, 0),
        ):
            lib.espeak_SetParameter(param, int(value), 0)
        self.chunks, self.events = [], []
        data = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with code {err}")
        return resolved, b"".join(self.chunks), self.events


def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = struct.pack("<Q", len(data)) + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _recv_exact(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _recv(fd: int):
    (n,) = struct.unpack("<Q", _recv_exact(fd, 8))
    return pickle.loads(_recv_exact(fd, n))


def _zygote_main() -> None:
    """Helper process loop: one request in, one forked synthesis, one reply out."""
    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        engine = _Engine()
    except Exception as exc:  # reported on every request
        engine, init_error = None, str(exc)
    while True:
        try:
            request = _recv(inp)
        except EOFError:
            return
        if engine is None:
            _send(out, (False, init_error))
            continue
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesize from the zygote's untouched state
            try:
                os.close(r)
                try:
                    reply = (True, (engine.rate, *engine.synth(*request)))
                except Exception as exc:
                    reply = (False, str(exc))
                _send(w, reply)
            finally:
                os._exit(0)
        os.close(w)
        try:
            reply = _recv(r)
        except EOFError:
            reply = (False, "espeak synthesis crashed")
        os.close(r)
        os.waitpid(pid, 0)
        _send(out, reply)


# --------------------------------------------------------------------------
# Client side: talks to the helper process.


class _Client:
    def __init__(self) -> None:
        # Fail early, in this process, with the install hint.
        _load_library()
        code = (
            "import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('_simulforge_espeak', sys.argv[1])\n"
            "mod = importlib.util.module_from_spec(spec)\n"
            "sys.modules[spec.name] = mod\n"
            "spec.loader.exec_module(mod)\n"
            "mod._zygote_main()\n"
        )
        # Loaded by path so no package __init__ (and nothing heavy) is imported.
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", code, os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        self.owner = os.getpid()
        self.resolved: dict[str, str] = {}
        atexit.register(self.close)

    def synth(self, text, voice, rate, pitch, pitch_range):
        request = (text, voice, self.resolved.get(voice), rate, pitch, pitch_range)
        try:
            _send(self.proc.stdin.fileno(), request)
            ok, value = _recv(self.proc.stdout.fileno())
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
        if kind == _EV_WORD and length > 0:
            ci = pos - 1  # text_position is 1-based
            current = next((i for i, s in enumerate(spans) if s[1] <= ci < s[2]), None)
            if current is None:  # position on punctuation: the next word
                current = next((i for i, s in enumerate(spans) if s[1] >= ci), None)
            if current is not None:
                markers.setdefault(current, sample)
        elif kind == _EV_PHONEME and current is not None and not name.startswith("_"):
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
            (e[3] for e in events[last + 1:] if e[0] in (_EV_WORD, _EV_PHONEME, _EV_END)), n
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
    import numpy as np

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
    import numpy as np
    from scipy.signal import resample_poly

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
