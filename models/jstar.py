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

Which alignments the joint task trains on (`emit_after: heard`): each token only from the frame where
what it says has been heard (its word's end in `words`, its target chunk's source end in
`translation_chunks`) to `emit_within_ms` later, on the lattice of one symbol per frame that the beam
search walks (`model.topology: modified`), with `model.end_frames` copies of the last frame after each
stream to emit the end in. With every alignment allowed, a model that can tell a training conversation
from its first block learns to recite the rest from memory, ahead of the speech.

The slow encoder, ST predictor and ST joiner can first learn text-to-text translation as a
transducer (task `mt`, `mt_loss`): source tokens are embedded in place of fast-encoder frames.

Streaming: `forward_block` takes one fast block of features and returns the ASR and ST tokens
it emitted, with every cache in an explicit `JstarState`; the slow encoder buffers fast frames
until one of its blocks is complete, and `flush` ends a stream. `JstarAgent` is that stream under
the transducer's own policy (write when a transducer emits a non-blank symbol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from simulforge.eval.agent import TRANSCRIPT, Agent, DecodeOptions, Emit
from simulforge.training.config import ConfigError
from simulforge.training.data import FRAME_HOP_S, audio_channels, get, has_column, pad
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
from .rnnt_loss import TOPOLOGIES
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
    max_symbols_per_frame: int = 5  # greedy decoding (1 with the modified topology)
    # The transducer lattice both heads train on (rnnt_loss.py): standard (any number of symbols per frame) or
    # modified (one per frame, the lattice the beam search walks)
    topology: str = "standard"
    beam: int = 1  # transducer search: 1 greedy, more a modified beam search (transducer.py)
    # Frames each head gets after the last one (copies of it), in training and decoding alike: the beam search
    # emits one symbol per frame, and what is said last (a whole translated sentence) needs frames after it
    end_frames: int = 0
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
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"model.topology must be one of {', '.join(TOPOLOGIES)}, got {self.topology!r}")
        if self.end_frames < 0:
            raise ValueError(f"model.end_frames must be a count, got {self.end_frames}")
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
    last_fast: Tensor | None = None  # (1, 1, D) the last frame each head has seen: `flush` repeats it
    last_slow: Tensor | None = None


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
                st_targets: Tensor, st_lengths: Tensor, asr_times: Tensor | None = None,
                st_times: Tensor | None = None, within_s: float | None = None) -> tuple[Tensor, dict[str, float]]:
        """lam * ASR + (1 - lam) * ST. Targets (B, U) are padded token ids; times (B, U), when given, the
        second of the input from which each token may be emitted, and `within_s` how long after it (plus a
        frame per token before it with the same time) it must be (alignment-restricted RNN-T)."""
        fast, slow, lengths = self.encode(feats, feat_lengths)
        frame_s = FRAME_HOP_S * feat_lengths.double() / lengths.double()  # (B,) whatever the encoder's stride
        fast, slow, ends = self.with_end_frames(fast, lengths), self.with_end_frames(slow, lengths), self._ends(lengths)
        topology = self.cfg.topology
        asr = self.asr.loss(fast, ends, asr_targets, asr_lengths, *emission_window(asr_times, frame_s, within_s),
                            topology=topology)
        st = self.st.loss(slow, ends, st_targets, st_lengths, *emission_window(st_times, frame_s, within_s),
                          topology=topology)
        lam = self.cfg.asr_weight
        return lam * asr + (1 - lam) * st, {"loss/asr": asr.item(), "loss/st": st.item()}

    @property
    def _max_symbols(self) -> int:
        return 1 if self.cfg.topology == "modified" else self.cfg.max_symbols_per_frame

    def _ends(self, lengths: Tensor) -> Tensor:
        return lengths + self.cfg.end_frames

    def with_end_frames(self, frames: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, D) -> (B, T + end_frames, D): each sequence's last frame repeated end_frames times after it."""
        if not self.cfg.end_frames:
            return frames
        index = torch.arange(frames.shape[1] + self.cfg.end_frames, device=frames.device)[None]
        index = torch.minimum(index, (lengths - 1)[:, None].to(frames.device))  # (B, T + n)
        return frames.gather(1, index[..., None].expand(-1, -1, frames.shape[2]))

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
        asr_tokens, asr = self.asr.search(fast, state.asr, self.cfg.beam, self._max_symbols)
        last = fast[:, -1:] if fast.shape[1] else state.last_fast
        state = replace(state, fast=fast_state, buffer=torch.cat([state.buffer, fast], dim=1), asr=asr, last_fast=last)
        st_tokens, state = self._slow_blocks(state, final=False)
        return asr_tokens, st_tokens, state

    def flush(self, state: JstarState) -> tuple[list[int], list[int], JstarState]:
        """End of a stream: the ST tokens of the fast frames still waiting for a complete slow block, and
        (beam search) the rest of each task's best hypothesis -> ASR tokens, ST tokens, state."""
        st_tokens, state = self._slow_blocks(state, final=True)
        asr_end, asr = self._end_frames(self.asr, state.last_fast, state.asr)
        st_end, st = self._end_frames(self.st, state.last_slow, state.st)
        asr_rest, asr = self.asr.finish(asr)
        st_rest, st = self.st.finish(st)
        return asr_end + asr_rest, st_tokens + st_end + st_rest, replace(state, asr=asr, st=st)

    def _end_frames(self, head: TransducerHead, last: Tensor | None, state):
        if last is None or not self.cfg.end_frames:
            return [], state
        return head.search(last.expand(-1, self.cfg.end_frames, -1), state, self.cfg.beam, self._max_symbols)

    def _slow_blocks(self, state: JstarState, final: bool) -> tuple[list[int], JstarState]:
        """Run the slow encoder and ST head on every complete slow block buffered (and a partial one if final)."""
        buffer, slow_state, st, st_tokens, last = state.buffer, state.slow, state.st, [], state.last_slow
        while buffer.shape[1] >= self.cfg.slow.block_len or (final and buffer.shape[1] > 0):
            block, buffer = buffer[:, : self.cfg.slow.block_len], buffer[:, self.cfg.slow.block_len:]
            slow, slow_state = self.slow.forward_block(block, slow_state)
            new, st = self.st.search(slow, st, self.cfg.beam, self._max_symbols)
            st_tokens, last = st_tokens + new, slow[:, -1:]
        return st_tokens, replace(state, slow=slow_state, buffer=buffer, st=st, last_slow=last)

    @torch.no_grad()
    def decode_offline(self, feats: Tensor) -> tuple[list[int], list[int]]:
        """One whole utterance (1, T, C*80) encoded at once, each head searched over all its frames (what
        streaming emits in the end)."""
        fast, slow, lengths = self.encode(feats, torch.tensor([feats.shape[1]], device=feats.device))
        out = []
        for head, frames in ((self.asr, self.with_end_frames(fast, lengths)), (self.st, self.with_end_frames(slow, lengths))):
            tokens, state = head.search(frames, head.start(self.cfg.beam, feats.device), self.cfg.beam,
                                        self._max_symbols)
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


