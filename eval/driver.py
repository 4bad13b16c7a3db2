"""Simultaneous decoding driver: a source clip is fed in fixed segments to a model family's agent
(agent.py), which reads each encoder block once, carries every state (encoder and decoder KV caches,
transducer state) from step to step, and writes when its policy (policies.py) says so.

    clip (C, n) --segments of segment_ms--> log-mel frames, each computed once, as soon as its
    25 ms window has arrived --> complete encoder blocks --> agent.read --> agent.write --> tokens

An encoder that takes the waveform (`input_kind` "wave") gets 10 ms frames of raw samples instead
of log-mel frames (training.data.wave_frames), each complete once its 10 ms have arrived.

Nothing is re-encoded: the encoder's `forward_block` runs once per block, in order. The family's
registry entry says which policies it runs, what its outputs are (target languages, and the
source transcript for a family that transcribes) and whether one agent decodes every target
language at once (joint decoding: one encoder pass) or one agent decodes each.

Offline decoding of the same model is the comparison point: the whole clip's features, decoded
by the agent's `offline` (the encoder over the whole clip in one call, then greedy decoding).

Times (ms): a token's delay is the source audio received when it came out; its elapsed time adds
the wall-clock computation since the stream started (SimulEval's computation-aware convention).
Everything the system does counts: feature extraction, encoding, decoding, policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from simulforge.models import registry
from simulforge.training.data import FRAME_HOP_S, input_kind, log_mel, wave_frames

from .agent import Agent, DecodeOptions
from .policies import Offline, Policy

WINDOW_S = 0.025  # log-mel window, as training.data.log_mel


@dataclass
class Stream:
    """One output of one utterance: model tokens and, per token, its delay and elapsed time (ms)."""

    tokens: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)


@dataclass
class Decoded:
    streams: dict[str, Stream]  # by target: a language, or TRANSCRIPT
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
    With `kind` "wave" a frame is its hop of samples (the window is the hop), equal to `wave_frames`.
    They are computed on the CPU (as in training) and handed over on `device`."""

    def __init__(self, wave: Tensor, rate: int, n_mels: int, device: torch.device | None = None,
                 kind: str = "logmel"):
        self.wave, self.rate, self.n_mels, self.device, self.kind = wave.cpu(), rate, n_mels, device, kind
        self.hop = round(FRAME_HOP_S * rate)
        self.window = self.hop if kind == "wave" else round(WINDOW_S * rate)
        self.computed = 0

    def complete(self, samples: int, finished: bool) -> int:
        """Frames whose window lies in the first `samples` samples; a whole clip has at least one
        (and, for wave frames, its zero-padded last partial frame)."""
        n = 0 if samples < self.window else 1 + (samples - self.window) // self.hop
        if finished and self.kind == "wave":
            n = -(-samples // self.hop)
        return max(n, 1) if finished else n

    def take(self, stop: int) -> Tensor:
        """Frames [computed, stop) as (1, frames, C * n_mels)."""
        piece = self.wave[:, self.computed * self.hop:(stop - 1) * self.hop + self.window]
        self.computed, frames = stop, stop - self.computed
        if self.kind == "wave":  # the last frame of a clip is zero-padded, as in training
            feats = wave_frames(piece, self.rate)[:, :frames]
        else:
            feats = log_mel(piece, self.rate, self.n_mels)  # (C, T, F); pads a clip shorter than a window
        return feats.transpose(0, 1).reshape(1, feats.shape[1], -1).to(self.device)


def _run_stream(agent: Agent, frames: _Frames, n_samples: int, segment_ms: float, rec: _Recorder) -> None:
    """Feed the clip segment by segment; read every block as soon as its frames exist, then let the agent
    write; once the source has ended, finish."""
    step = math.ceil(segment_ms / 1000 * frames.rate)  # samples per segment, as SimulEval sends them
    received, state = 0, agent.init_state()
    while received < n_samples:
        received = min(n_samples, received + step)
        finished = received == n_samples
        rec.delay = 1000 * received / frames.rate
        available = frames.complete(received, finished)
        while available - frames.computed >= agent.block_frames or (finished and available > frames.computed):
            state = agent.read(state, frames.take(min(available, frames.computed + agent.block_frames)))
            if not (finished and frames.computed == available):
                state = agent.write(state, rec.emit)
    agent.finish(state, rec.emit)


class Decoder:
    """Decodes clips with one trained model, simultaneously under a policy or offline, through its
    family's agent (eval/agent.py): no family is special here.

    Args:
        model: a loaded run's model (`training.recipes.load_run`), in eval mode.
        family: its family's name (the run's `family`).
        languages: target languages to decode.
        sampling_rate, n_mels: the features the model was trained on (the run's `data` section).
        segment_ms: source segment size; a block is read in the first segment that completes its frames.
        max_len: at most this many tokens per output.
        max_tokens_per_write: a chunk write before the source ends stops after this many tokens (EASiST).
        prompts: per language, the prompt token ids of a decoder-only family (EASiST).
    """

    def __init__(self, model, family: str, languages: list[str], *, sampling_rate: int, n_mels: int = 80,
                 segment_ms: float = 40.0, max_len: int = 200, max_tokens_per_write: int = 50,
                 prompts: dict[str, list[int]] | None = None):
        if segment_ms <= 0:
            raise ValueError(f"segment_ms must be positive, got {segment_ms}")
        self.family, self.model, self.languages = registry.get(family), model, list(languages)
        self.options = DecodeOptions(max_len, max_tokens_per_write, dict(prompts or {}))
        self.family.check_decoding(self.languages, self.options)
        self.rate, self.n_mels, self.segment_ms = sampling_rate, n_mels, segment_ms
        self.device = next(model.parameters()).device
        self.kind = input_kind(model)  # what the encoder takes: log-mel or wave frames

    @property
    def targets(self) -> list[str]:
        return self.family.targets(self.languages)

    def decode(self, wave: Tensor, policy: Policy) -> Decoded:
        """One clip (C, n samples at `sampling_rate`) under `policy` (`Offline()` for offline decoding)."""
        if policy.name not in self.family.policies:
            raise ValueError(f"the {self.family.name} family cannot run the {policy.name} policy")
        # Each agent decodes its group of languages as one stream, timed on its own clock.
        groups = [self.languages] if self.family.joint else [[lang] for lang in self.languages]
        streams, compute = {}, 0.0
        for group in groups:
            rec = _Recorder(self.family.targets(group), _Clock(self.device))
            with torch.inference_mode(), self.family.agent(self.model, group, policy, self.options) as agent:
                frames = _Frames(wave, self.rate, self.n_mels, self.device, self.kind)
                if isinstance(policy, Offline):
                    rec.delay = 1000 * wave.shape[-1] / self.rate
                    agent.offline(frames.take(frames.complete(wave.shape[-1], finished=True)), rec.emit)
                else:
                    _run_stream(agent, frames, wave.shape[-1], self.segment_ms, rec)
            compute += rec.clock.ms()
            streams |= rec.streams
        return Decoded(streams, 1000 * wave.shape[-1] / self.rate, compute)
