"""Pairing for the `simulate` stage: utterances into two-talker conversations, and their timelines.

`plan_conversations` pairs the utterances of one group (same split, same hash bucket of the id,
sorted by id) into conversations between two speakers, SELF (the glasses' wearer) and OTHER, and
draws each one's timeline, room and SNR from an RNG seeded by (run seed, conversation id). Groups
depend only on the data, so plans are the same on every runner; rendering a plan (simulate.py)
is deterministic.

Timelines live on a 1 ms grid: clips are trimmed to whole milliseconds and start on one, so the
segment table, the audio and the RTTM agree exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

from ..settings import ConfigError
from . import rooms, sot
from .audio import clip_file
from .records import Reject, StageError, Stat, Utterance

if TYPE_CHECKING:
    from .simulate import SimulateSettings

# The stage that counts utterances: each lands in a conversation or is rejected.
PAIRING_STAGE = "simulate/pairing"
_OVERLAP_TOLERANCE = 0.01  # below the target by more than this, a conversation is counted


@dataclass
class PairingSettings:
    group_size: int  # about this many utterances are paired together (one hash bucket of a split)
    passes: int  # each pass pairs every group afresh, so each utterance serves this many conversations
    turns: list[int]  # [min, max] utterances per conversation, SELF and OTHER alternating
    max_length_s: float  # longest conversation; utterances over half of it are left out

    def validate(self, where: str) -> None:
        if self.group_size < 2 or self.passes < 1:
            raise ConfigError(
                f"{where}: group_size must be >= 2 and passes >= 1, got {self.group_size}, {self.passes}"
            )
        rooms.check_range(self.turns, f"{where}.turns", lo=2)
        if self.max_length_s <= 0:
            raise ConfigError(f"{where}.max_length_s: must be positive, got {self.max_length_s}")


@dataclass
class GammaSettings:
    shape: float
    scale_s: float

    def validate(self, where: str) -> None:
        if self.shape <= 0 or self.scale_s <= 0:
            raise ConfigError(
                f"{where}: gamma shape and scale_s must be positive, got {self.shape}, {self.scale_s}"
            )


@dataclass
class TurnTakingSettings:
    pause: GammaSettings  # silence between turns that do not overlap
    overlap: GammaSettings  # how far a turn starts before the previous one ends
    overlap_probability: float  # chance that a turn overlaps the previous one
    target_overlap_ratio: float | None  # overlapped time / conversation time; null keeps the raw draws
    max_overlap_fraction: float  # an overlap covers at most this share of the shorter turn

    def validate(self, where: str) -> None:
        if not 0.0 <= self.overlap_probability <= 1.0:
            raise ConfigError(
                f"{where}.overlap_probability: must be in [0, 1], got {self.overlap_probability}"
            )
        target = self.target_overlap_ratio
        if target is not None and not 0.0 <= target <= 0.5:
            raise ConfigError(f"{where}.target_overlap_ratio: must be in [0, 0.5] or null, got {target}")
        if target and self.overlap_probability == 0:
            raise ConfigError(f"{where}: target_overlap_ratio {target} needs overlap_probability > 0")
        if not 0.0 < self.max_overlap_fraction <= 0.5:
            raise ConfigError(
                f"{where}.max_overlap_fraction: must be in (0, 0.5] so that no one talks over themselves and "
                f"at most two people talk at once, got {self.max_overlap_fraction}"
            )



@dataclass
class Turn:
    role: str  # sot.SELF or sot.OTHER
    utterance: Utterance
    start_ms: int
    duration_ms: int


@dataclass
class ConversationPlan:
    """Everything random about a conversation, decided; rendering it is deterministic."""

    id: str
    split: str
    turns: list[Turn]  # in start order
    room_index: int
    snr_db: float

    def timed_turns(self) -> list[tuple[str, int, int, Utterance]]:
        """(role, start ms, end ms, utterance) of each turn, as sot.py takes them."""
        return [(t.role, t.start_ms, t.start_ms + t.duration_ms, t.utterance) for t in self.turns]

    def segments(self) -> list[dict[str, Any]]:
        return sot.segment_table(self.timed_turns())

    def duration_ms(self) -> int:
        return max(t.start_ms + t.duration_ms for t in self.turns)

    def utterance_ids(self) -> list[str]:
        return [t.utterance.id for t in self.turns]

    def overlap_ratio(self) -> float:
        """Overlapped time / conversation time (only consecutive turns can overlap)."""
        overlap = sum(max(0, a.start_ms + a.duration_ms - b.start_ms) for a, b in pairwise(self.turns))
        return overlap / self.duration_ms()


def group_key(
    utt: Utterance, split_sizes: dict[str, int], group_size: int
) -> tuple[tuple[str, int], Utterance]:
    """(split, bucket) for pairing: about `group_size` utterances of one split per bucket, by a hash of the id."""
    buckets = max(1, round(split_sizes[utt.split] / group_size))
    digest = hashlib.blake2b(utt.id.encode(), digest_size=8).digest()
    return (utt.split, int.from_bytes(digest, "little") % buckets), utt


def conversation_id(split: str, pass_index: int, utterance_ids: list[str]) -> str:
    digest = hashlib.blake2b("\n".join([str(pass_index), *utterance_ids]).encode(), digest_size=8).hexdigest()
    return f"{split}/conv-{digest}"


def plan_conversations(
    split: str, group: int, utterances: Iterable[Utterance], settings: SimulateSettings
) -> Iterator[ConversationPlan | Reject | Stat]:
    """Pair one group's utterances into conversations between two different speakers.

    Each pass deals every usable utterance into one conversation, picking speaker pairs in
    proportion to what they have left, so that few utterances end up without a partner. Each
    utterance comes out in a conversation or as a reject (the stage counts them, `utterance_ids`).
    """
    by_speaker: dict[str, list[tuple[Utterance, int]]] = {}
    for utt in sorted(utterances, key=lambda u: u.id):
        duration_ms, problem = _usable_duration_ms(utt, settings)
        if problem:
            yield Reject(utt.id, PAIRING_STAGE, problem[0], problem[1], utt.where)
        else:
            by_speaker.setdefault(utt.speaker, []).append((utt, duration_ms))
    if len(by_speaker) < 2:
        detail = (
            f"split {split!r} group {group} has usable utterances from {len(by_speaker)} speaker(s) "
            f"{sorted(by_speaker)}; a conversation needs two"
        )
        for utt, _ in (item for items in by_speaker.values() for item in items):
            yield Reject(utt.id, PAIRING_STAGE, "too_few_speakers", detail, utt.where)
        return
    used: set[str] = set()
    for pass_index in range(settings.pairing.passes):
        for plan in _deal(split, group, pass_index, by_speaker, settings):
            used.update(plan.utterance_ids())
            target = settings.turn_taking.target_overlap_ratio
            if target and plan.overlap_ratio() < target - _OVERLAP_TOLERANCE:
                yield Stat(PAIRING_STAGE, "conversations/below_overlap_target")
            yield Stat(PAIRING_STAGE, "conversations")
            yield plan
    for speaker, items in by_speaker.items():
        for utt, _ in items:
            if utt.id not in used:
                detail = f"speaker {speaker} had utterances left when no other speaker in split {split!r} group {group} did"
                yield Reject(utt.id, PAIRING_STAGE, "unpaired", detail, utt.where)


def _deal(
    split: str,
    group: int,
    pass_index: int,
    by_speaker: dict[str, list[tuple[Utterance, int]]],
    settings: SimulateSettings,
) -> Iterator[ConversationPlan]:
    """One pass: every utterance into at most one conversation, until one speaker is left."""
    rng = rooms.seeded_rng(settings.seed, "pairing", split, group, pass_index)
    pools = {
        spk: [items[i] for i in rng.permutation(len(items))] for spk, items in sorted(by_speaker.items())
    }
    lo, hi = settings.pairing.turns
    while len(alive := [spk for spk, pool in pools.items() if pool]) >= 2:
        left = np.array([len(pools[spk]) for spk in alive], float)
        first = rng.choice(len(alive), p=left / left.sum())
        left[first] = 0
        second = rng.choice(len(alive), p=left / left.sum())
        speaker_of = {sot.SELF: alive[first], sot.OTHER: alive[second]}
        order = (sot.SELF, sot.OTHER) if rng.random() < 0.5 else (sot.OTHER, sot.SELF)
        budget_ms = round(settings.pairing.max_length_s * 1000)
        picked: list[tuple[str, Utterance, int]] = []
        # Utterances are at most half the budget, so the first two turns always fit.
        for k in range(int(rng.integers(lo, hi + 1))):
            pool = pools[speaker_of[order[k % 2]]]
            if not pool or pool[-1][1] > budget_ms:
                break
            utt, duration_ms = pool.pop()
            picked.append((order[k % 2], utt, duration_ms))
            budget_ms -= duration_ms
        yield _plan(split, pass_index, picked, settings)


def _usable_duration_ms(utt: Utterance, settings: SimulateSettings) -> tuple[int, tuple[str, str] | None]:
    """The clip's length in whole milliseconds, or (reason, detail) why it cannot join a conversation."""
    if utt.duration_s is None:
        return 0, ("no_audio", "the utterance has not been through the audio stage")
    try:
        with clip_file(utt) as f:
            info = sf.info(f)
    except (sf.SoundFileError, OSError) as e:
        return 0, ("undecodable_audio", f"the FLAC clip does not decode: {e}")
    if info.samplerate != settings.sampling_rate:
        return 0, ("sampling_rate", f"{info.samplerate} Hz; the stage runs at {settings.sampling_rate} Hz")
    if info.channels != 1:
        return 0, ("not_mono", f"{info.channels} channels; a talker is one channel")
    duration_ms = info.frames * 1000 // info.samplerate
    if duration_ms <= 0:
        return 0, ("empty_audio", f"{info.frames} samples")
    if duration_ms > settings.pairing.max_length_s * 500:
        return 0, (
            "too_long",
            f"{duration_ms / 1000:.3f} s is over half of pairing.max_length_s ({settings.pairing.max_length_s} s)",
        )
    try:
        sot.check_timed(utt, duration_ms, settings.sot)
    except StageError as e:
        return 0, (e.reason, e.detail)
    return duration_ms, None


