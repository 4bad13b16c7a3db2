"""Answer validation: an answer becomes Segmentations only when it follows every rule."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..records import Segmentation
from .keys import holds_key
from .prompt import Item, norm


class InvalidAnswer(ValueError):
    """An answer that breaks the rules; the message says which."""


def parse_answer(content: str | None) -> dict[str, Any]:
    """The answer's items by id; plain-JSON servers may wrap the object in prose or fences."""
    text = (content or "").strip()
    if not text:
        raise InvalidAnswer("no answer: the reply holds no message text")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise InvalidAnswer("malformed JSON: the answer holds no JSON object")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as e:
        raise InvalidAnswer(f"malformed JSON: {e.msg} at character {e.pos}") from e
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise InvalidAnswer('malformed answer: no "items" list')
    return {str(it.get("id")): it for it in items if isinstance(it, dict)}


def _chunk_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise InvalidAnswer(f"{where}: expected a non-empty list of strings")
    chunks = [norm(c) for c in value]
    if "" in chunks:
        raise InvalidAnswer(f"{where}: chunk {chunks.index('') + 1} is empty")
    return chunks


def _rebuild_error(chunks: list[str], source: str) -> str | None:
    got, want = " ".join(chunks).split(), source.split()
    if got == want:
        return None
    for n, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"differs at word {n + 1}: expected {w!r}, got {g!r}"
    return f"has {len(got)} words, the source {len(want)}"


def check_answer(item: Item, answer: Any, levels: Sequence[str]) -> dict[str, Segmentation]:
    """The answer as Segmentations, or InvalidAnswer saying what is wrong."""
    if not isinstance(answer, dict):
        raise InvalidAnswer("no answer for this item")
    by_level = answer.get("levels")
    if not isinstance(by_level, dict):
        raise InvalidAnswer('no "levels" object')
    out: dict[str, Segmentation] = {}
    for level in levels:
        seg = by_level.get(level)
        if not isinstance(seg, dict):
            raise InvalidAnswer(f"level {level} is missing")
        source_chunks = _chunk_list(seg.get("source_chunks"), f"{level}/source_chunks")
        problem = _rebuild_error(source_chunks, item.source)
        if problem:
            raise InvalidAnswer(
                f"{level}: the source chunks do not rebuild the source: joined text {problem}"
            )
        targets = seg.get("target_chunks")
        if not isinstance(targets, dict):
            raise InvalidAnswer(f'{level}: no "target_chunks" object')
        target_chunks = {}
        for lang in item.translations:
            chunks = _chunk_list(targets.get(lang), f"{level}/target_chunks/{lang}")
            if len(chunks) != len(source_chunks):
                raise InvalidAnswer(
                    f"{level}: {len(chunks)} {lang} chunks for {len(source_chunks)} source chunks (counts must match)"
                )
            target_chunks[lang] = chunks
        out[level] = Segmentation(level, source_chunks, target_chunks)
    for low, high in zip(levels, levels[1:], strict=False):
        if len(out[high].source_chunks) > len(out[low].source_chunks):
            raise InvalidAnswer(
                f"chunk counts grow from {low} ({len(out[low].source_chunks)}) to {high} ({len(out[high].source_chunks)})"
            )
    return out


def validate_all(
    items: Sequence[Item], content: str | None, levels: Sequence[str], truncated: bool = False, key: str = ""
) -> dict[str, Any]:
    """Per item key: its Segmentations, or the InvalidAnswer. An answer holding the API `key`
    is invalid whatever else it holds: it must not be cached or published."""
    try:
        answers = parse_answer(content)
    except InvalidAnswer as e:
        if truncated:
            e = InvalidAnswer(
                f"{e} (the answer hit the token limit: raise max_completion_tokens or lower batch_size)"
            )
        return {it.key: e for it in items}
    results: dict[str, Any] = {}
    for n, it in enumerate(items):
        answer = answers.get(str(n + 1))
        sent = " ".join([it.source, *it.translations.values()])
        if holds_key(json.dumps(answer, ensure_ascii=False), key, known=sent):
            results[it.key] = InvalidAnswer("the answer holds the API key (or a piece of it), not a segmentation")
            continue
        try:
            results[it.key] = check_answer(it, answer, levels)
        except InvalidAnswer as e:
            results[it.key] = e
    return results
