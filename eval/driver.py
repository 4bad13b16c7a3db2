"""Simultaneous decoding driver: a source clip is fed in fixed segments, the model reads each
encoder block once, with every state (encoder and decoder KV caches, transducer state) carried
from step to step, and a policy (policies.py) decides when to write.

    clip (C, n) --segments of segment_ms--> log-mel frames, each computed once, as soon as its
    25 ms window has arrived --> complete encoder blocks --> model.read --> policy --> tokens

Nothing is re-encoded: the encoder's `forward_block` runs once per block, in order. Decoders keep
their caches; a candidate token that the policy refuses (attention policies, or an end-of-sentence
before the source has ended) is dropped without touching the cache of the tokens before it (only
the projection of the new memory frames is kept), and is decoded again once more audio is read.

Per family, one stream carries:
- waitk (bilingual, separate, unified) and samu: every target language at once (joint decoding):
  one encoder pass, one decoder state per language, each language under the same policy;
- easist: one language (its prompt selects it); several languages are separate streams;
- jstar: the ASR transcript ("asr") and the translation, both from the same blocks.

Offline decoding of the same model is the comparison point: the whole clip's features, the
encoder over the whole clip in one call, then greedy decoding (EASiST: every speech frame fed to
the LM in one call; JSTAR: `decode_offline`).

Times (ms): a token's delay is the source audio received when it came out; its elapsed time adds
the wall-clock computation since the stream started (SimulEval's computation-aware convention).
Everything the system does counts: feature extraction, encoding, decoding, policy.
`to_words` turns tokens into the detokenized words that the latency metrics use: a word is timed by
its last subword, the token that completes it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from simulforge.models.decoder import DecoderState
from simulforge.training.data import FRAME_HOP_S, log_mel

from .policies import AlignAtt, CrossAttention, EDAtt, Offline, Policy, PolicyHead, Transducer, WaitK

ASR = "asr"  # the JSTAR transcript's stream name (its translation's is the language)
WINDOW_S = 0.025  # log-mel window, as training.data.log_mel


@dataclass
class Stream:
    """One output of one utterance: model tokens and, per token, its delay and elapsed time (ms)."""

    tokens: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)


@dataclass
class Decoded:
    streams: dict[str, Stream]  # by target: a language, or ASR
    source_ms: float
    compute_ms: float  # wall-clock computation of every stream of the utterance


class _Clock:
    """Milliseconds since the stream started; waits for the accelerator so that times are real."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else None
        self.start = time.perf_counter()

    def ms(self) -> float:
        if self.sync is not None:
            self.sync()
        return 1000 * (time.perf_counter() - self.start)


class _Recorder:
    """Collects each stream's tokens with the delay the driver sets before every decision."""

    def __init__(self, targets: Iterable[str], clock: _Clock):
        self.streams = {t: Stream() for t in targets}
        self.clock, self.delay = clock, 0.0

    def emit(self, target: str, token: int) -> None:
        stream = self.streams[target]
        stream.tokens.append(token)
        stream.delays.append(self.delay)
        stream.elapsed.append(self.delay + self.clock.ms())


class _Frames:
    """Log-mel frames of a clip computed as its samples arrive, each exactly once, equal to
    `log_mel` over the whole clip: frame t covers samples [t * hop, t * hop + window).
    They are computed on the CPU (as in training) and handed over on `device`."""

    def __init__(self, wave: Tensor, rate: int, n_mels: int, device: torch.device | None = None):
        self.wave, self.rate, self.n_mels, self.device = wave.cpu(), rate, n_mels, device
        self.window, self.hop = round(WINDOW_S * rate), round(FRAME_HOP_S * rate)
        self.computed = 0

    def complete(self, samples: int, finished: bool) -> int:
        """Frames whose window lies in the first `samples` samples; a whole clip has at least one."""
        n = 0 if samples < self.window else 1 + (samples - self.window) // self.hop
        return max(n, 1) if finished else n

    def take(self, stop: int) -> Tensor:
        """Frames [computed, stop) as (1, frames, C * n_mels)."""
        piece = self.wave[:, self.computed * self.hop:(stop - 1) * self.hop + self.window]
        self.computed = stop
        feats = log_mel(piece, self.rate, self.n_mels)  # (C, T, F); pads a clip shorter than a window
        return feats.transpose(0, 1).reshape(1, feats.shape[1], -1).to(self.device)