CHUNKS = "translation_chunks"  # the conversations config's timed units of each SOT translation
SPEAKERS = ("SELF", "OTHER")  # the roles in `words` and `translation_chunks`, as speaker_tokens name them


def emission_window(times: Tensor | None, frame_s: Tensor, within_s: float | None
                    ) -> tuple[Tensor | None, Tensor | None]:
    """Token times (B, U) in seconds -> the first and the last encoder frame each may be emitted at
    (frames of `frame_s` (B,) seconds): from the frame its time falls in to `within_s` later, plus one
    frame per token before it with the same time (a decoder emits one symbol per frame). NaN: any frame."""
    if times is None:
        return None, None
    seconds, untimed = frame_s.to(times.device)[:, None], times.isnan()
    first = (times.nan_to_num(0.0).double() / seconds).floor().long()
    if within_s is None:
        return first, None
    u = torch.arange(times.shape[1], device=times.device)[None]
    new = torch.ones_like(times, dtype=torch.bool)
    new[:, 1:] = times[:, 1:] != times[:, :-1]
    rank = u - torch.where(new, u, 0).cummax(dim=1).values  # tokens before it with its time
    last = first + (within_s / seconds).ceil().long() + rank
    return first, last.masked_fill(untimed, torch.iinfo(torch.long).max)  # clamped to the last frame


