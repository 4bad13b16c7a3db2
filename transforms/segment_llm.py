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

The API key is read from the environment where it is used and never written anywhere. A
server can echo it (an error quoting the Authorization header, an answer or batch field
holding it), whole, cut short, split or escaped; so every string that came from a server is
passed through `redact` before it becomes a reject detail, a log record or a batch state
field, and an answer holding the key is invalid, so it is never cached or published.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import re
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


REDACTED = "[redacted]"
# A run of this many of the key's characters, in order, counts as (a piece of) the key: what
# survives a cut at a length limit or a split at a line end. Shorter keys are matched whole;
# they are placeholders for servers that ignore keys (vLLM, llama.cpp, Ollama), not secrets.
KEY_FRAGMENT = 8
# Escapes under which a key can reach us intact: \uXXXX and \xXX (JSON, Python repr, also
# escaped twice), \/ (JSON) and %XX (URLs).
_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})|\\+x([0-9a-fA-F]{2})|\\+(/)|%([0-9a-fA-F]{2})")


def _unescaped(text: str) -> tuple[str, list[int]]:
    """`text` with its escapes decoded, and where each decoded character starts in `text`
    (one more entry: the end)."""
    chars: list[str] = []
    starts: list[int] = []
    last = 0
    for m in _ESCAPE.finditer(text):
        chars.extend(text[last : m.start()])
        starts.extend(range(last, m.start()))
        code = m.group(1) or m.group(2) or m.group(4)
        chars.append(chr(int(code, 16)) if code else m.group(3))
        starts.append(m.start())
        last = m.end()
    chars.extend(text[last:])
    starts.extend(range(last, len(text) + 1))
    return "".join(chars), starts


def _key_spans(text: str, key: str, known: str = "") -> list[tuple[int, int]]:
    """Where `text` holds the key or a piece of it (KEY_FRAGMENT characters in a row, in plain
    or escaped form), as merged (start, end) spans of `text`. Pieces that also occur in `known`
    (what we sent) do not count: a word of the source text is not a leak."""
    if not key or not text:
        return []
    n = min(KEY_FRAGMENT, len(key))
    grams = {key[i : i + n] for i in range(len(key) - n + 1)}
    grams -= {g for g in grams if g in known}
    if not grams:
        return []
    if "\\" in text or "%" in text:
        plain, starts = _unescaped(text)
    else:
        plain, starts = text, None
    spans: list[tuple[int, int]] = []
    for i in range(len(plain) - n + 1):
        if plain[i : i + n] in grams:
            start, end = (starts[i], starts[i + n]) if starts else (i, i + n)
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((start, end))
    return spans


def redact(text: str, key: str) -> str:
    """`text` with the key, and every piece of it (see KEY_FRAGMENT), replaced by [redacted]."""
    if not key or not text:
        return text
    text = text.replace(key, REDACTED)
    out, last = [], 0
    for start, end in _key_spans(text, key):
        out += [text[last:start], REDACTED]
        last = end
    return "".join(out) + text[last:] if out else text


def holds_key(text: str, key: str, known: str = "") -> bool:
    """Whether `text` holds the key or a piece of it; keys shorter than KEY_FRAGMENT are
    placeholders, not secrets, and are not looked for."""
    return len(key) >= KEY_FRAGMENT and bool(_key_spans(text, key, known))


def scrub(value: Any, key: str) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with the key redacted from every string."""
    if isinstance(value, str):
        return redact(value, key)
    if isinstance(value, dict):
        return {scrub(k, key): scrub(v, key) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, key) for v in value]
    return value


class _RedactKey(logging.Filter):
    """Redacts the key from records of the HTTP client's loggers (at DEBUG they print response
    headers and bodies, which a server can make echo the key)."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.key)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.key)
        return True


# The HTTP client stack's loggers (openai 3 runs on httpx2/httpcore2). httpcore's are created
# when its modules load, at the first request, so they are named here to be filtered in advance.
_CLIENT_PACKAGES = ("openai", "httpx", "httpx2", "httpcore", "httpcore2")
_CLIENT_LOGGERS = (
    __name__,
    *_CLIENT_PACKAGES,
    *(f"{p}.{m}" for p in ("httpcore", "httpcore2") for m in ("connection", "http11", "http2", "proxy", "socks")),
)


def guard_logs(key: str) -> None:
    """Put a redacting filter on every logger of the HTTP client stack (a filter on a logger
    sees only that logger's own records, so each one gets its own), once per key."""
    import openai  # noqa: F401  (creates the client's loggers)

    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in _CLIENT_PACKAGES]
    for name in {*names, *_CLIENT_LOGGERS}:
        target = logging.getLogger(name)
        if not any(isinstance(f, _RedactKey) and f.key == key for f in target.filters):
            target.addFilter(_RedactKey(key))


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