# -- per-family streaming systems: read(block) encodes one block; write(finished) applies the policy --
class _EncoderDecoder:
    """Wait-k models (and SAMU's ST model): one shared encoder, one decoder state per language."""

    def __init__(self, model, languages: list[str], policy: Policy, max_len: int, rec: _Recorder, device,
                 cleanup: ExitStack):
        self.model, self.policy, self.max_len, self.rec = model, policy, max_len, rec
        self.block_frames = model.cfg.encoder.block_frames
        self.state = model.init_state(languages, 1, device)
        self.last = {lang: torch.tensor([[model.start_token(lang)]], device=device) for lang in languages}
        self.done = dict.fromkeys(languages, False)
        self.blocks = 0
        self.attention: dict[str, CrossAttention] = {}
        if isinstance(policy, EDAtt | AlignAtt):
            by_decoder: dict[int, CrossAttention] = {}  # a unified decoder serves every language: one hook
            for lang in languages:
                decoder = model.decoder_for(lang)
                if id(decoder) not in by_decoder:
                    by_decoder[id(decoder)] = CrossAttention(decoder.layers[-1].cross_attn)
                    cleanup.callback(by_decoder[id(decoder)].close)  # the hooks end with the stream
                self.attention[lang] = by_decoder[id(decoder)]

    def read(self, block: Tensor) -> None:
        self.state = self.model.read(block, self.state)
        self.blocks += 1

    def write(self, finished: bool) -> None:
        eos = self.model.cfg.eos_id
        for lang in self.done:
            decoder, stream = self.model.decoder_for(lang), self.rec.streams[lang]
            while not self.done[lang]:
                if isinstance(self.policy, WaitK) and not self.policy.ready(self.blocks, len(stream.tokens), finished):
                    break
                before = self.state.decoders[lang]
                logits, after = decoder.step(self.last[lang], self.state.memory, before)
                token = int(logits[0, -1].argmax())
                if token == eos and finished:
                    self.done[lang] = True
                elif token == eos or (lang in self.attention
                                      and not self.policy.accept(self.attention[lang].weights, finished)):
                    # Not yet: drop the candidate, keep the new memory frames' projection.
                    self.state.decoders[lang] = DecoderState(before.self_kv, after.memory_kv, before.offset)
                    break
                else:
                    self.state.decoders[lang] = after
                    self.last[lang] = torch.tensor([[token]], device=self.last[lang].device)
                    self.rec.emit(lang, token)
                    self.done[lang] = len(stream.tokens) >= self.max_len


class _Easist:
    """EASiST: blocks go into the LM's cache as they are read; a write decodes until <|end-of-write|>."""

    def __init__(self, model, lang: str, prompt: list[int], policy: Policy, max_len: int, max_per_write: int,
                 rec: _Recorder, device):
        self.model, self.lang, self.policy, self.rec = model, lang, policy, rec
        self.max_len, self.max_per_write = max_len, max_per_write
        self.block_frames = model.cfg.encoder.block_frames
        self.state = model.start(prompt, device)
        self.unwritten, self.p_write = 0, 0.0  # blocks read since the last write; the policy head's last p

    def read(self, block: Tensor) -> None:
        self.p_write, self.state = self.model.read(block, self.state)
        self.unwritten += 1

    def write(self, finished: bool) -> None:
        left = self.max_len - len(self.rec.streams[self.lang].tokens)
        if self.unwritten == 0 or left <= 0:
            return
        if not finished:
            if isinstance(self.policy, PolicyHead):
                go = self.policy.write(self.p_write, finished)
            else:
                go = self.policy.ready(self.unwritten, 0, finished)  # a chunk every k blocks
            if not go:
                return
            left = min(left, self.max_per_write)
        _, self.state = self.model.write(self.state, left, on_token=partial(self.rec.emit, self.lang))
        self.unwritten = 0


