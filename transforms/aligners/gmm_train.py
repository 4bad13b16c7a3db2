"""Training a GMM-HMM model: Viterbi training from a flat start with degraded copies of the clips,
then the mismatch limit and the confidence references from held-out clips (the module docstring
of gmm.py describes the recipe)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..records import StageError
from . import Clip
from .gmm_model import (
    SILENCE,
    Alignment,
    GmmModel,
    align_features,
    base_phone,
    frame_gaps,
    gap_quantiles,
    word_gaps,
    word_graph,
)
from .viterbi import Graph, gaussian_weights

if TYPE_CHECKING:
    from .gmm import GmmSettings


@dataclass
class TrainItem:
    feats: np.ndarray
    frames: np.ndarray  # the features augmented (`augment`)
    phones: list[tuple[str, ...]]
    speech: np.ndarray  # per frame: loud enough to be speech (for the flat start)
    clip: Clip  # the audio, for a degraded copy


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

    def split(self, counts: np.ndarray, max_gaussians: np.ndarray, min_frames: int, growth: np.ndarray) -> None:
        """Multiply the components of each pdf by its growth (doubling the heaviest, as far as its
        data can support), up to its maximum."""
        for j in range(len(self.means)):
            m = len(self.weights[j])
            target = min(int(growth[j]) * m, int(max_gaussians[j]), max(m, int(counts[j] // min_frames)))
            while len(self.weights[j]) < target:
                self._double(j, target)

    def _double(self, j: int, target: int) -> None:
        m = len(self.weights[j])
        heavy = np.argsort(-self.weights[j])[: min(2 * m, target) - m]
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


def _flat_start(item: TrainItem, phone_index: dict[str, int], states: int) -> np.ndarray:
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


def _rare_phones(items: list[TrainItem], min_examples: int) -> dict[str, str]:
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


def degraded_copies(items: list[TrainItem], fraction: float, copy: Callable[[Clip], np.ndarray] | None
                    ) -> list[np.ndarray | None]:
    """Per item, the augmented frames of its degraded copy, for an evenly spread `fraction` of them."""
    chosen = holdout_split(len(items), fraction, 1) if copy is not None else np.zeros(len(items), bool)
    return [copy(item.clip) if c else None for item, c in zip(items, chosen, strict=True)]


def train_model(lang: str, voice: str, items: list[TrainItem], s: GmmSettings,
                copy: Callable[[Clip], np.ndarray] | None = None) -> tuple[GmmModel, int]:
    """The trained model, and how many items the last pass could not align (within the first beam,
    from `careful_from_pass` on).

    With `copy` (clip -> augmented frames of it degraded), `s.degraded_copies` of the training
    items also train as their copies: each frame of a copy takes the state the item's own
    alignment gives that frame, as the copy keeps the item's timeline. Reverberation and noise
    then land in the states of the phones that made them, instead of pulling the boundaries.

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
    copies = degraded_copies(items, s.degraded_copies, copy)
    feats = np.concatenate([item.feats for item in items])  # the variance floor's scale: the clips as they are
    estimator = _Estimator(pdfs, feats.shape[1], s.variance_floor * feats.var(0))
    labels = [_flat_start(item, index, s.states_per_phone) for item in items]
    # Silence (phone 0) may have its own number of components; each split grows a pdf enough to reach
    # its maximum over the scheduled splits.
    most = np.full(pdfs, s.max_gaussians)
    most[: s.states_per_phone] = s.silence_gaussians
    growth = np.maximum(2, np.ceil(most ** (1 / max(len(s.split_at), 1)))).astype(int)
    model, graphs, failed = None, [], 0
    for step in range(s.passes + 1):
        if step:  # pass 0 estimates from the flat start
            graphs = graphs or [word_graph(model, item.phones, s) for item in items]  # the same every pass
            careful = step >= s.careful_from_pass  # a clip the first beam loses trains nothing: no retry
            aligned = [_try_align(model, item.frames, graph, s, retry=not careful)
                       for item, graph in zip(items, graphs, strict=True)]
            failed = sum(a is None for a in aligned)
            labels = [a.path_pdfs if a is not None else None for a in aligned]
        usable = [(f, lab) for item, twin, lab in zip(items, copies, labels, strict=True) if lab is not None
                  for f in (item.frames, twin) if f is not None]
        if not usable:
            raise StageError("no_training_data", f"pass {step} aligned none of the {len(items)} {lang} training "
                                                 f"clips within beam {s.beam}")
        frames = np.concatenate([f for f, _ in usable])
        flat = np.concatenate([lab for _, lab in usable])
        estimator.update(frames, flat, s.em_steps)
        if step in s.split_at:
            estimator.split(np.bincount(flat, minlength=pdfs), most, s.min_frames_per_gaussian, growth)
            estimator.update(frames, flat, 1)
        log_w, means, variances = estimator.arrays()
        model = GmmModel(lang, voice, phones, s.states_per_phone, log_w, means, variances,
                         _transitions([lab for _, lab in usable], pdfs), shared)
    # Held-out phones as spelled, as in alignment (_word_pdfs maps those training shared or never saw).
    pairs = ([(item, g) for item in scored if (g := _try_graph(model, item.phones, s)) is not None]
             if scored else zip(items, graphs, strict=True))
    gaps, per_word = [], []
    for item, graph in pairs:
        if (a := _try_align(model, item.frames, graph, s)) is not None:
            frame = frame_gaps(model, item.frames, a.path_pdfs)
            gaps.append(float(frame.mean()))
            per_word.extend(word_gaps(frame, a.word_frames))
    if gaps:
        median = float(np.median(gaps))
        spread = float(np.median(np.abs(np.asarray(gaps) - median))) or 1.0
        model.mismatch_limit = median + (s.mismatch_mads if scored else s.training_mismatch_mads) * spread
        model.clip_gap_quantiles, model.word_gap_quantiles = gap_quantiles(gaps), gap_quantiles(per_word)
    return model, failed


def _try_graph(model: GmmModel, phones: list[tuple[str, ...]], s: GmmSettings) -> Graph | None:
    try:
        return word_graph(model, phones, s)
    except StageError:
        return None


def _try_align(model: GmmModel, frames: np.ndarray, graph: Graph, s: GmmSettings, retry: bool = True
               ) -> Alignment | None:
    try:
        return align_features(model, frames, graph, s, retry)
    except StageError:
        return None

