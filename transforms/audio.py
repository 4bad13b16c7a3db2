"""The audio stage: read each clip once, check it, bring it to the dataset's format.

MuST-C clips are cut from a talk-long wav, CoVoST clips are 48 kHz MP3, FLEURS clips are
wavs; all leave this stage as mono FLAC at the dataset sampling rate, written once to the
work directory. The record then points at that file instead of carrying the bytes, so the
shuffles after this stage move small records and no worker holds the corpus's audio;
stages that need samples open the clip with `clip_file`. Resampling and downmixing are not
errors (corpora ship such files) but are recorded on the record and counted.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from . import files
from .records import AudioRef, Reject, Stat, Utterance

STAGE = "audio"
# A declared clip may end this much past the end of its file before we call the file truncated
# (MuST-C offsets and durations are rounded to 10 ms or less).
TOLERANCE_S = 0.02


class AudioError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def read_clip(ref: AudioRef) -> tuple[np.ndarray, int]:
    """Samples (frames, channels) float32 and their rate; raises AudioError with a reason code."""
    if not files.exists(ref.path):
        raise AudioError("missing_audio", f"{ref.path} does not exist")
    try:
        with files.open_read(ref.path) as raw, sf.SoundFile(raw) as f:
            rate, total = f.samplerate, f.frames
            start = round(ref.offset_s * rate)
            frames = total - start if ref.duration_s is None else round(ref.duration_s * rate)
            if start + frames > total + TOLERANCE_S * rate:
                raise AudioError(
                    "truncated_audio",
                    f"{ref.path} holds {total / rate:.3f} s but the clip ends at "
                    f"{(start + frames) / rate:.3f} s",
                )
            f.seek(start)
            data = f.read(min(frames, total - start), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
        raise AudioError("unreadable_audio", f"{ref.path}: {e}") from None
    if data.shape[0] < frames - TOLERANCE_S * rate:
        raise AudioError("truncated_audio", f"{ref.path}: expected {frames} frames, decoded {data.shape[0]}")
    if data.shape[0] == 0:
        raise AudioError("empty_audio", f"{ref.path}: no samples in the clip")
    return data, rate


def to_format(data: np.ndarray, rate: int, target_rate: int) -> tuple[np.ndarray, list[str]]:
    """Mono float32 at `target_rate`, and what had to change to get there."""
    fixes = []
    if data.shape[1] > 1:
        fixes.append(f"downmixed {data.shape[1]}->1")
    mono = data.mean(axis=1)
    if rate != target_rate:
        g = math.gcd(rate, target_rate)
        mono = resample_poly(mono, target_rate // g, rate // g).astype(np.float32)
        fixes.append(f"resampled {rate}->{target_rate}")
    return mono.astype(np.float32, copy=False), fixes


def encode_flac(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return samples, rate


def clip_path(clips_dir: str, utt_id: str) -> str:
    """Where the audio stage keeps a clip: one folder per corpus, names made safe."""
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", p).lstrip(".") or "_" for p in utt_id.split("/")]
    return files.join(clips_dir, *parts) + ".flac"


def clip_file(utt: Utterance) -> BinaryIO:
    """The clip after the audio stage (mono FLAC at the dataset rate), in memory or in the work dir."""
    return io.BytesIO(utt.flac) if utt.flac is not None else files.open_read(utt.audio.path)


def clip_bytes(utt: Utterance) -> bytes:
    with clip_file(utt) as f:
        return f.read()


def attach_audio(utt: Utterance, target_rate: int, clips_dir: str) -> Iterator[Utterance | Reject | Stat]:
    """Stage function: the utterance pointing at its normalised clip, with `duration_s`, or a reject."""
    try:
        data, rate = read_clip(utt.audio)
    except AudioError as e:
        yield Reject(utt.id, STAGE, e.reason, e.detail, utt.where)
        return
    samples, fixes = to_format(data, rate, target_rate)
    if not np.any(samples):
        yield Reject(utt.id, STAGE, "silent_audio", f"{utt.audio.path}: the clip is all zeros", utt.where)
        return
    for fix in fixes:
        yield Stat(STAGE, fix.split()[0])
    duration = len(samples) / target_rate
    yield Stat(STAGE, "audio_s", duration)
    path = clip_path(clips_dir, utt.id)
    with files.open_write(path) as f:
        f.write(encode_flac(samples, target_rate))
    yield utt.replace(audio=AudioRef(path, 0.0, duration, target_rate), flac=None, duration_s=duration,
                      audio_fixes=fixes)
