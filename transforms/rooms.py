"""Simulated rooms for the `simulate` stage: where the talkers and the array are, and what the array hears.

A run has a fixed pool of shoebox rooms; room i is drawn from an RNG seeded by (run seed, i),
so every worker rebuilds the same pool from the settings alone. A room fixes the array on the
wearer's head, SELF's mouth just below it and OTHER across the room, so its impulse responses
(image source method, pyroomacoustics) serve every conversation placed in it: each worker
keeps them in an LRU keyed by the room parameters.

Geometry uses a head frame for the array: x to the wearer's right, y forward, z up.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyroomacoustics as pra
import scipy.fft as sfft
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

from ..settings import ConfigError

SPEED_OF_SOUND_M_S = float(pra.constants.get("c"))
FLAC_MAX_CHANNELS = 8  # the FLAC format's limit

# Seven points on a glasses frame (temple rear, hinge, lens top, nose bridge, mirrored), at most ~14 cm
# apart; the 5- and 6-mic presets keep the subsets below, which stay spread over both sides.
_GLASSES_FRAME_M = np.array(
    [
        [-0.065, -0.050, 0.000],
        [-0.065, 0.000, 0.000],
        [-0.035, 0.005, 0.020],
        [0.000, 0.010, 0.000],
        [0.035, 0.005, 0.020],
        [0.065, 0.000, 0.000],
        [0.065, -0.050, 0.000],
    ]
)
_GLASSES_SUBSETS = {5: (0, 1, 3, 5, 6), 6: (0, 1, 2, 4, 5, 6), 7: tuple(range(7))}
_CIRCULAR_MICS, _CIRCULAR_RADIUS_M = 6, 0.10
_MIN_MIC_SPACING_M = 1e-3  # closer than this, two "mics" are one mic
_MIN_MOUTH_TO_MIC_M = 0.02  # an image source on top of a mic has infinite gain
_SNR_LIMITS_DB = (-20.0, 80.0)
_RIR_TAIL_ENERGY = 1e-6  # RIRs are cut where less than this share of their energy (-60 dB) remains
_COHERENCE_BINS = 257  # frequency grid for the diffuse-noise mixing matrices (coherence is smooth)
_BEAM_FRAME, _BEAM_HOP = 512, 256


def seeded_rng(*parts: object) -> np.random.Generator:
    """An RNG that depends only on `parts` (run seed, record id, ...), never on process or worker."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def check_range(values: list[float], where: str, *, lo: float = -math.inf, hi: float = math.inf) -> None:
    """`values` is a [min, max] pair with lo <= min <= max <= hi."""
    if len(values) != 2 or values[0] > values[1]:
        raise ConfigError(f"{where}: expected [min, max] with min <= max, got {values}")
    if values[0] < lo or values[1] > hi:
        raise ConfigError(f"{where}: {values} must lie within [{lo}, {hi}]")


@dataclass
class RoomSettings:
    pool_size: int  # rooms per run
    length_m: list[float]  # [min, max] of each side
    width_m: list[float]
    height_m: list[float]
    rt60_s: list[float]
    wall_margin_m: float  # no talker or array centre closer than this to a wall, floor or ceiling
    rir_cache_size: int  # rooms whose RIRs one worker keeps; 0 recomputes them for every conversation

    def validate(self, where: str) -> None:
        if self.pool_size < 1:
            raise ConfigError(f"{where}.pool_size: needs at least one room, got {self.pool_size}")
        for name in ("length_m", "width_m", "height_m"):
            check_range(getattr(self, name), f"{where}.{name}", lo=0.5)
        if self.rt60_s[0] <= 0:
            raise ConfigError(f"{where}.rt60_s: RT60 must be positive, got {self.rt60_s}")
        check_range(self.rt60_s, f"{where}.rt60_s", hi=3.0)
        if self.wall_margin_m <= 0:
            raise ConfigError(f"{where}.wall_margin_m: must be positive, got {self.wall_margin_m}")
        if self.rir_cache_size < 0:
            raise ConfigError(f"{where}.rir_cache_size: must be >= 0, got {self.rir_cache_size}")
        # Sabine's absorption grows with room size and shrinks with RT60: the largest room at the
        # shortest RT60 is the hardest case, and a coefficient above 1 is impossible.
        largest = [self.length_m[1], self.width_m[1], self.height_m[1]]
        try:
            pra.inverse_sabine(self.rt60_s[0], largest)
        except ValueError:
            raise ConfigError(
                f"{where}.rt60_s: a {'x'.join(map(str, largest))} m room cannot decay within "
                f"{self.rt60_s[0]} s (Sabine absorption would exceed 1); raise the lower RT60 or shrink the rooms"
            ) from None


