"""LLM segmenter: an OpenAI-compatible chat model cuts sentences into monotone chunk pairs.

Works with OpenAI and with any server that speaks its chat API (vLLM, llama.cpp, Ollama)
through the official `openai` client: `base_url`, a model name and a key from the environment.

One request carries several utterances (`batch_size`) so the prompt and its worked examples
are paid once per batch; requests run `concurrency` at a time behind a client-side rate
limit, and 429 (honouring Retry-After), 5xx and timeouts are retried with exponential
backoff and jitter. Every answer is validated; an invalid one gets one repair re-ask with
the reasons, then becomes a reject. Only valid answers are cached, in sqlite, keyed by
(model, prompt version, levels, input), so a re-run of the same configuration makes no calls.

The Batch-API functions at the end write the same requests as JSONL, submit them, poll,
and collect the answers into the same cache; the next pipeline run then finds them there.

The API key is read from the environment where it is used and never written anywhere:
every message built from a server error goes through `_redact`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import sqlite3
import string
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .records import Segmentation, Utterance
from .settings import ConfigError

log = logging.getLogger(__name__)


@dataclass
class LlmSettings:
    base_url: str | None  # None: OpenAI's own endpoint
    model: str
    api_key_env: str  # name of the environment variable that holds the key
    prompt: str  # prompt template: a path, or relative to the configs folder
    structured_output: Literal["auto", "json_schema", "plain"]  # auto: json_schema, plain JSON if refused
    temperature: float | None  # None: the server's default (some reasoning models accept no other)
    max_completion_tokens: int | None
    batch_size: int  # utterances per request
    concurrency: int  # requests in flight per worker
    requests_per_minute: float | None  # per worker; None: no client-side limit
    max_retries: int  # retries after the first attempt, on 429, 5xx and timeouts
    backoff_s: float  # first retry delay; doubles each retry, with jitter
    backoff_max_s: float
    timeout_s: float  # per request
    cache_path: str | None  # null: <work_dir>/segment_llm.sqlite (resolved when the config loads)
    batch_dir: str | None  # work folder of the Batch-API mode (requests, state); null: <work_dir>/segment_batch
    batch_max_requests: int  # requests per submitted batch file

    def validate(self, where: str) -> None:
        for name in ("batch_size", "concurrency", "batch_max_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ConfigError(f"{where}.max_retries: must not be negative, got {self.max_retries}")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise ConfigError(f"{where}: need timeout_s > 0 and 0 <= backoff_s <= backoff_max_s")
        if self.requests_per_minute is not None and self.requests_per_minute <= 0:
            raise ConfigError(f"{where}.requests_per_minute: must be positive or null")


class LlmError(RuntimeError):
    """A request that failed for good; `reason` is the reject code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class InvalidAnswer(ValueError):
    """An answer that breaks the rules; the message says which."""


# -- the API key -------------------------------------------------------------------------------


def api_key(settings: LlmSettings) -> str:
    key = os.environ.get(settings.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"segment.llm: the llm backend needs an API key in the environment variable "
            f"{settings.api_key_env} (named by segment.llm.api_key_env); it is not set. "
            f"Servers that ignore keys (vLLM, llama.cpp, Ollama) accept any non-empty value."
        )
    return key


def redact(text: str, key: str) -> str:
    return text.replace(key, "[redacted]") if key else text


def openai_errors() -> type[Exception]:
    """The base class of the client's errors (the package is imported only where it is used)."""
    import openai

    return openai.OpenAIError


# -- the prompt --------------------------------------------------------------------------------


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


# -- what is asked ------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Item:
    """One utterance as the model sees it, with the cache key of its answer."""

    key: str
    source: str
    translations: dict[str, str]


def make_item(utt: Utterance, model: str, prompt: Prompt, levels: Sequence[str]) -> Item:
    source = _norm(utt.source_text)
    translations = {lang: _norm(utt.translations[lang]) for lang in sorted(utt.translations)}
    key = hashlib.sha256(
        json.dumps(
            {
                "model": model,
                "prompt": prompt.version,
                "levels": list(levels),
                "source": source,
                "translations": translations,
            },
            ensure_ascii=False,
            sort_keys=True,
        ).encode()
    ).hexdigest()
    return Item(key, source, translations)


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