def local_path(path: str | None, key: str) -> Path:
    """`segment.llm.<key>` as a local path: sqlite and the batch files need a local file system
    (on a cluster, a shared mount). Null is resolved under work_dir when the config loads."""
    if not path:
        raise ConfigError(f"segment.llm.{key}: not set; load the config with pipeline.config.load "
                          f"(which puts it under work_dir) or give a path")
    if "://" in path:
        raise ConfigError(f"segment.llm.{key}: {path} is not a local path; the LLM cache and batch "
                          f"files need one (on a cluster, a folder every worker mounts)")
    return Path(path)


class AnswerCache:
    """Valid answers on disk; safe to share between threads and between processes."""

    def __init__(self, path: str | None):
        path = str(local_path(path, "cache_path"))
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


def _read_completion(response: Any, retries: int) -> Completion:
    """The parts of a chat completion we use. The client builds its objects without checking
    types, so a garbage reply gets here as it is: whatever is not what the API promises reads
    as no content (an invalid answer) and no tokens, never as an exception."""
    choices = getattr(response, "choices", None)
    choice = choices[0] if isinstance(choices, list) and choices else None
    content = getattr(getattr(choice, "message", None), "content", None)
    usage = getattr(response, "usage", None)

    def count(name: str) -> int:
        value = getattr(usage, name, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    return Completion(
        content if isinstance(content, str) else None,
        count("prompt_tokens"),
        count("completion_tokens"),
        retries,
        getattr(choice, "finish_reason", None) == "length",
    )


def _out_of_quota(err: Exception) -> bool:
    """OpenAI answers 429 with code insufficient_quota when the account has no credit left."""
    return getattr(err, "status_code", None) == 429 and getattr(err, "code", None) == "insufficient_quota"


def make_openai_client(settings: LlmSettings, key: str, max_retries: int = 0):
    import openai

    guard_logs(key)
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
                if _out_of_quota(e):  # a 429 that waiting does not cure
                    raise LlmError("llm_request_failed", self._describe(e)) from None
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
            except ValueError as e:  # a 200 whose body is not JSON (the client does not wrap that)
                raise LlmError("llm_request_failed", f"the reply is not JSON ({self._describe(e)})") from None
            return _read_completion(response, retries)

    def _describe(self, err: Exception) -> str:
        status = getattr(err, "status_code", None)
        what = f"HTTP {status}" if status else type(err).__name__
        message = redact(str(getattr(err, "message", "") or err), self._key)
        return redact(f"{what}: {message[:300]}", self._key)  # a cut can leave a piece: again

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
        except openai.RateLimitError as e:
            if _out_of_quota(e):
                raise ConfigError(
                    f"segment.llm: {self._where()} says the account has no quota left ({self._describe(e)})"
                ) from None
            log.warning("segment llm: the model list is rate limited (%s); going on", self._describe(e))
        except (openai.APIError, ValueError) as e:  # another refusal, or a reply that is not JSON:
            # the chat calls will tell
            log.warning("segment llm: could not list the models (%s); going on", self._describe(e))

    def _where(self) -> str:
        return f"the server at {self.settings.base_url}" if self.settings.base_url else "the OpenAI API"


def check_ready(settings: LlmSettings, levels: Sequence[str]) -> None:
    """Everything the llm backend needs, checked once before the pipeline starts."""
    local_path(settings.cache_path, "cache_path")
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
        self.key = api_key(settings)
        self.client = LlmClient(settings, self.key)
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
        outcomes = self._ask_once(items)
        for o in outcomes.values():  # details quote the server's errors and the model's words
            o.detail = redact(o.detail, self.key)
        return outcomes

    def _ask_once(self, items: list[Item]) -> dict[str, Outcome]:
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
        results = _validate_all(items, first.content, self.levels, first.truncated, self.key)
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
                retried = _validate_all(items, second.content, self.levels, second.truncated, self.key)
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
    wd = local_path(work_dir, "batch_dir")
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


def batch_collect(settings: LlmSettings, levels: Sequence[str], work_dir: str) -> dict[str, int]:
    """Validate the answers of finished batches into the cache; invalid ones are asked online later."""
    wd = local_path(work_dir, "batch_dir")
    state = batch_status(settings, work_dir)
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
    results = _validate_all(items, content, levels, key=key)
    for it in items:
        if isinstance(results[it.key], InvalidAnswer):
            counts["invalid"] += 1
        else:
            cache.put(it.key, results[it.key])
            counts["valid"] += 1
