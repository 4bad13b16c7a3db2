"""Calling the server: chat completions through the official `openai` client, behind a
client-side rate limit, with our own retries (429 honouring Retry-After, 5xx, timeouts:
exponential backoff with jitter)."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...settings import ConfigError
from ..records import StageError
from .keys import guard_logs, redact
from .prompt import request_body
from .settings import LlmSettings

log = logging.getLogger(__package__)  # the package's logger: guard_logs filters it


def openai_errors() -> type[Exception]:
    """The base class of the client's errors (the package is imported only where it is used)."""
    import openai

    return openai.OpenAIError


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
                raise StageError("llm_request_failed", self._describe(e)) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as e:
                if _out_of_quota(e):  # a 429 that waiting does not cure
                    raise StageError("llm_request_failed", self._describe(e)) from None
                if retries >= s.max_retries:
                    raise StageError(
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
                raise StageError("llm_request_failed", self._describe(e)) from None
            except ValueError as e:  # a 200 whose body is not JSON (the client does not wrap that)
                raise StageError("llm_request_failed", f"the reply is not JSON ({self._describe(e)})") from None
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