def _fill(template: str, **values: str) -> str:
    return string.Template(template).substitute(values).strip()


def build_messages(prompt: Prompt, levels: Sequence[str], items: Sequence[Item]) -> list[dict[str, str]]:
    """System rules, one worked example per language pair the items need, then the items."""
    order = ", ".join(levels)
    guide = "\n".join(f"- {level}: {prompt.level_guide[level]}" for level in levels)
    messages = [{"role": "system", "content": _fill(prompt.system, levels=order, level_guide=guide)}]
    langs = {lang for it in items for lang in it.translations}
    for ex in prompt.examples:
        if set(ex["input"]["translations"]) <= langs:
            example_input = json.dumps({"items": [ex["input"]]}, ensure_ascii=False)
            output = {
                "id": ex["output"]["id"],
                "levels": {level: ex["output"]["levels"][level] for level in levels},
            }
            messages.append(
                {"role": "user", "content": _fill(prompt.user, levels=order, items=example_input)}
            )
            messages.append(
                {"role": "assistant", "content": json.dumps({"items": [output]}, ensure_ascii=False)}
            )
    messages.append({"role": "user", "content": _fill(prompt.user, levels=order, items=_items_json(items))})
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


# -- validation --------------------------------------------------------------------------------


def parse_answer(content: str | None) -> dict[str, Any]:
    """The answer's items by id; plain-JSON servers may wrap the object in prose or fences."""
    text = (content or "").strip()
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
    chunks = [_norm(c) for c in value]
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


def _to_json(segs: dict[str, Segmentation]) -> dict[str, Any]:
    return {
        level: {"source_chunks": s.source_chunks, "target_chunks": s.target_chunks}
        for level, s in segs.items()
    }


def _from_json(data: dict[str, Any]) -> dict[str, Segmentation]:
    return {level: Segmentation(level, s["source_chunks"], s["target_chunks"]) for level, s in data.items()}


# -- cache -------------------------------------------------------------------------------------


class AnswerCache:
    """Valid answers on disk; safe to share between threads and between processes."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)"
            )

    def get(self, key: str) -> dict[str, Segmentation] | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return _from_json(json.loads(row[0])) if row else None

    def put(self, key: str, segs: dict[str, Segmentation]) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?)",
                (key, json.dumps(_to_json(segs), ensure_ascii=False)),
            )

    def close(self) -> None:
        self._db.close()


# -- calling the server ------------------------------------------------------------------------


class RateLimiter:
    """Spaces request starts at least 60 / per_minute seconds apart, across threads."""

    def __init__(self, per_minute: float | None):
        self._gap = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self._gap:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._gap
        if start > now:
            time.sleep(start - now)


def _retry_after(err: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After or retry-after-ms), if it did."""
    headers = getattr(getattr(err, "response", None), "headers", None)
    if headers is None:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


@dataclass
class Completion:
    content: str | None
    prompt_tokens: int
    completion_tokens: int
    retries: int
    truncated: bool  # stopped by the token limit: the JSON is likely cut off


def make_openai_client(settings: LlmSettings, key: str, max_retries: int = 0):
    import openai

    return openai.OpenAI(
        api_key=key, base_url=settings.base_url, timeout=settings.timeout_s, max_retries=max_retries
    )


