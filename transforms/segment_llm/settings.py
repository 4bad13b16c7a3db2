"""The `segment.llm` settings, and the local path the Batch API needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...settings import ConfigError


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
    cache_dir: str | None  # answer objects, any filesystem URL; null: <work_dir>/llm_answers (set when the config loads)
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


def local_path(path: str | None, key: str) -> Path:
    """`segment.llm.<key>` as a local path: the Batch API's request and state files are written by
    the one machine that runs `segment-batch` (its answers go to the shared cache_dir). Null is
    resolved under work_dir when the config loads."""
    if not path:
        raise ConfigError(f"segment.llm.{key}: not set; load the config with pipeline.config.load "
                          f"(which puts it under work_dir) or give a path")
    if "://" in path:
        raise ConfigError(f"segment.llm.{key}: {path} is not a local path; the Batch API's files need "
                          f"one on the machine that runs segment-batch")
    return Path(path)