class _Transducer:
    """JSTAR: the transducers emit while each block is read; the end of the stream flushes the slow encoder."""

    def __init__(self, model, lang: str, rec: _Recorder, device):
        self.model, self.lang, self.rec = model, lang, rec
        self.block_frames = model.cfg.fast.block_frames
        self.state = model.init_state(device)

    def read(self, block: Tensor) -> None:
        asr, st, self.state = self.model.forward_block(block, self.state)
        self._emit(asr, st)

    def write(self, finished: bool) -> None:
        if finished:
            st, self.state = self.model.flush(self.state)
            self._emit([], st)

    def _emit(self, asr: list[int], st: list[int]) -> None:
        for token in asr:
            self.rec.emit(ASR, token)
        for token in st:
            self.rec.emit(self.lang, token)


def _run_stream(system, frames: _Frames, n_samples: int, segment_ms: float, rec: _Recorder) -> None:
    """Feed the clip segment by segment; read every block as soon as its frames exist, then ask the policy."""
    step = math.ceil(segment_ms / 1000 * frames.rate)  # samples per segment, as SimulEval sends them
    received = 0
    while received < n_samples:
        received = min(n_samples, received + step)
        finished = received == n_samples
        rec.delay = 1000 * received / frames.rate
        available = frames.complete(received, finished)
        while available - frames.computed >= system.block_frames or (finished and available > frames.computed):
            system.read(frames.take(min(available, frames.computed + system.block_frames)))
            if not (finished and frames.computed == available):
                system.write(finished=False)
    system.write(finished=True)


