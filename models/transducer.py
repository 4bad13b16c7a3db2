"""Transducer parts: an LSTM predictor, a joiner, and a head that holds both with its RNN-T loss, its
greedy search and its beam search (JSTAR's ASR and ST heads, models/jstar.py).

Greedy search takes the best symbol at each frame, so a symbol whose probability a model spreads
over many frames (text learnt without its timing), each below blank's, is never emitted. The beam
search ("modified beam search", as k2/icefall's: at most one symbol per frame per hypothesis) keeps
the `beam` best label sequences, each scored by the log-sum over its emission times (hypotheses
that reach the same sequence are merged by log-add), so such a symbol wins once its summed mass does.
It runs frame by frame on a carried state, so it streams: `stable` hands out only the prefix every
hypothesis shares (it never changes later), `final` the rest of the best hypothesis at the end."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .rnnt_loss import rnnt_loss


@dataclass
class TransducerHeadConfig:
    d_pred: int = 256  # predictor (LSTM) width
    pred_layers: int = 1
    d_joint: int = 256


class Predictor(nn.Module):
    """Label history -> (B, U, D): embedding + LSTM (the transducer's language model)."""

    def __init__(self, vocab: int, d_model: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.lstm = nn.LSTM(d_model, d_model, layers, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """tokens: (B, U) -> (B, U, D) and the LSTM state (h, c), each (layers, B, D)."""
        out, state = self.lstm(self.embed(tokens), state)
        return self.norm(out), state


class Joiner(nn.Module):
    """enc (B, T, 1, De) + pred (B, 1, U, Dp) -> logits (B, T, U, V)."""

    def __init__(self, d_enc: int, d_pred: int, d_joint: int, vocab: int):
        super().__init__()
        self.enc, self.pred = nn.Linear(d_enc, d_joint), nn.Linear(d_pred, d_joint)
        self.out = nn.Linear(d_joint, vocab)

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        return self.out(torch.tanh(self.enc(enc) + self.pred(pred)))


class TransducerHead(nn.Module):
    """One task's predictor and joiner, its RNN-T loss and its greedy step."""

    def __init__(self, cfg: TransducerHeadConfig, d_enc: int, vocab: int, blank: int):
        super().__init__()
        self.blank = blank
        self.predictor = Predictor(vocab, cfg.d_pred, cfg.pred_layers)
        self.joiner = Joiner(d_enc, cfg.d_pred, cfg.d_joint, vocab)

    def loss(self, enc: Tensor, enc_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
             earliest: Tensor | None = None, latest: Tensor | None = None, topology: str = "standard") -> Tensor:
        """Per-sequence RNN-T NLL divided by (U + 1), averaged over the batch; `earliest`, `latest` (B, U):
        the frames between which each target may be emitted; `topology` the lattice (rnnt_loss.py)."""
        start = torch.full_like(targets[:, :1], self.blank)
        pred, _ = self.predictor(torch.cat([start, targets.clamp_min(0)], dim=1))
        logits = self.joiner(enc[:, :, None], pred[:, None])
        nll = rnnt_loss(logits, targets, enc_lengths, target_lengths, blank=self.blank, reduction="none",
                        earliest=earliest, latest=latest, topology=topology)
        return (nll / (target_lengths + 1)).mean()

    def init_state(self, device=None) -> HypState:
        pred, lstm = self.predictor(torch.full((1, 1), self.blank, device=device))
        return HypState(pred=pred, lstm=lstm, tokens=[])

    def greedy(self, frames: Tensor, state: HypState, max_symbols: int) -> tuple[list[int], HypState]:
        """Greedy search over new encoder frames (1, n, De); returns the emitted tokens and the state."""
        emitted, pred, lstm = [], state.pred, state.lstm
        for t in range(frames.shape[1]):
            for _ in range(max_symbols):
                token = int(self.joiner(frames[:, t:t + 1, None], pred[:, None]).argmax(-1))
                if token == self.blank:
                    break
                emitted.append(token)
                pred, lstm = self.predictor(torch.tensor([[token]], device=frames.device), lstm)
        return emitted, HypState(pred=pred, lstm=lstm, tokens=state.tokens + emitted)

    def init_beam(self, device=None) -> BeamState:
        start = self.init_state(device)
        return BeamState([Hyp((), 0.0, start.pred, start.lstm)])

    def beam_search(self, frames: Tensor, state: BeamState, beam: int) -> BeamState:
        """Modified beam search over new encoder frames (1, n, De): one step per frame."""
        hyps = state.hyps
        for t in range(frames.shape[1]):
            hyps = self._beam_step(frames[:, t:t + 1], hyps, beam)
        return BeamState(hyps, state.emitted)

    def _beam_step(self, frame: Tensor, hyps: list[Hyp], beam: int) -> list[Hyp]:
        """Each hypothesis takes blank or one symbol at this frame (1, 1, De); the `beam` best extensions
        are kept, those with the same labels merged by log-add."""
        pred = torch.cat([h.pred for h in hyps])  # (K, 1, Dp)
        logp = self.joiner(frame[:, :, None], pred[:, None])[:, 0, 0].log_softmax(-1).double()  # (K, V)
        scores = logp + torch.tensor([h.score for h in hyps], dtype=torch.float64, device=logp.device)[:, None]
        best, index = scores.flatten().topk(min(beam, scores.numel()))
        vocab, merged = scores.shape[1], {}
        for score, i in zip(best.tolist(), index.tolist(), strict=True):
            parent, token = hyps[i // vocab], i % vocab
            tokens = parent.tokens if token == self.blank else (*parent.tokens, token)
            if tokens in merged:
                merged[tokens][0] = _log_add(merged[tokens][0], score)
            else:
                merged[tokens] = [score, parent, token]
        grown = [(tokens, parent, token) for tokens, (_, parent, token) in merged.items() if token != self.blank]
        states = {}
        if grown:  # one predictor call for every hypothesis that took a symbol
            h = torch.cat([p.lstm[0] for _, p, _ in grown], dim=1)
            c = torch.cat([p.lstm[1] for _, p, _ in grown], dim=1)
            out, (h, c) = self.predictor(torch.tensor([[tok] for _, _, tok in grown], device=frame.device), (h, c))
            states = {tokens: (out[j:j + 1], (h[:, j:j + 1], c[:, j:j + 1]))
                      for j, (tokens, _, _) in enumerate(grown)}
        new = [Hyp(tokens, score, *(states[tokens] if tokens in states else (parent.pred, parent.lstm)))
               for tokens, (score, parent, _) in merged.items()]
        return sorted(new, key=lambda h: -h.score)

    def stable(self, state: BeamState) -> tuple[list[int], BeamState]:
        """The tokens every hypothesis agrees on that were not handed out yet: later frames cannot change them."""
        prefix = shared_prefix([h.tokens for h in state.hyps])
        return list(prefix[state.emitted:]), BeamState(state.hyps, len(prefix))

    def final(self, state: BeamState) -> tuple[list[int], BeamState]:
        """End of the input: the best hypothesis's tokens not handed out yet."""
        best = state.hyps[0].tokens  # kept best first
        return list(best[state.emitted:]), BeamState(state.hyps, len(best))

    def search(self, frames: Tensor, state: HypState | BeamState, beam: int, max_symbols: int
               ) -> tuple[list[int], HypState | BeamState]:
        """New frames -> the tokens now certain, and the state: beam search with its stable prefix, or greedy."""
        if isinstance(state, BeamState):
            return self.stable(self.beam_search(frames, state, beam))
        return self.greedy(frames, state, max_symbols)

    def finish(self, state: HypState | BeamState) -> tuple[list[int], HypState | BeamState]:
        return self.final(state) if isinstance(state, BeamState) else ([], state)

    def start(self, beam: int, device=None) -> HypState | BeamState:
        """Beam 1: greedy search (up to max_symbols per frame); more: the beam search."""
        return self.init_beam(device) if beam > 1 else self.init_state(device)


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


@dataclass
class Hyp:
    """One beam hypothesis: its label sequence, log-probability summed over its alignments so far, and
    the predictor's output and LSTM state after its last label."""

    tokens: tuple[int, ...]
    score: float
    pred: Tensor  # (1, 1, Dp)
    lstm: tuple[Tensor, Tensor]  # each (layers, 1, Dp)


@dataclass
class BeamState:
    hyps: list[Hyp]  # best first
    emitted: int = 0  # tokens of the shared prefix already handed out


def shared_prefix(seqs: list[tuple[int, ...]]) -> tuple[int, ...]:
    first = seqs[0]
    n = next((i for i in range(len(first)) if any(len(s) <= i or s[i] != first[i] for s in seqs[1:])), len(first))
    return first[:n]


@dataclass
class HypState:
    """A greedy transducer hypothesis: the predictor's last output and LSTM state, the tokens so far."""

    pred: Tensor  # (1, 1, Dp)
    lstm: tuple[Tensor, Tensor]
    tokens: list[int]
