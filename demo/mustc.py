"""The demo's MuST-C: its plan and its files (``mustc/en-{de,es}/data/<split>/{wav,txt}``).

One talk = one speaker, 4-8 segments, 0.3-1.5 s of silence before, between and after them.
Offsets and durations are whole milliseconds (clips are padded with silence to a multiple
of 16 samples), so ``offset * 16000`` and ``duration * 16000`` are exact sample counts.
en-de and en-es hold byte-identical talk wavs; about 5 % of the segments are listed in only
one of the two releases. Truth ids: ``mustc/<talk>_<offset in ms>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import MS, SPLITS, CorpusPlanner, CorpusWriter, Rng, speak, truth_record, wav_bytes
from .espeak import SAMPLE_RATE
from .script import Sentence, Speaker

NAME = "mustc"
SHARE = 0.6  # chance that a text of a round is in this corpus
MIN_PER_SPLIT = 4  # texts every split needs: one talk
SPLIT_DIR = {"train": "train", "dev": "dev", "test": "tst-COMMON"}
PAIRS = ("de", "es")


@dataclass
class Talk:
    number: int
    split: str
    speaker: Speaker
    segments: list[Sentence]
    silences_ms: list[int]  # len(segments) + 1: before, between..., after


def _talk_sizes(n: int, rng: Rng, lo: int = 4, hi: int = 8) -> list[int]:
    sizes = []
    while n > 0:
        if n <= hi:
            sizes.append(n)
            break
        s = rng.choice([s for s in range(lo, hi + 1) if n - s == 0 or n - s >= lo])
        sizes.append(s)
        n -= s
    return sizes


class Planner(CorpusPlanner):
    """Talks of 4-8 segments per split, one speaker each; then the segments left out of one
    release."""

    def __init__(self, n_sentences: int, n_rounds: int) -> None:
        self.n_rounds = n_rounds
        self.numbers: set[int] = set()
        self.dropped: dict[str, set[tuple[int, int]]] = {x: set() for x in PAIRS}

    def plan_round(self, rng: Rng, speakers: list[Speaker], sentences: list[Sentence],
                   split_of: list[str], picked: list[int]) -> list[Talk]:
        talks = []
        spk_cycle = rng.shuffled(speakers)
        for split in SPLITS:
            idx = rng.shuffled([i for i in picked if split_of[i] == split])
            pos = 0
            for size in _talk_sizes(len(idx), rng):
                speaker = spk_cycle[len(talks) % len(spk_cycle)]
                segs = [sentences[i] for i in idx[pos : pos + size]]
                pos += size
                silences = [rng.randint(300, 1500) for _ in range(size + 1)]
                talks.append(Talk(0, split, speaker, segs, silences))
        hi = max(3000, 20 * len(talks) * self.n_rounds)
        for talk, number in zip(talks, rng.unique_ints(1, hi, len(talks), self.numbers), strict=True):
            talk.number = number
        talks.sort(key=lambda t: t.number)
        return talks

    def finish(self, rng: Rng, rounds: list[list[Talk]]) -> None:
        self.dropped = _drop_segments(rng, rounds)


def _drop_segments(rng: Rng, rounds: list[list[Talk]]) -> dict[str, set[tuple[int, int]]]:
    """Per release, the (talk, segment index) it leaves out: ~5 % of the segments exist in only
    one release; disjoint sets, at most one segment per talk per release, at least one per release."""
    dropped: dict[str, set[tuple[int, int]]] = {x: set() for x in PAIRS}
    segs = [(t.number, j) for talks in rounds for t in talks for j in range(len(t.segments))]
    n_drop = max(1, round(0.025 * len(segs)))
    by_talk: dict[int, list[int]] = {}
    for talk, j in rng.shuffled(segs):
        by_talk.setdefault(talk, []).append(j)
    talks_order = rng.shuffled(sorted(by_talk))
    for offset, pair in enumerate(PAIRS):
        for talk in talks_order[offset::2][:n_drop]:
            dropped[pair].add((talk, by_talk[talk][0]))
    return dropped


class Writer(CorpusWriter):
    """Writes each round's talk wavs as it goes, the segment lists (yaml, en, x) at the end."""

    def __init__(self, root: Path, plan: Planner) -> None:
        self.root, self.dropped = root, plan.dropped
        self.yaml_rows: dict[tuple[str, str], list[str]] = {}
        self.txt_rows: dict[tuple[str, str, str], list[str]] = {}
        self.summary = {"clips": 0, "talks": 0, "audio_s": 0.0, "talk_audio_s": 0.0, "speakers": set(),
                        "segments": {f"en-{x}": 0 for x in PAIRS},
                        "only_in_one_release": 0}

    def add(self, talks: list[Talk], cache: dict, truth: list[dict]) -> None:
        for talk in talks:
            self._talk(talk, cache, truth)

    def _talk(self, talk: Talk, cache: dict, truth: list[dict]) -> None:
        summary = self.summary
        stem = f"ted_{talk.number}"
        split_dir = SPLIT_DIR[talk.split]
        parts, pos = [], 0
        for j, sentence in enumerate(talk.segments):
            clip = speak(sentence, talk.speaker, cache)
            pos += talk.silences_ms[j] * MS
            parts.append(np.zeros(talk.silences_ms[j] * MS, "<i2"))
            offset_ms, dur_ms = pos // MS, len(clip.pcm) // MS
            parts.append(clip.pcm)
            pos += len(clip.pcm)
            truth.append(truth_record(f"mustc/{stem}_{offset_ms}", "mustc", talk.speaker, sentence.en, clip))
            summary["clips"] += 1
            summary["audio_s"] += clip.duration_s
            for x in PAIRS:
                if (talk.number, j) in self.dropped[x]:
                    continue
                self.yaml_rows.setdefault((x, split_dir), []).append(
                    f"- {{duration: {dur_ms / 1000:.6f}, offset: {offset_ms / 1000:.6f}, "
                    f"rW: {len(sentence.en.split())}, uW: 0, "
                    f"speaker_id: spk.{talk.number}, wav: {stem}.wav}}"
                )
                self.txt_rows.setdefault((x, split_dir, "en"), []).append(sentence.en)
                self.txt_rows.setdefault((x, split_dir, x), []).append(getattr(sentence, x))
                summary["segments"][f"en-{x}"] += 1
        parts.append(np.zeros(talk.silences_ms[-1] * MS, "<i2"))
        data = wav_bytes(np.concatenate(parts))
        for x in PAIRS:  # each release holds its own copy
            path = self.root / "mustc" / f"en-{x}" / "data" / split_dir / "wav"
            path.mkdir(parents=True, exist_ok=True)
            (path / f"{stem}.wav").write_bytes(data)
        summary["talks"] += 1
        summary["talk_audio_s"] += (len(data) - 44) / 2 / SAMPLE_RATE
        summary["speakers"].add(talk.speaker.name)

    def finish(self, seed: int) -> None:
        """The text files of every release and split."""
        for (x, split_dir), lines in self.yaml_rows.items():
            txt = self.root / "mustc" / f"en-{x}" / "data" / split_dir / "txt"
            txt.mkdir(parents=True, exist_ok=True)
            (txt / f"{split_dir}.yaml").write_text("\n".join(lines) + "\n", "utf-8")
            for lang in ("en", x):
                rows = self.txt_rows[(x, split_dir, lang)]
                (txt / f"{split_dir}.{lang}").write_text("\n".join(rows) + "\n", "utf-8")
        self.summary["only_in_one_release"] = sum(len(d) for d in self.dropped.values())
