"""What the demo corpora say and who says it: the sentences of ``sentences.tsv`` and the
espeak voice settings that play the speakers."""

from __future__ import annotations

import csv
import importlib.resources
import io
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Sentence:
    id: str
    topic: str
    reorder: int
    en: str
    de: str
    es: str


def load_sentences() -> list[Sentence]:
    """The packaged ``sentences.tsv`` (id, topic, reorder, en, de, es)."""
    text = importlib.resources.files(__package__).joinpath("sentences.tsv").read_text("utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0]
    if header != ["id", "topic", "reorder", "en", "de", "es"]:
        raise ValueError(f"unexpected sentences.tsv header {header}")
    out = []
    for row in rows[1:]:
        if not row:
            continue
        sid, topic, reorder, en, de, es = row
        out.append(Sentence(sid, topic, int(reorder), en.strip(), de.strip(), es.strip()))
    return out


@dataclass(frozen=True)
class Speaker:
    """An espeak voice setting that plays one speaker of the corpora."""

    name: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    gender: str  # "male" / "female"
    age: str  # Common Voice age bucket
    accent: str  # Common Voice accent label


# Variants with an "echo" setting (f2-f5, m2) or the klatt synthesizer are left
# out: echo smears sound into the pauses, which would blur the true word ends.
SPEAKERS: tuple[Speaker, ...] = (
    Speaker("us-m1", "en-us", 165, 45, 55, "male", "thirties", "United States English"),
    Speaker("gb-m3", "en-gb+m3", 160, 40, 60, "male", "forties", "England English"),
    Speaker("sc-m6", "en-gb-scotland+m6", 150, 50, 45, "male", "fifties", "Scottish English"),
    Speaker("rp-f1", "en-gb-x-rp+f1", 175, 62, 70, "female", "twenties", "England English"),
    Speaker("us-f2", "en-us+belinda", 180, 55, 60, "female", "thirties", "United States English"),
    Speaker("cb-m4", "en-029+m4", 155, 48, 50, "male", "twenties",
            "West Indies and Bermuda (Bahamas, Bermuda, Jamaica, Trinidad)"),
    Speaker("ny-f3", "en-us-nyc+steph", 170, 58, 65, "female", "forties", "United States English"),
    Speaker("lc-f4", "en-gb-x-gbclan+Annie", 185, 65, 55, "female", "twenties", "England English"),
)
# Per extra round (scale > 1): shift rate and pitch so the voices differ.
_ROUND_SHIFTS = ((0, 0), (18, 8), (-15, -7), (30, -12), (-22, 12), (10, 16), (-8, -15))


def round_speakers(k: int) -> list[Speaker]:
    """The speakers of round ``k``: :data:`SPEAKERS` in round 0, shifted settings after it."""
    if k == 0:
        return list(SPEAKERS)
    dr, dp = _ROUND_SHIFTS[k % len(_ROUND_SHIFTS)]
    dr += 4 * (k // len(_ROUND_SHIFTS))  # keep later cycles distinct too
    return [
        replace(
            s,
            name=f"{s.name}-r{k}",
            rate=min(max(s.rate + dr, 110), 260),
            pitch=min(max(s.pitch + dp, 5), 95),
            pitch_range=min(max(s.pitch_range + (dp // 2), 10), 95),
        )
        for s in SPEAKERS
    ]
