"""Pronunciations: espeak-ng phonemes for each word of a sentence, in espeak's phoneme names.

Words are phonemized in their sentence, since context changes them ("a" alone is the letter
name, "the" before a vowel is [DI], "for" links an r into a following vowel); a zero-width
space after each word stops espeak from merging word pairs it has one dictionary entry for
("in the"), so its output has one space-separated group per word. Where a word reads as
several groups (numbers: "2024"), each word's own group count, from phonemizing it alone,
splits the sentence's groups; where even that does not add up, words are taken alone.

espeak-ng keeps process-wide state, and initialising it a second time breaks any other user
in the process (the demo synthesizer), so the library runs in a helper process of ours that
answers over a pipe. This file is also that helper's script: it imports nothing of ours.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import re
import subprocess
import sys
import threading

# Stress and syllable marks that prefix a phoneme name; they are not phones.
_MARKS = re.compile(r"[',%=]")
# A language switch espeak notes inside the output, e.g. "(en)".
_SWITCH = re.compile(r"\([a-z-]+\)")
_AUDIO_OUTPUT_SYNCHRONOUS, _INIT_DONT_EXIT, _CHARS_UTF8 = 2, 0x8000, 1
_NO_MERGE = "\u200b"  # zero-width space: blocks espeak's multi-word dictionary entries


class PronounceError(RuntimeError):
    """espeak-ng is missing or cannot speak the language."""


def phone_names(espeak_output: str) -> list[str]:
    """Phones of one word from espeak's `_`-separated output, without stress marks and pauses."""
    names = []
    for raw in re.split(r"[\s_]+", _SWITCH.sub(" ", espeak_output)):
        name = _MARKS.sub("", raw)
        # Pauses (":", "!") and modifiers (";") have no letter or schwa in them.
        if any(c.isalnum() or c == "@" for c in name):
            names.append(name)
    return names


class Phonemizer:
    """Phones per word for one espeak-ng voice; the helper process starts on first use."""

    def __init__(self, voice: str):
        self.voice = voice
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one request on the pipe at a time

    def phones(self, sentences: list[list[str]]) -> list[list[tuple[str, ...]]]:
        """Per sentence (a list of words), the phones of each word; () where espeak has none."""
        with self._lock:
            answer = self._ask(sentences)
        return [[tuple(phone_names(word)) for word in words] for words in answer]

    def _ask(self, sentences: list[list[str]]) -> list[list[str]]:
        if self._proc is None or self._proc.poll() is not None:
            # -S: the helper needs the standard library only, so it skips site-packages' start-up.
            self._proc = subprocess.Popen(
                [sys.executable, "-S", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, encoding="utf-8",
            )
        self._proc.stdin.write(json.dumps({"voice": self.voice, "sentences": sentences}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise PronounceError(f"the espeak-ng helper process died (exit code {self._proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise PronounceError(answer["error"])
        return answer["phonemes"]

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        self._proc = None

    def __enter__(self) -> Phonemizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_espeak() -> ctypes.CDLL:
    for name in ("libespeak-ng.so.1", "libespeak-ng.so", ctypes.util.find_library("espeak-ng")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise PronounceError("libespeak-ng not found; install it with `apt-get install libespeak-ng1`")
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_DONT_EXIT) <= 0:
        raise PronounceError("espeak_Initialize failed (is espeak-ng-data installed?)")
    return lib


def _espeak_phonemes(lib: ctypes.CDLL, text: str) -> str:
    """espeak's phoneme names for `text`, `_` between phonemes, spaces between the words it read."""
    buf = ctypes.create_string_buffer(text.encode("utf-8") + b"\0")
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    parts = []
    while ptr.value:  # espeak returns one clause per call and advances the pointer
        parts.append(lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, ord("_") << 8).decode())
    return " ".join(parts)


def _sentence_phonemes(lib: ctypes.CDLL, words: list[str]) -> list[str]:
    """espeak's phonemes for each word of a sentence (the rules are in the module docstring)."""
    groups = _espeak_phonemes(lib, " ".join(w + _NO_MERGE for w in words)).split()
    if len(groups) == len(words):
        return groups
    alone = [_espeak_phonemes(lib, w) for w in words]
    counts = [len(a.split()) for a in alone]
    if sum(counts) != len(groups) or 0 in counts:
        return alone
    ends = [sum(counts[: i + 1]) for i in range(len(words))]
    return [" ".join(groups[e - n : e]) for e, n in zip(ends, counts, strict=True)]


def _answer(lib: ctypes.CDLL, request: dict) -> dict:
    voice, phonemes = request["voice"], []
    for words in request["sentences"]:
        # Set for every sentence: a word in a script the voice lacks switches espeak's
        # language, and the switch would outlive the sentence.
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            return {"error": f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)"}
        phonemes.append(_sentence_phonemes(lib, words))
    return {"phonemes": phonemes}


def _serve() -> None:
    """The helper: one JSON request per line on stdin, one JSON answer per line on stdout."""
    try:
        lib, failure = _load_espeak(), ""
    except PronounceError as e:
        lib, failure = None, str(e)
    for line in sys.stdin:
        answer = _answer(lib, json.loads(line)) if lib is not None else {"error": failure}
        sys.stdout.write(json.dumps(answer, ensure_ascii=False) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
