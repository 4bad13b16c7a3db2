"""What is asked: the prompt template, the items of one request and the request body."""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ...settings import ConfigError
from ..objects import digest
from ..records import Utterance
from .settings import LlmSettings


@dataclass(frozen=True)
class Prompt:
    version: str
    system: str
    user: str
    repair: str
    level_guide: dict[str, str]
    examples: list[dict[str, Any]]


def _config_path(name: str) -> Path:
    path = Path(name)
    return (
        path
        if path.is_absolute() or path.exists()
        else Path(str(resources.files("simulforge.configs") / name))
    )


def load_prompt(name: str, levels: Sequence[str]) -> Prompt:
    """Read a prompt template and check it describes, and shows, every level."""
    path = _config_path(name)
    if not path.is_file():
        raise ConfigError(f"segment.llm.prompt: no prompt template at {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        prompt = Prompt(
            **{k: data[k] for k in ("version", "system", "user", "repair", "level_guide", "examples")}
        )
    except (KeyError, TypeError) as e:
        raise ConfigError(f"segment.llm.prompt: {path} lacks {e}") from e
    for level in levels:
        if level not in prompt.level_guide:
            raise ConfigError(f"segment.levels: the prompt {path.name} does not describe level {level!r}")
        for ex in prompt.examples:
            if level not in ex["output"]["levels"]:
                raise ConfigError(
                    f"segment.levels: the {ex['pair']} example of {path.name} lacks level {level!r}"
                )
    return prompt


def norm(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Item:
    """One utterance as the model sees it, with the cache key of its answer."""

    key: str
    source: str
    translations: dict[str, str]


def answer_identity(settings: LlmSettings, prompt: Prompt, levels: Sequence[str]) -> dict[str, Any]:
    """Everything besides the texts that shapes an answer: the model, the prompt (its version and
    its whole text, so an edit without a version bump still asks again), the levels, and the
    sampling temperature. The server's address is not in it: one model name, one model."""
    return {
        "model": settings.model,
        "prompt": prompt.version,
        "prompt_text": digest(dataclasses.asdict(prompt)),
        "levels": list(levels),
        "temperature": settings.temperature,
    }


def answer_key(identity: dict[str, Any], utt: Utterance) -> str:
    """The cache key of an utterance's answer: a hash of its normalised texts and the identity."""
    source, translations = _texts(utt)
    return digest({**identity, "source": source, "translations": translations})


def _texts(utt: Utterance) -> tuple[str, dict[str, str]]:
    return norm(utt.source_text), {lang: norm(utt.translations[lang]) for lang in sorted(utt.translations)}


def make_item(utt: Utterance, identity: dict[str, Any]) -> Item:
    source, translations = _texts(utt)
    return Item(answer_key(identity, utt), source, translations)


def _items_json(items: Sequence[Item]) -> str:
    return json.dumps(
        {
            "items": [
                {"id": str(n + 1), "source": it.source, "translations": it.translations}
                for n, it in enumerate(items)
            ]
        },
        ensure_ascii=False,
    )


def fill(template: str, **values: str) -> str:
    return string.Template(template).substitute(values).strip()


def build_messages(prompt: Prompt, levels: Sequence[str], items: Sequence[Item]) -> list[dict[str, str]]:
    """System rules, one worked example per language pair the items need, then the items."""
    order = ", ".join(levels)
    guide = "\n".join(f"- {level}: {prompt.level_guide[level]}" for level in levels)
    messages = [{"role": "system", "content": fill(prompt.system, levels=order, level_guide=guide)}]
    langs = {lang for it in items for lang in it.translations}
    for ex in prompt.examples:
        if set(ex["input"]["translations"]) <= langs:
            example_input = json.dumps({"items": [ex["input"]]}, ensure_ascii=False)
            output = {
                "id": ex["output"]["id"],
                "levels": {level: ex["output"]["levels"][level] for level in levels},
            }
            messages.append(
                {"role": "user", "content": fill(prompt.user, levels=order, items=example_input)}
            )
            messages.append(
                {"role": "assistant", "content": json.dumps({"items": [output]}, ensure_ascii=False)}
            )
    messages.append({"role": "user", "content": fill(prompt.user, levels=order, items=_items_json(items))})
    return messages


def response_schema(levels: Sequence[str], langs: Sequence[str]) -> dict[str, Any]:
    """Strict JSON schema of an answer (OpenAI structured outputs: every key required)."""

    def obj(props: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}

    strings = {"type": "array", "items": {"type": "string"}}
    level = obj({"source_chunks": strings, "target_chunks": obj({lang: strings for lang in langs})})
    item = obj({"id": {"type": "string"}, "levels": obj({name: level for name in levels})})
    return obj({"items": {"type": "array", "items": item}})


def request_body(
    settings: LlmSettings,
    messages: list[dict[str, str]],
    levels: Sequence[str],
    langs: Sequence[str],
    structured: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": settings.model, "messages": messages}
    if settings.temperature is not None:
        body["temperature"] = settings.temperature
    if settings.max_completion_tokens is not None:
        body["max_completion_tokens"] = settings.max_completion_tokens
    if structured:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "segmentation", "strict": True, "schema": response_schema(levels, langs)},
        }
    return body
