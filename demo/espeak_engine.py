"""libespeak-ng through ctypes, inside a helper process that synthesizes every message afresh.

espeak's wave generator keeps state across messages (pitch flutter phase, amplitude
smoothing), so the same text would not sound the same twice in one process. The engine
therefore lives in a small helper process (a "zygote", one per Python process, started lazily
by espeak.py) that initializes libespeak-ng once and forks a fresh child for every message:
each synthesis starts from the same pristine state and same arguments give bit-identical
audio and timings. The helper loads this file by path and it imports nothing but the
standard library, so that forking it is cheap.

The helper and its client exchange pickled messages, each preceded by its length.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import struct
import sys

# speak_lib.h constants (API revision 12, espeak-ng 1.49+).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
EV_LIST_TERMINATED = 0
EV_WORD = 1
EV_END = 5
EV_PHONEME = 7
_P_RATE, _P_VOLUME, _P_PITCH, _P_RANGE, _P_PUNCTUATION, _P_WORDGAP = 1, 2, 3, 4, 5, 7
_EE_OK = 0
_LIBRARY_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so")
_MISSING = "libespeak-ng not found; install it with `apt-get install libespeak-ng1`"


class EspeakError(RuntimeError):
    """libespeak-ng is missing or refused a request."""


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


def load_library() -> ctypes.CDLL:
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
        lib = self.lib = load_library()
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
        while events[i].type != EV_LIST_TERMINATED:
            ev = events[i]
            name = ev.id.string.decode("utf-8", "replace") if ev.type == EV_PHONEME else ""
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


def send(fd: int, obj) -> None:
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


def recv(fd: int):
    (n,) = struct.unpack("<Q", _recv_exact(fd, 8))
    return pickle.loads(_recv_exact(fd, n))


def zygote_main() -> None:
    """Helper process loop: one request in, one forked synthesis, one reply out."""
    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        engine = _Engine()
    except Exception as exc:  # reported on every request
        engine, init_error = None, str(exc)
    while True:
        try:
            request = recv(inp)
        except EOFError:
            return
        if engine is None:
            send(out, (False, init_error))
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
                send(w, reply)
            finally:
                os._exit(0)
        os.close(w)
        try:
            reply = recv(r)
        except EOFError:
            reply = (False, "espeak synthesis crashed")
        os.close(r)
        os.waitpid(pid, 0)
        send(out, reply)

