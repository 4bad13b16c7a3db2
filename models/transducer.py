"""Transducer parts: an LSTM predictor, a joiner, and a head that holds both with its RNN-T loss and its
greedy search (JSTAR's ASR and ST heads, models/jstar.py)."""

from __future__ import annotations

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

    def loss(self, enc: Tensor, enc_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """Per-sequence RNN-T NLL divided by (U + 1), averaged over the batch."""
        start = torch.full_like(targets[:, :1], self.blank)
        pred, _ = self.predictor(torch.cat([start, targets.clamp_min(0)], dim=1))
        logits = self.joiner(enc[:, :, None], pred[:, None])
        nll = rnnt_loss(logits, targets, enc_lengths, target_lengths, blank=self.blank, reduction="none")
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


@dataclass
class HypState:
    """A greedy transducer hypothesis: the predictor's last output and LSTM state, the tokens so far."""

    pred: Tensor  # (1, 1, Dp)
    lstm: tuple[Tensor, Tensor]
    tokens: list[int]
