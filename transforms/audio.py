"""The audio stage: read each clip once, check it, bring it to the dataset's format.

MuST-C clips are cut from a talk-long wav, CoVoST clips are 48 kHz MP3, FLEURS clips are
wavs; all leave this stage as mono FLAC at the dataset sampling rate, written once to the
work directory. The record then points at that file instead of carrying the bytes, so the
shuffles after this stage move small records and no worker holds the corpus's audio;
stages that need samples open the clip with `clip_file`. Resampling and downmixing are not
errors (corpora ship such files) but are recorded on the record (`fixes`) and counted.

This is the first stage that knows a clip's duration, so it also refuses what cannot be the
clip's speech: a segment that starts past the end of its wav, a clip longer than
`max_duration_s`, and a source text spoken implausibly fast or slow for the clip
(`AudioSettings`, defaults in configs/stages/audio.yaml).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from ..settings import ConfigError, load_stage
from . import files
from .records import AudioRef, Reject, StageError, Stat, Utterance
from .timing import spoken_words

STAGE = "audio"
# A declared clip may end this much past the end of its file before we call the file truncated
# (MuST-C offsets and durations are rounded to 10 ms or less).
TOLERANCE_S = 0.02


@dataclass
class AudioSettings:
    max_duration_s: float  # a longer clip is rejected `too_long`
    # [min, max] of the source text's rate over the clip; outside: `implausible_length`.
    words_per_second: list[float]  # spoken words (whitespace tokens with a letter or digit)
    chars_per_second: list[float]  # letters and digits, in any script

    def validate(self, where: str) -> None:
        if not self.max_duration_s > 0:
            raise ConfigError(f"{where}.max_duration_s: must be above 0, got {self.max_duration_s}")
        for key in ("words_per_second", "chars_per_second"):
            low_high = getattr(self, key)
            if len(low_high) != 2 or not 0 <= low_high[0] < low_high[1]:
                raise ConfigError(f"{where}.{key}: expected [min, max] with 0 <= min < max, got {low_high}")


def load_settings(overrides: dict[str, Any] | None = None) -> AudioSettings:
    """This stage's defaults (configs/stages/audio.yaml) with `overrides` merged in, validated."""
    return load_stage(AudioSettings, STAGE, overrides)


@functools.cache
def _default_settings() -> AudioSettings:
    return load_settings()


def read_clip(ref: AudioRef, max_duration_s: float = math.inf) -> tuple[np.ndarray, int]:
    """Samples (frames, channels) float32 and their rate; raises StageError with a reason code.

    The clip's extent is checked before a sample is decoded, so a bad segment costs no decoding.
    """
    if not files.exists(ref.path):
        raise StageError("missing_audio", f"{ref.path} does not exist")
    if ref.duration_s is not None and not ref.duration_s > 0:  # read() would take the rest of the file
        raise StageError("bad_segment_time", f"{ref.path}: the clip's declared duration is {ref.duration_s} s")
    try:
        with files.open_read(ref.path) as raw, sf.SoundFile(raw) as f:
            rate, total = f.samplerate, f.frames
            start = round(ref.offset_s * rate)
            frames = total - start if ref.duration_s is None else round(ref.duration_s * rate)
            if ref.offset_s > 0 and start >= total:
                raise StageError("bad_segment_time", f"the clip starts at {ref.offset_s:.3f} s, past the end of "
                                                     f"{ref.path} ({total / rate:.3f} s)")
            if start + frames > total + TOLERANCE_S * rate:
                raise StageError(
                    "truncated_audio",
                    f"{ref.path} holds {total / rate:.3f} s but the clip ends at "
                    f"{(start + frames) / rate:.3f} s",
                )
            if frames > max_duration_s * rate:
                raise StageError("too_long", f"the clip lasts {frames / rate:.3f} s, more than the "
                                             f"{max_duration_s:g} s allowed (audio.max_duration_s)")
            f.seek(start)
            data = f.read(min(frames, total - start), dtype="float32", always_2d=True)
    except StageError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
        raise StageError("unreadable_audio", f"{ref.path}: {e}") from None
    if data.shape[0] < frames - TOLERANCE_S * rate:
        raise StageError("truncated_audio", f"{ref.path}: expected {frames} frames, decoded {data.shape[0]}")
    if data.shape[0] == 0:
        raise StageError("empty_audio", f"{ref.path}: no samples in the clip")
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


def clip_name(utt_id: str) -> str:
    """A file name for the clip of `utt_id`, one per id: the id made safe for any filesystem (readable),
    then a hash of the exact id, so ids that read alike ("a b", "a_b", "A_b") never share a file."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", utt_id).lstrip(".")[:100] or "_"
    return f"{readable}-{hashlib.blake2b(utt_id.encode('utf-8'), digest_size=8).hexdigest()}.flac"


def clip_path(clips_dir: str, utt_id: str) -> str:
    """Where the audio stage keeps a clip: one folder per corpus (the id's prefix), named by `clip_name`."""
    corpus = re.sub(r"[^A-Za-z0-9._-]", "_", utt_id.split("/", 1)[0]).lstrip(".") or "_"
    return files.join(clips_dir, corpus, clip_name(utt_id))


def clip_file(utt: Utterance) -> BinaryIO:
    """The clip after the audio stage: mono FLAC at the dataset rate, in the work dir."""
    return files.open_read(utt.audio.path)


def clip_bytes(utt: Utterance) -> bytes:
    with clip_file(utt) as f:
        return f.read()


def implausible_length(text: str, duration_s: float, s: AudioSettings) -> str | None:
    """Why `text` cannot be what is spoken in `duration_s` seconds, or None."""
    counts = {"words": len(spoken_words(text)), "chars": sum(ch.isalnum() for ch in text)}
    for unit, what in (("words", "words"), ("chars", "letters/digits")):
        low, high = getattr(s, f"{unit}_per_second")
        rate = counts[unit] / duration_s
        if not low <= rate <= high:
            return (f"{counts[unit]} {what} in {duration_s:.3f} s is {rate:.2f} per second, outside the "
                    f"{low:g}-{high:g} a speaker can say (audio.{unit}_per_second)")
    return None


def attach_audio(utt: Utterance, target_rate: int, clips_dir: str,
                 settings: AudioSettings | None = None) -> Iterator[Utterance | Reject | Stat]:
    """Stage function: the utterance pointing at its normalised clip, with `duration_s`, or a reject."""
    s = settings or _default_settings()
    try:
        data, rate = read_clip(utt.audio, s.max_duration_s)
    except StageError as e:
        yield e.reject(utt.id, STAGE, utt.where)
        return
    why = implausible_length(utt.source_text, data.shape[0] / rate, s)
    if why:
        yield Reject(utt.id, STAGE, "implausible_length", f"source text: {why}", utt.where)
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
    yield utt.replace(audio=AudioRef(path, 0.0, duration, target_rate), duration_s=duration,
                      fixes=[*utt.fixes, *fixes])