def piece_times(text: str, units: list[tuple[str, str, float]], roles: dict[str, str]) -> list[float]:
    """Per whitespace piece of an SOT string, the end time of the unit it belongs to; a speaker token
    takes its next piece's time. `units` are (role, text, end s), each speaker's in that speaker's order
    (so word-ordered `words` serve an utterance-ordered transcript too). ValueError where the string's
    pieces are not the units' words."""
    queues: dict[str, list[tuple[str, float]]] = {}
    for role, unit, end in units:
        queues.setdefault(role, []).extend((word, end) for word in unit.split())
    taken, role, times = dict.fromkeys(queues, 0), None, []
    for piece in text.split():
        if piece in roles:
            role = roles[piece]
            times.append(None)
            continue
        queue, k = queues.get(role, []), taken.get(role, 0)
        if k >= len(queue) or queue[k][0] != piece:
            found = repr(queue[k][0]) if k < len(queue) else "nothing"
            raise ValueError(f"piece {piece!r} of {role or 'no speaker'} is not its next timed word ({found})")
        taken[role] = k + 1
        times.append(queue[k][1])
    if any(taken[r] < len(q) for r, q in queues.items()):
        raise ValueError("the timed words hold more than the text")
    later = times[-1] if times and times[-1] is not None else 0.0
    for i in range(len(times) - 1, -1, -1):  # a speaker token: when the piece after it may come
        later = times[i] = later if times[i] is None else times[i]
    return times


def token_times(tok, text: str, times: list[float], ids: list[int] | None = None) -> list[float]:
    """Each token of `ids` (`tok.encode(text)`, encoded here unless given) with the time of the whitespace
    piece it spells. Pieces encoded one by one give the same tokens as the whole text for a tokenizer
    that splits at spaces; one that does not is mapped by the token counts of growing prefixes."""
    pieces = text.split()
    ids = tok.encode(text) if ids is None else ids
    per_piece = [tok.encode(p) for p in pieces]
    if sum(map(len, per_piece)) == len(ids) and [i for p in per_piece for i in p] == ids:
        return [t for p, t in zip(per_piece, times, strict=True) for _ in p]
    ends = [len(tok.encode(" ".join(pieces[:k + 1]))) for k in range(len(pieces))]
    out, start = [], 0
    for end, t in zip(ends, times, strict=True):
        out += [t] * max(0, end - start)
        start = max(start, end)
    return out + [times[-1] if times else 0.0] * (len(ids) - len(out))


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
    # heard: each token may be emitted only once what it says has been heard: a transcript word's end
    # (`words`), a translation unit's source end (`translation_chunks`), checked against the targets
    # before training. Without it a model that can tell a training row from its first block learns to
    # recite the rest from memory, ahead of the speech. any: every alignment (plain RNN-T)
    emit_after: Literal["heard", "any"] = "heard"
    emit_within_ms: int | None = 480  # heard: and at most this long after (null: any time later)


