"""Wait-k SimulST: one streaming encoder, and one decoder per target language or one for all.

Families (a), (b), (c) of the trainer, as `decoder_mode`:
- `single`: a bilingual baseline (one target language, one decoder).
- `separate`: multilingual, a shared encoder and one decoder per target language (arXiv 2503.11080).
- `unified`: multilingual, one shared decoder started by a target-language tag (`<2de>`).

Training is joint and synchronous: the encoder runs once per utterance and every target
language's decoder learns from it in the same batch. Each language gets its own wait-k lag
(`waitk={"de": 3, "es": 5}`): the same k for all is synchronous training, different ks is the
paper's asynchronous training. Token u (0-based) may attend to the first k + u encoder blocks.

Inference reads one encoder block at a time (`read`) and writes one token per language at a
time (`write`), all with explicit state; `simultaneous_generate` runs the wait-k policy for
several languages at once (joint decoding: one encoder pass shared by every decoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import lengths_to_mask
from .decoder import DecoderConfig, DecoderState, TransformerDecoder
from .encoder import EncoderConfig, EncoderState, StreamingEncoder

MODES = ("single", "separate", "unified")


@dataclass
class WaitkConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    languages: list[str] = field(default_factory=lambda: ["de"])
    decoder_mode: str = "single"
    # Token ids, filled from the tokenizer by the trainer.
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    lang_token_ids: dict[str, int] = field(default_factory=dict)  # unified mode: `<2xx>` per language

    def validate(self) -> None:
        if self.decoder_mode not in MODES:
            raise ValueError(f"model.decoder_mode must be one of {', '.join(MODES)}, got {self.decoder_mode!r}")
        if self.decoder_mode == "single" and len(self.languages) != 1:
            raise ValueError(f"model.decoder_mode single is bilingual: one language, got {self.languages}")
        if self.decoder_mode == "unified":
            missing = [lang for lang in self.languages if lang not in self.lang_token_ids]
            if missing:
                raise ValueError(f"model.lang_token_ids lacks a tag for {', '.join(missing)}")


def waitk_mask(token_len: int, memory_lengths: Tensor, block_len: int, k: int | None) -> Tensor:
    """(B, U, S) cross-attention mask: token u sees frames < min(length, (k + u) * block_len).

    k=None is offline: every valid frame. memory_lengths: (B,) valid encoder frames.
    """
    S = int(memory_lengths.max())
    valid = lengths_to_mask(memory_lengths, S)[:, None, :]  # (B, 1, S)
    if k is None:
        return valid.expand(-1, token_len, -1)
    frames = torch.arange(S, device=memory_lengths.device)
    visible = (torch.arange(token_len, device=memory_lengths.device)[:, None] + k) * block_len
    return valid & (frames[None, :] < visible)[None]


@dataclass
class WaitkState:
    """Streaming state: the encoder's cache, the frames read so far, one decoder cache per language."""

    encoder: EncoderState
    memory: Tensor  # (B, S, D) every encoder frame read so far
    decoders: dict[str, DecoderState]


