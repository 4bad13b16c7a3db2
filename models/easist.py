"""The EASiST family (papers/003): a fully unidirectional LLM-based SimulST model.

    features -> block-causal encoder (KV cache; the project's own or a pretrained `transformers` one,
    `encoder.kind`) -> BlockConvAdapter (per encoder block: two
    stride-2 convs, then a linear map into the LM's width) -> decoder-only LM (lm.py) over an
    interleaved sequence  [prompt, speech_1, <|end-of-read|>, y_1, <|end-of-write|>, speech_2, ...]
    -> next-token logits, and a policy head (Linear(D_lm, 2)) on the last hidden state: read/write.

A training example is a `Layout` of speech and text segments (easist_tasks.py, with the family's
training tasks). One `forward` serves every stage: text-only layouts (SimulMT and MT), prompt + all
speech + translation (offline ST), and interleaved chunks (SimulST); it returns the cross-entropy
per task and the policy loss, and the task weighs them.

Streaming inference keeps the encoder's and the LM's KV caches in an `EasistState`: `read`
encodes one block, feeds its adapter frames to the LM and returns p(write); `write` appends
<|end-of-read|> and decodes greedily until <|end-of-write|>. Nothing is recomputed. `EasistAgent`
writes when the policy head says so (or every k blocks), one target language per agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simulforge.eval.agent import Agent, DecodeOptions, Emit
from simulforge.eval.policies import PolicyHead
from simulforge.training.config import ConfigError
from simulforge.training.tokenizer import lang_tag

from .blocks import lengths_to_mask
from .easist_tasks import (
    END_OF_READ,
    END_OF_WRITE,
    EasistOfflineStTask,
    EasistSftTask,
    EasistSimulMtTask,
    Layout,
    Text,
)
from .encoder import EncoderConfig, EncoderState, FeatureNorm, make_encoder
from .family import Family
from .hf_encoder import HFEncoderState
from .lm import LMConfig, build_lm, new_cache
from .waitk import check_encoder_path


@dataclass
class EasistConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    adapter_dim: int = 512  # channels of the adapter's convolutions
    adapter_kernel: int = 5
    policy_threshold: float = 0.5  # tau: write when p(write) exceeds it
    vocab_size: int | None = None  # the tokenizer's; the LM's embeddings are resized to it
    # Token ids, filled from the tokenizer by the trainer.
    pad_id: int = 0
    eor_id: int = -1  # <|end-of-read|>
    eow_id: int = -1  # <|end-of-write|>

    def validate(self) -> None:
        self.lm.validate()
        if self.eor_id < 0 or self.eow_id < 0:
            raise ValueError("model.eor_id / eow_id are not set (the tokenizer sets them)")


class BlockConvAdapter(nn.Module):
    """Per encoder block: two Conv1d (kernel 5, stride 2, zero padding inside the block) and a
    linear map to the LM width. A block of L frames gives ceil(ceil(L/2)/2) LM positions and never
    looks at another block, so streaming and offline agree.

    Blocks are cut where the encoder's are: `frames_after(b)`, the encoder frames complete after b
    input blocks (a pretrained encoder's first block gives fewer frames than the others)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, frames_after: Callable[[int], int], kernel: int = 5):
        super().__init__()
        self.frames_after, pad = frames_after, kernel // 2
        self.conv1 = nn.Conv1d(d_in, d_hidden, kernel, stride=2, padding=pad)
        self.conv2 = nn.Conv1d(d_hidden, d_hidden, kernel, stride=2, padding=pad)
        self.proj = nn.Linear(d_hidden, d_out)

    @staticmethod
    def out_len(n: Tensor | int):
        half = (n + 1) // 2
        return (half + 1) // 2

    def _convs(self, x: Tensor, valid: Tensor) -> Tensor:
        """x: (N, L, D) blocks, valid: (N,) frames -> (N, P, D_out), zeros past each block's end."""
        x = x * lengths_to_mask(valid, x.shape[1])[..., None]
        h = F.gelu(self.conv1(x.transpose(1, 2)))
        h = h * lengths_to_mask((valid + 1) // 2, h.shape[2])[:, None, :]
        h = F.gelu(self.conv2(h))
        return self.proj(h.transpose(1, 2))

    def bounds(self, frames: int, n_blocks: int | None = None) -> list[int]:
        """Encoder frame where each block starts, and where the last one ends: `n_blocks` blocks, or
        as many as cover `frames`."""
        out = [self.frames_after(0)]
        while (len(out) <= n_blocks) if n_blocks is not None else (out[-1] < frames):
            out.append(self.frames_after(len(out)))
        return out

    def forward(self, enc: Tensor, lengths: Tensor, n_blocks: int | None = None) -> tuple[Tensor, Tensor]:
        """enc: (B, S, D), lengths: (B,) -> per-block outputs (B, n_blocks, P, D_out), valid counts (B, n_blocks).

        `n_blocks`: the input blocks read (default: as many as cover S frames)."""
        B, S, D = enc.shape
        bounds = torch.tensor(self.bounds(S, n_blocks), device=enc.device)
        starts, ends = bounds[:-1], bounds[1:]
        L = max(1, int((ends - starts).max()))
        index = (starts[:, None] + torch.arange(L, device=enc.device)[None]).clamp(max=S)  # S: a zero row
        blocks = F.pad(enc, (0, 0, 0, 1))[:, index].view(B * len(starts), L, D)
        valid = (torch.minimum(lengths[:, None], ends[None, :]) - starts[None, :]).clamp(min=0)  # (B, n_blocks)
        out = self._convs(blocks, valid.flatten())
        return out.view(B, len(starts), *out.shape[1:]), self.out_len(valid)

    def forward_block(self, block: Tensor) -> Tensor:
        """One block (B, <= L, D) -> (B, out_len, D_out)."""
        valid = torch.full((block.shape[0],), block.shape[1], device=block.device)
        return self._convs(block, valid)


@dataclass
class EasistState:
    encoder: EncoderState | HFEncoderState
    lm_cache: Any  # the LM's KV cache (a transformers Cache), None before the first token
    hidden: Tensor | None  # (1, D_lm) last hidden state
    positions: int = 0  # LM positions so far


class Easist(nn.Module):
    def __init__(self, cfg: EasistConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = make_encoder(cfg.encoder)  # the project's own, or a pretrained one (encoder.kind: hf)
        cfg.encoder.d_model = self.encoder.d_model  # a pretrained backbone's width
        self.lm = build_lm(cfg.lm, cfg.vocab_size)
        d_lm = self.lm.get_input_embeddings().embedding_dim
        self.adapter = BlockConvAdapter(cfg.encoder.d_model, cfg.adapter_dim, d_lm, self.encoder.frames_after,
                                        cfg.adapter_kernel)
        self.policy = nn.Linear(d_lm, 2)

    @property
    def feature_norm(self) -> FeatureNorm:
        return self.encoder.norm

    # -- the LM's parts ------------------------------------------------------------------------
    def _embed_tokens(self, ids: Tensor) -> Tensor:
        return self.lm.get_input_embeddings()(ids)

    def _hidden(self, embeds: Tensor, attention_mask: Tensor | None = None, cache: Any = None) -> tuple[Tensor, Any]:
        out = self.lm.base_model(inputs_embeds=embeds, attention_mask=attention_mask, past_key_values=cache,
                                 use_cache=cache is not None or not self.training)
        return out.last_hidden_state, out.past_key_values

    def _logits(self, hidden: Tensor) -> Tensor:
        return self.lm.get_output_embeddings()(hidden)

    def _policy(self, hidden: Tensor) -> Tensor:
        """(N, D_lm) last hidden states -> (N, 2) read/write logits (float32 whatever the LM's dtype)."""
        return self.policy(hidden.to(self.policy.weight.dtype)).float()

    # -- training ------------------------------------------------------------------------------
    def forward(self, layouts: list[Layout], feats: Tensor | None = None, feat_lengths: Tensor | None = None
                ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Teacher-forced interleaved sequences.

        Args:
            layouts: one per sequence of the batch.
            feats: (N, T, F) frames of what the encoder takes (its `input_kind`) of the utterances the
                layouts' Speech segments read.
        Returns:
            ({"ce/<task>": mean CE, "policy": mean policy CE (if labelled)}, metrics).
        """
        blocks = counts = None
        if feats is not None:
            enc, enc_lengths = self.encoder(feats, feat_lengths)
            n_blocks = -(-feats.shape[1] // self.cfg.encoder.block_frames)  # the blocks the tasks count
            blocks, counts = self.adapter(enc, enc_lengths, n_blocks)  # (N, n_blocks, P, D), (N, n_blocks)
            blocks = blocks.to(self._embed_tokens(torch.zeros(1, dtype=torch.long, device=feats.device)).dtype)
        pieces, targets, policy, tasks = [], [], [], []
        for layout in layouts:
            emb, tgt, pol = self._assemble(layout, blocks, counts)
            pieces.append(emb)
            targets.append(tgt)
            policy.append(pol)
            tasks.append(layout.task)
        lengths = torch.tensor([p.shape[0] for p in pieces], device=pieces[0].device)
        embeds = nn.utils.rnn.pad_sequence(pieces, batch_first=True)
        targets = nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=-100)
        policy = nn.utils.rnn.pad_sequence(policy, batch_first=True, padding_value=-100)
        hidden, _ = self._hidden(embeds, lengths_to_mask(lengths, embeds.shape[1]).long())
        losses, metrics = {}, {}
        for task in dict.fromkeys(tasks):
            rows = torch.tensor([t == task for t in tasks], device=hidden.device)
            where = (targets != -100) & rows[:, None]
            if where.any():
                logits = self._logits(hidden[where]).float()
                losses[f"ce/{task}"] = F.cross_entropy(logits, targets[where])
                metrics[f"ce/{task}"] = losses[f"ce/{task}"].item()
        labelled = policy != -100
        if labelled.any():
            logits = self._policy(hidden[labelled])
            losses["policy"] = F.cross_entropy(logits, policy[labelled])
            metrics["policy"] = losses["policy"].item()
            metrics["policy_acc"] = (logits.argmax(-1) == policy[labelled]).float().mean().item()
        if not losses:  # nothing labelled in this batch: a zero that still has a graph
            losses["ce/none"] = hidden.sum() * 0.0
        return losses, metrics

    def _assemble(self, layout: Layout, blocks: Tensor | None, counts: Tensor | None
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """One layout -> embeddings (L, D), next-token targets (L,), policy labels (L,)."""
        device = self.policy.weight.device
        embs, token, predict, policy = [], [], [], []
        for seg in layout.segments:
            if isinstance(seg, Text):
                ids = torch.tensor(seg.ids, dtype=torch.long, device=device)
                embs.append(self._embed_tokens(ids))
                token += seg.ids
                predict += seg.predict
                policy += seg.policy
                continue
            for b, label in zip(range(seg.start, seg.stop), seg.policy, strict=True):
                n = int(counts[layout.utterance, b])
                if n == 0:  # a last block too short for an encoder frame: streaming feeds nothing either
                    continue
                embs.append(blocks[layout.utterance, b, :n])
                token += [-100] * n
                predict += [False] * n
                policy += [-100] * (n - 1) + [label]
        emb = torch.cat(embs)
        token_t = torch.tensor(token, device=device)
        predict_t = torch.tensor(predict, device=device)
        # Position p predicts the token at p + 1 when that token is a target.
        target = torch.full_like(token_t, -100)
        target[:-1] = torch.where(predict_t[1:], token_t[1:], -100)
        return emb, target, torch.tensor(policy, device=device)

    # -- streaming inference -------------------------------------------------------------------
    def _feed(self, embeds: Tensor, state: EasistState) -> EasistState:
        hidden, cache = self._hidden(embeds, None, state.lm_cache if state.lm_cache is not None else new_cache())
        return EasistState(state.encoder, cache, hidden[:, -1], state.positions + embeds.shape[1])

    def start(self, prompt_ids: list[int], device=None) -> EasistState:
        """A fresh stream with the prompt already in the LM's cache."""
        state = EasistState(self.encoder.init_state(1, device), None, None, 0)
        if prompt_ids:
            state = self._feed(self._embed_tokens(torch.tensor([prompt_ids], device=device)), state)
        return state

    def read(self, block_feats: Tensor, state: EasistState) -> tuple[float, EasistState]:
        """Encode one block (1, <= block_frames, F), feed it to the LM -> (p(write), state)."""
        enc, enc_state = self.encoder.forward_block(block_feats, state.encoder)
        if enc.shape[1] == 0:  # no encoder frame completed (a short last block): nothing new for the LM
            state = EasistState(enc_state, state.lm_cache, state.hidden, state.positions)
            return (0.0 if state.hidden is None else self._policy(state.hidden).softmax(-1)[0, 1].item()), state
        speech = self.adapter.forward_block(enc).to(self._embed_tokens(torch.zeros(1, dtype=torch.long,
                                                                                   device=enc.device)).dtype)
        state = self._feed(speech, EasistState(enc_state, state.lm_cache, state.hidden, state.positions))
        p_write = self._policy(state.hidden).softmax(-1)[0, 1].item()
        return p_write, state

    def write(self, state: EasistState, max_tokens: int = 50, on_token: Callable[[int], None] | None = None
              ) -> tuple[list[int], EasistState]:
        """Append <|end-of-read|>, decode greedily until <|end-of-write|> (fed too) or max_tokens.

        `on_token` is called with each token as soon as it is decoded (an evaluator times them one by one).
        """
        device = self.policy.weight.device
        token, out = self.cfg.eor_id, []
        while True:
            state = self._feed(self._embed_tokens(torch.tensor([[token]], device=device)), state)
            if token == self.cfg.eow_id:
                break
            token = int(self._logits(state.hidden).argmax(-1))
            if token != self.cfg.eow_id:
                if len(out) == max_tokens:
                    token = self.cfg.eow_id  # forced end: the cache still gets <|end-of-write|>
                else:
                    out.append(token)
                    if on_token is not None:
                        on_token(token)
        return out, state

    def read_all(self, feats: Tensor, state: EasistState) -> EasistState:
        """Offline reading: encode a whole utterance (1, T, F) at once and feed every block's adapter
        frames to the LM in one call. The same numbers as `read` block by block, in fewer calls; the
        returned state cannot read further blocks."""
        enc, lengths = self.encoder(feats, torch.tensor([feats.shape[1]], device=feats.device))
        blocks, counts = self.adapter(enc, lengths, -(-feats.shape[1] // self.cfg.encoder.block_frames))
        speech = torch.cat([blocks[0, b, :n] for b, n in enumerate(counts[0].tolist())])[None]
        return self._feed(speech.to(self._embed_tokens(torch.zeros(1, dtype=torch.long, device=feats.device)).dtype),
                          state)

# -- simultaneous decoding ------------------------------------------------------------------------
@dataclass
class EasistDecoding:
    model: EasistState
    unwritten: int = 0  # blocks read since the last write
    p_write: float = 0.0  # the policy head's p(write) after the last block
    written: int = 0


class EasistAgent(Agent):
    """One language (its prompt selects it): blocks go into the LM's cache as they are read; a write,
    when the policy head's p(write) exceeds tau (or every k blocks), decodes until <|end-of-write|>."""

    def __init__(self, model: Easist, languages: list[str], policy, options: DecodeOptions):
        self.model, self.lang, self.policy = model, languages[0], policy
        self.prompt, self.max_len, self.max_per_write = (options.prompts[self.lang], options.max_len,
                                                         options.max_tokens_per_write)
        self.block_frames = model.cfg.encoder.block_frames
        self.device = next(model.parameters()).device

    def init_state(self) -> EasistDecoding:
        return EasistDecoding(self.model.start(self.prompt, self.device))

    def read(self, state: EasistDecoding, block: Tensor) -> EasistDecoding:
        p_write, model_state = self.model.read(block, state.model)
        return EasistDecoding(model_state, state.unwritten + 1, p_write, state.written)

    def write(self, state: EasistDecoding, emit: Emit) -> EasistDecoding:
        return self._write(state, emit, finished=False)

    def finish(self, state: EasistDecoding, emit: Emit) -> EasistDecoding:
        return self._write(state, emit, finished=True)

    def _write(self, state: EasistDecoding, emit: Emit, finished: bool) -> EasistDecoding:
        left = self.max_len - state.written
        if state.unwritten == 0 or left <= 0:
            return state
        if not finished:
            if isinstance(self.policy, PolicyHead):
                go = self.policy.write(state.p_write, finished)
            else:
                go = self.policy.ready(state.unwritten, 0, finished)  # a chunk every k blocks
            if not go:
                return state
            left = min(left, self.max_per_write)
        tokens, model_state = self.model.write(state.model, left, on_token=partial(emit, self.lang))
        return EasistDecoding(model_state, 0, state.p_write, state.written + len(tokens))

    def offline(self, feats: Tensor, emit: Emit) -> None:
        """Every speech frame fed to the LM in one call, then one write."""
        state = self.model.read_all(feats, self.model.start(self.prompt, self.device))
        self.model.write(state, self.max_len, on_token=partial(emit, self.lang))


# -- the registry entry ---------------------------------------------------------------------------
class EasistFamily(Family):
    name = "easist"
    model, config = Easist, EasistConfig
    tasks = {"simulmt": EasistSimulMtTask, "st": EasistOfflineStTask, "sft": EasistSftTask}
    policies = ("policy-head", "waitk", "offline")
    joint = False  # the prompt selects the language: one agent per language

    def specials(self, cfg: EasistConfig) -> list[str]:
        return [END_OF_READ, END_OF_WRITE]

    def finalize(self, cfg: EasistConfig, tok) -> None:
        cfg.vocab_size, cfg.pad_id = tok.vocab_size, tok.pad_id
        cfg.eor_id, cfg.eow_id = tok.piece_id(END_OF_READ), tok.piece_id(END_OF_WRITE)

    def check_paths(self, cfg: EasistConfig) -> None:
        check_encoder_path(cfg.encoder, "model.encoder")
        if cfg.lm.path and not Path(cfg.lm.path).is_dir():
            raise ConfigError(f"model.lm.path: local LM folder {cfg.lm.path} does not exist")

    def languages(self, model: Easist, tok, available, requested) -> list[str]:
        # A language is trained when its tag is one piece of the run's vocabulary.
        return [lang for lang in available if tok.piece_id(lang_tag(lang)) is not None]

    def check_decoding(self, languages, options) -> None:
        if set(languages) - set(options.prompts):
            raise ValueError(f"EASiST needs a prompt for every language, got {sorted(options.prompts)} "
                             "(evaluate feeds the template run.yaml records; a run without one needs --prompt)")

    def agent(self, model: Easist, languages, policy, options) -> EasistAgent:
        return EasistAgent(model, languages, policy, options)


FAMILY = EasistFamily()
