"""The demo's CoVoST 2: its plan and its files (Common Voice ``clips/*.mp3`` and
``validated.tsv``, CoVoST's ``covost_v2.en_de.tsv``).

One clip per text, speakers drawn per clip. The MP3s are written to files by ffmpeg, so they
carry the LAME gapless header; decoders that honour it (libsndfile/mpg123, ffmpeg) return
exactly the synthesized samples at 48 kHz, which is what the truth times refer to.
Truth ids: ``covost/<mp3 stem>``.
"""

from __future__ import annotations

import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from .common import CorpusPlanner, CorpusWriter, Rng, speak, to_pcm, truth_record, write_tsv
from .script import Sentence, Speaker

NAME = "covost"
SHARE = 0.55  # chance that a text of a round is in this corpus
MIN_PER_SPLIT = 1  # texts every split needs


@dataclass
class CovostClip:
    number: int
    split: str
    speaker: Speaker
    sentence: Sentence
    up_votes: int
    down_votes: int


class Planner(CorpusPlanner):
    """One clip per text."""

    def __init__(self, n_sentences: int, n_rounds: int) -> None:
        self.numbers: set[int] = set()

    def plan_round(self, rng: Rng, speakers: list[Speaker], sentences: list[Sentence],
                   split_of: list[str], picked: list[int]) -> list[CovostClip]:
        clips = []
        for i in picked:
            number = rng.unique_ints(10_000_000, 29_999_999, 1, self.numbers)[0]
            clips.append(CovostClip(number, split_of[i], rng.choice(speakers), sentences[i],
                                    rng.randint(2, 4), rng.randint(0, 1)))
        return clips


def _write_mp3(pcm16k: np.ndarray, path: Path) -> None:
    # Common Voice ships 48 kHz mono MP3. Written to a file (not a pipe) so
    # ffmpeg can add the LAME header that makes decoding gapless.
    x48 = resample_poly(pcm16k.astype(np.float32) / 32768.0, 3, 1)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
         "-f", "s16le", "-ar", "48000", "-ac", "1", "-i", "pipe:0",
         "-c:a", "libmp3lame", "-b:a", "64k", "-bitexact", "-map_metadata", "-1",
         str(path)],
        input=to_pcm(x48).tobytes(), check=True,
    )


class Writer(CorpusWriter):
    """Encodes each round's MP3s beside the synthesis (ffmpeg in a thread), the tables at the end."""

    def __init__(self, root: Path, plan: Planner) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.jobs: list = []
        self.cv_rows: list[list] = []
        self.covost_rows: list[list] = []
        self.summary = {"clips": 0, "audio_s": 0.0, "speakers": set()}

    def add(self, clips: list[CovostClip], cache: dict, truth: list[dict]) -> None:
        clips_dir = self.root / "covost" / "clips"
        clips_dir.mkdir(parents=True, exist_ok=True)
        for c in clips:
            clip = speak(c.sentence, c.speaker, cache)
            name = f"common_voice_en_{c.number}.mp3"
            self.jobs.append(self.pool.submit(_write_mp3, clip.pcm, clips_dir / name))
            client = hashlib.sha256(f"simulforge-demo-speaker:{c.speaker.name}".encode())
            client_id = client.hexdigest()
            self.cv_rows.append([client_id, name, c.sentence.en, c.up_votes, c.down_votes,
                                 c.speaker.age, c.speaker.gender, c.speaker.accent, "en", ""])
            self.covost_rows.append([name, c.sentence.en, c.sentence.de, client_id, c.split])
            truth.append(truth_record(f"covost/{name[:-4]}", "covost", c.speaker, c.sentence.en, clip))
            self.summary["clips"] += 1
            self.summary["audio_s"] += clip.duration_s
            self.summary["speakers"].add(c.speaker.name)

    def flush(self) -> None:
        for job in self.jobs:
            job.result()  # surface ffmpeg errors

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def finish(self, seed: int) -> None:
        """Common Voice's and CoVoST's tables."""
        write_tsv(self.root / "covost" / "validated.tsv", self.cv_rows,
                  ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender",
                   "accents", "locale", "segment"])
        write_tsv(self.root / "covost" / "covost_v2.en_de.tsv", self.covost_rows,
                  ["path", "sentence", "translation", "client_id", "split"])
