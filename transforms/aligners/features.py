"""MFCCs with deltas, framed so that frame t stands for the audio [t * shift, (t + 1) * shift), with
late reverberation taken out of the mel energies before the log (`dereverberated`).

Centring each analysis window on its frame's own stretch of audio keeps a frame index and a
time interchangeable, so a state change between frames t-1 and t is a boundary at t * shift
with no offset to correct for.

Everything runs in float32, the framing (pre-emphasis, zero padding at the clip's edges, DC
removal, the Hamming window) is compiled, and the FFTs run on batches of frames small enough
to stay in cache, so a clip costs little more than its FFTs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np
from scipy.fft import dct, rfft

# Power below this (a digital silence of exact zeros) is clamped before the log.
POWER_FLOOR = 1e-10
# Frames per FFT batch: small batches keep the spectra in cache and their memory reused.
BLOCK = 128


@dataclass
class FeatureSettings:
    frame_shift_ms: float
    window_ms: float
    num_mel_bins: int
    num_ceps: int
    preemphasis: float
    delta_window: int  # frames each side in the delta regression
    dereverb_rt60_s: float  # late reverberation suppressed as if rooms rang this long; 0: none
    dereverb_delay_ms: float  # reverberation later than this after the sound counts as late
    dereverb_floor_db: float  # no band of a frame is attenuated by more

    def validate(self, where: str) -> None:
        from ...settings import ConfigError

        if not 0 < self.frame_shift_ms <= self.window_ms:
            raise ConfigError(f"{where}.frame_shift_ms: must be above 0 and at most window_ms")
        if not 0 < self.num_ceps <= self.num_mel_bins:
            raise ConfigError(f"{where}.num_ceps: must be between 1 and num_mel_bins")
        if self.dereverb_rt60_s < 0 or self.dereverb_delay_ms < self.frame_shift_ms or self.dereverb_floor_db > 0:
            raise ConfigError(f"{where}: dereverb_rt60_s must be >= 0, dereverb_delay_ms at least frame_shift_ms "
                              f"and dereverb_floor_db <= 0")


def frame_count(num_samples: int, rate: int, shift_ms: float) -> int:
    return int(np.ceil(num_samples / (rate * shift_ms / 1000)))


def _mel(hz):
    return 1127.0 * np.log1p(np.asarray(hz) / 700.0)


@lru_cache(maxsize=8)
def _mel_filterbank(num_bins: int, n_fft: int, rate: int) -> np.ndarray:
    """Triangular filters on the mel scale from 20 Hz to Nyquist, (n_fft // 2 + 1, num_bins)."""
    edges = np.linspace(_mel(20.0), _mel(rate / 2), num_bins + 2)
    freqs = _mel(np.arange(n_fft // 2 + 1) * rate / n_fft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - left) / (centre - left)
    falling = (right - freqs) / (right - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).T.astype(np.float32)


@lru_cache(maxsize=8)
def _hamming(win: int) -> np.ndarray:
    return np.hamming(win).astype(np.float32)


@lru_cache(maxsize=8)
def _dct_matrix(num_bins: int, num_ceps: int) -> np.ndarray:
    """The orthonormal DCT-II's first `num_ceps` outputs as a (num_bins, num_ceps) matrix."""
    return dct(np.eye(num_bins), type=2, norm="ortho", axis=1)[:, :num_ceps].astype(np.float32)


@numba.njit(cache=True)
def _preemphasised(x: np.ndarray, lead: int, size: int, preemphasis: float) -> np.ndarray:
    """`x` pre-emphasised, after `lead` zeros, zero-padded to `size`."""
    out = np.zeros(size, np.float32)
    if len(x):
        out[lead] = x[0]
    for j in range(1, len(x)):
        out[lead + j] = x[j] - preemphasis * x[j - 1]
    return out


@numba.njit(cache=True, fastmath={"reassoc"})  # reassoc: the means sum in vector lanes
def _windows(x: np.ndarray, starts: np.ndarray, window: np.ndarray, n_fft: int) -> np.ndarray:
    """(frames, n_fft): `x` from each start less its mean, times the window, zero-padded."""
    win = len(window)
    out = np.empty((len(starts), n_fft), np.float32)
    for t in range(len(starts)):
        chunk = x[starts[t] : starts[t] + win]
        mean = chunk.mean()
        for i in range(win):
            out[t, i] = (chunk[i] - mean) * window[i]
        out[t, win:] = 0.0
    return out


@numba.njit(cache=True)
def _deltas(x: np.ndarray, window: int) -> np.ndarray:
    """Regression deltas over +-window frames, edges repeated."""
    n, dim = x.shape
    out = np.zeros_like(x)
    norm = window * (window + 1) * (2 * window + 1) / 3  # 2 * sum of k^2
    for t in range(n):
        for k in range(1, window + 1):
            later, earlier = x[min(t + k, n - 1)], x[max(t - k, 0)]
            for d in range(dim):
                out[t, d] += k * (later[d] - earlier[d]) / norm
    return out


def mfcc(samples: np.ndarray, rate: int, s: FeatureSettings) -> np.ndarray:
    """(frames, 3 * num_ceps) float32: MFCCs, deltas, delta-deltas, mean-normalised per clip."""
    shift = rate * s.frame_shift_ms / 1000
    win = int(round(rate * s.window_ms / 1000))
    frames = frame_count(len(samples), rate, s.frame_shift_ms)
    n_fft = 1 << (win - 1).bit_length()
    # Window of frame t centred on (t + 0.5) * shift.
    starts = np.round((np.arange(frames) + 0.5) * shift - win / 2).astype(np.int64)
    lead = max(0, -int(starts[0]))
    size = lead + max(len(samples), int(starts[-1]) + win)
    x = _preemphasised(np.asarray(samples, np.float32), lead, size, s.preemphasis)
    window, filters = _hamming(win), _mel_filterbank(s.num_mel_bins, n_fft, rate)
    energies = np.empty((frames, s.num_mel_bins), np.float32)
    for first in range(0, frames, BLOCK):
        chunks = _windows(x, starts[first : first + BLOCK] + lead, window, n_fft)
        spectrum = rfft(chunks, axis=1, overwrite_x=True)
        energies[first : first + BLOCK] = (np.square(spectrum.real) + np.square(spectrum.imag)) @ filters
    if s.dereverb_rt60_s > 0:
        energies = dereverberated(energies, s)
    ceps = np.log(np.maximum(energies, POWER_FLOOR)) @ _dct_matrix(s.num_mel_bins, s.num_ceps)
    ceps -= ceps.mean(axis=0)
    d1 = _deltas(ceps, s.delta_window)
    return np.hstack([ceps, d1, _deltas(d1, s.delta_window)])


def dereverberated(energies: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """Mel energies less their late reverberation, by spectral subtraction (Lebart et al. 2001).

    A room rings on after a sound, decaying by 60 dB in its RT60; what rings more than
    `dereverb_delay_ms` later smears a phone into the next one and drags forced boundaries late.
    That part is taken as the energy `dereverb_delay_ms` earlier, decayed over the delay, and
    subtracted, each band of each frame losing at most `dereverb_floor_db`. The delay keeps the
    direct sound and early reflections, which mark where a sound starts.
    """
    d = max(1, int(round(s.dereverb_delay_ms / s.frame_shift_ms)))
    decay = np.float32(10 ** (-6 * d * s.frame_shift_ms / 1000 / s.dereverb_rt60_s))  # -60 dB per RT60
    late = np.zeros_like(energies)
    late[d:] = decay * energies[:-d]
    gain = np.maximum(1 - late / np.maximum(energies, POWER_FLOOR), np.float32(10 ** (s.dereverb_floor_db / 10)))
    return energies * gain


def frame_levels_db(samples: np.ndarray, rate: int, shift_ms: float) -> np.ndarray:
    """Mean power of each frame's own stretch of audio, in dB (full scale is about 0 dB)."""
    shift = rate * shift_ms / 1000
    frames = frame_count(len(samples), rate, shift_ms)
    if frames == 0:
        return np.zeros(0)
    bounds = np.minimum(np.round(np.arange(frames + 1) * shift).astype(np.int64), len(samples))
    energy = np.add.reduceat(np.asarray(samples, np.float64) ** 2, bounds[:-1]) / np.maximum(np.diff(bounds), 1)
    return 10 * np.log10(np.maximum(energy, POWER_FLOOR))
