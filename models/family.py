"""A model family: the one registry entry (registry.py) through which the trainer and the evaluator
know it, so neither holds code of its own per family.

An entry carries the model class and its config dataclass, the training tasks its configs' stages
may name (training/tasks.py), the decoding policies it runs (eval/policies.py; the first is its
default) and its agent, the streaming protocol of eval/agent.py. The hooks below default to a
single-channel speech-to-text family that decodes every target language in one stream.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from simulforge.eval.agent import Agent, DecodeOptions


class Family:
    """A family module's `FAMILY` is an instance of a subclass that sets the attributes and hooks."""

    name: str  # a config's `family:`
    model: type[nn.Module]  # built from `config`, the dataclass of the YAML's `model:` section
    config: type
    tasks: dict[str, type]  # task name (a stage's `task:`) -> training.tasks.Task subclass
    policies: tuple[str, ...]  # eval/policies.py names; the first is the default
    eval_config = "offline"  # the dataset config `simulforge evaluate` reads by default
    transcribes = False  # also writes the source transcript (target TRANSCRIPT, scored by WER)
    speaker_tokens: tuple[str, ...] = ()  # SOT speaker tags it writes; left out of its translations' logs
    joint = True  # one agent decodes every target language at once (else one agent per language)

    # -- training ------------------------------------------------------------------------------
    def specials(self, cfg) -> list[str]:
        """Special tokens the model config needs in the vocabulary (its tasks add their own)."""
        return []

    def finalize(self, cfg, tok) -> None:
        """Set the config's sizes and token ids from the tokenizer."""
        raise NotImplementedError

    def check_paths(self, cfg) -> None:
        """Refuse (training.config.ConfigError) a local path of the model config that does not exist."""

    # -- evaluation ----------------------------------------------------------------------------
    def languages(self, model: nn.Module, tok, available: list[str], requested: list[str] | None) -> list[str]:
        """The run's target languages; `available`: the dataset's, `requested`: --lang."""
        raise NotImplementedError

    def targets(self, languages: list[str]) -> list[str]:
        """The outputs of an agent decoding `languages`."""
        return list(languages)

    def channels(self, cfg) -> int:
        """The audio channels the model takes."""
        return 1

    def check_decoding(self, languages: list[str], options: DecodeOptions) -> None:
        """Refuse (ValueError) languages or options the family cannot decode."""

    def agent(self, model: nn.Module, languages: list[str], policy: Any, options: DecodeOptions) -> Agent:
        """An agent decoding `languages` (all of them, or one when not `joint`) under `policy`."""
        raise NotImplementedError
