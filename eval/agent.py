"""The agent: the streaming protocol every model family implements (SimulEval's agent, with explicit state).

An agent decodes one utterance with one trained model under one policy. The driver (driver.py) feeds
it the source's log-mel features one encoder block at a time, as the audio arrives:

    state = agent.init_state()
    for every block:   state = agent.read(state, block)      # encode it; nothing is ever re-encoded
                       state = agent.write(state, emit)      # write what the policy allows now (the
                                                             # driver finishes instead after the last)
    state = agent.finish(state, emit)                        # the source has ended: write the rest
    agent.offline(feats, emit)                               # or all at once (the comparison point)

`emit(target, token)` takes each token as soon as it is decoded, so the driver times tokens one by one
(computation-aware latency); a target is a language, or TRANSCRIPT for a family that also transcribes.
A family module (models/<family>.py) subclasses `Agent`; its registry entry (`Family.agent`) makes one
per utterance. An agent that holds something on the model (attention hooks) lets it go in `close`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

TRANSCRIPT = "asr"  # the target of a source transcript (JSTAR's ASR output)
Emit = Callable[[str, int], None]


@dataclass(frozen=True)
class DecodeOptions:
    max_len: int = 200  # at most this many tokens per output
    max_tokens_per_write: int = 50  # a write before the source ends stops after this many (chunk writers)
    prompts: dict[str, list[int]] = field(default_factory=dict)  # per language, a decoder-only LM's prompt ids


class Agent:
    """Base of the agents; an agent reads blocks of `block_frames` feature frames."""

    block_frames: int

    def init_state(self) -> Any:
        raise NotImplementedError

    def read(self, state: Any, block: Tensor) -> Any:
        """One block of features (1, <= block_frames, C * n_mels) -> the new state."""
        raise NotImplementedError

    def write(self, state: Any, emit: Emit) -> Any:
        """After a read: write what the policy allows now."""
        raise NotImplementedError

    def finish(self, state: Any, emit: Emit) -> Any:
        """The source has ended: write everything left."""
        raise NotImplementedError

    def offline(self, feats: Tensor, emit: Emit) -> None:
        """Decode a whole utterance's features (1, T, C * n_mels) at once."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the agent holds on the model."""

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
