"""Forced alignment of one utterance: Viterbi through a left-to-right graph with a beam.

The graph is a chain of HMM states, one chain per word in order, with an optional silence
block before, between and after the words. An optional block is an extra edge that jumps
over it, so the graph stays a chain plus a few skips and the search is a loop over frames
with numpy over states. States scoring worse than the frame's best by more than the beam
are pruned, as Kaldi and MFA do; when the path to the end gets pruned the caller retries
with a wider beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEG = -np.inf
STAY, ADVANCE, SKIP = 0, 1, 2


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


def viterbi(scores: np.ndarray, graph: Graph, loop: np.ndarray, beam: float) -> np.ndarray | None:
    """Best state per frame, or None when no path survives the beam.

    `scores` is (frames, states): the scaled acoustic log-likelihood of each state's pdf;
    `loop` is (states, 2): log-probabilities of staying in and of leaving each state.
    """
    frames, states = scores.shape
    if frames < 1:
        return None
    stay_lp, leave_lp = loop[:, 0], loop[:, 1]
    back = np.zeros((frames, states), np.int8)
    score = np.full(states, NEG)
    score[graph.starts] = scores[0, graph.starts]
    move = np.empty(states)
    for t in range(1, frames):
        stay = score + stay_lp
        move[0] = NEG
        np.add(score[:-1], leave_lp[:-1], out=move[1:])
        choice = (move > stay).astype(np.int8)
        best = np.maximum(stay, move)
        if len(graph.skip_to):
            jump = score[graph.skip_from] + leave_lp[graph.skip_from]
            better = jump > best[graph.skip_to]
            best[graph.skip_to[better]] = jump[better]
            choice[graph.skip_to[better]] = SKIP
        score = best + scores[t]
        score[score < score.max() - beam] = NEG
        back[t] = choice
    end = graph.finals[np.argmax(score[graph.finals])]
    if score[end] == NEG:
        return None
    return _trace(back, graph, end)


def _trace(back: np.ndarray, graph: Graph, end: int) -> np.ndarray:
    source = np.full(graph.size, -1, np.int64)
    source[graph.skip_to] = graph.skip_from
    path = np.empty(len(back), np.int64)
    s = end
    for t in range(len(back) - 1, -1, -1):
        path[t] = s
        step = back[t, s]
        s = s if step == STAY else s - 1 if step == ADVANCE else source[s]
    return path
