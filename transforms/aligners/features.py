"""MFCCs with deltas, framed so that frame t stands for the audio [t * shift, (t + 1) * shift).

Centring each analysis window on its frame's own stretch of audio keeps a frame index and a
time interchangeable, so a state change between frames t-1 and t is a boundary at t * shift
with no offset to correct for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import dct, rfft

# Power below this (a digital silence of exact zeros) is clamped before the log.
POWER_FLOOR = 1e-10


@dataclass
class FeatureSettings:
    frame_shift_ms: float
    window_ms: float
    num_mel_bins: int
    num_ceps: int
    preemphasis: float
    delta_window: int  # frames each side in the delta regression

    def validate(self, where: str) -> None:
        from ..settings import ConfigError

        if not 0 < self.frame_shift_ms <= self.window_ms:
            raise ConfigError(f"{where}.frame_shift_ms: must be above 0 and at most window_ms")
        if not 0 < self.num_ceps <= self.num_mel_bins:
            raise ConfigError(f"{where}.num_ceps: must be between 1 and num_mel_bins")


def frame_count(num_samples: int, rate: int, shift_ms: float) -> int:
    return int(np.ceil(num_samples / (rate * shift_ms / 1000)))


def _mel(hz):
    return 1127.0 * np.log1p(np.asarray(hz) / 700.0)


def _mel_filterbank(num_bins: int, n_fft: int, rate: int) -> np.ndarray:
    """Triangular filters on the mel scale from 20 Hz to Nyquist, (num_bins, n_fft // 2 + 1)."""
    edges = np.linspace(_mel(20.0), _mel(rate / 2), num_bins + 2)
    freqs = _mel(np.arange(n_fft // 2 + 1) * rate / n_fft)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - left) / (centre - left)
    falling = (right - freqs) / (right - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def _deltas(x: np.ndarray, window: int) -> np.ndarray:
    """Regression deltas over +-window frames, edges repeated."""
    padded = np.pad(x, ((window, window), (0, 0)), mode="edge")
    n = len(x)
    num = sum(k * (padded[window + k : window + k + n] - padded[window - k : window - k + n])
              for k in range(1, window + 1))
    return num / (2 * sum(k * k for k in range(1, window + 1)))


def mfcc(samples: np.ndarray, rate: int, s: FeatureSettings) -> np.ndarray:
    """(frames, 3 * num_ceps) float32: MFCCs, deltas, delta-deltas, mean-normalised per clip."""
    shift = rate * s.frame_shift_ms / 1000
    win = int(round(rate * s.window_ms / 1000))
    frames = frame_count(len(samples), rate, s.frame_shift_ms)
    x = np.asarray(samples, dtype=np.float64)
    x = np.append(x[0], x[1:] - s.preemphasis * x[:-1]) if len(x) else x
    # Window of frame t centred on (t + 0.5) * shift.
    starts = np.round((np.arange(frames) + 0.5) * shift - win / 2).astype(np.int64)
    lead = max(0, -int(starts.min()))
    tail = max(0, int(starts.max()) + win - len(x))
    x = np.pad(x, (lead, tail))
    idx = starts[:, None] + lead + np.arange(win)[None, :]
    chunks = x[idx]
    chunks = chunks - chunks.mean(axis=1, keepdims=True)
    chunks *= np.hamming(win)
    n_fft = 1 << (win - 1).bit_length()
    power = np.abs(rfft(chunks, n=n_fft, axis=1)) ** 2
    mel = np.log(np.maximum(power @ _mel_filterbank(s.num_mel_bins, n_fft, rate).T, POWER_FLOOR))
    ceps = dct(mel, type=2, norm="ortho", axis=1)[:, : s.num_ceps]
    ceps -= ceps.mean(axis=0)
    d1 = _deltas(ceps, s.delta_window)
    d2 = _deltas(d1, s.delta_window)
    return np.hstack([ceps, d1, d2]).astype(np.float32)


def frame_levels_db(samples: np.ndarray, rate: int, shift_ms: float) -> np.ndarray:
    """Mean power of each frame's own stretch of audio, in dB (full scale is about 0 dB)."""
    shift = rate * shift_ms / 1000
    frames = frame_count(len(samples), rate, shift_ms)
    if frames == 0:
        return np.zeros(0)
    bounds = np.minimum(np.round(np.arange(frames + 1) * shift).astype(np.int64), len(samples))
    energy = np.add.reduceat(np.asarray(samples, np.float64) ** 2, bounds[:-1]) / np.maximum(np.diff(bounds), 1)
    return 10 * np.log10(np.maximum(energy, POWER_FLOOR))
