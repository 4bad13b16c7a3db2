"""The JSTAR family (arXiv 2412.15415): joint streaming ASR and ST with fast and slow cascaded encoders.

    features (B, T, C*80) -> ChannelFrontEnd -> fast encoder (small blocks) ──> ASR joiner <- ASR predictor
                                                   └─> slow encoder (larger blocks) ──> ST joiner <- ST predictor

The fast encoder is a block-causal streaming encoder with short blocks (low latency for the
transcript); the slow encoder is stacked on its output and attends within blocks several fast
blocks long (more context for the translation). Each task has its own LSTM predictor and
joiner (transducer.py); loss = lam * ASR + (1 - lam) * ST, both RNN-T (task `joint`). Targets are
SOT strings with speaker tokens, so one output stream carries who said what, in word order as the
paper has them (the curate default, `simulate.sot.mode: word`): both speakers' words by when each
ends, a token at each change of speaker (`<SELF> how are <OTHER> fine <SELF> you`), so a streaming
transducer is never asked for a word it has not heard yet. The joint task checks that order on the
data before training (`order: word`); `order: any` trains on utterance-level SOT as well.

The slow encoder, ST predictor and ST joiner can first learn text-to-text translation as a
transducer (task `mt`, `mt_loss`): source tokens are embedded in place of fast-encoder frames.

Streaming: `forward_block` takes one fast block of features and returns the ASR and ST tokens
it emitted, with every cache in an explicit `JstarState`; the slow encoder buffers fast frames
until one of its blocks is complete, and `flush` ends a stream. `JstarAgent` is that stream under
the transducer's own policy (write when a transducer emits a non-blank symbol).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from simulforge.eval.agent import TRANSCRIPT, Agent, DecodeOptions, Emit
from simulforge.training.config import ConfigError
from simulforge.training.data import audio_channels, get, pad
from simulforge.training.tasks import Task, batch_features

from .encoder import (
    BlockCausalTransformer,
    EncoderConfig,
    EncoderState,
    FeatureNorm,
    StreamingEncoder,
    TransformerState,
)
from .family import Family
from .transducer import BeamState, HypState, TransducerHead, TransducerHeadConfig

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
    beam: int = 1  # transducer search: 1 greedy, more a modified beam search (transducer.py)
    language: str | None = None  # the ST head's language: the joint stage's, recorded by the trainer

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
        if self.beam < 1:
            raise ValueError(f"model.beam must be a positive count, got {self.beam}")
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


@dataclass
class JstarState:
    fast: EncoderState
    slow: TransformerState
    buffer: Tensor  # (1, n, D_fast) fast frames waiting for a complete slow block
    asr: HypState | BeamState
    st: HypState | BeamState


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
                          asr=self.asr.start(self.cfg.beam, device), st=self.st.start(self.cfg.beam, device))

    def forward_block(self, block_feats: Tensor, state: JstarState) -> tuple[list[int], list[int], JstarState]:
        """One fast block of features (1, <= fast.block_frames, C*80) -> new ASR tokens, new ST tokens, state."""
        fast, fast_state = self.fast.forward_block(self.front(block_feats), state.fast)
        asr_tokens, asr = self.asr.search(fast, state.asr, self.cfg.beam, self.cfg.max_symbols_per_frame)
        state = JstarState(fast_state, state.slow, torch.cat([state.buffer, fast], dim=1), asr, state.st)
        st_tokens, state = self._slow_blocks(state, final=False)
        return asr_tokens, st_tokens, state

    def flush(self, state: JstarState) -> tuple[list[int], list[int], JstarState]:
        """End of a stream: the ST tokens of the fast frames still waiting for a complete slow block, and
        (beam search) the rest of each task's best hypothesis -> ASR tokens, ST tokens, state."""
        st_tokens, state = self._slow_blocks(state, final=True)
        asr_rest, asr = self.asr.finish(state.asr)
        st_rest, st = self.st.finish(state.st)
        return asr_rest, st_tokens + st_rest, JstarState(state.fast, state.slow, state.buffer, asr, st)

    def _slow_blocks(self, state: JstarState, final: bool) -> tuple[list[int], JstarState]:
        """Run the slow encoder and ST head on every complete slow block buffered (and a partial one if final)."""
        buffer, slow_state, st, st_tokens = state.buffer, state.slow, state.st, []
        while buffer.shape[1] >= self.cfg.slow.block_len or (final and buffer.shape[1] > 0):
            block, buffer = buffer[:, : self.cfg.slow.block_len], buffer[:, self.cfg.slow.block_len:]
            slow, slow_state = self.slow.forward_block(block, slow_state)
            new, st = self.st.search(slow, st, self.cfg.beam, self.cfg.max_symbols_per_frame)
            st_tokens += new
        return st_tokens, JstarState(state.fast, slow_state, buffer, state.asr, st)

    @torch.no_grad()
    def decode_offline(self, feats: Tensor) -> tuple[list[int], list[int]]:
        """One whole utterance (1, T, C*80) encoded at once, each head searched over all its frames (what
        streaming emits in the end)."""
        fast, slow, lengths = self.encode(feats, torch.tensor([feats.shape[1]], device=feats.device))
        out = []
        for head, frames in ((self.asr, fast), (self.st, slow)):
            tokens, state = head.search(frames, head.start(self.cfg.beam, feats.device), self.cfg.beam,
                                        self.cfg.max_symbols_per_frame)
            out.append(tokens + head.finish(state)[0])
        return out[0], out[1]


