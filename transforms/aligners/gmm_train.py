"""Training a GMM-HMM model as sums of statistics over shards of the training sample, as Kaldi's
gmm-acc-stats-ali, gmm-sum-accs and gmm-est do (the module docstring of gmm.py describes the recipe).

A pass is one round over the shards: each shard aligns its clips with the previous model and
accumulates what the next model needs (`accumulate`: per pdf component its occupancy and sums of
x and x^2, state durations, the features' moments, and once the LDA statistics); the shards'
statistics are summed in shard order (`total`); `estimate` turns the sum into the next model.
After the last pass the held-out shards are scored (`score`) and `finish` sets the mismatch limit
and the confidence references from their fit. The serial `GmmBackend.train` and the align stage's
rounds across workers (transforms/align.py) run these same functions over the same shards, which
follow from the sample alone (`shard_plan`), and sum them in the same order: both make the same
model, bit for bit, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg

from ..records import StageError
from .gmm_model import (
    SILENCE,
    Alignment,
    GmmModel,
    align_features,
    base_phone,
    frame_gaps,
    gap_quantiles,
    project,
    spliced,
    word_gaps,
    word_graph,
)
from .viterbi import Graph, augment, gaussian_weights

if TYPE_CHECKING:
    from .gmm import GmmSettings

# Part of a trained model's cache key (transforms/align.py): raise it when training changes what it makes.
MODEL_VERSION = 1


@dataclass
class TrainItem:
    id: str
    feats: np.ndarray  # mfcc
    phones: list[tuple[str, ...]]  # as espeak-ng spells them
    speech: np.ndarray  # per frame: loud enough to be speech (for the flat start)
    twin: np.ndarray | None = None  # the features of its degraded copy (multi-condition training)
    digest: str = ""  # of feats and twin: what a worker's PassCache knows them by
    twin_digest: str = ""

    def __post_init__(self):
        self.digest = self.digest or hashlib.sha1(np.ascontiguousarray(self.feats)).hexdigest()
        if self.twin is not None and not self.twin_digest:
            self.twin_digest = hashlib.sha1(np.ascontiguousarray(self.twin)).hexdigest()


@dataclass
class Shard:
    index: int  # shards are summed in this order
    items: list[TrainItem]
    held: bool = False  # held out: scored by the final model, never trained on

    def summary(self) -> ShardSummary:
        return ShardSummary(self.held, Counter(p for item in self.items for word in item.phones for p in word),
                            len(self.items), self.items[0].feats.shape[1] if self.items else 0)


@dataclass
class ShardSummary:
    """What the phone inventory needs of a shard."""

    held: bool
    phones: Counter
    items: int
    dim: int


def holdout_split(n: int, fraction: float, minimum: int) -> np.ndarray:
    """Which of n items (in the sample's deterministic order) are held out: int(n * fraction)
    of them, evenly spread, or none when that is fewer than `minimum`."""
    held = np.zeros(n, bool)
    count = int(n * fraction)
    if count >= minimum:
        held[np.arange(count) * n // count] = True
    return held


def shard_plan(n: int, s: GmmSettings) -> list[tuple[bool, list[tuple[int, bool]]]]:
    """The shards of a sample of n clips (in its deterministic order), in shard order: per shard,
    whether it is held out and its clips as (position in the sample, whether it gets a degraded copy).

    The held-out clips are an evenly spread `holdout`; the training clips, an evenly spread
    `degraded_copies` of them copied, are dealt round-robin into `train_shards` shards, and so
    are the held-out ones into as many. Nothing here depends on the workers."""
    held = holdout_split(n, s.holdout, s.min_holdout)
    train, scored = np.flatnonzero(~held), np.flatnonzero(held)
    copied = holdout_split(len(train), s.degraded_copies, 1)
    plan = [(False, [(int(i), bool(c)) for i, c in zip(train[k :: s.train_shards], copied[k :: s.train_shards],
                                                      strict=True)]) for k in range(s.train_shards)]
    plan += [(True, [(int(i), False) for i in scored[k :: s.train_shards]]) for k in range(s.train_shards)]
    return [(h, clips) for h, clips in plan if clips]


@dataclass
class Mixtures:
    """Every pdf's Gaussian mixture over one feature space: the features as they are, or their
    first `splice_dims` columns spliced and projected (`projection`)."""

    weights: list[np.ndarray]
    means: list[np.ndarray]
    variances: list[np.ndarray]
    projection: np.ndarray | None = None
    splice: int = 0
    splice_dims: int = 0
    floor: np.ndarray | None = None  # no variance below it; None: new mixtures, set by their first estimate

    @classmethod
    def fresh(cls, pdfs: int, dim: int, projection=None, splice=0, splice_dims=0) -> Mixtures:
        """One component per pdf: its first statistics are plain sums, its first estimate their moments."""
        return cls([np.ones(1) for _ in range(pdfs)], [np.zeros((1, dim)) for _ in range(pdfs)],
                   [np.ones((1, dim)) for _ in range(pdfs)], projection, splice, splice_dims)

    def features(self, feats: np.ndarray) -> np.ndarray:
        return project(feats, self.projection, self.splice, self.splice_dims)

    def space(self) -> str:
        """Names the feature space: the same name, the same features."""
        if self.projection is None:
            return "features"
        return hashlib.sha1(self.projection.tobytes() + f"{self.splice},{self.splice_dims}".encode()).hexdigest()

    def same_space(self, model: GmmModel) -> bool:
        if self.projection is None or model.projection is None:
            return self.projection is None and model.projection is None
        return self.splice == model.splice and np.array_equal(self.projection, model.projection)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m, dim = max(len(w) for w in self.weights), self.means[0].shape[1]
        log_w = np.full((len(self.weights), m), -np.inf)
        means = np.zeros((len(self.weights), m, dim))
        variances = np.ones((len(self.weights), m, dim))
        for j, (w, mu, var) in enumerate(zip(self.weights, self.means, self.variances, strict=True)):
            log_w[j, : len(w)], means[j, : len(w)], variances[j, : len(w)] = np.log(w), mu, var
        return log_w, means, variances


@dataclass
class TrainState:
    """Where training of one language stands between passes; what every shard's `accumulate` gets."""

    lang: str
    voice: str
    phones: list[str]  # phones[0] is silence
    shared: dict[str, str]  # rare phone -> its base phone
    has_holdout: bool
    target: Mixtures  # what this pass's statistics re-estimate
    step: int = 0  # the pass about to run; pass 0 estimates from the flat start
    model: GmmModel | None = None  # aligns this pass's clips (None: the flat start)
    failed: int = 0  # clips the last pass could not align
    error: StageError | None = None

    @property
    def pdfs(self) -> int:
        return len(self.target.weights)


@dataclass
class Stats:
    """One pass's sufficient statistics of a shard, or summed over shards (`plus`)."""

    gmm: np.ndarray  # (pdfs, M, K): per target component, sums of the augmented frames [x^2, x, 1] it owns
    frames: np.ndarray  # (pdfs,) frames aligned to each pdf...
    leaves: np.ndarray  # ...and how often the alignment left it
    moments: np.ndarray  # (3, dim): count, sum and sum of squares of the clips' own features (the variance floor)
    aligned: int = 0  # clips whose frames count
    failed: int = 0  # clips the pass could not align
    lda: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # per pdf sums and counts, scatter

    def plus(self, other: Stats) -> Stats:
        lda = (self.lda or other.lda if self.lda is None or other.lda is None
               else tuple(a + b for a, b in zip(self.lda, other.lda, strict=True)))
        return Stats(self.gmm + other.gmm, self.frames + other.frames, self.leaves + other.leaves,
                     self.moments + other.moments, self.aligned + other.aligned, self.failed + other.failed, lda)


def total(stats: list[Stats]) -> Stats:
    """The shards' statistics summed in the order given (shard order: float sums depend on it)."""
    out = stats[0]
    for more in stats[1:]:
        out = out.plus(more)
    return out


def begin(lang: str, voice: str, summaries: list[ShardSummary], s: GmmSettings, skipped: dict | None = None
          ) -> TrainState:
    """The state before pass 0: the phone inventory of the training shards and fresh mixtures."""
    counts = sum((x.phones for x in summaries if not x.held), Counter())
    if not any(x.items for x in summaries if not x.held):
        raise StageError("no_training_data", f"no {lang} clip in the training sample could be used "
                                             f"(left out: {skipped or {}})")
    shared = {p: base_phone(p) for p, n in counts.items()
              if n < s.min_phone_examples and counts.get(base_phone(p), 0) >= s.min_phone_examples}
    phones = [SILENCE] + sorted({shared.get(p, p) for p in counts})
    dim = max(x.dim for x in summaries)
    return TrainState(lang, voice, phones, shared, any(x.held and x.items for x in summaries),
                      Mixtures.fresh(len(phones) * s.states_per_phone, dim))


def failed_state(lang: str, error: StageError) -> TrainState:
    """A language whose training cannot start: every round passes the error on."""
    return TrainState(lang, "", [], {}, False, Mixtures.fresh(0, 0), error=error)


def accumulate(state: TrainState, shard: Shard, s: GmmSettings, cache: PassCache | None = None) -> Stats:
    """Pass `state.step` over one training shard: each clip aligned with `state.model` (or spread
    evenly over its states in pass 0), its frames (and its degraded copy's, labelled alike) counted
    towards the target mixtures. `cache` spares recomputing what stays from pass to pass (the
    results are the same without it)."""
    cache = cache or PassCache(0)
    target, pdfs = state.target, state.pdfs
    index = {p: i for i, p in enumerate(state.phones)}
    careful = state.step >= s.careful_from_pass  # a clip the first beam loses trains nothing: no retry
    same_space = state.model is not None and target.same_space(state.model)
    space = target.space()
    fresh = target.floor is None  # new mixtures: their features' moments set the floor
    frames, labels, moments, failed = [], [], [], 0
    lda_pairs = [] if s.lda_dim and state.step == s.lda_pass else None
    for item in shard.items:
        phones = [tuple(state.shared.get(p, p) for p in word) for word in item.phones]
        if fresh:
            own = target.features(item.feats)
            moments.append(np.stack([np.full(own.shape[1], float(len(own))), own.sum(0, dtype=np.float64),
                                     np.square(own, dtype=np.float64).sum(0)]))
        own = cache.frames_of(target, space, item.feats, item.digest)
        if state.model is None:
            lab = _flat_start(len(item.feats), item.speech, phones, index, s.states_per_phone)
        else:
            found = _try_align(state.model, own if same_space else state.model.frames(item.feats),
                               cache.graph(state.model, phones, s), s, retry=not careful)
            if found is None:
                failed += 1
                continue
            lab = found.path_pdfs
        frames.append(own)
        labels.append(lab)
        if item.twin is not None:
            frames.append(cache.frames_of(target, space, item.twin, item.twin_digest))
            labels.append(lab)
        if lda_pairs is not None:
            lda_pairs += [(f[:, : _statics(f)], lab) for f in (item.feats, item.twin) if f is not None]
    dim = target.means[0].shape[1]
    m = max(len(w) for w in target.weights)
    stats = Stats(np.zeros((pdfs, m, _augmented_width(dim))), np.zeros(pdfs, np.int64), np.zeros(pdfs, np.int64),
                  np.sum(moments, axis=0) if moments else np.zeros((3, dim)), len(shard.items) - failed, failed)
    if frames:
        _gmm_stats(target, np.concatenate(frames), np.concatenate(labels), stats.gmm)
        for lab in labels:
            stats.frames += np.bincount(lab, minlength=pdfs)
            stats.leaves += np.bincount(lab[np.append(lab[1:] != lab[:-1], True)], minlength=pdfs)
    if lda_pairs:
        stats.lda = _lda_stats(lda_pairs, pdfs, s.lda_splice)
    return stats


class PassCache:
    """What a worker keeps of the clips it trains on from pass to pass: each clip's graph, and its
    augmented frames in the current feature space. Keys are contents (the features' digest, the
    phones and the inventory), so any training in the process may share it; the oldest entries go
    past `limit_bytes`."""

    def __init__(self, limit_bytes: int = 256 << 20):
        self.limit, self.size, self.lock = limit_bytes, 0, threading.Lock()
        self.frames: dict = {}
        self.graphs: dict = {}

    def frames_of(self, target: Mixtures, space: str, feats: np.ndarray, digest: str) -> np.ndarray:
        key = (space, digest)
        found = self.frames.get(key)
        if found is None:
            found = augment(target.features(feats))
            with self.lock:
                self.frames[key] = found
                self.size += found.nbytes
                while self.size > self.limit and len(self.frames) > 1:
                    self.size -= self.frames.pop(next(iter(self.frames))).nbytes
        return found

    def graph(self, model: GmmModel, phones: list[tuple[str, ...]], s: GmmSettings) -> Graph:
        key = (tuple(phones), tuple(model.phones), tuple(sorted(model.shared.items())), model.states,
               s.silence_between_words)
        found = self.graphs.get(key)
        if found is None:
            found = self.graphs[key] = word_graph(model, phones, s)
            if len(self.graphs) > 100_000:  # small: graphs of many trainings
                self.graphs.clear()
        return found


def estimate(state: TrainState, stats: Stats, s: GmmSettings) -> TrainState:
    """The next state from a pass's summed statistics: the re-estimated mixtures (split on schedule)
    and transitions as the model of the next pass; after the LDA pass, fresh mixtures over the
    projected features as its target."""
    if state.error is not None:
        return replace(state, step=state.step + 1)
    if stats.aligned == 0:
        error = StageError("no_training_data", f"pass {state.step} aligned none of the {stats.failed} "
                                               f"{state.lang} training clips within beam {s.beam}")
        return replace(state, step=state.step + 1, error=error)
    floor = state.target.floor
    if floor is None:  # new mixtures: the floor's scale is their features' variance over the clips as they are
        count, sums, squares = stats.moments
        floor = s.variance_floor * np.maximum(squares / count - (sums / count) ** 2, 1e-12)
    target = replace(state.target, weights=list(state.target.weights), means=list(state.target.means),
                     variances=list(state.target.variances), floor=floor)
    for j in range(state.pdfs):
        _m_step(target, j, stats.gmm[j, : len(target.weights[j])], floor)
    if state.step in s.split_at:
        most = np.full(state.pdfs, s.max_gaussians)
        most[: s.states_per_phone] = s.silence_gaussians  # silence (phone 0) may have its own number
        growth = np.maximum(2, np.ceil(most ** (1 / max(len(s.split_at), 1)))).astype(int)  # reach it in the splits
        for j in range(state.pdfs):
            _split(target, j, int(stats.frames[j]), int(most[j]), s.min_frames_per_gaussian, int(growth[j]))
    log_w, means, variances = target.arrays()
    model = GmmModel(state.lang, state.voice, state.phones, s.states_per_phone, log_w, means, variances,
                     _transitions(stats.frames, stats.leaves), state.shared, projection=target.projection,
                     splice=target.splice, splice_dims=target.splice_dims)
    if stats.lda is not None:  # from the next pass on, the mixtures are over LDA-projected spliced features
        projection = _lda(*stats.lda, s.lda_dim)
        target = Mixtures.fresh(state.pdfs, s.lda_dim, projection, s.lda_splice, len(projection) // (2 * s.lda_splice + 1))
    return replace(state, step=state.step + 1, model=model, target=target, failed=stats.failed)


def score(state: TrainState, shard: Shard, s: GmmSettings) -> tuple[list[float], list[float]]:
    """The final model's fit of a shard's clips: per clip and per word, the mean per-frame gap."""
    gaps, per_word = [], []
    for item in shard.items:
        # Phones as spelled, as in alignment (_word_pdfs maps those training shared or never saw).
        try:
            graph = word_graph(state.model, item.phones, s)
        except StageError:
            continue
        frames = state.model.frames(item.feats)
        if (a := _try_align(state.model, frames, graph, s)) is not None:
            frame = frame_gaps(state.model, frames, a.path_pdfs)
            gaps.append(float(frame.mean()))
            per_word.extend(word_gaps(frame, a.word_frames).tolist())
    return gaps, per_word


def scored_shards(state: TrainState, shards: list[Shard]) -> list[Shard]:
    """The held-out shards; a sample too small to spare `min_holdout` clips scores its training clips."""
    return [x for x in shards if x.held == state.has_holdout]


def finish(state: TrainState, gaps: list[float], per_word: list[float], s: GmmSettings) -> GmmModel:
    """The final model with its mismatch limit and confidence references from the scored clips' fit.

    Training clips fit better than clips outside the sample, so without a holdout the limit is set
    at `training_mismatch_mads` instead of `mismatch_mads`."""
    if state.error is not None:
        raise state.error
    model = state.model
    if gaps:
        median = float(np.median(gaps))
        spread = float(np.median(np.abs(np.asarray(gaps) - median))) or 1.0
        model.mismatch_limit = median + (s.mismatch_mads if state.has_holdout else s.training_mismatch_mads) * spread
        model.clip_gap_quantiles, model.word_gap_quantiles = gap_quantiles(gaps), gap_quantiles(per_word)
    return model


def passes(s: GmmSettings) -> int:
    return s.passes + 1  # pass 0 estimates from the flat start


# -- the pieces ---------------------------------------------------------------------------------


def _statics(feats: np.ndarray) -> int:
    """How many leading columns of mfcc's features are the cepstra themselves (a third: deltas follow)."""
    return feats.shape[1] // 3


def _augmented_width(dim: int) -> int:
    return augment(np.zeros((0, dim), np.float32)).shape[1]


def _gmm_stats(target: Mixtures, frames: np.ndarray, labels: np.ndarray, out: np.ndarray) -> None:
    """Adds to out[j, m] the augmented frames of pdf j weighted by component m's posterior."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(target.weights) + 1))
    for j in np.flatnonzero(np.diff(bounds)):
        x = frames[order[bounds[j] : bounds[j + 1]]]
        w = target.weights[j]
        if len(w) == 1:
            out[j, 0] += x.sum(0, dtype=np.float64)
            continue
        resp = x @ gaussian_weights(target.means[j], target.variances[j], np.log(w)).T
        resp = np.exp(resp - resp.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
        out[j, : len(w)] += (resp.T @ x).astype(np.float64)


def _m_step(target: Mixtures, j: int, stats: np.ndarray, floor: np.ndarray) -> None:
    """Pdf j's components from their statistics; a component that lost its frames goes (never the last)."""
    dim = target.means[j].shape[1]
    occ = stats[:, 2 * dim]
    if occ.sum() <= 0:
        return
    keep = occ > 1e-3 * occ.sum() + 1.0
    keep[np.argmax(occ)] = True
    occ, stats = occ[keep], stats[keep]
    target.weights[j] = occ / occ.sum()
    target.means[j] = stats[:, dim : 2 * dim] / occ[:, None]
    target.variances[j] = np.maximum(stats[:, :dim] / occ[:, None] - target.means[j] ** 2, floor)


def _split(target: Mixtures, j: int, frames: int, most: int, min_frames: int, growth: int) -> None:
    """Multiplies pdf j's components by `growth` (doubling the heaviest, as far as its frames can
    support), up to `most`."""
    m = len(target.weights[j])
    goal = min(growth * m, most, max(m, frames // min_frames))
    while len(target.weights[j]) < goal:
        m = len(target.weights[j])
        heavy = np.argsort(-target.weights[j], kind="stable")[: min(2 * m, goal) - m]
        offset = 0.2 * np.sqrt(target.variances[j][heavy])
        means = np.vstack([target.means[j], target.means[j][heavy] + offset])
        means[heavy] -= offset
        target.means[j] = means
        target.variances[j] = np.vstack([target.variances[j], target.variances[j][heavy]])
        weights = np.append(target.weights[j], target.weights[j][heavy] / 2)
        weights[heavy] /= 2
        target.weights[j] = weights


def _transitions(frames: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """log P(stay), log P(leave) per pdf from how long the alignment stays in each state (one
    pseudo-count each way keeps unseen states usable)."""
    stay = np.clip(1 - (leaves + 1) / (frames + 2), 0.05, 0.95)
    return np.log(np.stack([stay, 1 - stay], axis=1))


def _flat_start(frames: int, speech: np.ndarray, phones: list[tuple[str, ...]], phone_index: dict[str, int],
                states: int) -> np.ndarray:
    """Labels spreading the speech frames evenly over the phone states, silence around them."""
    seq = [phone_index[p] * states + k for word in phones for p in word for k in range(states)]
    loud = np.flatnonzero(speech)
    first, last = (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, frames)
    if last - first < len(seq):
        first, last = 0, frames
    labels = np.zeros(frames, np.int64)
    labels[:first] = np.arange(first) * states // max(first, 1)
    labels[last:] = np.arange(frames - last) * states // max(frames - last, 1)
    span = np.arange(last - first) * len(seq) // (last - first)
    labels[first:last] = np.asarray(seq)[span]
    return labels


def _lda_stats(pairs: list[tuple[np.ndarray, np.ndarray]], classes: int, splice: int) -> tuple:
    """Per class (pdf) sums and counts of the spliced features, and their total scatter (each clip's
    in float32, summed in float64)."""
    width = pairs[0][0].shape[1] * (2 * splice + 1)
    sums, counts, scatter = np.zeros((classes, width)), np.zeros(classes), np.zeros((width, width))
    for feats, labels in pairs:
        x = spliced(np.asarray(feats, np.float32), splice)
        scatter += x.T @ x
        order = np.argsort(labels, kind="stable")
        present, first = np.unique(labels[order], return_index=True)
        sums[present] += np.add.reduceat(x[order], first, axis=0, dtype=np.float64)
        counts += np.bincount(labels, minlength=classes)
    return sums, counts, scatter


def _lda(sums: np.ndarray, counts: np.ndarray, scatter: np.ndarray, dim: int) -> np.ndarray:
    """(inputs, dim): the projection that best separates the classes relative to their spread
    (Fisher's LDA), scaled so that the within-class covariance becomes the identity."""
    seen = counts > 0
    n, width = counts.sum(), len(scatter)
    mean = sums.sum(0) / n
    centred = sums[seen] / counts[seen, None] - mean
    between = (centred.T * counts[seen]) @ centred / n
    within = scatter / n - np.outer(mean, mean) - between
    within += 1e-6 * np.trace(within) / width * np.eye(width)  # never singular
    _, vectors = scipy.linalg.eigh(between, within)
    return np.ascontiguousarray(vectors[:, ::-1][:, :dim]).astype(np.float32)


def _try_align(model: GmmModel, frames: np.ndarray, graph: Graph, s: GmmSettings, retry: bool = True
               ) -> Alignment | None:
    try:
        return align_features(model, frames, graph, s, retry)
    except StageError:
        return None
