"""Dry speech as a room would record it: one talker, a random room, noise at a set SNR.

Two users: the GMM aligner's multi-condition training (gmm_train.py) adds a degraded copy of
each training clip, and the benchmark and tests (bench/bench_align.py, tests/test_align_degraded.py)
measure the aligner on degraded demo clips, whose synthesizer gives the dry speech's true word
times. Both draw rooms as the simulate stage does (transforms/rooms.py: a shoebox from seeded
ranges, its impulse response by the image source method), with the talker across the room from
one microphone, and add pink noise (a diffuse field's spectrum; with one microphone its
coherence plays no part). They use different seeds, so the aligner never trains on the rooms
it is measured in.

The recording is cut so that the talker's direct sound lines up with the dry speech: sound
needs distance / c (3-9 ms here) to reach the microphone, and a corpus clip starts wherever it
was cut, so the dry word times are the times of the direct sound and no constant is owed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyroomacoustics as pra
import scipy.fft as sfft

from .. import rooms

# pyroomacoustics delays every image by half of its fractional-delay filter on top of the path.
_FILTER_DELAY = int(pra.constants.get("frac_delay_length")) // 2
# Frames within this many dB of the loudest 10 ms hold speech: the SNR is speech power over them.
_ACTIVE_RANGE_DB = 30.0
_TAIL_ENERGY = 1e-4  # impulse responses are cut where less than this share of their energy (-40 dB) remains
_PEAK_LIMIT = 0.99


@dataclass
class RoomDegradation:
    """Where degraded copies come from: a pool of rooms, and the SNR range."""

    seed: str  # the pool and every clip's room and noise follow from it (and the clip's id)
    rooms: int  # rooms in the pool; each clip takes one
    rt60_s: list[float]  # [min, max]
    distance_m: list[float]  # talker to microphone, horizontally
    snr_db: list[float]  # speech (while active) to noise

    def validate(self, where: str) -> None:
        from ...settings import ConfigError

        if self.rooms < 1:
            raise ConfigError(f"{where}.rooms: needs at least one room, got {self.rooms}")
        rooms.check_range(self.rt60_s, f"{where}.rt60_s", lo=0.05, hi=3.0)
        rooms.check_range(self.distance_m, f"{where}.distance_m", lo=0.1, hi=6.0)
        rooms.check_range(self.snr_db, f"{where}.snr_db", lo=-20.0, hi=80.0)


# The conditions issue 19 measured the aligner in: RT60 about 0.45 s, noise at 12 dB SNR.
BENCHMARK = RoomDegradation(seed="align-benchmark", rooms=8, rt60_s=[0.35, 0.55], distance_m=[1.0, 3.0],
                            snr_db=[12.0, 12.0])


@dataclass
class Room:
    rir: np.ndarray  # talker -> microphone, float32
    delay: int  # samples before the direct sound arrives
    spectra: dict[int, np.ndarray] = field(default_factory=dict)  # FFT size -> the rir's spectrum

    def spectrum(self, n_fft: int) -> np.ndarray:
        if n_fft not in self.spectra:
            self.spectra[n_fft] = sfft.rfft(self.rir, n_fft)
        return self.spectra[n_fft]


def room_pool(d: RoomDegradation, rate: int) -> list[Room]:
    """The pool's rooms: sizes and RT60 drawn as the simulate stage draws them, the talker as its
    far talker, heard by one microphone where the array's centre would be."""
    room = rooms.RoomSettings(pool_size=d.rooms, length_m=[3.0, 8.0], width_m=[3.0, 8.0], height_m=[2.5, 3.5],
                              rt60_s=list(d.rt60_s), wall_margin_m=0.5, rir_cache_size=0)
    one_mic = rooms.ArraySettings(preset="custom", glasses_mics=7, custom_positions_m=[[0.0, 0.0, 0.0]],
                                  head_height_m=[1.2, 1.8], self_mouth_offset_m=[0.0, 0.03, -0.09])
    talker = rooms.PartnerSettings(distance_m=list(d.distance_m), azimuth_deg=[-60.0, 60.0], height_m=[1.2, 1.8])
    seed = int(rooms.seeded_rng(d.seed, "rooms").integers(2**31))
    return [_room(rooms.sample_room(seed, i, room, one_mic, talker), rate) for i in range(d.rooms)]


