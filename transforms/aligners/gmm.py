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

import re
from collections import Counter
from dataclasses import dataclass, field, replace

import numba
import numpy as np

from . import Aligned, AlignFailure, Backend, Clip, TrainReport
from .features import FeatureSettings, frame_levels_db, mfcc
from .pronounce import Phonemizer, PronounceError
from .viterbi import Graph, augment, best_component, build_graph, gaussian_weights, viterbi

SILENCE = "sil"
# Pdfs per frame the mismatch check scores in full, besides the path's. On the demo corpus
# the best of 2 tells wrong transcripts (another clip's, a word replaced or dropped) from
# right ones at least as well as the best of all pdfs did (measured when training clips set
# the limit, at 10 MADs).
CANDIDATES = 2


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
        from ..settings import ConfigError

        if self.states_per_phone < 1 or self.passes < 1 or self.max_gaussians < 1 or self.em_steps < 1:
            raise ConfigError(f"{where}: states_per_phone, passes, max_gaussians and em_steps must be >= 1")
        if not 0 <= self.holdout < 1 or self.min_holdout < 1:
            raise ConfigError(f"{where}: holdout must be in [0, 1) and min_holdout >= 1")
        if not 0 < self.beam <= self.retry_beam:
            raise ConfigError(f"{where}.retry_beam: must be at least beam ({self.beam}), got {self.retry_beam}")


