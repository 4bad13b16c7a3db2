"""The built-in aligner: monophone GMM-HMMs trained on the corpus being aligned.

Training is Viterbi training from a flat start, as in Kaldi's monophone recipe: phones are
3-state left-to-right HMMs whose states emit from diagonal-covariance GMMs over MFCCs with
deltas. The first alignment spreads each clip's speech evenly over its phone states (the
low-energy ends go to silence); every pass then re-aligns all clips with the current model,
re-estimates the GMMs from that alignment (EM over the mixture components), and on
scheduled passes splits the heaviest components, up to `max_gaussians` per state
(`silence_gaussians` for silence, which covers digital zeros, noise and room tails alike).

Real recordings ring and hiss, and a room's ring smears each phone into the next: unsupervised
training then settles with boundaries 30-45 ms late. Three things keep them in place:
- the features lose their late reverberation (features.dereverberated);
- multi-condition training: each training clip also trains as a simulated room records it
  (degrade.py), every frame of the copy labelled with the state the clip's own alignment gives
  that frame. The copy keeps the clip's timeline, so the models learn what reverberant, noisy
  speech looks like at the boundaries the cleaner clip shows, instead of moving them;
- from `careful_from_pass` on, a clip whose path the first beam loses trains nothing that pass:
  a clip the models fit that badly tends to be crammed into a few states, which then learn to
  swallow any speech.
After alignment, a silence between two words shorter than `min_pause_ms` is given to the second
word: it is a stop's closure or a glottal onset, not a pause.

Pronunciations are espeak-ng phonemes, so any language espeak-ng speaks can be aligned.
An aligned clip is also scored: its mean per-frame log-likelihood gap to the best state at
each frame. A transcript that does not match the audio forces frames onto the wrong phones
and widens the gap far beyond what right transcripts show, so clips whose gap exceeds the
median by `mismatch_mads` median absolute deviations are rejected. Median and deviation
come from a `holdout` slice of the training sample that the EM passes never see: clips the
model trained on fit it better than the rest of a corpus, so their gaps would set the limit
too low. The best state is sought as in Gaussian selection: one moment-matched Gaussian per
state picks the few states that fit the frame best, and only those are scored in full.

The same gap, ranked among the held-out clips' (and each word's among their words'), is the
alignment's confidence: the share of held-out clips (words) that fit no better than this
one, so 0.5 is typical and 0.02 fits worse than 98 in 100 (gmm_model.confidence).

A state scores a frame by its best component (the Viterbi approximation), in training's
alignments as in the final ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..records import StageError
from . import Aligned, Backend, Clip, TrainReport
from .degrade import Degrader, RoomDegradation
from .features import FeatureSettings, frame_levels_db, mfcc
from .gmm_model import GmmModel, align_features, confidence, frame_gaps, word_gaps, word_graph
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
    silence_gaussians: int  # per silence state: silence covers digital zeros, noise and reverberant tails
    min_pause_ms: float  # a shorter silence between words is the next word's (a stop's closure)
    careful_from_pass: int  # from this pass on, a clip whose path the first beam lost trains nothing
    degraded_copies: float  # share of the training clips that also train as a room would record them
    copy_rooms: RoomDegradation  # where those copies are said

    def validate(self, where: str) -> None:
        from ...settings import ConfigError

        if self.states_per_phone < 1 or self.passes < 1 or self.max_gaussians < 1 or self.em_steps < 1:
            raise ConfigError(f"{where}: states_per_phone, passes, max_gaussians and em_steps must be >= 1")
        if not 0 <= self.holdout < 1 or self.min_holdout < 1:
            raise ConfigError(f"{where}: holdout must be in [0, 1) and min_holdout >= 1")
        if not 0 < self.beam <= self.retry_beam:
            raise ConfigError(f"{where}.retry_beam: must be at least beam ({self.beam}), got {self.retry_beam}")
        if self.silence_gaussians < 1 or self.min_pause_ms < 0 or not 0 <= self.degraded_copies <= 1:
            raise ConfigError(f"{where}: silence_gaussians must be >= 1, min_pause_ms >= 0 and degraded_copies "
                              f"in [0, 1]")


def closed_short_pauses(spans: list[tuple[int, int]], shortest: int) -> list[tuple[int, int]]:
    """Word spans (frames) with every silence of fewer than `shortest` frames between two words
    given to the second: a stop's closure or a glottal onset is part of the word it starts."""
    out = list(spans[:1])
    for start, stop in spans[1:]:
        out.append((out[-1][1] if 0 < start - out[-1][1] < shortest else start, stop))
    return out


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
            items.append(TrainItem(feats, augment(feats), phones, speech, clip))
            report.clips += 1
            report.audio_s += clip.duration_s
        if not items:
            raise StageError("no_training_data", f"no {lang} clip in the training sample could be used "
                                                 f"(left out: {report.skipped})")
        model, failed = train_model(lang, phonemizer.voice, items, self.settings, self._copier(items))
        if failed:
            report.skipped["alignment_failed"] = failed
        return model, report

    def _copier(self, items: list[TrainItem]) -> Callable[[Clip], np.ndarray] | None:
        """clip -> the augmented frames of its degraded copy; each rate's pool of rooms is made once."""
        if not self.settings.degraded_copies or not items:
            return None
        pools: dict[int, Degrader] = {}

        def copy(clip: Clip) -> np.ndarray:
            if clip.rate not in pools:
                pools[clip.rate] = Degrader(self.settings.copy_rooms, clip.rate)
            return augment(mfcc(pools[clip.rate](clip.id, clip.samples), clip.rate, self.features))

        return copy

    def align(self, model: GmmModel, clips: list[Clip]) -> list[Aligned | StageError]:
        pronounced = self.phonemizer(model.voice).phones([c.words for c in clips])
        return [self._align_one(model, clip, phones) for clip, phones in zip(clips, pronounced, strict=True)]

    def _align_one(self, model: GmmModel, clip: Clip, phones: list[tuple[str, ...]]) -> Aligned | StageError:
        try:
            self._levels(clip)
            self._check_pronounced(model.voice, clip.words, phones)
            frames = augment(mfcc(clip.samples, clip.rate, self.features))
            found = align_features(model, frames, word_graph(model, phones, self.settings), self.settings)
            frame = frame_gaps(model, frames, found.path_pdfs)
            gap = float(frame.mean())
            if gap > model.mismatch_limit:
                raise StageError("transcript_mismatch", f"the audio fits the transcript {gap:.1f} nats/frame "
                                                        f"worse than the best phones (limit {model.mismatch_limit:.1f})")
        except StageError as e:
            return e
        shift = self.features.frame_shift_ms / 1000
        end = clip.duration_s
        spans = closed_short_pauses(found.word_frames, round(self.settings.min_pause_ms / 1000 / shift))
        words = [(w, round(min(a * shift, end), 4), round(min(b * shift, end), 4))
                 for w, (a, b) in zip(clip.words, spans, strict=True)]
        by_word = [confidence(g, model.word_gap_quantiles) for g in word_gaps(frame, found.word_frames)]
        return Aligned(words, found.retried, confidence(gap, model.clip_gap_quantiles),
                       None if None in by_word else by_word)

    def close(self) -> None:
        for p in self._phonemizers.values():
            p.close()
        self._phonemizers.clear()