def _room(spec: rooms.RoomSpec, rate: int) -> Room:
    """The far talker's impulse response at the microphone (rooms.compute_rirs computes both
    talkers at every microphone; a copy needs one of them)."""
    shoebox = pra.ShoeBox(list(spec.dims_m), fs=rate, materials=pra.Material(spec.absorption),
                          max_order=spec.max_order, air_absorption=False)
    shoebox.add_source(list(spec.other_position_m))
    shoebox.add_microphone(np.asarray(spec.mic_positions_m[0]))
    shoebox.compute_rir()
    rir = np.array(shoebox.rir[0][0], np.float64)
    distance = float(np.linalg.norm(np.subtract(spec.other_position_m, spec.mic_positions_m[0])))
    delay = int(round(distance / rooms.SPEED_OF_SOUND_M_S * rate)) + _FILTER_DELAY
    rir[: max(0, delay - _FILTER_DELAY)] = 0.0  # nothing arrives before the direct sound (pyroomacoustics
    # leaves a small offset there, the sum of its filters' tails)
    remaining = np.cumsum(rir[::-1] ** 2)[::-1]
    rir = rir[: int((remaining >= _TAIL_ENERGY * remaining[0]).sum())]
    return Room(rir.astype(np.float32), delay)


def pink_noise(samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise whose power falls as 1/f above 100 Hz, as rooms.diffuse_noise makes it."""
    n_fft = sfft.next_fast_len(samples, real=True)
    freqs = sfft.rfftfreq(n_fft, 1.0 / rate)
    spectrum = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    noise = sfft.irfft(spectrum / np.sqrt(np.maximum(freqs, 100.0)), n_fft)[:samples]
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def degrade(samples: np.ndarray, rate: int, room: Room, snr_db: float, noise: np.ndarray) -> np.ndarray:
    """`samples` said in `room`, direct sound on the dry timeline, `noise` (as long, unit power)
    at `snr_db` against the speech's active frames, scaled back to the dry clip's RMS (peaks kept
    within full scale)."""
    dry = np.asarray(samples, np.float32)
    n = len(dry)
    if n == 0:
        return dry
    n_fft = 1 << (n + len(room.rir) - 2).bit_length()  # powers of two: each room's spectrum is kept per size
    wet = sfft.irfft(sfft.rfft(dry, n_fft) * room.spectrum(n_fft), n_fft)[room.delay : room.delay + n]
    frame = max(1, rate // 100)
    power = np.add.reduceat(dry.astype(np.float64) ** 2, np.arange(0, n, frame)) / frame
    if power.max() > 0:
        active = np.repeat(power >= power.max() * 10 ** (-_ACTIVE_RANGE_DB / 10), frame)[:n]
        wet = rooms.mix_at_snr(wet[None], noise[None], snr_db, wet[None], active)[0]
    gain = np.sqrt(np.mean(np.square(dry, dtype=np.float64)) / max(float(np.mean(np.square(wet, dtype=np.float64))),
                                                                     1e-20))
    mixed = wet * gain
    return (mixed * rooms.clipping_guard(mixed[None], _PEAK_LIMIT)).astype(np.float32)


class Degrader:
    """Degraded copies of clips: each clip's room, SNR and stretch of noise follow from the seed and
    its id. The noise is cut from one long stretch made once (a clip longer gets its own)."""

    NOISE_S = 32

    def __init__(self, d: RoomDegradation, rate: int):
        self.settings, self.rate, self.pool = d, rate, room_pool(d, rate)
        self.noise = pink_noise(self.NOISE_S * rate, rate, rooms.seeded_rng(d.seed, "noise"))

    def __call__(self, clip_id: str, samples: np.ndarray) -> np.ndarray:
        rng = rooms.seeded_rng(self.settings.seed, "clip", clip_id)
        room = self.pool[int(rng.integers(len(self.pool)))]
        snr = float(rng.uniform(*self.settings.snr_db))
        n = len(samples)
        if n <= len(self.noise):
            start = int(rng.integers(len(self.noise) - n + 1))
            noise = self.noise[start : start + n]
        else:
            noise = pink_noise(n, self.rate, rng)
        return degrade(samples, self.rate, room, snr, noise)