@dataclass
class GmmModel:
    """A trained model of one language; plain arrays, so Beam pickles it cheaply."""

    lang: str
    voice: str
    phones: list[str]  # phones[0] is silence; pdf of state k of phone p is p * states + k
    states: int
    log_weights: np.ndarray  # (pdfs, M), -inf where a state has fewer than M components
    means: np.ndarray  # (pdfs, M, D)
    variances: np.ndarray  # (pdfs, M, D)
    transitions: np.ndarray  # (pdfs, 2): log P(stay), log P(leave)
    shared: dict[str, str]  # rare phone -> the base phone whose model it uses
    mismatch_limit: float = np.inf
    _scoring: tuple | None = field(default=None, repr=False, compare=False)

    def scoring(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What frames (`augment`ed) are scored with: every pdf's components as Gaussian weights
        (pdfs, M, K), how many components each pdf has, and each pdf's single
        moment-matched Gaussian (pdfs, K)."""
        if self._scoring is None:
            weights = np.exp(self.log_weights)[..., None]
            mean = (weights * self.means).sum(1)
            variance = (weights * (self.variances + self.means**2)).sum(1) - mean**2
            self._scoring = (gaussian_weights(self.means, self.variances, self.log_weights),
                             np.isfinite(self.log_weights).sum(1),
                             gaussian_weights(mean, variance, np.zeros(len(mean))))
        return self._scoring

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_scoring"] = None
        return state


def base_phone(name: str) -> str:
    """espeak's phoneme without its variant mark: r- (linking r) -> r, t# -> t, @2 -> @, I2 -> I."""
    return re.sub(r"[-#0-9]+$", "", name) or name


def _word_pdfs(model: GmmModel, phones: list[tuple[str, ...]]) -> list[list[int]]:
    """The pdfs of each word's states, in order; a phone training never saw uses its base's."""
    index = {p: i for i, p in enumerate(model.phones)}
    out = []
    for word_phones in phones:
        mapped = [model.shared.get(p, p) for p in word_phones]
        mapped = [p if p in index else base_phone(p) for p in mapped]
        unseen = [p for p in mapped if p not in index]
        if unseen:
            raise AlignFailure("unseen_phone", f"phone(s) {', '.join(unseen)} never occurred in the "
                                               f"{model.lang} training sample")
        out.append([index[p] * model.states + k for p in mapped for k in range(model.states)])
    return out


@dataclass
class _Alignment:
    path_pdfs: np.ndarray  # pdf per frame
    word_frames: list[tuple[int, int]]  # per word: first frame, one past its last
    retried: bool


def _graph(model: GmmModel, phones: list[tuple[str, ...]], s: GmmSettings) -> Graph:
    """The words' states, in order, with optional silences."""
    silence = list(range(model.states))  # phone 0
    return build_graph(_word_pdfs(model, phones), silence, s.silence_between_words)


def _align_features(model: GmmModel, frames: np.ndarray, graph: Graph, s: GmmSettings) -> _Alignment:
    """The forced alignment of `frames` (augmented features) to the graph's words."""
    words = int(graph.word.max()) + 1
    needed = int((graph.word >= 0).sum())
    if needed > len(frames):
        raise AlignFailure("audio_too_short", f"{words} words need at least {needed} frames, "
                                              f"the clip has {len(frames)}")
    gaussians, sizes, _ = model.scoring()
    transitions = model.transitions[graph.pdf]
    path = viterbi(frames, graph, gaussians, sizes, transitions, s.acoustic_scale, s.beam)
    retried = path is None
    if retried:
        path = viterbi(frames, graph, gaussians, sizes, transitions, s.acoustic_scale, s.retry_beam)
    if path is None:
        raise AlignFailure("alignment_failed", f"no path through the {words} words within beam "
                                               f"{s.retry_beam} over {len(frames)} frames")
    return _Alignment(graph.pdf[path], _word_frames(graph, path, words), retried)


def _word_frames(graph: Graph, path: np.ndarray, words: int) -> list[tuple[int, int]]:
    """Per word, its first frame and one past its last (the path visits words in order)."""
    owner = graph.word[path]
    frames = np.flatnonzero(owner >= 0)
    order = np.arange(words)
    first = frames[np.searchsorted(owner[frames], order, side="left")]
    last = frames[np.searchsorted(owner[frames], order, side="right") - 1]
    return list(zip(first.tolist(), (last + 1).tolist(), strict=True))


def _mismatch(model: GmmModel, frames: np.ndarray, path_pdfs: np.ndarray) -> float:
    """Mean per-frame log-likelihood the forced path loses against the best state of each frame
    (of the states Gaussian selection picks: the module docstring says how)."""
    gaussians, sizes, single = model.scoring()
    return _mean_gap(frames, gaussians, sizes, path_pdfs, frames @ single.T, CANDIDATES)


@numba.njit(cache=True)
def _mean_gap(frames, gaussians, sizes, path_pdfs, rough, candidates) -> float:
    """Mean over frames of the best score among the `candidates` pdfs of best `rough` score,
    less the path pdf's score (never below 0: the path pdf is a candidate too)."""
    top = np.arange(min(candidates, rough.shape[1]))
    total = 0.0
    for t in range(len(frames)):
        _top(rough, t, top)
        forced = best_component(frames, t, gaussians, path_pdfs[t], sizes[path_pdfs[t]])
        best = forced
        for p in top:
            best = max(best, best_component(frames, t, gaussians, p, sizes[p]))
        total += best - forced
    return total / len(frames)


@numba.njit(cache=True)
def _top(values, t, top):
    """Turns `top`, distinct indices, into those of the len(top) largest of values[t].

    It starts from the previous frame's, which mostly stay, so few values beat the smallest."""
    n = len(top)
    low = 0  # position in `top` of the smallest kept value...
    for k in range(1, n):
        if values[t, top[k]] < values[t, top[low]]:
            low = k
    floor = values[t, top[low]]  # ...and that value
    for i in range(values.shape[1]):
        if values[t, i] > floor and i not in top:
            top[low] = i
            for k in range(n):
                if values[t, top[k]] < values[t, top[low]]:
                    low = k
            floor = values[t, top[low]]


# Training.


@dataclass
class _Item:
    feats: np.ndarray
    frames: np.ndarray  # the features augmented (`augment`)
    phones: list[tuple[str, ...]]
    speech: np.ndarray  # per frame: loud enough to be speech (for the flat start)


class _Estimator:
    """Mixture parameters of every pdf, re-estimated from frame labels.

    Frames come augmented, [x^2, x, 1]: one product with a pdf's Gaussian weights gives its
    components' log-likelihoods, and one with their posteriors all of their statistics."""

    def __init__(self, pdfs: int, dim: int, floor: np.ndarray):
        self.dim, self.floor = dim, floor
        self.weights = [np.ones(1) for _ in range(pdfs)]
        self.means = [np.zeros((1, dim)) for _ in range(pdfs)]
        self.vars = [np.ones((1, dim)) for _ in range(pdfs)]
        self.seen = np.zeros(pdfs, bool)

    def update(self, frames: np.ndarray, labels: np.ndarray, steps: int) -> None:
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(self.means) + 1))
        for j in range(len(self.means)):
            x = frames[order[bounds[j] : bounds[j + 1]]]
            if len(x) == 0:
                continue
            if not self.seen[j]:  # first data for this pdf: one Gaussian from its frames
                self.weights[j] = np.ones(1)
                self._moments(j, x.sum(0, keepdims=True, dtype=np.float64), np.array([len(x)], np.float64))
                self.seen[j] = True
            for _ in range(steps):
                self._em(j, x)

    def _em(self, j: int, x: np.ndarray) -> None:
        resp = x @ gaussian_weights(self.means[j], self.vars[j], np.log(self.weights[j])).T
        resp = np.exp(resp - resp.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
        stats = (resp.T @ x).astype(np.float64)
        occ = stats[:, 2 * self.dim]
        keep = occ > 1e-3 * len(x) + 1.0  # drop components that lost their frames...
        keep[np.argmax(occ)] = True  # ...but never the last one
        self.weights[j] = occ[keep] / occ[keep].sum()
        self._moments(j, stats[keep], occ[keep])

    def _moments(self, j: int, stats: np.ndarray, occ: np.ndarray) -> None:
        """Means and variances from summed augmented frames (sums of x^2, of x) and their counts."""
        d = self.dim
        self.means[j] = stats[:, d : 2 * d] / occ[:, None]
        self.vars[j] = np.maximum(stats[:, :d] / occ[:, None] - self.means[j] ** 2, self.floor)

    def split(self, counts: np.ndarray, max_gaussians: int, min_frames: int) -> None:
        """Double the components of each pdf its data can support, heaviest first."""
        for j in range(len(self.means)):
            m = len(self.weights[j])
            target = min(2 * m, max_gaussians, max(m, int(counts[j] // min_frames)))
            heavy = np.argsort(-self.weights[j])[: target - m]
            if len(heavy) == 0:
                continue
            offset = 0.2 * np.sqrt(self.vars[j][heavy])
            self.means[j] = np.vstack([self.means[j], self.means[j][heavy] + offset])
            self.means[j][heavy] -= offset
            self.vars[j] = np.vstack([self.vars[j], self.vars[j][heavy]])
            self.weights[j] = np.append(self.weights[j], self.weights[j][heavy] / 2)
            self.weights[j][heavy] /= 2

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = max(len(w) for w in self.weights)
        dim = self.means[0].shape[1]
        log_w = np.full((len(self.weights), m), -np.inf)
        means = np.zeros((len(self.weights), m, dim))
        variances = np.ones((len(self.weights), m, dim))
        for j, (w, mu, var) in enumerate(zip(self.weights, self.means, self.vars, strict=True)):
            log_w[j, : len(w)], means[j, : len(w)], variances[j, : len(w)] = np.log(w), mu, var
        return log_w, means, variances


def _transitions(labels: list[np.ndarray], pdfs: int) -> np.ndarray:
    """log P(stay), log P(leave) per pdf from how long the alignment stays in each state."""
    frames = np.ones(pdfs)  # one pseudo-count each way keeps unseen states usable
    leaves = np.ones(pdfs)
    for lab in labels:
        frames += np.bincount(lab, minlength=pdfs)
        change = np.append(lab[1:] != lab[:-1], True)
        leaves += np.bincount(lab[change], minlength=pdfs)
    stay = np.clip(1 - leaves / (frames + 1), 0.05, 0.95)
    return np.log(np.stack([stay, 1 - stay], axis=1))


def _flat_start(item: _Item, phone_index: dict[str, int], states: int) -> np.ndarray:
    """Labels spreading the speech frames evenly over the phone states, silence around them."""
    seq = [phone_index[p] * states + k for word in item.phones for p in word for k in range(states)]
    frames = len(item.frames)
    loud = np.flatnonzero(item.speech)
    first, last = (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, frames)
    if last - first < len(seq):
        first, last = 0, frames
    labels = np.zeros(frames, np.int64)
    labels[:first] = np.arange(first) * states // max(first, 1)
    labels[last:] = np.arange(frames - last) * states // max(frames - last, 1)
    span = np.arange(last - first) * len(seq) // (last - first)
    labels[first:last] = np.asarray(seq)[span]
    return labels


def _rare_phones(items: list[_Item], min_examples: int) -> dict[str, str]:
    """Phones too rare to train, mapped to their base phone where that one is common."""
    counts = Counter(p for item in items for word in item.phones for p in word)
    return {p: base_phone(p) for p, n in counts.items()
            if n < min_examples and counts.get(base_phone(p), 0) >= min_examples}


def holdout_split(n: int, fraction: float, minimum: int) -> np.ndarray:
    """Which of n items (in the sample's deterministic order) are held out: int(n * fraction)
    of them, evenly spread, or none when that is fewer than `minimum`."""
    held = np.zeros(n, bool)
    count = int(n * fraction)
    if count >= minimum:
        held[np.arange(count) * n // count] = True
    return held


def train_model(lang: str, voice: str, items: list[_Item], s: GmmSettings) -> tuple[GmmModel, int]:
    """The trained model, and how many items the last pass could not align.

    The mismatch limit comes from the held-out items' gaps; a sample too small to spare
    `min_holdout` of them (test corpora) trains on all and takes the training items' gaps
    instead, at `training_mismatch_mads`: they fit better than clips outside the sample."""
    held = holdout_split(len(items), s.holdout, s.min_holdout)
    scored = [item for item, h in zip(items, held, strict=True) if h]
    items = [item for item, h in zip(items, held, strict=True) if not h]
    shared = _rare_phones(items, s.min_phone_examples)
    items = [replace(item, phones=[tuple(shared.get(p, p) for p in word) for word in item.phones])
             for item in items]
    phones = [SILENCE] + sorted({p for item in items for word in item.phones for p in word})
    index = {p: i for i, p in enumerate(phones)}
    pdfs = len(phones) * s.states_per_phone
    feats = np.concatenate([item.feats for item in items])
    estimator = _Estimator(pdfs, feats.shape[1], s.variance_floor * feats.var(0))
    labels = [_flat_start(item, index, s.states_per_phone) for item in items]
    model, graphs, failed = None, [], 0
    for step in range(s.passes + 1):
        if step:  # pass 0 estimates from the flat start
            graphs = graphs or [_graph(model, item.phones, s) for item in items]  # the same every pass
            aligned = [_try_align(model, item.frames, graph, s)
                       for item, graph in zip(items, graphs, strict=True)]
            failed = sum(a is None for a in aligned)
            labels = [a.path_pdfs if a is not None else None for a in aligned]
        usable = [(item.frames, lab) for item, lab in zip(items, labels, strict=True) if lab is not None]
        frames = np.concatenate([f for f, _ in usable])
        flat = np.concatenate([lab for _, lab in usable])
        estimator.update(frames, flat, s.em_steps)
        if step in s.split_at:
            estimator.split(np.bincount(flat, minlength=pdfs), s.max_gaussians, s.min_frames_per_gaussian)
            estimator.update(frames, flat, 1)
        log_w, means, variances = estimator.arrays()
        model = GmmModel(lang, voice, phones, s.states_per_phone, log_w, means, variances,
                         _transitions([lab for _, lab in usable], pdfs), shared)
    # Held-out phones as spelled, as in alignment (_word_pdfs maps those training shared or never saw).
    pairs = ([(item, g) for item in scored if (g := _try_graph(model, item.phones, s)) is not None]
             if scored else zip(items, graphs, strict=True))
    gaps = [_mismatch(model, item.frames, a.path_pdfs) for item, graph in pairs
            if (a := _try_align(model, item.frames, graph, s)) is not None]
    if gaps:
        median = float(np.median(gaps))
        spread = float(np.median(np.abs(np.asarray(gaps) - median))) or 1.0
        model.mismatch_limit = median + (s.mismatch_mads if scored else s.training_mismatch_mads) * spread
    return model, failed


def _try_graph(model: GmmModel, phones: list[tuple[str, ...]], s: GmmSettings) -> Graph | None:
    try:
        return _graph(model, phones, s)
    except AlignFailure:
        return None


def _try_align(model: GmmModel, frames: np.ndarray, graph: Graph, s: GmmSettings) -> _Alignment | None:
    try:
        return _align_features(model, frames, graph, s)
    except AlignFailure:
        return None


# The backend.


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
            raise AlignFailure("no_pronunciation", "the transcript has no words to pronounce")
        silent = [w for w, ph in zip(words, phones, strict=True) if not ph]
        if silent:
            raise AlignFailure("no_pronunciation", f"espeak-ng ({voice}) has no pronunciation "
                                                   f"for {', '.join(map(repr, silent))}")

    def _levels(self, clip: Clip) -> np.ndarray:
        """Each frame's level in dB; AlignFailure when they vary too little to hold speech."""
        level = frame_levels_db(clip.samples, clip.rate, self.features.frame_shift_ms)
        spread = float(np.ptp(np.percentile(level, [10, 95]))) if len(level) else 0.0
        if spread < self.settings.min_speech_range_db:
            raise AlignFailure("no_speech", f"the clip's loud and quiet frames differ by {spread:.1f} dB, "
                                            f"less than speech's {self.settings.min_speech_range_db} dB")
        return level

    def train(self, lang: str, clips: list[Clip]) -> tuple[GmmModel, TrainReport]:
        phonemizer = self.phonemizer(self.voices.get(lang, lang))
        try:
            pronounced = phonemizer.phones([c.words for c in clips])
        except PronounceError as e:
            raise AlignFailure("no_voice", f"no {lang} pronunciations: {e}") from None
        report, items = TrainReport(), []
        for clip, phones in zip(clips, pronounced, strict=True):
            try:
                level = self._levels(clip)
                self._check_pronounced(phonemizer.voice, clip.words, phones)
            except AlignFailure as e:
                report.skipped[e.reason] = report.skipped.get(e.reason, 0) + 1
                continue
            quiet, loud = np.percentile(level, [10, 99])
            speech = level > quiet + self.settings.speech_level * (loud - quiet)
            feats = mfcc(clip.samples, clip.rate, self.features)
            items.append(_Item(feats, augment(feats), phones, speech))
            report.clips += 1
            report.audio_s += clip.duration_s
        if not items:
            raise AlignFailure("no_training_data", f"no {lang} clip in the training sample could be used "
                                                   f"(left out: {report.skipped})")
        model, failed = train_model(lang, phonemizer.voice, items, self.settings)
        if failed:
            report.skipped["alignment_failed"] = failed
        return model, report

    def align(self, model: GmmModel, clips: list[Clip]) -> list[Aligned | AlignFailure]:
        pronounced = self.phonemizer(model.voice).phones([c.words for c in clips])
        return [self._align_one(model, clip, phones) for clip, phones in zip(clips, pronounced, strict=True)]

    def _align_one(self, model: GmmModel, clip: Clip, phones: list[tuple[str, ...]]) -> Aligned | AlignFailure:
        try:
            self._levels(clip)
            self._check_pronounced(model.voice, clip.words, phones)
            frames = augment(mfcc(clip.samples, clip.rate, self.features))
            found = _align_features(model, frames, _graph(model, phones, self.settings), self.settings)
            gap = _mismatch(model, frames, found.path_pdfs)
            if gap > model.mismatch_limit:
                raise AlignFailure("transcript_mismatch", f"the audio fits the transcript {gap:.1f} nats/frame "
                                                          f"worse than the best phones (limit {model.mismatch_limit:.1f})")
        except AlignFailure as e:
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