class WaitkST(nn.Module):
    def __init__(self, cfg: WaitkConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = StreamingEncoder(cfg.encoder)
        names = cfg.languages if cfg.decoder_mode == "separate" else ["shared"]
        self.decoders = nn.ModuleDict({n: TransformerDecoder(cfg.decoder, cfg.encoder.d_model) for n in names})

    # -- parts -----------------------------------------------------------------------------
    @property
    def feature_norm(self):
        return self.encoder.norm

    def decoder_for(self, lang: str) -> TransformerDecoder:
        if lang not in self.cfg.languages:
            raise KeyError(f"the model does not translate into {lang!r}; it knows {self.cfg.languages}")
        return self.decoders[lang if self.cfg.decoder_mode == "separate" else "shared"]

    def start_token(self, lang: str) -> int:
        return self.cfg.lang_token_ids[lang] if self.cfg.decoder_mode == "unified" else self.cfg.bos_id

    # -- training --------------------------------------------------------------------------
    def forward(self, feats: Tensor, feat_lengths: Tensor, targets: dict[str, Tensor],
                waitk: dict[str, int | None]) -> tuple[Tensor, dict[str, float]]:
        """Joint wait-k cross-entropy over every target language.

        Args:
            feats: (B, T, n_mels) log-mel features; feat_lengths: (B,).
            targets: {lang: (B, U) token ids padded with pad_id}; an all-pad row means the
                utterance has no translation into that language (it is skipped).
            waitk: {lang: k} in encoder blocks (None: offline attention).
        Returns:
            token-averaged loss and {"loss/<lang>": value, "tokens/<lang>": count}.
        """
        memory, memory_lengths = self.encoder(feats, feat_lengths)
        total, count, metrics = memory.new_zeros(()), 0, {}
        for lang, tgt in targets.items():
            lengths = (tgt != self.cfg.pad_id).sum(1)
            rows = lengths > 0
            if not rows.any():
                continue
            tgt, lengths = tgt[rows], lengths[rows]
            start = torch.full_like(tgt[:, :1], self.start_token(lang))
            inputs = torch.cat([start, tgt], dim=1)
            labels = torch.cat([tgt, torch.full_like(start, self.cfg.pad_id)], dim=1)
            labels[torch.arange(len(labels)), lengths] = self.cfg.eos_id
            labels = labels.masked_fill(~lengths_to_mask(lengths + 1, labels.shape[1]), -100)
            mask = waitk_mask(inputs.shape[1], memory_lengths[rows], self.cfg.encoder.block_len, waitk.get(lang))
            logits = self.decoder_for(lang)(inputs, memory[rows][:, : mask.shape[2]], mask)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
            n = int((labels != -100).sum())
            total, count = total + nll, count + n
            metrics[f"loss/{lang}"], metrics[f"tokens/{lang}"] = nll.item() / n, n
        return total / max(count, 1), metrics

    # -- streaming inference ---------------------------------------------------------------
    def init_state(self, languages: list[str], batch: int = 1, device=None) -> WaitkState:
        d = self.cfg.encoder.d_model
        return WaitkState(encoder=self.encoder.init_state(batch, device),
                          memory=torch.zeros(batch, 0, d, device=device),
                          decoders={lang: self.decoder_for(lang).init_state() for lang in languages})

    def read(self, block_feats: Tensor, state: WaitkState) -> WaitkState:
        """Encode one block of features (B, <= block_frames, n_mels); the prefix is never re-encoded."""
        out, enc = self.encoder.forward_block(block_feats, state.encoder)
        return WaitkState(enc, torch.cat([state.memory, out], dim=1), dict(state.decoders))

    def write(self, lang: str, token: Tensor, state: WaitkState) -> tuple[Tensor, WaitkState]:
        """Feed one token (B,) (the start token first, then each emitted one) -> next-token logits (B, V)."""
        logits, dec = self.decoder_for(lang).step(token[:, None], state.memory, state.decoders[lang])
        return logits[:, -1], WaitkState(state.encoder, state.memory, {**state.decoders, lang: dec})

    @torch.no_grad()
    def simultaneous_generate(self, feats: Tensor, waitk: dict[str, int], max_len: int = 200
                              ) -> dict[str, tuple[list[int], list[int]]]:
        """Greedy wait-k decoding of one utterance (1, T, n_mels) into every language of `waitk`.

        Returns {lang: (tokens, delays)}: delays[i] is the number of blocks read when token i was written.
        """
        block = self.cfg.encoder.block_frames
        n_blocks = -(-feats.shape[1] // block)
        state = self.init_state(list(waitk), 1, feats.device)
        out = {lang: ([], []) for lang in waitk}
        last = {lang: torch.tensor([self.start_token(lang)], device=feats.device) for lang in waitk}
        done = dict.fromkeys(waitk, False)
        read = 0
        while not all(done.values()):
            for lang, k in waitk.items():  # write while the lag allows (everything once all is read)
                while not done[lang] and (read == n_blocks or read >= k + len(out[lang][0])):
                    logits, state = self.write(lang, last[lang], state)
                    token = int(logits.argmax(-1))
                    if token == self.cfg.eos_id or len(out[lang][0]) >= max_len:
                        done[lang] = True
                        break
                    out[lang][0].append(token)
                    out[lang][1].append(read)
                    last[lang] = torch.tensor([token], device=feats.device)
            if read < n_blocks:
                state = self.read(feats[:, read * block:(read + 1) * block], state)
                read += 1
        return out

    @torch.no_grad()
    def generate(self, feats: Tensor, feat_lengths: Tensor, lang: str, max_len: int = 200) -> list[list[int]]:
        """Offline greedy decoding of a batch (the whole input read first)."""
        memory, memory_lengths = self.encoder(feats, feat_lengths)
        decoder = self.decoder_for(lang)
        state, B = decoder.init_state(), feats.shape[0]
        token = torch.full((B, 1), self.start_token(lang), device=feats.device)
        mask = lengths_to_mask(memory_lengths, memory.shape[1])
        hyps, finished = [[] for _ in range(B)], torch.zeros(B, dtype=torch.bool, device=feats.device)
        for _ in range(max_len):
            logits, state = decoder.step(token, memory, state, mask)
            token = logits[:, -1].argmax(-1, keepdim=True)
            for b in range(B):
                if not finished[b] and int(token[b]) != self.cfg.eos_id:
                    hyps[b].append(int(token[b]))
            finished |= token[:, 0] == self.cfg.eos_id
            if finished.all():
                break
        return hyps
