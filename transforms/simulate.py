"""The `simulate` stage: published utterances → two-talker, multi-channel conversations (JSTAR-style).

Two pure steps, each a stage of its own that balances (in == out + rejected):

1. `simulate/pairing` (pairing.py) groups the utterances (same split, same hash bucket of the id)
   and plans conversations between two speakers; it counts utterances, each landing in a
   conversation or rejected with a reason such as `unpaired` or `too_few_speakers`.
2. `simulate/render`: `render_conversation` turns a plan into audio (RIRs of a pooled room, FFT
   convolution, diffuse noise, optional beams, loudness and clipping guard), FLAC and labels
   (sot.py: SOT in word or utterance order, the timed words); it counts planned conversations.
   The FLAC goes to `audio_dir` (under the work dir) as an object named by its hash, and the
   record points at it, as an utterance points at its clip.

The utterances come from the align stage: word-level SOT needs their word times, so an utterance
that segment or align rejected is in no conversation (counted in those stages' rejects), and one
that arrives without them is rejected here (`not_aligned`) rather than serialized in utterance order.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import apache_beam as beam
import numpy as np
import soundfile as sf

from ..settings import ConfigError, load_stage
from . import rooms, sot
from .audio import clip_file
from .objects import Objects, digest_bytes
from .pairing import (
    PAIRING_STAGE,
    ConversationPlan,
    PairingSettings,
    TurnTakingSettings,
    group_key,
    plan_conversations,
)
from .records import AudioRef, Conversation, Reject, StageError, Stat, Utterance
from .stage import run_stage

STAGE = "simulate/render"  # counts planned conversations; PAIRING_STAGE counts utterances
# How the SOT targets came out (word order against utterance order), filed under the step's own name,
# where pipeline/summaries.py reads them into stats.json's `simulate` section.
SOT_STATS = "simulate"
_ROLE_INDEX = {sot.SELF: 0, sot.OTHER: 1}  # source order in the RIRs
_DRY_RMS = 0.05  # every clip enters the room at this level, so the geometry alone sets who is louder


@dataclass
class SimulateSettings:
    enabled: bool
    seed: int
    sampling_rate: int
    pairing: PairingSettings
    turn_taking: TurnTakingSettings
    room: rooms.RoomSettings
    array: rooms.ArraySettings
    partner: rooms.PartnerSettings
    mix: rooms.MixSettings
    labels: sot.LabelSettings
    sot: sot.SotSettings
    beamformer: rooms.BeamformerSettings

    def validate(self, where: str) -> None:
        if self.sampling_rate <= 0 or self.sampling_rate % 1000:
            raise ConfigError(
                f"{where}.sampling_rate: must be a positive multiple of 1000 (timelines use a 1 ms grid), "
                f"got {self.sampling_rate}"
            )
        rooms.check_geometry(self.room, self.array, self.partner, self.beamformer, where)

    def channel_names(self) -> list[str]:
        mics = len(rooms.mic_offsets(self.array))
        return [f"mic{i}" for i in range(mics)] + [f"beam_{t}" for t in self.beamformer.targets()]


def load_settings(overrides: dict[str, Any] | None = None) -> SimulateSettings:
    """This stage's defaults (configs/stages/) with `overrides` merged in, validated."""
    return load_stage(SimulateSettings, "simulate", overrides)


def room_pool(settings: SimulateSettings) -> list[rooms.RoomSpec]:
    """The run's rooms; geometry only (cheap), so the whole pool is built before any work starts."""
    return [
        rooms.sample_room(settings.seed, i, settings.room, settings.array, settings.partner)
        for i in range(settings.room.pool_size)
    ]



# -- Rendering -------------------------------------------------------------------------------


