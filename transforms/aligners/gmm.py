"""The built-in aligner: monophone GMM-HMMs trained on the corpus being aligned.

Training is Viterbi training from a flat start, as in Kaldi's monophone recipe: phones are
3-state left-to-right HMMs whose states emit from diagonal-covariance GMMs over MFCCs with
deltas. The first alignment spreads each clip's speech evenly over its phone states (the
low-energy ends go to silence); every pass then re-aligns all clips with the current model,
re-estimates the GMMs from that alignment (EM over the mixture components), and on
scheduled passes splits the heaviest components, up to `max_gaussians` per state.

Pronunciations are espeak-ng phonemes, so any language espeak-ng speaks can be aligned.
An aligned clip is also scored: its mean per-frame log-likelihood gap to the best state at
each frame. A transcript that does not match the audio forces frames onto the wrong phones
and widens the gap far beyond what right transcripts show, so clips whose gap exceeds the
median by `mismatch_mads` median absolute deviations are rejected. Median and deviation
come from a `holdout` slice of the training sample that the EM passes never see: clips the
model trained on fit it better than the rest of a corpus, so their gaps would set the limit
too low. The best state
is sought as in Gaussian selection: one moment-matched Gaussian per state picks the few
states that fit the frame best, and only those are scored in full.

A state scores a frame by its best component (the Viterbi approximation), in training's
alignments as in the final ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..records import StageError
from . import Aligned, Backend, Clip, TrainReport
from .features import FeatureSettings, frame_levels_db, mfcc
from .gmm_model import GmmModel, align_features, mismatch, word_graph
from .gmm_train import TrainItem, train_model
from .pronounce import Phonemizer, PronounceError
from .viterbi import augment


@dataclass
class GmmSettings:
    states_per_phone: int
    passes: int  # re-alignment passes after the flat start
    split_at: list[int]  # passes after which mixture components are split
    max_gaussians: int  # per state
    min_phone_examples: int  # a rarer phone shares its base phone's model (r- -> r) where that is common
    min_frames_per_gaussian: int  # a state splits only with this many frames per component
    em_steps: int  # EM updates of the mixtures per alignment pass
    variance_floor: float  # fraction of the global variance no component may go below
    silence_between_words: bool
    acoustic_scale: float  # acoustic weight against transitions, as Kaldi's
    beam: float  # in scaled log-likelihood, as Kaldi's and MFA's --beam
    retry_beam: float
    speech_level: float  # flat start: speech is above this fraction of the way from quiet to loud frames
    min_speech_range_db: float  # a clip whose loud and quiet frames differ less holds no speech
    mismatch_mads: float
    holdout: float  # fraction of the training sample kept out of training to set the mismatch limit
    min_holdout: int  # fewer held-out clips than this: the limit comes from the training clips...
    training_mismatch_mads: float  # ...at this many MADs
    batch_size: int  # clips per align call (one espeak round trip each)

    def validate(self, where: str) -> None:
        from ...settings import ConfigError

        if self.states_per_phone < 1 or self.passes < 1 or self.max_gaussians < 1 or self.em_steps < 1:
            raise ConfigError(f"{where}: states_per_phone, passes, max_gaussians and em_steps must be >= 1")
        if not 0 <= self.holdout < 1 or self.min_holdout < 1:
            raise ConfigError(f"{where}: holdout must be in [0, 1) and min_holdout >= 1")
        if not 0 < self.beam <= self.retry_beam:
            raise ConfigError(f"{where}.retry_beam: must be at least beam ({self.beam}), got {self.retry_beam}")


class GmmBackend(Backend):
    name = "gmm"

    def __init__(self, settings: GmmSettings, features: FeatureSettings, voices: dict[str, str]):
        self.settings, self.features, self.voices = settings, features, voices
        self._phonemizers: dict[str, Phonemizer] = {}

    @classmethod
    def from_settings(cls, settings) -> GmmBackend:
        return cls(settings.gmm, settings.features, settings.voices)

    def phonemizer(self, voice: str) -> Phonemizer:
        if voice not in self._phonemizers:
            self._phonemizers[voice] = Phonemizer(voice)
        return self._phonemizers[voice]

    @staticmethod
    def _check_pronounced(voice: str, words: list[str], phones: list[tuple[str, ...]]) -> None:
        if not words:  # a graph needs a word to start in
            raise StageError("no_pronunciation", "the transcript has no words to pronounce")
        silent = [w for w, ph in zip(words, phones, strict=True) if not ph]
        if silent:
            raise StageError("no_pronunciation", f"espeak-ng ({voice}) has no pronunciation "
                                                 f"for {', '.join(map(repr, silent))}")

    def _levels(self, clip: Clip) -> np.ndarray:
        """Each frame's level in dB; StageError when they vary too little to hold speech."""
        level = frame_levels_db(clip.samples, clip.rate, self.features.frame_shift_ms)
        spread = float(np.ptp(np.percentile(level, [10, 95]))) if len(level) else 0.0
        if spread < self.settings.min_speech_range_db:
            raise StageError("no_speech", f"the clip's loud and quiet frames differ by {spread:.1f} dB, "
                                          f"less than speech's {self.settings.min_speech_range_db} dB")
        return level

    def train(self, lang: str, clips: list[Clip]) -> tuple[GmmModel, TrainReport]:
        phonemizer = self.phonemizer(self.voices.get(lang, lang))
        try:
            pronounced = phonemizer.phones([c.words for c in clips])
        except PronounceError as e:
            raise StageError("no_voice", f"no {lang} pronunciations: {e}") from None
        report, items = TrainReport(), []
        for clip, phones in zip(clips, pronounced, strict=True):
            try:
                level = self._levels(clip)
                self._check_pronounced(phonemizer.voice, clip.words, phones)
            except StageError as e:
                report.skipped[e.reason] = report.skipped.get(e.reason, 0) + 1
                continue
            quiet, loud = np.percentile(level, [10, 99])
            speech = level > quiet + self.settings.speech_level * (loud - quiet)
            feats = mfcc(clip.samples, clip.rate, self.features)
            items.append(TrainItem(feats, augment(feats), phones, speech))
            report.clips += 1
            report.audio_s += clip.duration_s
        if not items:
            raise StageError("no_training_data", f"no {lang} clip in the training sample could be used "
                                                 f"(left out: {report.skipped})")
        model, failed = train_model(lang, phonemizer.voice, items, self.settings)
        if failed:
            report.skipped["alignment_failed"] = failed
        return model, report

    def align(self, model: GmmModel, clips: list[Clip]) -> list[Aligned | StageError]:
        pronounced = self.phonemizer(model.voice).phones([c.words for c in clips])
        return [self._align_one(model, clip, phones) for clip, phones in zip(clips, pronounced, strict=True)]

    def _align_one(self, model: GmmModel, clip: Clip, phones: list[tuple[str, ...]]) -> Aligned | StageError:
        try:
            self._levels(clip)
            self._check_pronounced(model.voice, clip.words, phones)
            frames = augment(mfcc(clip.samples, clip.rate, self.features))
            found = align_features(model, frames, word_graph(model, phones, self.settings), self.settings)
            gap = mismatch(model, frames, found.path_pdfs)
            if gap > model.mismatch_limit:
                raise StageError("transcript_mismatch", f"the audio fits the transcript {gap:.1f} nats/frame "
                                                        f"worse than the best phones (limit {model.mismatch_limit:.1f})")
        except StageError as e:
            return e
        shift = self.features.frame_shift_ms / 1000
        end = clip.duration_s
        words = [(w, round(min(a * shift, end), 4), round(min(b * shift, end), 4))
                 for w, (a, b) in zip(clip.words, found.word_frames, strict=True)]
        return Aligned(words, found.retried)

    def close(self) -> None:
        for p in self._phonemizers.values():
            p.close()
        self._phonemizers.clear()

