"""The API key: read from the environment where it is used, and kept out of everything else.

A server can echo the key (an error quoting the Authorization header, an answer or batch field
holding it), whole, cut short, split or escaped; so every string that came from a server is
passed through `redact` before it becomes a reject detail, a log record or a batch state field.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from ...settings import ConfigError
from .settings import LlmSettings


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
    __package__,  # our own logger (client.py's)
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