# -- training ------------------------------------------------------------------------------------
WORD_START = "\u2581"  # sentencepiece's mark of a space (and of the text's start) before a piece


def with_word_start(tokens) -> list[str]:
    """The speaker tokens, and each again as a word's start. A speaker token follows a space (or starts
    the text), so with only its bare form sentencepiece spells each change of speaker as two pieces,
    "▁" and the token; with its word-start form too it is one, and still decodes with its spaces. Word-order
    SOT changes speaker often, and a transducer must spend a step on every piece."""
    return [*tokens, *(WORD_START + t for t in tokens)]


@dataclass
class JointOptions:
    language: str = "de"
    transcript: str = "sot_text"  # SOT transcript column (offline config: source_text)
    translation: str = "sot_translation"  # {lang: SOT translation} (offline config: translation)
    speaker_tokens: list[str] = field(default_factory=lambda: ["<SELF>", "<OTHER>"])
    prefix: str = ""  # prepended to both targets, e.g. "<SELF> " for single-talker offline rows
    # word: the transcript must be in word order, checked on every row with word times (`words`, listed by
    # end time) before training; any: train on what the column holds (e.g. utterance-level SOT)
    order: Literal["word", "any"] = "word"


class JointTask(Task):
    options_cls = JointOptions

    def __init__(self, options, model_cfg, where):
        super().__init__(options, model_cfg, where)
        self.mono = model_cfg.channels == 1
        model_cfg.language = self.opts.language  # what the ST head learns (the last joint stage's): run.yaml keeps it

    def columns(self):
        return ["audio", self.opts.transcript, f"{self.opts.translation}.{self.opts.language}"]

    def fit_to_data(self, ds, source: str) -> None:
        """model.channels left null takes the audio's channel count; a count given must be the audio's."""
        super().fit_to_data(ds, source)
        found = audio_channels(ds)
        self.take_from_data("channels", found, source, f"the audio of {source} has {found} channel(s)")
        self.mono = found == 1
        if self.opts.order == "word" and "words" in ds.column_names:
            self._check_word_order(ds.select_columns(["id", self.opts.transcript.split(".")[0], "words"]), source)

    def _check_word_order(self, rows, source: str) -> None:
        """Each transcript's words, speaker tokens left out, are the row's `words` in their order (by end time)."""
        tokens = set(self.opts.speaker_tokens)
        for row in rows:
            if not row["words"]:
                continue  # no word times to check against
            said = [w for w in (get(row, self.opts.transcript) or "").split() if w not in tokens]
            if said != [w["word"] for w in row["words"]]:
                raise ConfigError(
                    f"{self.where}: {self.opts.transcript} of row {row['id']} in {source} is not in word order "
                    f"(its words differ from the `words` column's, which lists them by end time): curate with "
                    f"simulate.sot.mode=word, or set options.order: any to train on it as it is")

    def text_columns(self):
        return self.columns()[1:]

    def specials(self):
        return with_word_start(self.opts.speaker_tokens)

    def keep(self, row):
        return bool(get(row, self.opts.transcript)) and bool(get(row, f"{self.opts.translation}.{self.opts.language}"))

    def collate(self, rows, variants):
        feats, lengths = batch_features(rows)
        asr = [self.encode(self.opts.prefix + get(r, self.opts.transcript)) for r in rows]
        st = [self.encode(self.opts.prefix + get(r, f"{self.opts.translation}.{self.opts.language}")) for r in rows]
        return {"feats": feats, "lengths": lengths, "asr": pad(asr, 0), "asr_lengths": torch.tensor([len(a) for a in asr]),
                "st": pad(st, 0), "st_lengths": torch.tensor([len(s) for s in st])}

    def loss(self, model, batch):
        return model(batch["feats"], batch["lengths"], batch["asr"], batch["asr_lengths"], batch["st"],
                     batch["st_lengths"])


