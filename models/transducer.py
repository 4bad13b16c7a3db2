"""JSTAR (arXiv 2412.15415): joint streaming ASR and ST with fast and slow cascaded encoders.

    features (B, T, C*80) -> ChannelFrontEnd -> fast encoder (small blocks) ──> ASR joiner <- ASR predictor
                                                   └─> slow encoder (larger blocks) ──> ST joiner <- ST predictor

The fast encoder is a block-causal streaming encoder with short blocks (low latency for the
transcript); the slow encoder is stacked on its output and attends within blocks several fast
blocks long (more context for the translation). Each task has its own LSTM predictor and
joiner; loss = lam * ASR + (1 - lam) * ST, both RNN-T. Targets are SOT strings with speaker
tokens (`<SELF> hi <OTHER> hello`), so one output stream carries who said what.

The slow encoder, ST predictor and ST joiner can first learn text-to-text translation as a
transducer (`mt_loss`): source tokens are embedded in place of fast-encoder frames.

Streaming: `forward_block` takes one fast block of features and returns the ASR and ST tokens
it emitted, with every cache in an explicit `JstarState`; the slow encoder buffers fast frames
until one of its blocks is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .encoder import (
    BlockCausalTransformer,
    EncoderConfig,
    EncoderState,
    FeatureNorm,
    StreamingEncoder,
    TransformerState,
)
from .rnnt_loss import rnnt_loss

FRONT_ENDS = ("learned", "select")


@dataclass
class SlowEncoderConfig:
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    block_len: int = 32  # fast-encoder frames per slow block (a multiple of the fast block)
    left_blocks: int | None = None
    dropout: float = 0.1


@dataclass
class TransducerHeadConfig:
    d_pred: int = 256  # predictor (LSTM) width
    pred_layers: int = 1
    d_joint: int = 256


@dataclass
class JstarConfig:
    fast: EncoderConfig = field(default_factory=EncoderConfig)
    slow: SlowEncoderConfig = field(default_factory=SlowEncoderConfig)
    asr: TransducerHeadConfig = field(default_factory=TransducerHeadConfig)
    st: TransducerHeadConfig = field(default_factory=TransducerHeadConfig)
    channels: int | None = None  # input channels (the microphones); None: the trainer reads the data's
    front_end: str = "learned"  # learned: a trained mix of channels; select: one channel
    channel: int = 0  # the channel `select` uses
    asr_weight: float = 0.5  # lam
    vocab_size: int | None = None  # shared by ASR and ST (tokens of both languages + speaker tokens)
    blank_id: int = 0
    max_symbols_per_frame: int = 5  # greedy decoding

    def validate(self) -> None:
        if self.front_end not in FRONT_ENDS:
            raise ValueError(f"model.front_end must be one of {', '.join(FRONT_ENDS)}, got {self.front_end!r}")
        if not self.channels or self.channels < 1:
            raise ValueError(f"model.channels must be a positive count, got {self.channels!r}")
        if not 0 <= self.channel < self.channels:
            raise ValueError(f"model.channel {self.channel} is not one of the {self.channels} channels")
        if self.slow.block_len % self.fast.block_len:
            raise ValueError(f"model.slow.block_len {self.slow.block_len} must be a multiple of the fast block "
                             f"({self.fast.block_len} encoder frames)")
        if not 0.0 <= self.asr_weight <= 1.0:
            raise ValueError(f"model.asr_weight must lie in [0, 1], got {self.asr_weight}")
        if not self.vocab_size:
            raise ValueError("model.vocab_size is not set (the tokenizer sets it)")


class ChannelFrontEnd(nn.Module):
    """(B, T, C*F) per-channel log-mels -> (B, T, F): normalised, then one channel or a learned mix.

    The learned mix is a linear map over all channels' bins, initialised to the channel average.
    """

    def __init__(self, channels: int, n_mels: int, mode: str, channel: int):
        super().__init__()
        self.channels, self.n_mels, self.mode, self.channel = channels, n_mels, mode, channel
        self.norm = FeatureNorm(channels * n_mels)
        if mode == "learned":
            self.mix = nn.Linear(channels * n_mels, n_mels)
            with torch.no_grad():
                self.mix.weight.copy_(torch.eye(n_mels).repeat(1, channels) / channels)
                self.mix.bias.zero_()

    def forward(self, feats: Tensor) -> Tensor:
        x = self.norm(feats)
        if self.mode == "select":
            return x.view(*x.shape[:-1], self.channels, self.n_mels)[..., self.channel, :]
        return self.mix(x)


class SlowEncoder(nn.Module):
    """Block-causal transformer over fast-encoder frames, with blocks several fast blocks long."""

    def __init__(self, cfg: SlowEncoderConfig, d_in: int):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(d_in, cfg.d_model)
        self.transformer = BlockCausalTransformer(cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.d_ff, cfg.block_len,
                                                  cfg.left_blocks, cfg.dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.transformer(self.proj(x), lengths)

    def forward_block(self, x: Tensor, state: TransformerState) -> tuple[Tensor, TransformerState]:
        return self.transformer.forward_block(self.proj(x), state)


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


@dataclass
class JstarState:
    fast: EncoderState
    slow: TransformerState
    buffer: Tensor  # (1, n, D_fast) fast frames waiting for a complete slow block
    asr: HypState
    st: HypState


class Jstar(nn.Module):
    def __init__(self, cfg: JstarConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.front = ChannelFrontEnd(cfg.channels, cfg.fast.n_mels, cfg.front_end, cfg.channel)
        self.fast = StreamingEncoder(cfg.fast)  # its own FeatureNorm stays the identity: the front end normalises
        self.slow = SlowEncoder(cfg.slow, cfg.fast.d_model)
        self.asr = TransducerHead(cfg.asr, cfg.fast.d_model, cfg.vocab_size, cfg.blank_id)
        self.st = TransducerHead(cfg.st, cfg.slow.d_model, cfg.vocab_size, cfg.blank_id)
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.fast.d_model)  # MT pretraining input

    @property
    def feature_norm(self) -> FeatureNorm:
        return self.front.norm

    def encode(self, feats: Tensor, feat_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> fast frames (B, T', Df), slow frames (B, T', Ds), lengths (B,)."""
        fast, lengths = self.fast(self.front(feats), feat_lengths)
        return fast, self.slow(fast, lengths), lengths

    def forward(self, feats: Tensor, feat_lengths: Tensor, asr_targets: Tensor, asr_lengths: Tensor,
                st_targets: Tensor, st_lengths: Tensor) -> tuple[Tensor, dict[str, float]]:
        """lam * ASR + (1 - lam) * ST. Targets (B, U) are padded token ids."""
        fast, slow, lengths = self.encode(feats, feat_lengths)
        asr = self.asr.loss(fast, lengths, asr_targets, asr_lengths)
        st = self.st.loss(slow, lengths, st_targets, st_lengths)
        lam = self.cfg.asr_weight
        return lam * asr + (1 - lam) * st, {"loss/asr": asr.item(), "loss/st": st.item()}

    def mt_loss(self, src: Tensor, src_lengths: Tensor, tgt: Tensor, tgt_lengths: Tensor
                ) -> tuple[Tensor, dict[str, float]]:
        """Text-to-text transducer MT: source tokens stand in for fast frames (pretrains slow + ST head)."""
        slow = self.slow(self.text_embed(src), src_lengths)
        loss = self.st.loss(slow, src_lengths, tgt, tgt_lengths)
        return loss, {"loss/mt": loss.item()}

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self, device=None) -> JstarState:
        return JstarState(fast=self.fast.init_state(1, device), slow=self.slow.transformer.init_state(),
                          buffer=torch.zeros(1, 0, self.cfg.fast.d_model, device=device),
                          asr=self.asr.init_state(device), st=self.st.init_state(device))

    def forward_block(self, block_feats: Tensor, state: JstarState, final: bool = False
                      ) -> tuple[list[int], list[int], JstarState]:
        """One fast block of features (1, <= fast.block_frames, C*80) -> new ASR tokens, new ST tokens, state.

        `final=True` on the stream's last block flushes a partial slow block.
        """
        fast, fast_state = self.fast.forward_block(self.front(block_feats), state.fast)
        asr_tokens, asr = self.asr.greedy(fast, state.asr, self.cfg.max_symbols_per_frame)
        state = JstarState(fast_state, state.slow, torch.cat([state.buffer, fast], dim=1), asr, state.st)
        st_tokens, state = self._slow_blocks(state, final)
        return asr_tokens, st_tokens, state

    def flush(self, state: JstarState) -> tuple[list[int], JstarState]:
        """End of a stream whose last `forward_block` did not know it was the last: the ST tokens of
        the fast frames still waiting for a complete slow block."""
        return self._slow_blocks(state, final=True)

    def _slow_blocks(self, state: JstarState, final: bool) -> tuple[list[int], JstarState]:
        """Run the slow encoder and ST head on every complete slow block buffered (and a partial one if final)."""
        buffer, slow_state, st, st_tokens = state.buffer, state.slow, state.st, []
        while buffer.shape[1] >= self.cfg.slow.block_len or (final and buffer.shape[1] > 0):
            block, buffer = buffer[:, : self.cfg.slow.block_len], buffer[:, self.cfg.slow.block_len:]
            slow, slow_state = self.slow.forward_block(block, slow_state)
            new, st = self.st.greedy(slow, st, self.cfg.max_symbols_per_frame)
            st_tokens += new
        return st_tokens, JstarState(state.fast, slow_state, buffer, state.asr, st)

    @torch.no_grad()
    def decode_offline(self, feats: Tensor) -> tuple[list[int], list[int]]:
        """Greedy decoding of one whole utterance (1, T, C*80) encoded at once (same result as `generate`)."""
        fast, slow, lengths = self.encode(feats, torch.tensor([feats.shape[1]], device=feats.device))
        asr, _ = self.asr.greedy(fast, self.asr.init_state(feats.device), self.cfg.max_symbols_per_frame)
        st, _ = self.st.greedy(slow, self.st.init_state(feats.device), self.cfg.max_symbols_per_frame)
        return asr, st

    @torch.no_grad()
    def generate(self, feats: Tensor) -> tuple[list[int], list[int]]:
        """Stream one utterance (1, T, C*80) through `forward_block`; returns (ASR tokens, ST tokens)."""
        state, block = self.init_state(feats.device), self.cfg.fast.block_frames
        starts = list(range(0, feats.shape[1], block))
        for i, start in enumerate(starts):
            _, _, state = self.forward_block(feats[:, start:start + block], state, final=i == len(starts) - 1)
        return state.asr.tokens, state.st.tokens
