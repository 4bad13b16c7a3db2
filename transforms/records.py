"""The one record vocabulary that flows between stages (docs/architecture.md §2).

Records are plain dataclasses: Beam pickles them between workers, unit tests build them
by hand, and `to_dict` gives the JSON-able form used for rejects and side files.
An `Utterance` grows as it passes the stages (like a lhotse cut gaining supervisions):
the audio stage points `audio` at the normalised FLAC clip, segment adds `segmentations`,
align adds `timing`, embed adds `embedding`; any stage that changes what the corpus
shipped says so in `fixes`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AudioRef:
    """Where a clip's samples live; bytes are read only by the stages that need them."""

    path: str  # a file on any Beam filesystem (local, gs://, s3://, ...)
    offset_s: float = 0.0
    duration_s: float | None = None  # None: to the end of the file
    sampling_rate: int | None = None  # as declared by the corpus, when it declares one


@dataclass
class Segmentation:
    """One latency level: source chunks shared by every target language."""

    level: str
    source_chunks: list[str]
    target_chunks: dict[str, list[str]]
    # Crossing rate of each language's chunk pairs, from an alignment independent of the cut.
    crossing: dict[str, float] = field(default_factory=dict)


@dataclass
class Timing:
    """Word timings of the source speech and, per latency level, each chunk's end (clip-relative)."""

    words: list[tuple[str, float, float]]
    chunk_end_s: dict[str, list[float]] = field(default_factory=dict)
    # How well the audio fits the words, 0 (worst) to 1, for the clip and per word; None when the
    # aligner gives none (transforms/aligners/__init__.py: Aligned).
    confidence: float | None = None
    word_confidence: list[float] | None = None


@dataclass
class Utterance:
    """One source clip with its translations into every language it has."""

    id: str  # stable and corpus-prefixed, e.g. "mustc/ted_767_16610"
    corpus: str
    split: str  # canonical HF split name: train / validation / test
    audio: AudioRef
    speaker: str
    source_lang: str
    source_text: str
    translations: dict[str, str] = field(default_factory=dict)
    where: str = ""  # provenance in the input ("en-de/data/train/txt/train.yaml:12")
    # Every change made (by the readers, audio and align) to what the corpus shipped, published as
    # `fixes`: "source text normalised to NFC", "resampled 48000->16000", "last word end clamped 3.241->3.236 s".
    fixes: list[str] = field(default_factory=list)
    # Filled by later stages.
    duration_s: float | None = None
    segmentations: dict[str, Segmentation] = field(default_factory=dict)
    timing: Timing | None = None
    embedding: list[float] | None = None

    def replace(self, **changes: Any) -> Utterance:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Translation:
    """A translation a corpus ships apart from its source clip (FLEURS keeps each language in its
    own folder, joined to the English recordings by sentence id)."""

    lang: str
    text: str
    where: str = ""
    fixes: tuple[str, ...] = ()  # changes made to the text at read, as Utterance.fixes


@dataclass
class Conversation:
    """A simulated two-talker, multi-channel conversation (the `conversations` config)."""

    id: str
    split: str
    channels: int
    sampling_rate: int
    room: dict[str, Any]  # dims_m, rt60_s, mic_positions_m, source_positions_m, snr_db
    segments: list[dict[str, Any]]  # speaker, start_s, end_s, utterance_id, text, translations
    sot_text: str
    sot_translations: dict[str, str]
    # The C-channel FLAC, written by the render stage under the work dir: records stay small (a
    # shard's worth of conversations' audio in one group is gigabytes), publish reads the bytes.
    audio: AudioRef | None = None
    # Every word of both speakers in word order: word, speaker, start_s, end_s (conversation time).
    words: list[dict[str, Any]] = field(default_factory=list)
    # Per language, the units of its SOT translation in order: text, speaker, start_s, end_s.
    translation_chunks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    """A record a stage refused, with a reason code (for counting) and a specific detail."""

    id: str
    stage: str
    reason: str  # short snake_case code, e.g. "missing_audio"
    detail: str  # human-readable and specific: what was wrong, with the numbers
    where: str = ""  # where in the input, e.g. "covost/covost_v2.en_de.tsv:17"


class StageError(Exception):
    """Why a record cannot pass a stage, raised where the fault is found and turned into a `Reject`
    by the stage function that knows the record."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail

    def __reduce__(self):  # travels between Beam workers (an aligner's failed model is a side input)
        return StageError, (self.reason, self.detail)

    def reject(self, record_id: str, stage: str, where: str = "") -> Reject:
        return Reject(record_id, stage, self.reason, self.detail, where)


@dataclass(frozen=True)
class Stat:
    """A number a stage reports; values with the same (stage, name) are summed into stats.json."""

    stage: str
    name: str  # slash-separated, e.g. "tokens/prompt" or "crossing/low/de/discordant"
    value: float = 1.0


def to_dict(record: Any) -> dict[str, Any]:
    """JSON-able dict of a record; audio bytes are left out."""
    d = dataclasses.asdict(record)
    d.pop("flac", None)
    return d