@dataclass
class MtOptions:
    language: str = "de"
    source: str = "source_text"  # simulmt config: source_chunks (joined)
    target: str = "translation"  # {lang: text}; simulmt config: target_chunks (joined)
    prefix: str = ""


class TransducerMtTask(Task):
    options_cls = MtOptions
    needs_audio = False

    def columns(self):
        return [self.opts.source, f"{self.opts.target}.{self.opts.language}"]

    text_columns = columns

    def _text(self, row, column) -> str | None:
        value = get(row, column)
        return " ".join(value) if isinstance(value, list) else value

    def keep(self, row):
        return bool(self._text(row, self.opts.source)) and bool(self._text(row, f"{self.opts.target}.{self.opts.language}"))

    def text_length(self, row):
        return len(self._text(row, self.opts.source) or "") // 3 + 1

    def collate(self, rows, variants):
        src = [self.encode(self.opts.prefix + self._text(r, self.opts.source)) for r in rows]
        tgt = [self.encode(self.opts.prefix + self._text(r, f"{self.opts.target}.{self.opts.language}")) for r in rows]
        return {"src": pad(src, 0), "src_lengths": torch.tensor([len(s) for s in src]),
                "tgt": pad(tgt, 0), "tgt_lengths": torch.tensor([len(t) for t in tgt])}

    def loss(self, model, batch):
        return model.mt_loss(batch["src"], batch["src_lengths"], batch["tgt"], batch["tgt_lengths"])


# -- simultaneous decoding ------------------------------------------------------------------------
@dataclass
class JstarDecoding:
    model: JstarState
    pending: list[tuple[str, int]]  # emitted while a block was read, handed out by the next write


class JstarAgent(Agent):
    """The transcript and the translation, both from the same blocks: the transducers emit while
    each block is read; the end of the stream flushes the slow encoder."""

    def __init__(self, model: Jstar, languages: list[str], policy, options: DecodeOptions):
        self.model, self.lang = model, languages[0]
        self.block_frames = model.cfg.fast.block_frames
        self.device = next(model.parameters()).device

    def init_state(self) -> JstarDecoding:
        return JstarDecoding(self.model.init_state(self.device), [])

    def read(self, state: JstarDecoding, block: Tensor) -> JstarDecoding:
        asr, st, model_state = self.model.forward_block(block, state.model)
        return JstarDecoding(model_state, state.pending + self._tagged(asr, st))

    def write(self, state: JstarDecoding, emit: Emit) -> JstarDecoding:
        for target, token in state.pending:
            emit(target, token)
        return JstarDecoding(state.model, [])

    def finish(self, state: JstarDecoding, emit: Emit) -> JstarDecoding:
        state = self.write(state, emit)
        asr, st, model_state = self.model.flush(state.model)
        return self.write(JstarDecoding(model_state, self._tagged(asr, st)), emit)

    def offline(self, feats: Tensor, emit: Emit) -> None:
        asr, st = self.model.decode_offline(feats)
        for target, token in self._tagged(asr, st):
            emit(target, token)

    def _tagged(self, asr: list[int], st: list[int]) -> list[tuple[str, int]]:
        return [(TRANSCRIPT, t) for t in asr] + [(self.lang, t) for t in st]


# -- the registry entry ---------------------------------------------------------------------------
class JstarFamily(Family):
    name = "jstar"
    model, config = Jstar, JstarConfig
    tasks = {"mt": TransducerMtTask, "joint": JointTask}
    policies = ("transducer", "offline")
    eval_config = "conversations"
    transcribes = True
    speaker_tokens = tuple(with_word_start(JointOptions().speaker_tokens))  # both forms are tags

    def finalize(self, cfg: JstarConfig, tok) -> None:
        cfg.vocab_size, cfg.blank_id = tok.vocab_size, tok.pad_id

    def languages(self, model: Jstar, tok, available, requested) -> list[str]:
        trained = [model.cfg.language] if model.cfg.language else []  # a run from before it was recorded: none
        own = trained or requested or (available if len(available) == 1 else [])
        if len(own) != 1:
            raise ValueError(f"JSTAR translates into one language: pass --lang (one of {', '.join(available)}), "
                             "the language of its joint stage (this run does not record it)")
        return own

    def targets(self, languages: list[str]) -> list[str]:
        return [TRANSCRIPT, *languages]

    def channels(self, cfg: JstarConfig) -> int:
        return cfg.channels

    def check_decoding(self, languages, options) -> None:
        if len(languages) != 1:
            raise ValueError(f"JSTAR translates into one language, got {languages}")

    def agent(self, model: Jstar, languages, policy, options) -> JstarAgent:
        return JstarAgent(model, languages, policy, options)


FAMILY = JstarFamily()