def _plan(
    split: str, pass_index: int, picked: list[tuple[str, Utterance, int]], settings: SimulateSettings
) -> ConversationPlan:
    conv_id = conversation_id(split, pass_index, [utt.id for _, utt, _ in picked])
    rng = rooms.seeded_rng(settings.seed, "conversation", conv_id)
    starts = draw_timeline(
        [ms for *_, ms in picked], rng, settings.turn_taking, settings.pairing.max_length_s
    )
    return ConversationPlan(
        id=conv_id,
        split=split,
        turns=[Turn(role, utt, start, ms) for (role, utt, ms), start in zip(picked, starts, strict=True)],
        room_index=int(rng.integers(settings.room.pool_size)),
        snr_db=round(float(rng.uniform(*settings.mix.snr_db)), 2),
    )


def draw_timeline(
    durations_ms: list[int], rng: np.random.Generator, turn_taking: TurnTakingSettings, max_length_s: float
) -> list[int]:
    """Start times (ms) of consecutive turns: gamma pauses, or gamma overlaps with some probability.

    With a target ratio, the drawn overlaps keep their relative sizes but are scaled together so
    that overlapped time / conversation time hits the target; when the overlapping turns cannot
    carry that much, more turns overlap. Pauses shrink when the conversation would run past
    `max_length_s`, which its speech alone must fit.
    """
    durations = np.asarray(durations_ms, float)
    speech, max_ms = durations.sum(), round(max_length_s * 1000)
    if speech > max_ms:
        raise ValueError(f"{speech:.0f} ms of speech cannot fit in {max_ms} ms")
    transitions = len(durations) - 1
    overlapping = rng.random(transitions) < turn_taking.overlap_probability
    pauses = rng.gamma(turn_taking.pause.shape, turn_taking.pause.scale_s * 1000, transitions)
    overlaps = rng.gamma(turn_taking.overlap.shape, turn_taking.overlap.scale_s * 1000, transitions)
    promotion_order = rng.permutation(transitions)
    limits = turn_taking.max_overlap_fraction * np.minimum(durations[:-1], durations[1:])
    target = turn_taking.target_overlap_ratio
    if target is not None:
        for i in promotion_order:
            if limits[overlapping].sum() >= _wanted_overlap(
                speech, pauses[~overlapping].sum(), target, max_ms
            ):
                break
            overlapping[i] = True
    caps = np.where(overlapping, limits, 0.0)
    pauses = np.where(overlapping, 0.0, pauses)
    if target is None:
        overlaps = np.minimum(overlaps, caps)
    else:
        overlaps = _scaled_overlaps(overlaps, caps, _wanted_overlap(speech, pauses.sum(), target, max_ms))
    if (excess := speech - overlaps.sum() + pauses.sum() - max_ms) > 0:
        pauses *= 1 - excess / pauses.sum()
    overlaps_ms = np.minimum(np.rint(overlaps), np.floor(caps)).astype(int)
    pauses_ms = np.rint(pauses).astype(int)
    excess_ms = int(speech - overlaps_ms.sum() + pauses_ms.sum() - max_ms)
    for i in reversed(range(transitions)):  # rounding may add a millisecond here and there
        cut = min(max(excess_ms, 0), pauses_ms[i])
        pauses_ms[i] -= cut
        excess_ms -= cut
    starts = [0]
    for i in range(transitions):
        starts.append(starts[-1] + durations_ms[i] + int(pauses_ms[i]) - int(overlaps_ms[i]))
    return starts


def _wanted_overlap(speech: float, pauses: float, target: float, max_ms: float) -> float:
    """Overlap (ms) that makes overlap / (speech + pauses - overlap) == target, within max_ms."""
    wanted = target * (speech + pauses) / (1 + target)
    if speech + pauses - wanted > max_ms:
        return target * max_ms  # pauses will shrink so that the conversation lasts exactly max_ms
    return wanted


def _scaled_overlaps(drawn: np.ndarray, caps: np.ndarray, wanted: float) -> np.ndarray:
    """The drawn overlaps times one common factor, each within its cap, totalling `wanted` where possible."""
    wanted = min(wanted, caps.sum())
    lo, hi = 0.0, float(np.max(caps / drawn))
    for _ in range(60):  # the capped total grows monotonically with the factor
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(mid * drawn, caps).sum() < wanted else (lo, mid)
    return np.minimum(hi * drawn, caps)