class LlmClient:
    """Chat completions with our own retry policy (the SDK's retries are off)."""

    def __init__(self, settings: LlmSettings, key: str):
        self.settings, self._key = settings, key
        self._client = make_openai_client(settings, key)
        self._limiter = RateLimiter(settings.requests_per_minute)
        self.structured = settings.structured_output != "plain"

    def _delay(self, attempt: int) -> float:
        cap = min(self.settings.backoff_max_s, self.settings.backoff_s * 2**attempt)
        return cap / 2 + random.uniform(0, cap / 2)  # jitter keeps parallel workers from retrying in step

    def complete(
        self, messages: list[dict[str, str]], levels: Sequence[str], langs: Sequence[str]
    ) -> Completion:
        import openai

        s = self.settings
        retries = 0
        while True:
            self._limiter.wait()
            body = request_body(s, messages, levels, langs, self.structured)
            try:
                response = self._client.chat.completions.create(**body)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                if "response_format" in body and s.structured_output == "auto":
                    log.info(
                        "segment llm: the server refused json_schema output; asking for plain JSON from now on"
                    )
                    self.structured = False
                    continue
                raise LlmError("llm_request_failed", self._describe(e)) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as e:
                if retries >= s.max_retries:
                    raise LlmError(
                        "llm_unreachable", f"gave up after {retries + 1} attempts: {self._describe(e)}"
                    ) from None
                wait = _retry_after(e) if isinstance(e, openai.RateLimitError) else None
                wait = self._delay(retries) if wait is None else wait
                retries += 1
                log.warning(
                    "segment llm: %s; retry %d of %d in %.1f s",
                    self._describe(e),
                    retries,
                    s.max_retries,
                    wait,
                )
                time.sleep(wait)
                continue
            except openai.APIError as e:  # other 4xx, or a reply the client cannot read
                raise LlmError("llm_request_failed", self._describe(e)) from None
            usage = response.usage
            choice = response.choices[0] if response.choices else None
            return Completion(
                choice.message.content if choice else None,
                usage.prompt_tokens if usage else 0,
                usage.completion_tokens if usage else 0,
                retries,
                choice is not None and choice.finish_reason == "length",
            )

    def _describe(self, err: Exception) -> str:
        status = getattr(err, "status_code", None)
        what = f"HTTP {status}" if status else type(err).__name__
        message = str(getattr(err, "message", "") or err)
        return redact(f"{what}: {message[:300]}", self._key)

    def preflight(self) -> None:
        """Fail before any work when the server cannot be reached or refuses the key."""
        import openai

        try:
            self._client.models.list(timeout=min(self.settings.timeout_s, 10.0))
        except openai.NotFoundError:
            return  # some servers have no model list; chat may still work
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise ConfigError(
                f"segment.llm: {self._where()} refused the key in {self.settings.api_key_env} ({self._describe(e)})"
            ) from None
        except (openai.APIConnectionError, openai.InternalServerError) as e:
            raise ConfigError(
                f"segment.llm: {self._where()} is not reachable ({self._describe(e)})"
            ) from None

    def _where(self) -> str:
        return f"the server at {self.settings.base_url}" if self.settings.base_url else "the OpenAI API"


def check_ready(settings: LlmSettings, levels: Sequence[str]) -> None:
    """Everything the llm backend needs, checked once before the pipeline starts."""
    load_prompt(settings.prompt, levels)
    LlmClient(settings, api_key(settings)).preflight()


# -- segmenting utterances ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one utterance; request and token counts are its share of its requests."""

    segmentations: dict[str, Segmentation] | None = None
    reason: str = ""
    detail: str = ""
    cache_hit: bool = False
    requests: float = 0.0
    repair_requests: float = 0.0
    retries: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0


def _charge(outcomes: dict[str, Outcome], keys: Sequence[str], completion: Completion, repair: bool) -> None:
    share = 1.0 / len(keys)
    for key in keys:
        o = outcomes[key]
        if repair:
            o.repair_requests += share
        o.requests += share
        o.retries += completion.retries * share
        o.prompt_tokens += completion.prompt_tokens * share
        o.completion_tokens += completion.completion_tokens * share


def _validate_all(
    items: Sequence[Item], content: str | None, levels: Sequence[str], truncated: bool = False
) -> dict[str, Any]:
    """Per item key: its Segmentations, or the InvalidAnswer."""
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
        try:
            results[it.key] = check_answer(it, answers.get(str(n + 1)), levels)
        except InvalidAnswer as e:
            results[it.key] = e
    return results


