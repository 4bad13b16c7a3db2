"""The demo's FLEURS: its plan and its files (``fleurs/<lang>/<split>.tsv`` and
``fleurs/en_us/audio/<split>.tar.gz``).

About 30 % of the sentence ids get 2-3 recordings by different speakers. ``transcription``
keeps apostrophes inside words (as the real corpus does); ``de_de``/``es_419`` rows carry the
translations of the same sentence ids with file names of their own and no audio.
Truth ids: ``fleurs/<wav stem>``.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .common import SPLITS, CorpusPlanner, CorpusWriter, Rng, speak, truth_record, wav_bytes, write_tsv
from .espeak import SAMPLE_RATE, text_words
from .script import Sentence, Speaker

NAME = "fleurs"
SHARE = 0.55  # chance that a text of a round is in this corpus
MIN_PER_SPLIT = 1  # texts every split needs
LANG_DIR = {"de": "de_de", "es": "es_419"}
# Tar member timestamp: fixed so archives are reproducible (FLEURS release date).
_TAR_MTIME = 1654041600


@dataclass
class FleursRec:
    sid: int
    split: str
    speaker: Speaker
    sentence: Sentence
    file_name: str


def _digits(rng: Rng, n: int) -> str:
    """An ``n``-digit decimal string without a leading zero."""
    out = str(rng.randint(1, 9))
    while len(out) < n:
        out += f"{rng.randint(0, 999_999):06d}"
    return out[:n]


def _unique_file_name(rng: Rng, taken: set[str]) -> str:
    while True:
        name = _digits(rng, rng.randint(13, 20)) + ".wav"
        if name not in taken:
            taken.add(name)
            return name


class Planner(CorpusPlanner):
    """Sentence ids and their recordings, by 1-3 speakers each."""

    def __init__(self, n_sentences: int, n_rounds: int) -> None:
        self.max_id = max(2009, 10 * n_sentences * n_rounds)
        self.ids: set[int] = set()
        self.names: set[str] = set()
        self.texts: dict[int, tuple[str, Sentence]] = {}  # sid -> (split, sentence)

    def plan_round(self, rng: Rng, speakers: list[Speaker], sentences: list[Sentence],
                   split_of: list[str], picked: list[int]) -> list[FleursRec]:
        recs = []
        several = rng.shuffled(range(len(picked)))[: round(0.3 * len(picked))]
        n_recs = {j: (3 if rng.random() < 0.2 else 2) for j in several}
        for j, i in enumerate(picked):
            sid = rng.unique_ints(1, self.max_id, 1, self.ids)[0]
            self.texts[sid] = (split_of[i], sentences[i])
            for speaker in rng.shuffled(speakers)[: n_recs.get(j, 1)]:
                name = _unique_file_name(rng, self.names)
                recs.append(FleursRec(sid, split_of[i], speaker, sentences[i], name))
        return recs


def _normalize(text: str) -> str:
    """FLEURS ``transcription``: lowercase words, punctuation removed."""
    return " ".join(w.lower() for w in text_words(text))


def _chars(transcription: str) -> str:
    return " ".join(" ".join(word) + " |" for word in transcription.split())


class Writer(CorpusWriter):
    """Streams each round's English wavs into one tar per split; the tables at the end."""

    def __init__(self, root: Path, plan: Planner) -> None:
        self.root, self.texts = root, plan.texts
        self.rows: dict[tuple[str, str], list[list]] = {}
        self.summary = {"clips": 0, "ids": len(plan.texts), "ids_with_several": 0, "audio_s": 0.0,
                        "speakers": set()}
        self.tars = {}
        for split in SPLITS:
            path = root / "fleurs" / "en_us" / "audio" / f"{split}.tar.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            raw = open(path, "wb")  # closed by close()
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
            self.tars[split] = (raw, gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT))

    def add(self, recs: list[FleursRec], cache: dict, truth: list[dict]) -> None:
        for rec in recs:
            clip = speak(rec.sentence, rec.speaker, cache)
            data = wav_bytes(clip.pcm)
            info = tarfile.TarInfo(f"{rec.split}/{rec.file_name}")
            info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tars[rec.split][2].addfile(info, io.BytesIO(data))
            transcription = _normalize(rec.sentence.en)
            self.rows.setdefault(("en_us", rec.split), []).append([
                rec.sid, rec.file_name, rec.sentence.en, transcription, _chars(transcription),
                len(clip.pcm), rec.speaker.gender.upper(),
            ])
            truth.append(truth_record(f"fleurs/{rec.file_name[:-4]}", "fleurs", rec.speaker,
                                      rec.sentence.en, clip))
            self.summary["clips"] += 1
            self.summary["audio_s"] += clip.duration_s
            self.summary["speakers"].add(rec.speaker.name)

    def close(self) -> None:
        for raw, gz, tar in self.tars.values():
            tar.close()
            gz.close()
            raw.close()

    def finish(self, seed: int) -> None:
        """The tables: English from the recordings, translations per sentence id."""
        rows = self.rows
        rng = Rng(seed, "fleurs-translations")
        names = {row[1] for split_rows in rows.values() for row in split_rows}
        per_id: dict[int, int] = {}
        for split_rows in list(rows.values()):
            for row in split_rows:
                per_id[row[0]] = per_id.get(row[0], 0) + 1
        self.summary["ids_with_several"] = sum(1 for n in per_id.values() if n > 1)
        for sid, (split, sentence) in sorted(self.texts.items()):
            for x, lang_dir in LANG_DIR.items():
                text = getattr(sentence, x)
                transcription = _normalize(text)
                for _ in range(1 if rng.random() >= 0.3 else 2):
                    num_samples = int(SAMPLE_RATE * (1.2 + 0.065 * len(text) + rng.random()))
                    rows.setdefault((lang_dir, split), []).append([
                        sid, _unique_file_name(rng, names), text, transcription,
                        _chars(transcription), num_samples, rng.choice(["MALE", "FEMALE"]),
                    ])
        for lang_dir in ("en_us", *LANG_DIR.values()):
            for split in SPLITS:
                write_tsv(self.root / "fleurs" / lang_dir / f"{split}.tsv", rows.get((lang_dir, split), []))
