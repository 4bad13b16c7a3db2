"""The Montreal Forced Aligner backend: `mfa align` on a batch of clips, TextGrids read back.

MFA is installed by the user (`conda install -c conda-forge montreal-forced-aligner`) with a
pretrained dictionary and acoustic model (`mfa model download ...`); nothing here downloads.
Per batch, the clips are written in MFA's corpus layout (one folder per speaker, a .wav and
a .lab transcript per clip), aligned in one `mfa align` run, and each clip's `words` tier is
matched back to its words. MFA normalises words (lower case, split compounds), so the match
joins consecutive MFA words until their letters spell the clip's word.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from ..records import StageError
from . import Aligned, Backend, Clip, TrainReport

INSTALL_HINT = "install it with `conda install -c conda-forge montreal-forced-aligner`"


@dataclass
class MfaSettings:
    command: str  # the mfa executable, looked up on PATH
    dictionary: dict[str, str]  # source language -> dictionary name or path
    acoustic_model: dict[str, str]  # source language -> acoustic model name or path
    batch_size: int  # clips per `mfa align` run
    num_jobs: int
    beam: int
    retry_beam: int
    timeout_s: float  # per `mfa align` run
    extra_args: list[str]

    def validate(self, where: str) -> None:
        from ...settings import ConfigError

        if self.batch_size < 1 or self.num_jobs < 1:
            raise ConfigError(f"{where}: batch_size and num_jobs must be at least 1")


@dataclass
class MfaModel:
    lang: str
    dictionary: str
    acoustic_model: str


# MFA's feature frame shift: its default `frame_shift` (10 ms, what the pretrained models use),
# unless `--frame_shift <ms>` is among the extra arguments.
FRAME_SHIFT_MS = 10.0


def frame_shift_s(settings: MfaSettings) -> float:
    """The frame step of MFA's word times, in seconds."""
    args = settings.extra_args
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--frame_shift=") else (
            args[i + 1] if arg == "--frame_shift" and i + 1 < len(args) else None)
        if value is not None:
            try:
                return float(value) / 1000
            except ValueError:
                break  # MFA refuses it itself
    return FRAME_SHIFT_MS / 1000


def missing_reason(command: str) -> str | None:
    """Why the backend cannot run here, or None when `command` is on PATH."""
    if shutil.which(command) is None:
        return f"the Montreal Forced Aligner command {command!r} is not on PATH; {INSTALL_HINT}"
    return None


def _letters(word: str) -> str:
    return re.sub(r"\W", "", word.lower())


def match_words(words: list[str], timed: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Our words timed from MFA's, joining consecutive MFA words that spell one of ours."""
    out, k = [], 0
    for word in words:
        target, spelled, start = _letters(word), "", None
        while k < len(timed) and len(spelled) < len(target):
            spelled += _letters(timed[k][0])
            start = timed[k][1] if start is None else start
            k += 1
        if spelled != target:
            raise StageError("aligner_words_differ", f"MFA's words do not spell {word!r} "
                                                     f"(got {spelled!r} at its word {k})")
        out.append((word, start, timed[k - 1][2]))
    if k != len(timed):
        raise StageError("aligner_words_differ", f"MFA timed {len(timed) - k} word(s) beyond the transcript")
    return out


def _speaker_dir(speaker: str) -> str:
    return re.sub(r"[^\w-]", "_", speaker) or "speaker"


class MfaBackend(Backend):
    name = "mfa"

    def __init__(self, settings: MfaSettings):
        self.settings = settings

    @classmethod
    def from_settings(cls, settings) -> MfaBackend:
        return cls(settings.mfa)

    def train(self, lang: str, clips: list[Clip]) -> tuple[MfaModel, TrainReport]:
        """MFA's models are pretrained: check that this language has them configured."""
        s = self.settings
        reason = missing_reason(s.command)
        if reason:
            raise StageError("aligner_missing", reason)
        if lang not in s.dictionary or lang not in s.acoustic_model:
            raise StageError("no_model", f"align.mfa has no dictionary or acoustic_model for {lang!r}")
        return MfaModel(lang, s.dictionary[lang], s.acoustic_model[lang]), TrainReport()

    def align(self, model: MfaModel, clips: list[Clip]) -> list[Aligned | StageError]:
        with tempfile.TemporaryDirectory(prefix="simulforge-mfa-") as work:
            corpus, out = os.path.join(work, "corpus"), os.path.join(work, "aligned")
            names = self._write_corpus(corpus, clips)
            failure = self._run(model, corpus, out, os.path.join(work, "tmp"))
            if failure:
                return [failure] * len(clips)
            return [self._read(os.path.join(out, name + ".TextGrid"), clip) for name, clip in zip(names, clips, strict=True)]

    @staticmethod
    def _write_corpus(corpus: str, clips: list[Clip]) -> list[str]:
        names = []
        for i, clip in enumerate(clips):
            name = os.path.join(_speaker_dir(clip.speaker), f"clip{i:06d}")
            os.makedirs(os.path.join(corpus, os.path.dirname(name)), exist_ok=True)
            sf.write(os.path.join(corpus, name + ".wav"), np.asarray(clip.samples, np.float32), clip.rate,
                     subtype="PCM_16")
            with open(os.path.join(corpus, name + ".lab"), "w", encoding="utf-8") as f:
                f.write(" ".join(clip.words) + "\n")
            names.append(name)
        return names

    def _run(self, model: MfaModel, corpus: str, out: str, tmp: str) -> StageError | None:
        s = self.settings
        command = [s.command, "align", corpus, model.dictionary, model.acoustic_model, out,
                   "--clean", "-t", tmp, "-j", str(s.num_jobs), "--beam", str(s.beam),
                   "--retry_beam", str(s.retry_beam), "--output_format", "long_textgrid", *s.extra_args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=s.timeout_s)
        except subprocess.TimeoutExpired:
            return StageError("aligner_timeout", f"`mfa align` ran past {s.timeout_s} s")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            return StageError("aligner_error", f"`mfa align` exited {done.returncode}: {' | '.join(tail)}")
        return None

    @staticmethod
    def _read(path: str, clip: Clip) -> Aligned | StageError:
        from praatio import textgrid

        if not os.path.exists(path):
            return StageError("alignment_failed", "MFA could not align the clip (it wrote no TextGrid)")
        tier = textgrid.openTextgrid(path, includeEmptyIntervals=False).getTier("words")
        timed = [(e.label, e.start, e.end) for e in tier.entries if e.label.strip() and e.label != "<eps>"]
        try:
            return Aligned(match_words(clip.words, timed))
        except StageError as e:
            return e