def render_conversation(
    plan: ConversationPlan,
    cache: rooms.RirCache,
    *,
    settings: SimulateSettings,
    room_specs: list[rooms.RoomSpec],
    audio_dir: str,
) -> Iterator[Conversation | Reject | Stat]:
    """Audio and labels of one planned conversation (the per-record function of the stage)."""
    try:
        labels = sot.labels(plan.timed_turns(), settings.labels.tokens(), settings.sot)
    except StageError as e:  # pairing checked every utterance, so this is a fault of the stage
        yield e.reject(plan.id, STAGE)
        return
    fs = settings.sampling_rate
    samples = plan.duration_ms() * fs // 1000
    tracks = np.zeros((2, samples), np.float32)
    talking = np.zeros((2, samples), bool)
    for turn in plan.turns:
        try:
            with clip_file(turn.utterance) as f:
                clip, _ = sf.read(f, dtype="float32", frames=turn.duration_ms * fs // 1000)
        except (sf.SoundFileError, OSError) as e:
            yield Reject(plan.id, STAGE, "undecodable_audio", f"utterance {turn.utterance.id}: {e}")
            return
        role, start = _ROLE_INDEX[turn.role], turn.start_ms * fs // 1000
        span = slice(start, start + len(clip))
        rms = float(np.sqrt(np.mean(clip**2)))
        if rms > 0:
            tracks[role, span] += clip * np.float32(_DRY_RMS / rms)
        talking[role, span] = True

    spec = room_specs[plan.room_index]
    rirs, reused = cache.get(spec, fs)
    yield Stat(STAGE, "rir_cache/hit" if reused else "rir_cache/miss")
    images = rooms.convolve(tracks, rirs)  # (source, mic, sample)
    if silent := [r for r, i in _ROLE_INDEX.items() if not np.any(images[i][:, talking[i]])]:
        yield Reject(plan.id, STAGE, "silent_audio", f"{' and '.join(silent)} utterances carry no signal")
        return
    speech, active = images.sum(axis=0), talking.any(axis=0)
    mic_positions = np.asarray(spec.mic_positions_m)
    noise = rooms.diffuse_noise(samples, mic_positions, fs, rooms.seeded_rng(settings.seed, "noise", plan.id))
    other = _ROLE_INDEX[sot.OTHER]
    mics = rooms.mix_at_snr(speech, noise, plan.snr_db, images[other], talking[other])
    channels = mics
    if targets := settings.beamformer.targets():
        positions = {"self": spec.self_position_m, "other": spec.other_position_m}
        beams = rooms.beamform(
            mics,
            mic_positions,
            [np.asarray(positions[t]) for t in targets],
            fs,
            settings.beamformer.method,
            settings.beamformer.diagonal_loading,
        )
        channels = np.vstack([mics, beams])
    channels = channels * np.float32(rooms.loudness_gain(mics, active, settings.mix.loudness_dbfs))
    guard = rooms.clipping_guard(channels, settings.mix.peak_limit)
    if guard < 1.0:
        channels *= np.float32(guard)
        yield Stat(STAGE, "clipping_guard")

    segments = plan.segments()
    for lang in sorted({lang for s in segments for lang in s["translations"]} - set(labels.sot_translations)):
        yield Stat(STAGE, f"sot_translation/incomplete/{lang}")
    yield from _sot_stats(labels)
    yield Stat(STAGE, "audio_s", samples / fs)
    yield Stat(STAGE, "overlap_s", sot.overlap_s(segments))
    flac = _flac(channels, fs)
    path = Objects(audio_dir, suffix=".flac").put(digest_bytes(flac), flac)
    yield Conversation(
        id=plan.id,
        split=plan.split,
        channels=len(channels),
        sampling_rate=fs,
        room={
            "index": plan.room_index,
            "array": settings.array.preset,
            **spec.metadata(),
            "snr_db": plan.snr_db,
            "channel_names": settings.channel_names(),
        },
        segments=segments,
        sot_text=labels.sot_text,
        sot_translations=labels.sot_translations,
        audio=AudioRef(path, 0.0, samples / fs, fs),
        words=labels.words,
        translation_chunks=labels.translation_chunks,
    )


def _sot_stats(labels: sot.Labels) -> Iterator[Stat]:
    yield Stat(SOT_STATS, "conversations")
    yield Stat(SOT_STATS, "words", len(labels.words))
    if labels.reordered:
        yield Stat(SOT_STATS, "reordered")
    for order, waits in labels.waits_ms.items():
        yield Stat(SOT_STATS, f"wait_ms/{order}", sum(waits))
        yield Stat(SOT_STATS, f"waiting_words/{order}", sum(w > 0 for w in waits))


def _flac(channels: np.ndarray, sampling_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, channels.T, sampling_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


# -- Beam ------------------------------------------------------------------------------------


def _pair_group(key: tuple[str, int], utterances: Iterable[Utterance], *, settings: SimulateSettings):
    split, group = key
    return plan_conversations(split, group, utterances, settings)


def _split_of(utt: Utterance) -> tuple[str, None]:
    return utt.split, None


class Simulate(beam.PTransform):
    """Utterances → (conversations, rejects, stats) of both stages."""

    def __init__(self, settings: SimulateSettings, audio_dir: str):
        super().__init__()
        self.settings, self.audio_dir = settings, audio_dir

    def expand(self, utterances):
        s = self.settings
        specs = room_pool(s)
        split_sizes = beam.pvalue.AsDict(
            utterances | "SplitOf" >> beam.Map(_split_of) | "SplitSizes" >> beam.combiners.Count.PerKey()
        )
        keyed = utterances | "KeyByGroup" >> beam.Map(group_key, split_sizes, s.pairing.group_size)
        plans, pairing_rejects, pairing_stats = run_stage(
            keyed, PAIRING_STAGE, partial(_pair_group, settings=s), grouped=True,
            carries=ConversationPlan.utterance_ids,
        )
        conversations, rejects, stats = run_stage(
            plans | "Spread" >> beam.Reshuffle(),
            STAGE,
            partial(render_conversation, settings=s, room_specs=specs, audio_dir=self.audio_dir),
            setup=partial(rooms.RirCache, s.room.rir_cache_size),
        )
        return (
            conversations,
            (pairing_rejects, rejects) | "Rejects" >> beam.Flatten(),
            (pairing_stats, stats) | "Stats" >> beam.Flatten(),
        )