def group_items(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Requests of up to batch_size items that share their target languages (one schema each)."""
    by_langs: dict[tuple[str, ...], list[Item]] = {}
    for it in items:
        by_langs.setdefault(tuple(it.translations), []).append(it)
    return [
        group[k : k + batch_size] for group in by_langs.values() for k in range(0, len(group), batch_size)
    ]


class LlmSegmenter:
    """Segments utterances with the cache first, then batched, concurrent requests."""

    def __init__(self, settings: LlmSettings, levels: Sequence[str]):
        self.settings, self.levels = settings, list(levels)
        self.prompt = load_prompt(settings.prompt, levels)
        self.client = LlmClient(settings, api_key(settings))
        self.cache = AnswerCache(settings.cache_path)

    def close(self) -> None:
        self.cache.close()

    def segment(self, utts: Sequence[Utterance]) -> list[Outcome]:
        """One Outcome per utterance, in order."""
        items = [make_item(u, self.settings.model, self.prompt, self.levels) for u in utts]
        outcomes: dict[str, Outcome] = {}
        pending: dict[str, Item] = {}
        for it in items:
            if it.key in outcomes or it.key in pending:
                continue
            cached = self.cache.get(it.key)
            if cached is not None:
                outcomes[it.key] = Outcome(segmentations=cached, cache_hit=True)
            else:
                pending[it.key] = it
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            for result in pool.map(self._ask, group_items(list(pending.values()), self.settings.batch_size)):
                outcomes.update(result)
        # duplicates of one utterance share an answer but each gets its own Outcome
        return [dataclasses.replace(outcomes[it.key]) for it in items]

    def _ask(self, items: list[Item]) -> dict[str, Outcome]:
        outcomes = {it.key: Outcome() for it in items}
        langs = list(items[0].translations)
        messages = build_messages(self.prompt, self.levels, items)
        try:
            first = self.client.complete(messages, self.levels, langs)
        except LlmError as e:
            return {
                it.key: Outcome(reason=e.reason, detail=e.detail, requests=1 / len(items)) for it in items
            }
        _charge(outcomes, [it.key for it in items], first, repair=False)
        results = _validate_all(items, first.content, self.levels, first.truncated)
        invalid = [it for it in items if isinstance(results[it.key], InvalidAnswer)]
        if invalid:
            errors = "\n".join(f"- item {items.index(it) + 1}: {results[it.key]}" for it in invalid)
            ids = ", ".join(str(items.index(it) + 1) for it in invalid)
            repair = [
                *messages,
                {"role": "assistant", "content": first.content or ""},
                {"role": "user", "content": _fill(self.prompt.repair, errors=errors, ids=ids)},
            ]
            try:
                second = self.client.complete(repair, self.levels, langs)
            except LlmError as e:
                for it in invalid:
                    outcomes[it.key].reason, outcomes[it.key].detail = e.reason, f"repair request: {e.detail}"
                invalid = []
            else:
                _charge(outcomes, [it.key for it in invalid], second, repair=True)
                retried = _validate_all(items, second.content, self.levels, second.truncated)
                for it in invalid:
                    if isinstance(retried[it.key], InvalidAnswer):
                        outcomes[it.key].reason = "llm_invalid_answer"
                        outcomes[it.key].detail = f"{results[it.key]}; after one repair: {retried[it.key]}"
                    else:
                        results[it.key] = retried[it.key]
        for it in items:
            if not outcomes[it.key].reason and not isinstance(results[it.key], InvalidAnswer):
                self.cache.put(it.key, results[it.key])
                outcomes[it.key].segmentations = results[it.key]
        return outcomes


# -- Batch API ---------------------------------------------------------------------------------
#
# work dir layout: requests-NNNNN.jsonl (what is uploaded), items.jsonl (which utterances each
# request carries), state.json (file and batch ids, status, what was collected). Every step
# saves the state before moving on, so an interrupted submit or collect resumes where it stopped.


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
    return {"model": settings.model, "prompt_version": prompt.version, "levels": list(levels)}


def batch_submit(
    settings: LlmSettings, levels: Sequence[str], utts: Iterable[Utterance], work_dir: str
) -> dict[str, Any]:
    """Write request files for every uncached utterance, upload them and start the batches."""
    wd = Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    prompt = load_prompt(settings.prompt, levels)
    key = api_key(settings)
    state = _load_state(wd)
    if state is None:
        state = _write_requests(settings, levels, prompt, utts, wd)
    elif {k: state[k] for k in ("model", "prompt_version", "levels")} != _identity(settings, prompt, levels):
        raise ConfigError(f"{wd} holds a batch for another model, prompt or levels; use a fresh batch_dir")
    client = make_openai_client(settings, key, max_retries=settings.max_retries)
    for part in state["batches"]:
        if not part.get("input_file_id"):
            with open(wd / part["requests"], "rb") as f:
                part["input_file_id"] = client.files.create(file=f, purpose="batch").id
            _save_state(wd, state)
        if not part.get("batch_id"):
            batch = client.batches.create(
                input_file_id=part["input_file_id"], endpoint="/v1/chat/completions", completion_window="24h"
            )
            part["batch_id"], part["status"] = batch.id, batch.status
            _save_state(wd, state)
    return state


def _write_requests(
    settings: LlmSettings, levels: Sequence[str], prompt: Prompt, utts: Iterable[Utterance], wd: Path
) -> dict[str, Any]:
    cache = AnswerCache(settings.cache_path)
    seen: set[str] = set()
    pending = []
    for u in utts:
        it = make_item(u, settings.model, prompt, levels)
        if it.key not in seen and cache.get(it.key) is None:
            pending.append(it)
        seen.add(it.key)
    cache.close()
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


def batch_status(settings: LlmSettings, work_dir: str) -> dict[str, Any]:
    """Poll every submitted batch and record its status and output file."""
    wd = Path(work_dir)
    state = _load_state(wd)
    if state is None:
        raise ConfigError(f"{wd}: no batch submitted here (run submit first)")
    client = make_openai_client(settings, api_key(settings), max_retries=settings.max_retries)
    for part in state["batches"]:
        if part.get("batch_id") and not part.get("collected"):
            batch = client.batches.retrieve(part["batch_id"])
            part["status"] = batch.status
            part["output_file_id"] = batch.output_file_id
            part["error_file_id"] = batch.error_file_id
            if batch.request_counts is not None:
                part["request_counts"] = batch.request_counts.model_dump()
    _save_state(wd, state)
    return state


def batch_collect(settings: LlmSettings, levels: Sequence[str], work_dir: str) -> dict[str, int]:
    """Validate the answers of finished batches into the cache; invalid ones are asked online later."""
    wd = Path(work_dir)
    state = batch_status(settings, work_dir)
    client = make_openai_client(settings, api_key(settings), max_retries=settings.max_retries)
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
    cache = AnswerCache(settings.cache_path)
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
                        _collect_line(json.loads(line), carried, levels, cache, counts)
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


def _collect_line(
    row: dict[str, Any],
    carried: dict[str, list[Item]],
    levels: Sequence[str],
    cache: AnswerCache,
    counts: dict[str, int],
) -> None:
    items = carried.get(row.get("custom_id", ""))
    response = row.get("response") or {}
    body = response.get("body") or {}
    if items is None or response.get("status_code") != 200 or not body.get("choices"):
        counts["failed_requests"] += 1
        return
    usage = body.get("usage") or {}
    counts["prompt_tokens"] += usage.get("prompt_tokens", 0)
    counts["completion_tokens"] += usage.get("completion_tokens", 0)
    results = _validate_all(items, body["choices"][0]["message"].get("content"), levels)
    for it in items:
        if isinstance(results[it.key], InvalidAnswer):
            counts["invalid"] += 1
        else:
            cache.put(it.key, results[it.key])
            counts["valid"] += 1