class JointTask(Task):
    options_cls = JointOptions

    def __init__(self, options, model_cfg, where):
        super().__init__(options, model_cfg, where)
        self.mono = model_cfg.channels == 1
        model_cfg.language = self.opts.language  # what the ST head learns (the last joint stage's): run.yaml keeps it
        if self.opts.emit_within_ms is not None and self.opts.emit_within_ms < 0:
            raise ConfigError(f"{where}.emit_within_ms must be a duration in ms or null, got {self.opts.emit_within_ms}")

    def columns(self):
        return ["audio", *self.text_columns()]

    def time_columns(self) -> list[str]:
        return ["words", f"{CHUNKS}.{self.opts.language}"] if self.opts.emit_after == "heard" else []

    def check_features(self, features):
        missing = [c for c in self.time_columns() if not has_column(features, c)]
        if missing:
            raise ConfigError(f"{self.where}.emit_after: heard needs each token's time, from {', '.join(missing)}, "
                              f"which the dataset lacks (curated before simulforge published them?): curate again, "
                              f"or set emit_after: any to train on every alignment")

    def fit_to_data(self, ds, source: str) -> None:
        """model.channels left null takes the audio's channel count; a count given must be the audio's."""
        super().fit_to_data(ds, source)
        found = audio_channels(ds)
        self.take_from_data("channels", found, source, f"the audio of {source} has {found} channel(s)")
        self.mono = found == 1
        if self.opts.order == "word" and "words" in ds.column_names:
            self._check_word_order(ds.select_columns(["id", self.opts.transcript.split(".")[0], "words"]), source)
        if self.opts.emit_after == "heard":
            columns = {c.split(".")[0] for c in ["id", *self.text_columns(), *self.time_columns()]}
            for row in ds.select_columns(sorted(columns)):
                if self.keep(row):
                    self._piece_times(row, source)  # raises where targets and times disagree

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
        return [self.opts.transcript, f"{self.opts.translation}.{self.opts.language}"]

    def _targets(self, row) -> tuple[str, str]:
        return (self.opts.prefix + get(row, self.opts.transcript),
                self.opts.prefix + get(row, f"{self.opts.translation}.{self.opts.language}"))

    def _piece_times(self, row, source: str = "the data") -> tuple[list[float], list[float]] | None:
        """Per whitespace piece of the ASR and the ST target, the second from which it may be emitted; None
        for a row without word times (it trains on every alignment, as `_check_word_order` passes it)."""
        if not row["words"]:
            return None
        roles = dict(zip(self.opts.speaker_tokens, SPEAKERS, strict=False))
        asr, st = self._targets(row)
        chunks = get(row, f"{CHUNKS}.{self.opts.language}") or []
        try:
            return (piece_times(asr, [(w["speaker"], w["word"], w["end_s"]) for w in row["words"]], roles),
                    piece_times(st, [(c["speaker"], c["text"], c["end_s"]) for c in chunks], roles))
        except ValueError as e:
            raise ConfigError(f"{self.where}: row {row.get('id')} of {source}: {e}; options.emit_after: any trains "
                              f"without emission times") from None

    def _times(self, row, asr_ids: list[int], st_ids: list[int]) -> tuple[Tensor, Tensor]:
        """Per token of the row's encoded ASR and ST targets, the second from which it may be emitted (NaN:
        any time)."""
        times = self._piece_times(row)
        if times is None:
            return torch.full((len(asr_ids),), math.nan), torch.full((len(st_ids),), math.nan)
        asr, st = self._targets(row)
        return (torch.tensor(token_times(self.tok, asr, times[0], asr_ids)),
                torch.tensor(token_times(self.tok, st, times[1], st_ids)))

    def specials(self):
        return with_word_start(self.opts.speaker_tokens)

    def keep(self, row):
        return bool(get(row, self.opts.transcript)) and bool(get(row, f"{self.opts.translation}.{self.opts.language}"))

    def collate(self, rows, variants):
        feats, lengths = batch_features(rows)
        targets = [self._targets(r) for r in rows]
        asr = [self.encode(a) for a, _ in targets]
        st = [self.encode(s) for _, s in targets]
        batch = {"feats": feats, "lengths": lengths, "asr": pad(asr, 0), "asr_lengths": torch.tensor([len(a) for a in asr]),
                 "st": pad(st, 0), "st_lengths": torch.tensor([len(s) for s in st])}
        if self.opts.emit_after == "heard":
            times = [self._times(r, a, s) for r, a, s in zip(rows, asr, st, strict=True)]
            batch["asr_times"] = pad_sequence([a for a, _ in times], batch_first=True)
            batch["st_times"] = pad_sequence([s for _, s in times], batch_first=True)
        return batch

    def loss(self, model, batch):
        within = None if self.opts.emit_within_ms is None else self.opts.emit_within_ms / 1000
        return model(batch["feats"], batch["lengths"], batch["asr"], batch["asr_lengths"], batch["st"],
                     batch["st_lengths"], batch.get("asr_times"), batch.get("st_times"), within)


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
