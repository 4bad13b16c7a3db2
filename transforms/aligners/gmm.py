"""The built-in aligner: monophone GMM-HMMs trained on the corpus being aligned.

Training is Viterbi training from a flat start, as in Kaldi's monophone recipe: phones are
3-state left-to-right HMMs whose states emit from diagonal-covariance GMMs over MFCCs with
deltas. The first alignment spreads each clip's speech evenly over its phone states (the
low-energy ends go to silence); every pass then re-aligns all clips with the current model,
re-estimates the GMMs from that alignment (one EM update of the mixture components), and on
scheduled passes splits the heaviest components, up to `max_gaussians` per state
(`silence_gaussians` for silence, which covers digital zeros, noise and room tails alike).
After pass `lda_pass` the models start afresh over other features, as Kaldi's LDA recipe: the
cepstra of 2 * `lda_splice` + 1 frames, projected onto the `lda_dim` directions that best tell
that pass's states apart (Fisher's LDA). A state's frames then carry their neighbours' context
while the spread that does not tell states apart (a room's, a speaker's) is scaled down.
A pass is a round over shards of the sample whose statistics add up (gmm_train.py), so the
align stage spreads training over its workers and makes the same model as `train` here.

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

from dataclasses import dataclass

import numpy as np

from ..records import StageError
from . import Aligned, Backend, Clip, TrainReport
from .degrade import Degrader, RoomDegradation
from .features import FeatureSettings, frame_levels_db, mfcc
from .gmm_model import GmmModel, align_features, confidence, frame_gaps, word_gaps, word_graph
from .gmm_train import (
    PassCache,
    Shard,
    ShardSummary,
    Stats,
    TrainItem,
    TrainState,
    accumulate,
    begin,
    estimate,
    failed_state,
    finish,
    passes,
    score,
    scored_shards,
    shard_plan,
    total,
)
from .pronounce import Phonemizer, PronounceError


@dataclass
class GmmSettings:
    states_per_phone: int
    passes: int  # re-alignment passes after the flat start
    split_at: list[int]  # passes after which mixture components are split
    max_gaussians: int  # per state
    min_phone_examples: int  # a rarer phone shares its base phone's model (r- -> r) where that is common
    min_frames_per_gaussian: int  # a state splits only with this many frames per component
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
    lda_dim: int  # from the pass after `lda_pass` on, the models see this many LDA outputs...
    lda_splice: int  # ...of the cepstra spliced over this many frames each side; 0 dims: MFCCs and deltas
    lda_pass: int
    train_shards: int  # the training sample's shards, each a unit of work on one worker

    def validate(self, where: str) -> None:
        from ...settings import ConfigError

        if self.states_per_phone < 1 or self.passes < 1 or self.max_gaussians < 1 or self.train_shards < 1:
            raise ConfigError(f"{where}: states_per_phone, passes, max_gaussians and train_shards must be >= 1")
        if self.lda_dim and not (0 <= self.lda_pass < self.passes and self.lda_splice >= 0):
            raise ConfigError(f"{where}.lda_pass: must be below passes ({self.passes}), and lda_splice >= 0")
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


# One per worker process for training across workers, where every round runs its own DoFn with its own
# backend; at most 256 MiB of frames stay in it.
PASS_CACHE = PassCache()


class GmmBackend(Backend):
    name = "gmm"
    sharded = True

    def __init__(self, settings: GmmSettings, features: FeatureSettings, voices: dict[str, str]):
        self.settings, self.features, self.voices = settings, features, voices
        self._phonemizers: dict[str, Phonemizer] = {}
        self._degraders: dict[int, Degrader] = {}

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
        """Serially, the same rounds the align stage runs over the workers (gmm_train.py)."""
        shards, report = [], TrainReport()
        for index, (held, members) in enumerate(self.shard_plan(len(clips))):
            shard, part = self.prepare(lang, index, held, [(clips[i], copied) for i, copied in members])
            shards.append(shard)
            report = report.plus(part)
        state = self.begin(lang, [x.summary() for x in shards], report.skipped)
        cache = PassCache()  # this training's own, gone with it
        for _ in range(self.passes):
            state = self.estimate(state, total([self.accumulate(state, x, cache) for x in shards if not x.held]))
        found = [self.score(state, x) for x in scored_shards(state, shards)] if state.error is None else []
        model = self.finish(state, [g for gaps, _ in found for g in gaps], [w for _, words in found for w in words])
        if state.failed:
            report.skipped["alignment_failed"] = state.failed
        return model, report

    # -- training in rounds over shards (gmm_train.py) --

    @property
    def passes(self) -> int:
        return passes(self.settings)

    def shard_plan(self, n: int) -> list[tuple[bool, list[tuple[int, bool]]]]:
        return shard_plan(n, self.settings)

    def prepare(self, lang: str, index: int, held: bool, clips: list[tuple[Clip, bool]]) -> tuple[Shard, TrainReport]:
        """A shard of training clips (clip, whether it gets a degraded copy) made ready: pronunciations,
        features, speech frames, the copies' features; clips that cannot train are counted by reason."""
        phonemizer = self.phonemizer(self.voices.get(lang, lang))
        try:
            pronounced = phonemizer.phones([c.words for c, _ in clips])
        except PronounceError as e:
            raise StageError("no_voice", f"no {lang} pronunciations: {e}") from None
        report, items = TrainReport(), []
        for (clip, copied), phones in zip(clips, pronounced, strict=True):
            try:
                level = self._levels(clip)
                self._check_pronounced(phonemizer.voice, clip.words, phones)
            except StageError as e:
                report.skipped[e.reason] = report.skipped.get(e.reason, 0) + 1
                continue
            quiet, loud = np.percentile(level, [10, 99])
            speech = level > quiet + self.settings.speech_level * (loud - quiet)
            twin = mfcc(self._degrader(clip.rate)(clip.id, clip.samples), clip.rate, self.features) if copied else None
            items.append(TrainItem(clip.id, mfcc(clip.samples, clip.rate, self.features), phones, speech, twin))
            report.clips += 1
            report.audio_s += clip.duration_s
        return Shard(index, items, held), report

    def begin(self, lang: str, summaries: list[ShardSummary], skipped: dict | None = None) -> TrainState:
        return begin(lang, self.phonemizer(self.voices.get(lang, lang)).voice, summaries, self.settings, skipped)

    def failed_state(self, lang: str, error: StageError) -> TrainState:
        return failed_state(lang, error)

    def accumulate(self, state: TrainState, shard: Shard, cache: PassCache = PASS_CACHE) -> Stats:
        return accumulate(state, shard, self.settings, cache)

    def estimate(self, state: TrainState, stats: Stats) -> TrainState:
        return estimate(state, stats, self.settings)

    def score(self, state: TrainState, shard: Shard) -> tuple[list[float], list[float]]:
        return score(state, shard, self.settings)

    def finish(self, state: TrainState, gaps: list[float], per_word: list[float]) -> GmmModel:
        return finish(state, gaps, per_word, self.settings)

    def _degrader(self, rate: int) -> Degrader:
        """Each rate's pool of rooms for the degraded copies, made once per worker."""
        if rate not in self._degraders:
            self._degraders[rate] = Degrader(self.settings.copy_rooms, rate)
        return self._degraders[rate]

    def align(self, model: GmmModel, clips: list[Clip]) -> list[Aligned | StageError]:
        pronounced = self.phonemizer(model.voice).phones([c.words for c in clips])
        return [self._align_one(model, clip, phones) for clip, phones in zip(clips, pronounced, strict=True)]

    def _align_one(self, model: GmmModel, clip: Clip, phones: list[tuple[str, ...]]) -> Aligned | StageError:
        try:
            self._levels(clip)
            self._check_pronounced(model.voice, clip.words, phones)
            frames = model.frames(mfcc(clip.samples, clip.rate, self.features))
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

