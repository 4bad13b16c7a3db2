"""Forced alignment of one utterance: Viterbi through a left-to-right graph with a beam.

The graph is a chain of HMM states, one chain per word in order, with an optional silence
block before, between and after the words. An optional block is an extra edge that jumps
over it, so the graph stays a chain plus a few skips. States scoring worse than the frame's
best by more than the beam are pruned, as Kaldi and MFA do; when the path to the end gets
pruned the caller retries with a wider beam.

The search is compiled (numba) and scores lazily: a frame's few states within the beam (a
handful of the utterance's hundreds) are the only ones whose emissions get computed, once per
pdf and frame. An emission is a diagonal-covariance Gaussian mixture scored by its best
component (the Viterbi approximation); each component's log-density is one dot product of
its weights with the frame's [x^2, x, 1] (`augment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

NEG = -np.inf
STAY, ADVANCE, SKIP = 0, 1, 2
# Vectorised dot products; no flag that would assume away the -inf of pruned states.
DOT_MATH = {"reassoc", "contract"}
# Augmented frames are zero-padded to a multiple of this (16 float32: one AVX-512 register),
# so dot products have no scalar remainder loop.
LANES = 16


@dataclass
class Graph:
    """States of one utterance in order; `word[s]` is -1 for silence states."""

    pdf: np.ndarray  # (S,) pdf of each state
    word: np.ndarray  # (S,) index of the word the state belongs to, -1 for silence
    skip_to: np.ndarray  # states that can also be entered by jumping over a silence block...
    skip_from: np.ndarray  # ...from these states
    starts: np.ndarray  # states a path may begin in
    finals: np.ndarray  # states a path may end in

    @property
    def size(self) -> int:
        return len(self.pdf)


def build_graph(word_pdfs: list[list[int]], silence_pdfs: list[int], between_words: bool) -> Graph:
    """Chain of `word_pdfs[i]` (the pdfs of word i's states) with optional silence blocks.

    Silence is optional at both ends, and between words when `between_words` is set.
    """
    pdf, word, skip_to, skip_from = [], [], [], []
    blocks: list[tuple[int, list[int]]] = []  # (word index or -1, pdfs)
    for i, pdfs in enumerate(word_pdfs):
        if i == 0 or between_words:
            blocks.append((-1, silence_pdfs))
        blocks.append((i, pdfs))
    blocks.append((-1, silence_pdfs))
    last_before_silence = None
    for w, pdfs in blocks:
        first = len(pdf)
        if w >= 0 and last_before_silence is not None:
            skip_to.append(first)
            skip_from.append(last_before_silence)
        pdf += pdfs
        word += [w] * len(pdfs)
        last_before_silence = first - 1 if w < 0 else None
    first_word = len(silence_pdfs)
    last_word = len(pdf) - len(silence_pdfs) - 1
    # A leading silence skip has no state to come from: it is a second start instead.
    keep = [k for k, src in enumerate(skip_from) if src >= 0]
    return Graph(
        pdf=np.array(pdf, np.int64), word=np.array(word, np.int64),
        skip_to=np.array([skip_to[k] for k in keep], np.int64),
        skip_from=np.array([skip_from[k] for k in keep], np.int64),
        starts=np.array([0, first_word]), finals=np.array([last_word, len(pdf) - 1]),
    )


def _padded(dim: int) -> int:
    return -(-(2 * dim + 1) // LANES) * LANES


def augment(feats: np.ndarray) -> np.ndarray:
    """(frames, K) float32 [x^2, x, 1, 0...]: what Gaussian weights (`gaussian_weights`) multiply."""
    frames, dim = feats.shape
    out = np.zeros((frames, _padded(dim)), np.float32)
    out[:, :dim] = np.square(feats)
    out[:, dim : 2 * dim] = feats
    out[:, 2 * dim] = 1.0
    return out


def gaussian_weights(means: np.ndarray, variances: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """(..., K) float32 with log w N(x) = augment(x) . weights, for diagonal Gaussians (..., D)."""
    dim = means.shape[-1]
    inv = 1.0 / variances
    const = log_weights - 0.5 * (dim * np.log(2 * np.pi) + np.log(variances).sum(-1)
                                 + (means**2 * inv).sum(-1))
    out = np.zeros((*means.shape[:-1], _padded(dim)), np.float32)
    out[..., :dim] = -0.5 * inv
    out[..., dim : 2 * dim] = means * inv
    out[..., 2 * dim] = const
    return out


@numba.njit(cache=True, fastmath=DOT_MATH)
def best_component(frames: np.ndarray, t: int, gaussians: np.ndarray, pdf: int, size: int) -> float:
    """Log-likelihood of frame t (augmented) under pdf's best of its first `size` components.

    Indices rather than row views: a view costs numba two atomic reference counts."""
    best = NEG
    for m in range(size):
        total = np.float32(0.0)
        for k in range(frames.shape[1]):
            total += frames[t, k] * gaussians[pdf, m, k]
        best = max(best, total)
    return best


def viterbi(frames: np.ndarray, graph: Graph, gaussians: np.ndarray, sizes: np.ndarray, loop: np.ndarray,
            scale: float, beam: float) -> np.ndarray | None:
    """Best state per frame, or None when no path survives the beam.

    `frames` are the augmented features; pdf j of the graph emits from the first `sizes[j]`
    components of `gaussians[j]` (pdfs, M, K), its log-likelihood weighted by `scale`;
    `loop` is (states, 2): log-probabilities of staying in and of leaving each state.
    """
    if len(frames) < 1:
        return None
    source = np.full(graph.size, -1, np.int64)
    source[graph.skip_to] = graph.skip_from
    stay, leave = np.ascontiguousarray(loop[:, 0]), np.ascontiguousarray(loop[:, 1])
    path = _search(frames, graph.pdf, source, graph.starts, graph.finals, gaussians, sizes, stay, leave,
                   float(scale), float(beam))
    return path if len(path) else None


@numba.njit(cache=True)
def _search(frames, pdf, source, starts, finals, gaussians, sizes, stay, leave, scale, beam):
    """The path as state per frame, empty when the beam lost it. Between frames only the window
    of states from the first to the last survivor is live; every state outside it is NEG."""
    count, states = len(frames), len(pdf)
    reach = 1  # how far one frame can move a path: one state, or a jump over a silence block
    for s in range(states):
        if source[s] >= 0:
            reach = max(reach, s - source[s])
    emission = np.empty(len(sizes))
    computed_at = np.full(len(sizes), -1)  # the frame `emission[j]` was computed for
    back = np.zeros((count, states), np.int8)
    score, new = np.full(states, NEG), np.full(states, NEG)
    lo, hi = states, 0
    for s in starts:
        p = pdf[s]
        score[s] = scale * best_component(frames, 0, gaussians, p, sizes[p])
        lo, hi = min(lo, s), max(hi, s)
    for t in range(1, count):
        last = min(states - 1, hi + reach)
        top = NEG
        for s in range(lo, last + 1):
            best, step = score[s] + stay[s], STAY
            if s > 0 and score[s - 1] + leave[s - 1] > best:
                best, step = score[s - 1] + leave[s - 1], ADVANCE
            src = source[s]
            if src >= 0 and score[src] + leave[src] > best:
                best, step = score[src] + leave[src], SKIP
            if best > NEG:
                p = pdf[s]
                if computed_at[p] != t:
                    emission[p] = scale * best_component(frames, t, gaussians, p, sizes[p])
                    computed_at[p] = t
                best += emission[p]
                back[t, s] = step
                top = max(top, best)
            new[s] = best
        next_lo, next_hi = states, -1
        for s in range(lo, last + 1):
            score[s] = NEG  # the old frame's window, so `score` is all NEG when it becomes `new`
            if new[s] < top - beam:
                new[s] = NEG
            elif new[s] > NEG:
                next_lo, next_hi = min(next_lo, s), s
        score, new = new, score
        lo, hi = next_lo, next_hi
        if hi < 0:
            return np.empty(0, np.int64)
    end = finals[0]
    for s in finals:
        if score[s] > score[end]:
            end = s
    if score[end] == NEG:
        return np.empty(0, np.int64)
    path = np.empty(count, np.int64)
    s = end
    for t in range(count - 1, -1, -1):
        path[t] = s
        step = back[t, s]
        s = s if step == STAY else s - 1 if step == ADVANCE else source[s]
    return path
