"""The Batch API: the online mode's requests as JSONL, submitted, polled and collected into the
same answer cache (objects under cache_dir, keyed as the online mode keys them); the next pipeline
run, on any worker, then finds the answers there.

work dir layout: requests-NNNNN.jsonl (what is uploaded), items.jsonl (which utterances each
request carries), state.json (file and batch ids, status, what was collected). Every step
saves the state before moving on, so an interrupted submit or collect resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ...settings import ConfigError
from ..records import Utterance
from .answers import InvalidAnswer, validate_all
from .cache import AnswerCache
from .client import make_openai_client
from .keys import api_key, scrub
from .prompt import Item, Prompt, answer_identity, build_messages, load_prompt, make_item, request_body
from .segmenter import group_items
from .settings import LlmSettings, local_path


def _state_path(work_dir: Path) -> Path:
    return work_dir / "state.json"


def _load_state(work_dir: Path) -> dict[str, Any] | None:
    path = _state_path(work_dir)
    return json.loads(path.read_text()) if path.exists() else None


def _save_state(work_dir: Path, state: dict[str, Any]) -> None:
    tmp = _state_path(work_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_path(work_dir))


def _identity(settings: LlmSettings, prompt: Prompt, levels: Sequence[str]) -> dict[str, Any]:
    """What the batch was asked with; the answer keys hash the same (prompt.answer_identity)."""
    return {"model": settings.model, "prompt_version": prompt.version, "levels": list(levels),
            "answer_identity": answer_identity(settings, prompt, levels)}


def _check_identity(state: dict[str, Any], settings: LlmSettings, prompt: Prompt, levels: Sequence[str],
                    wd: Path) -> None:
    """The answers of a batch are cached under the keys it was written with: another model, prompt,
    levels or temperature (or a batch_dir from before the keys hashed all of these) would file them
    where no run looks."""
    expected = _identity(settings, prompt, levels)
    if {k: state.get(k) for k in expected} != expected:
        raise ConfigError(f"{wd} holds a batch for another model, prompt, levels or temperature (or from an "
                          f"older simulforge); use a fresh batch_dir")


def submit(
    settings: LlmSettings, levels: Sequence[str], utts: Iterable[Utterance], work_dir: str
) -> dict[str, Any]:
    """Write request files for every uncached utterance, upload them and start the batches."""
    wd = local_path(work_dir, "batch_dir")
    wd.mkdir(parents=True, exist_ok=True)
    prompt = load_prompt(settings.prompt, levels)
    key = api_key(settings)
    state = _load_state(wd)
    if state is None:
        state = _write_requests(settings, levels, prompt, utts, wd)
    else:
        _check_identity(state, settings, prompt, levels, wd)
    client = make_openai_client(settings, key, max_retries=settings.max_retries)
    for part in state["batches"]:
        if not part.get("input_file_id"):
            with open(wd / part["requests"], "rb") as f:
                part["input_file_id"] = scrub(client.files.create(file=f, purpose="batch").id, key)
            _save_state(wd, state)
        if not part.get("batch_id"):
            batch = client.batches.create(
                input_file_id=part["input_file_id"], endpoint="/v1/chat/completions", completion_window="24h"
            )
            part["batch_id"], part["status"] = scrub(batch.id, key), scrub(batch.status, key)
            _save_state(wd, state)
    return state


def _write_requests(
    settings: LlmSettings, levels: Sequence[str], prompt: Prompt, utts: Iterable[Utterance], wd: Path
) -> dict[str, Any]:
    cache = AnswerCache(settings.cache_dir)
    identity = answer_identity(settings, prompt, levels)
    seen: set[str] = set()
    pending = []
    for u in utts:
        it = make_item(u, identity)
        if it.key not in seen and cache.get(it) is None:
            pending.append(it)
        seen.add(it.key)
    groups = group_items(pending, settings.batch_size)
    structured = settings.structured_output != "plain"
    parts = []
    with open(wd / "items.jsonl", "w", encoding="utf-8") as items_file:
        for start in range(0, len(groups), settings.batch_max_requests):
            name = f"requests-{len(parts):05d}.jsonl"
            with open(wd / name, "w", encoding="utf-8") as f:
                for n, group in enumerate(groups[start : start + settings.batch_max_requests], start):
                    custom_id = f"req-{n:07d}"
                    body = request_body(
                        settings,
                        build_messages(prompt, levels, group),
                        levels,
                        list(group[0].translations),
                        structured,
                    )
                    line = {
                        "custom_id": custom_id,
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
                    items = [
                        {"key": it.key, "source": it.source, "translations": it.translations} for it in group
                    ]
                    items_file.write(
                        json.dumps({"custom_id": custom_id, "items": items}, ensure_ascii=False) + "\n"
                    )
            parts.append({"requests": name})
    state = {**_identity(settings, prompt, levels), "utterances": len(pending), "batches": parts}
    _save_state(wd, state)
    return state


def status(settings: LlmSettings, work_dir: str) -> dict[str, Any]:
    """Poll every submitted batch and record its status and output file (the server's strings
    go into the state redacted)."""
    wd = local_path(work_dir, "batch_dir")
    state = _load_state(wd)
    if state is None:
        raise ConfigError(f"{wd}: no batch submitted here (run submit first)")
    key = api_key(settings)
    client = make_openai_client(settings, key, max_retries=settings.max_retries)
    for part in state["batches"]:
        if part.get("batch_id") and not part.get("collected"):
            batch = client.batches.retrieve(part["batch_id"])
            part["status"] = scrub(batch.status, key)
            part["output_file_id"] = scrub(batch.output_file_id, key)
            part["error_file_id"] = scrub(batch.error_file_id, key)
            if batch.request_counts is not None:  # read field by field: model_dump warns, quoting the values
                counts = {k: getattr(batch.request_counts, k, None) for k in ("total", "completed", "failed")}
                part["request_counts"] = scrub(counts, key)
    _save_state(wd, state)
    return state


def collect(settings: LlmSettings, levels: Sequence[str], work_dir: str) -> dict[str, int]:
    """Validate the answers of finished batches into the cache; invalid ones are asked online later."""
    wd = local_path(work_dir, "batch_dir")
    state = _load_state(wd)
    if state is not None:
        _check_identity(state, settings, load_prompt(settings.prompt, levels), levels, wd)
    state = status(settings, work_dir)
    key = api_key(settings)
    client = make_openai_client(settings, key, max_retries=settings.max_retries)
    with open(wd / "items.jsonl", encoding="utf-8") as f:
        carried = {row["custom_id"]: [Item(**it) for it in row["items"]] for row in map(json.loads, f)}
    counts = {
        "valid": 0,
        "invalid": 0,
        "failed_requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "pending_batches": 0,
    }
    cache = AnswerCache(settings.cache_dir)
    try:
        for part in state["batches"]:
            if part.get("collected"):
                continue
            if part.get("status") != "completed":
                counts["pending_batches"] += 1
                continue
            if part.get("output_file_id"):
                for line in client.files.content(part["output_file_id"]).text.splitlines():
                    if line.strip():
                        _collect_line(line, carried, levels, cache, counts, key)
            if part.get("error_file_id"):
                counts["failed_requests"] += sum(
                    1
                    for line in client.files.content(part["error_file_id"]).text.splitlines()
                    if line.strip()
                )
            part["collected"] = True
            _save_state(wd, state)
    finally:
        cache.close()
    return counts


def _field(data: Any, *path: str | int) -> Any:
    """data[path[0]][path[1]]..., or None where the server's JSON has no such thing."""
    for step in path:
        if isinstance(step, int):
            data = data[step] if isinstance(data, list) and len(data) > step else None
        else:
            data = data.get(step) if isinstance(data, dict) else None
    return data


def _collect_line(
    line: str,
    carried: dict[str, list[Item]],
    levels: Sequence[str],
    cache: AnswerCache,
    counts: dict[str, int],
    key: str,
) -> None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        row = None
    items = carried.get(_field(row, "custom_id")) if isinstance(_field(row, "custom_id"), str) else None
    content = _field(row, "response", "body", "choices", 0, "message", "content")
    if items is None or _field(row, "response", "status_code") != 200 or not isinstance(content, str):
        counts["failed_requests"] += 1
        return
    for kind in ("prompt_tokens", "completion_tokens"):
        n = _field(row, "response", "body", "usage", kind)
        counts[kind] += n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0
    results = validate_all(items, content, levels, key=key)
    for it in items:
        if isinstance(results[it.key], InvalidAnswer):
            counts["invalid"] += 1
        else:
            cache.put(it, results[it.key])
            counts["valid"] += 1