@dataclass
class ArraySettings:
    preset: Literal["glasses", "circular", "custom"]  # circular: 6 mics on a 10 cm radius
    glasses_mics: int  # 5, 6 or 7
    custom_positions_m: list[list[float]]  # head frame; the array centre is their centroid
    head_height_m: list[float]  # [min, max] height of the array centre
    self_mouth_offset_m: list[float]  # SELF's mouth from the array centre, head frame

    def validate(self, where: str) -> None:
        if self.glasses_mics not in _GLASSES_SUBSETS:
            raise ConfigError(
                f"{where}.glasses_mics: the glasses preset has 5, 6 or 7 mics, got {self.glasses_mics}"
            )
        if self.preset == "custom":
            positions = self.custom_positions_m
            if len(positions) < 2 or any(len(p) != 3 for p in positions):
                raise ConfigError(
                    f"{where}.custom_positions_m: needs two or more [x, y, z] points, got {positions}"
                )
            spacing = _pairwise_distances(np.asarray(positions, float))
            np.fill_diagonal(spacing, np.inf)
            if spacing.min() < _MIN_MIC_SPACING_M:
                raise ConfigError(f"{where}.custom_positions_m: two mics are {spacing.min():.4f} m apart")
        if len(self.self_mouth_offset_m) != 3:
            raise ConfigError(
                f"{where}.self_mouth_offset_m: expected [x, y, z], got {self.self_mouth_offset_m}"
            )
        gap = np.linalg.norm(mic_offsets(self) - np.asarray(self.self_mouth_offset_m), axis=1).min()
        if gap < _MIN_MOUTH_TO_MIC_M:
            raise ConfigError(f"{where}.self_mouth_offset_m: SELF's mouth is {gap:.3f} m from a mic")
        check_range(self.head_height_m, f"{where}.head_height_m", lo=0.0)


@dataclass
class PartnerSettings:
    distance_m: list[float]  # [min, max] horizontal distance of OTHER's mouth from the array centre
    azimuth_deg: list[float]  # OTHER's bearing relative to where the wearer faces
    height_m: list[float]

    def validate(self, where: str) -> None:
        check_range(self.distance_m, f"{where}.distance_m", lo=0.1)
        check_range(self.azimuth_deg, f"{where}.azimuth_deg", lo=-180.0, hi=180.0)
        check_range(self.height_m, f"{where}.height_m", lo=0.0)


@dataclass
class MixSettings:
    snr_db: list[float]  # [min, max] OTHER's speech (the far talker) to noise, over the mics
    loudness_dbfs: float  # RMS of the mic channels while anyone talks
    peak_limit: float  # the clipping guard scales everything down when a sample exceeds this

    def validate(self, where: str) -> None:
        check_range(self.snr_db, f"{where}.snr_db", lo=_SNR_LIMITS_DB[0], hi=_SNR_LIMITS_DB[1])
        if not -60.0 <= self.loudness_dbfs < 0.0:
            raise ConfigError(f"{where}.loudness_dbfs: must be in [-60, 0), got {self.loudness_dbfs}")
        if not 0.0 < self.peak_limit <= 1.0:
            raise ConfigError(f"{where}.peak_limit: must be in (0, 1], got {self.peak_limit}")


@dataclass
class BeamformerSettings:
    method: Literal["none", "delay_and_sum", "mvdr"]
    steer_at: list[Literal["self", "other"]]  # one extra channel per target, in this order
    diagonal_loading: float  # MVDR: added to the diffuse-noise coherence so the weights stay robust

    def validate(self, where: str) -> None:
        if self.method != "none" and (not self.steer_at or len(set(self.steer_at)) != len(self.steer_at)):
            raise ConfigError(f"{where}.steer_at: name each of self/other at most once, got {self.steer_at}")
        if self.diagonal_loading < 0:
            raise ConfigError(f"{where}.diagonal_loading: must be >= 0, got {self.diagonal_loading}")

    def targets(self) -> list[str]:
        return [] if self.method == "none" else list(self.steer_at)