class Decoder:
    """Decodes clips with one trained model, simultaneously under a policy or offline.

    Args:
        model: a loaded run's model (`training.recipes.load_run`), in eval mode.
        family: its family (waitk, samu, easist, jstar).
        languages: target languages to decode (JSTAR: exactly one).
        prompts: EASiST only, the prompt token ids per language.
        sampling_rate, n_mels: the features the model was trained on (the run's `data` section).
        segment_ms: source segment size; a block is read in the first segment that completes its frames.
        max_len: at most this many tokens per output.
        max_tokens_per_write: EASiST, a write before the source ends stops after this many tokens.
    """

    def __init__(self, model, family: str, languages: list[str], *, prompts: dict[str, list[int]] | None = None,
                 sampling_rate: int = 16000, n_mels: int = 80, segment_ms: float = 40.0, max_len: int = 200,
                 max_tokens_per_write: int = 50):
        if family == "jstar" and len(languages) != 1:
            raise ValueError(f"JSTAR translates into one language, got {languages}")
        if family == "easist" and set(languages) - set(prompts or {}):
            raise ValueError(f"EASiST needs a prompt for every language, got {sorted(prompts or {})}")
        if segment_ms <= 0:
            raise ValueError(f"segment_ms must be positive, got {segment_ms}")
        self.model, self.family, self.languages = model, family, list(languages)
        self.prompts = prompts or {}
        self.rate, self.n_mels, self.segment_ms = sampling_rate, n_mels, segment_ms
        self.max_len, self.max_per_write = max_len, max_tokens_per_write
        self.device = next(model.parameters()).device

    @property
    def targets(self) -> list[str]:
        return ([ASR] if self.family == "jstar" else []) + self.languages

    def decode(self, wave: Tensor, policy: Policy) -> Decoded:
        """One clip (C, n samples at `sampling_rate`) under `policy` (`Offline()` for offline decoding)."""
        # Each group of targets is one stream, timed on its own clock.
        groups = [[lang] for lang in self.languages] if self.family == "easist" else [self.languages]
        streams, compute = {}, 0.0
        for group in groups:
            targets = [ASR, *group] if self.family == "jstar" else group
            rec = _Recorder(targets, _Clock(self.device))
            with torch.inference_mode(), ExitStack() as cleanup:
                if isinstance(policy, Offline):
                    self._offline(group, wave, rec)
                else:
                    system = self._system(group, policy, rec, cleanup)
                    _run_stream(system, _Frames(wave, self.rate, self.n_mels, self.device), wave.shape[-1],
                                self.segment_ms, rec)
            compute += rec.clock.ms()
            streams |= rec.streams
        return Decoded(streams, 1000 * wave.shape[-1] / self.rate, compute)

    def _system(self, group: list[str], policy: Policy, rec: _Recorder, cleanup: ExitStack):
        family = self.family
        if family in ("waitk", "samu") and isinstance(policy, WaitK | EDAtt | AlignAtt):
            model = self.model.st if family == "samu" else self.model
            return _EncoderDecoder(model, group, policy, self.max_len, rec, self.device, cleanup)
        if family == "easist" and isinstance(policy, PolicyHead | WaitK):
            return _Easist(self.model, group[0], self.prompts[group[0]], policy, self.max_len, self.max_per_write,
                           rec, self.device)
        if family == "jstar" and isinstance(policy, Transducer):
            return _Transducer(self.model, group[0], rec, self.device)
        raise ValueError(f"the {family} family cannot run the {policy.name} policy")

    def _offline(self, group: list[str], wave: Tensor, rec: _Recorder) -> None:
        rec.delay = 1000 * wave.shape[-1] / self.rate
        frames = _Frames(wave, self.rate, self.n_mels, self.device)
        feats = frames.take(frames.complete(wave.shape[-1], finished=True))
        if self.family == "jstar":
            asr, st = self.model.decode_offline(feats)
            for token in asr:
                rec.emit(ASR, token)
            for token in st:
                rec.emit(group[0], token)
        elif self.family == "easist":
            state = self.model.read_all(feats, self.model.start(self.prompts[group[0]], self.device))
            self.model.write(state, self.max_len, on_token=partial(rec.emit, group[0]))
        else:
            model = self.model.st if self.family == "samu" else self.model
            memory, _ = model.encoder(feats, torch.tensor([feats.shape[1]], device=self.device))
            for lang in group:
                decoder, state = model.decoder_for(lang), model.decoder_for(lang).init_state()
                token = torch.tensor([[model.start_token(lang)]], device=self.device)
                for _ in range(self.max_len):
                    logits, state = decoder.step(token, memory, state)
                    next_token = int(logits[0, -1].argmax())
                    if next_token == model.cfg.eos_id:
                        break
                    rec.emit(lang, next_token)
                    token = torch.tensor([[next_token]], device=self.device)


def to_words(stream: Stream, decode: Callable[[list[int]], str], drop: Iterable[int] = ()
             ) -> tuple[str, list[float], list[float]]:
    """The detokenized prediction and, per whitespace word, its delay and elapsed time.

    A word is timed by its last subword: the token just before the one that starts the next word
    (found by decoding ever longer prefixes), the last token for the last word. Tokens in `drop`
    (e.g. speaker tags) are left out first.
    """
    dropped = set(drop)
    kept = [i for i, t in enumerate(stream.tokens) if t not in dropped]
    tokens = [stream.tokens[i] for i in kept]
    words = decode(tokens).split()
    starts: list[int] = []  # starts[w]: the first token at which word w exists
    for i in range(len(tokens)):
        n = min(len(decode(tokens[: i + 1]).split()), len(words))
        starts += [i] * (n - len(starts))
    starts += [len(tokens) - 1] * (len(words) - len(starts))
    last = [starts[w + 1] - 1 if w + 1 < len(words) else len(tokens) - 1 for w in range(len(words))]
    last = [max(i, starts[w]) for w, i in enumerate(last)]
    return (" ".join(words), [stream.delays[kept[i]] for i in last], [stream.elapsed[kept[i]] for i in last])
