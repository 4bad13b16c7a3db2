"""What every demo corpus uses: seeded draws, spoken clips, WAV bytes, TSV tables and the
truth records of word times."""

from __future__ import annotations

import csv
import io
import random
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .espeak import SAMPLE_RATE, EspeakError, synthesize
from .script import Sentence, Speaker

SPLITS = ("train", "dev", "test")
MS = SAMPLE_RATE // 1000  # samples per millisecond


class Rng:
    """Seeded draws built on ``random.random()`` only, whose sequence Python
    guarantees across versions (shuffle/choice/randrange are not)."""

    def __init__(self, seed: int, purpose: str) -> None:
        self._r = random.Random(f"simulforge-demo:{seed}:{purpose}")

    def random(self) -> float:
        return self._r.random()

    def randint(self, lo: int, hi: int) -> int:  # inclusive
        return lo + min(int(self._r.random() * (hi - lo + 1)), hi - lo)

    def choice(self, seq):
        return seq[self.randint(0, len(seq) - 1)]

    def shuffled(self, seq) -> list:
        items = list(seq)
        for i in range(len(items) - 1, 0, -1):
            j = self.randint(0, i)
            items[i], items[j] = items[j], items[i]
        return items

    def unique_ints(self, lo: int, hi: int, n: int, taken: set[int]) -> list[int]:
        out = []
        while len(out) < n:
            v = self.randint(lo, hi)
            if v not in taken:
                taken.add(v)
                out.append(v)
        return out


@dataclass
class Clip:
    pcm: np.ndarray  # int16 at 16 kHz, padded to whole milliseconds
    words: list[tuple[str, float, float]]

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def to_pcm(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


def speak(sentence: Sentence, speaker: Speaker, cache: dict) -> Clip:
    """``sentence`` in ``speaker``'s voice; ``cache`` shares clips between the corpora of a round."""
    key = (sentence.en, speaker.voice, speaker.rate, speaker.pitch, speaker.pitch_range)
    clip = cache.get(key)
    if clip is None:
        # Some voice variants swallow a short word whole in some sentences (en-us-nyc+steph does
        # "huge" in one); that clip falls back to the base voice, then to en-us.
        voices = [speaker.voice, speaker.voice.split("+")[0], "en-us"]
        for k, voice in enumerate(voices):
            try:
                syn = synthesize(sentence.en, voice, speaker.rate, speaker.pitch, speaker.pitch_range)
                break
            except EspeakError:
                if k == len(voices) - 1:
                    raise
        pcm = to_pcm(syn.samples)
        pad = (-len(pcm)) % MS
        clip = cache[key] = Clip(np.concatenate([pcm, np.zeros(pad, "<i2")]), syn.words)
    return clip


def wav_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def write_tsv(path: Path, rows, header=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\",
                       lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)


class CorpusPlanner:
    """A corpus's random decisions, round by round, before any audio exists. Its ids are unique
    over all rounds; every draw comes from the one ``rng`` the build passes in, so the order of
    the calls is part of every build's bytes."""

    def plan_round(self, rng: Rng, speakers: list[Speaker], sentences: list[Sentence],
                   split_of: list[str], picked: list[int]) -> list:
        """What the corpus records of round's texts ``picked`` (indices into ``sentences``)."""
        raise NotImplementedError

    def finish(self, rng: Rng, rounds: list[list]) -> None:
        """Draws made once every round is planned."""


class CorpusWriter:
    """A corpus's files: audio round by round as it is spoken, the tables at the end."""

    summary: dict

    def add(self, items: list, cache: dict, truth: list[dict]) -> None:
        """Speak and write one round's ``items``; append their truth records to ``truth``."""
        raise NotImplementedError

    def flush(self) -> None:
        """Wait for work still running beside the synthesis; raises its errors."""

    def close(self) -> None:
        """Release open files and workers (also after an error)."""

    def finish(self, seed: int) -> None:
        """Write what needs every round: the tables."""


def truth_record(clip_id: str, corpus: str, speaker: Speaker, text: str, clip: Clip) -> dict:
    """One line of ``truth/word_times.jsonl``."""
    return {
        "id": clip_id,
        "corpus": corpus,
        "speaker": speaker.name,
        "text": text,
        "duration_s": round(clip.duration_s, 6),
        "words": [[w, s, e] for w, s, e in clip.words],
    }