def check_geometry(
    room: RoomSettings,
    array: ArraySettings,
    partner: PartnerSettings,
    beamformer: BeamformerSettings,
    where: str,
) -> None:
    """Checks across sections: everything fits in every room the ranges allow, and in one FLAC file."""
    margin = room.wall_margin_m
    reach = np.linalg.norm(np.vstack([mic_offsets(array), array.self_mouth_offset_m]), axis=1).max()
    if reach >= margin:
        raise ConfigError(
            f"{where}.array: a mic or SELF's mouth lies {reach:.2f} m from the array centre, not within "
            f"room.wall_margin_m ({margin} m), so it could end up outside the room"
        )
    for name, heights in (
        ("array.head_height_m", array.head_height_m),
        ("partner.height_m", partner.height_m),
    ):
        if heights[0] < margin or heights[1] > room.height_m[0] - margin:
            raise ConfigError(
                f"{where}.{name}: {heights} must lie within [{margin}, {room.height_m[0] - margin:.2f}] m "
                f"(wall margin below the lowest ceiling of {room.height_m[0]} m)"
            )
    floor_span = min(room.length_m[0], room.width_m[0]) - 2 * margin
    if partner.distance_m[0] > floor_span:
        raise ConfigError(
            f"{where}.partner.distance_m: OTHER at {partner.distance_m[0]} m does not fit the smallest room "
            f"({room.length_m[0]} x {room.width_m[0]} m with {margin} m margins leaves {floor_span:.2f} m)"
        )
    channels = len(mic_offsets(array)) + len(beamformer.targets())
    if channels > FLAC_MAX_CHANNELS:
        raise ConfigError(
            f"{where}: {len(mic_offsets(array))} mics + {len(beamformer.targets())} beamformer channels = {channels}, "
            f"but FLAC holds at most {FLAC_MAX_CHANNELS}; use fewer mics or steer at one talker"
        )


