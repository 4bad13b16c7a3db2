"""A trained GMM-HMM model and forced alignment with it, and the mismatch score of an alignment
(the module docstring of gmm.py says what each is for)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numba
import numpy as np

from ..records import StageError
from .viterbi import Graph, augment, best_component, build_graph, gaussian_weights, viterbi

if TYPE_CHECKING:
    from .gmm import GmmSettings

SILENCE = "sil"
# Pdfs per frame the mismatch check scores in full, besides the path's. On the demo corpus
# the best of 2 tells wrong transcripts (another clip's, a word replaced or dropped) from
# right ones at least as well as the best of all pdfs did (measured when training clips set
# the limit, at 10 MADs).
CANDIDATES = 2


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
    # Held-out fit that confidences are ranked against (`confidence`): quantiles of the clips' and
    # the words' mean per-frame gaps; empty: no confidence.
    clip_gap_quantiles: np.ndarray = field(default_factory=lambda: np.zeros(0))
    word_gap_quantiles: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # LDA: the first `splice_dims` columns of the features, spliced over +-`splice` frames (`spliced`),
    # times `projection` (inputs, outputs); None: the features as they are.
    projection: np.ndarray | None = None
    splice: int = 0
    splice_dims: int = 0
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

    def frames(self, feats: np.ndarray) -> np.ndarray:
        """What the model scores: `feats` (mfcc) projected as it was trained, augmented."""
        return augment(project(feats, self.projection, self.splice, self.splice_dims))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_scoring"] = None
        return state


def spliced(feats: np.ndarray, splice: int) -> np.ndarray:
    """(frames, D * (2 * splice + 1)): each frame with its `splice` neighbours on each side, edges repeated."""
    if splice == 0:
        return feats
    at = np.clip(np.arange(len(feats))[:, None] + np.arange(-splice, splice + 1), 0, len(feats) - 1)
    return feats[at].reshape(len(feats), -1)


def project(feats: np.ndarray, projection: np.ndarray | None, splice: int, dims: int) -> np.ndarray:
    """`feats` as a model or mixtures over projected features see them (GmmModel.projection)."""
    if projection is None:
        return feats
    return (spliced(np.ascontiguousarray(feats[:, :dims]), splice) @ projection).astype(np.float32)


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
            raise StageError("unseen_phone", f"phone(s) {', '.join(unseen)} never occurred in the "
                                             f"{model.lang} training sample")
        out.append([index[p] * model.states + k for p in mapped for k in range(model.states)])
    return out


@dataclass
class Alignment:
    path_pdfs: np.ndarray  # pdf per frame
    word_frames: list[tuple[int, int]]  # per word: first frame, one past its last
    retried: bool


def word_graph(model: GmmModel, phones: list[tuple[str, ...]], s: GmmSettings) -> Graph:
    """The words' states, in order, with optional silences."""
    silence = list(range(model.states))  # phone 0
    return build_graph(_word_pdfs(model, phones), silence, s.silence_between_words)


def align_features(model: GmmModel, frames: np.ndarray, graph: Graph, s: GmmSettings, retry: bool = True
                   ) -> Alignment:
    """The forced alignment of `frames` (augmented features) to the graph's words; `retry`: with the
    wider beam when the first loses the path."""
    words = int(graph.word.max()) + 1
    needed = int((graph.word >= 0).sum())
    if needed > len(frames):
        raise StageError("audio_too_short", f"{words} words need at least {needed} frames, "
                                            f"the clip has {len(frames)}")
    gaussians, sizes, _ = model.scoring()
    transitions = model.transitions[graph.pdf]
    path = viterbi(frames, graph, gaussians, sizes, transitions, s.acoustic_scale, s.beam)
    retried = path is None
    if retried and retry:
        path = viterbi(frames, graph, gaussians, sizes, transitions, s.acoustic_scale, s.retry_beam)
    if path is None:
        raise StageError("alignment_failed", f"no path through the {words} words within beam "
                                             f"{s.retry_beam if retry else s.beam} over {len(frames)} frames")
    return Alignment(graph.pdf[path], _word_frames(graph, path, words), retried)


def _word_frames(graph: Graph, path: np.ndarray, words: int) -> list[tuple[int, int]]:
    """Per word, its first frame and one past its last (the path visits words in order)."""
    owner = graph.word[path]
    frames = np.flatnonzero(owner >= 0)
    order = np.arange(words)
    first = frames[np.searchsorted(owner[frames], order, side="left")]
    last = frames[np.searchsorted(owner[frames], order, side="right") - 1]
    return list(zip(first.tolist(), (last + 1).tolist(), strict=True))


def frame_gaps(model: GmmModel, frames: np.ndarray, path_pdfs: np.ndarray) -> np.ndarray:
    """Per frame, the log-likelihood the forced path loses against the best state there (of the
    states Gaussian selection picks: gmm.py's docstring says how); never below 0."""
    gaussians, sizes, single = model.scoring()
    return _gaps(frames, gaussians, sizes, path_pdfs, frames @ single.T, CANDIDATES)


def mismatch(model: GmmModel, frames: np.ndarray, path_pdfs: np.ndarray) -> float:
    """Mean per-frame log-likelihood the forced path loses against the best state of each frame."""
    return float(frame_gaps(model, frames, path_pdfs).mean())


def word_gaps(gaps: np.ndarray, word_frames: list[tuple[int, int]]) -> np.ndarray:
    """Each word's mean per-frame gap over its own frames."""
    return np.array([gaps[a:b].mean() for a, b in word_frames])


QUANTILES = np.linspace(0.0, 1.0, 101)


def gap_quantiles(gaps) -> np.ndarray:
    """What a model keeps of a set of reference gaps to rank others against (`confidence`)."""
    return np.quantile(np.asarray(gaps, float), QUANTILES) if len(gaps) else np.zeros(0)


def confidence(gap: float, quantiles: np.ndarray) -> float | None:
    """The share of the reference (held-out clips or words) that fit the model no better than a
    clip or word of this gap: 0.5 is typical, 0.02 fits worse than 98 in 100. None without a reference."""
    if not len(quantiles):
        return None
    lo, hi = np.searchsorted(quantiles, gap, side="left"), np.searchsorted(quantiles, gap, side="right")
    if lo != hi:  # equal to a stretch of quantiles (many equal gaps): the middle of it
        return round(float(1 - (QUANTILES[lo] + QUANTILES[hi - 1]) / 2), 4)
    if lo == 0:
        return 1.0
    if lo == len(quantiles):
        return 0.0
    k = lo - 1
    step = (gap - quantiles[k]) / (quantiles[k + 1] - quantiles[k])
    return round(float(1 - (QUANTILES[k] + step * (QUANTILES[k + 1] - QUANTILES[k]))), 4)


@numba.njit(cache=True)
def _gaps(frames, gaussians, sizes, path_pdfs, rough, candidates) -> np.ndarray:
    """Per frame, the best score among the `candidates` pdfs of best `rough` score, less the path
    pdf's score (never below 0: the path pdf is a candidate too)."""
    top = np.arange(min(candidates, rough.shape[1]))
    out = np.empty(len(frames))
    for t in range(len(frames)):
        _top(rough, t, top)
        forced = best_component(frames, t, gaussians, path_pdfs[t], sizes[path_pdfs[t]])
        best = forced
        for p in top:
            best = max(best, best_component(frames, t, gaussians, p, sizes[p]))
        out[t] = best - forced
    return out


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