def mic_offsets(array: ArraySettings) -> np.ndarray:
    """Mic positions (M, 3) in the head frame, centred on their centroid (the array centre)."""
    if array.preset == "glasses":
        points = _GLASSES_FRAME_M[list(_GLASSES_SUBSETS[array.glasses_mics])]
    elif array.preset == "circular":
        angles = 2 * np.pi * np.arange(_CIRCULAR_MICS) / _CIRCULAR_MICS
        points = _CIRCULAR_RADIUS_M * np.stack(
            [np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1
        )
    else:
        points = np.asarray(array.custom_positions_m, float)
    return points - points.mean(axis=0)


@dataclass(frozen=True)
class RoomSpec:
    """One room of the pool; hashable, so it is its own RIR cache key."""

    dims_m: tuple[float, float, float]
    rt60_s: float
    absorption: float  # energy absorption of every surface, from inverse Sabine
    max_order: int  # image source order that covers the RT60
    mic_positions_m: tuple[tuple[float, float, float], ...]
    self_position_m: tuple[float, float, float]
    other_position_m: tuple[float, float, float]

    def metadata(self) -> dict:
        """JSON-able description for the published `room` column."""
        return {
            "dims_m": list(self.dims_m),
            "rt60_s": self.rt60_s,
            "absorption": self.absorption,
            "max_order": self.max_order,
            "mic_positions_m": [list(p) for p in self.mic_positions_m],
            "source_positions_m": {"self": list(self.self_position_m), "other": list(self.other_position_m)},
        }


def sample_room(
    seed: int, index: int, room: RoomSettings, array: ArraySettings, partner: PartnerSettings
) -> RoomSpec:
    """Room `index` of the pool: size, RT60, the wearer's pose and OTHER's place, all from (seed, index)."""
    rng = seeded_rng(seed, "room", index)
    dims = np.round([rng.uniform(*room.length_m), rng.uniform(*room.width_m), rng.uniform(*room.height_m)], 3)
    rt60 = round(float(rng.uniform(*room.rt60_s)), 3)
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    facing = rng.uniform(0.0, 2 * np.pi)
    bearing = facing + np.deg2rad(rng.uniform(*partner.azimuth_deg))
    direction = np.array([np.cos(bearing), np.sin(bearing)])
    free_xy = dims[:2] - 2 * room.wall_margin_m
    with np.errstate(divide="ignore"):
        fits = np.min(free_xy / np.abs(direction))  # the farthest OTHER can be along this bearing
    offset = rng.uniform(partner.distance_m[0], min(partner.distance_m[1], fits)) * direction
    centre_xy = rng.uniform(
        room.wall_margin_m + np.maximum(0.0, -offset), dims[:2] - room.wall_margin_m - np.maximum(0.0, offset)
    )
    centre = np.array([*centre_xy, rng.uniform(*array.head_height_m)])
    other = np.array([*(centre_xy + offset), rng.uniform(*partner.height_m)])
    to_world = np.array(  # columns: the head frame's right, forward and up in room coordinates
        [[np.sin(facing), np.cos(facing), 0.0], [-np.cos(facing), np.sin(facing), 0.0], [0.0, 0.0, 1.0]]
    )
    mics = centre + mic_offsets(array) @ to_world.T
    mouth = centre + np.asarray(array.self_mouth_offset_m) @ to_world.T
    return RoomSpec(
        dims_m=_point(dims),
        rt60_s=rt60,
        absorption=float(absorption),
        max_order=int(max_order),
        mic_positions_m=tuple(_point(m) for m in mics),
        self_position_m=_point(mouth),
        other_position_m=_point(other),
    )


def _point(values) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def compute_rirs(spec: RoomSpec, sampling_rate: int) -> np.ndarray:
    """Impulse responses (2 sources: SELF, OTHER; M mics; L taps), float32, cut where -60 dB of energy remains."""
    shoebox = pra.ShoeBox(
        list(spec.dims_m),
        fs=sampling_rate,
        materials=pra.Material(spec.absorption),
        max_order=spec.max_order,
        air_absorption=False,
    )
    shoebox.add_source(list(spec.self_position_m))
    shoebox.add_source(list(spec.other_position_m))
    shoebox.add_microphone_array(np.asarray(spec.mic_positions_m).T)
    shoebox.compute_rir()
    taps = max(len(h) for per_mic in shoebox.rir for h in per_mic)
    rirs = np.zeros((2, len(spec.mic_positions_m), taps))
    for m, per_mic in enumerate(shoebox.rir):
        for s, h in enumerate(per_mic):
            rirs[s, m, : len(h)] = h
    remaining = np.cumsum((rirs**2)[..., ::-1], axis=-1)[..., ::-1]
    keep = int((remaining >= _RIR_TAIL_ENERGY * remaining[..., :1]).sum(axis=-1).max())
    return rirs[..., :keep].astype(np.float32)


class RirCache:
    """One worker's LRU of impulse responses, keyed by the room parameters and sampling rate."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._rirs: OrderedDict[tuple[RoomSpec, int], np.ndarray] = OrderedDict()

    def get(self, spec: RoomSpec, sampling_rate: int) -> tuple[np.ndarray, bool]:
        """The room's RIRs and whether they came from the cache."""
        key = (spec, sampling_rate)
        if key in self._rirs:
            self._rirs.move_to_end(key)
            return self._rirs[key], True
        rirs = compute_rirs(spec, sampling_rate)
        if self.capacity > 0:
            self._rirs[key] = rirs
            if len(self._rirs) > self.capacity:
                self._rirs.popitem(last=False)
        return rirs, False


def convolve(tracks: np.ndarray, rirs: np.ndarray) -> np.ndarray:
    """Each source's image at each mic (S, M, N): track (S, N) * rir (S, M, L) by FFT, cut to N samples."""
    samples = tracks.shape[-1]
    n_fft = sfft.next_fast_len(samples + rirs.shape[-1] - 1, real=True)
    spectra = sfft.rfft(tracks, n_fft)[:, None, :] * sfft.rfft(rirs, n_fft)
    return sfft.irfft(spectra, n_fft)[..., :samples]


def _pairwise_distances(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)


def _diffuse_coherence(mic_positions: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Spatial coherence (F, M, M) of a spherically diffuse field: sinc(2 f d / c)."""
    distances = _pairwise_distances(mic_positions)
    return np.sinc(2 * freqs[:, None, None] * distances / SPEED_OF_SOUND_M_S)


def diffuse_noise(
    samples: int, mic_positions: np.ndarray, sampling_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Pink background noise (M, N) with the inter-mic coherence of a diffuse field, unit mean power."""
    n_fft = sfft.next_fast_len(samples, real=True)
    freqs = sfft.rfftfreq(n_fft, 1.0 / sampling_rate)
    grid = np.linspace(0.0, sampling_rate / 2, _COHERENCE_BINS)
    eigenvalues, eigenvectors = np.linalg.eigh(_diffuse_coherence(mic_positions, grid))
    mixing = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None, :]  # A with A A^T = coherence
    mics = len(mic_positions)
    spectrum = (
        rng.standard_normal((mics, len(freqs))) + 1j * rng.standard_normal((mics, len(freqs)))
    ).astype(np.complex64)
    spectrum *= (1.0 / np.sqrt(np.maximum(freqs, 100.0))).astype(np.float32)  # pink: power ~ 1/f above 100 Hz
    nearest = np.rint(freqs / grid[1]).astype(int)
    edges = np.searchsorted(nearest, np.arange(_COHERENCE_BINS + 1))
    for k in range(_COHERENCE_BINS):
        band = slice(edges[k], edges[k + 1])
        spectrum[:, band] = mixing[k].astype(np.float32) @ spectrum[:, band]
    noise = sfft.irfft(spectrum, n_fft)[:, :samples]
    return noise / np.sqrt(np.mean(noise**2))


def mix_at_snr(
    speech: np.ndarray, noise: np.ndarray, snr_db: float, reference: np.ndarray, active: np.ndarray
) -> np.ndarray:
    """speech + noise, scaled so that the power of `reference` (M, N) while `active` / noise power = SNR."""
    reference_power = float(np.mean(reference[:, active] ** 2))
    noise_power = float(np.mean(noise**2))
    return speech + noise * np.float32(math.sqrt(reference_power / (noise_power * 10 ** (snr_db / 10))))


def loudness_gain(mics: np.ndarray, active: np.ndarray, loudness_dbfs: float) -> float:
    """The gain that brings the mic channels' RMS while anyone talks to `loudness_dbfs`."""
    return 10 ** (loudness_dbfs / 20) / math.sqrt(float(np.mean(mics[:, active] ** 2)))


def clipping_guard(channels: np.ndarray, peak_limit: float) -> float:
    """The gain (<= 1) that keeps every sample within ±peak_limit; scaling beats clipping for training audio."""
    peak = float(np.abs(channels).max())
    return min(1.0, peak_limit / peak) if peak > 0 else 1.0


def steering_vectors(mic_positions: np.ndarray, source: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Near-field transfer (F, M) from `source` to each mic, relative to mic 0 (spherical spreading + delay)."""
    distances = np.linalg.norm(mic_positions - source, axis=1)
    delays = (distances - distances[0]) / SPEED_OF_SOUND_M_S
    return (distances[0] / distances) * np.exp(-2j * np.pi * freqs[:, None] * delays)


def beamform(
    mics: np.ndarray,
    mic_positions: np.ndarray,
    targets: list[np.ndarray],
    sampling_rate: int,
    method: Literal["delay_and_sum", "mvdr"],
    diagonal_loading: float,
) -> np.ndarray:
    """One distortionless beam (K, N) per target position, in the STFT domain.

    Delay-and-sum aligns and averages the mics; MVDR minimises diffuse (superdirective) noise
    under the distortionless constraint. Both use only the geometry, so no oracle signal is needed.
    """
    stft = ShortTimeFFT(hann(_BEAM_FRAME, sym=False), hop=_BEAM_HOP, fs=sampling_rate)
    spectra = stft.stft(mics)  # (M, F, T)
    weights = []
    for target in targets:
        steer = steering_vectors(mic_positions, target, stft.f)  # (F, M)
        if method == "mvdr":
            noise = _diffuse_coherence(mic_positions, stft.f) + diagonal_loading * np.eye(len(mic_positions))
            solved = np.linalg.solve(noise, steer[..., None])[..., 0]  # R^-1 d
            weights.append(solved / np.einsum("fm,fm->f", steer.conj(), solved)[:, None])
        else:
            weights.append(steer / np.sum(np.abs(steer) ** 2, axis=1, keepdims=True))
    beams = np.einsum("kfm,mft->kft", np.conj(weights), spectra)
    return stft.istft(beams, k1=mics.shape[-1]).astype(np.float32)
