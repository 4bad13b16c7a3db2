"""Content-addressed objects under a folder of any Beam filesystem (local path, gs://, s3://, ...).

A cluster's workers share nothing but storage, so what one worker computed at a cost (an LLM
answer, a corpus alignment) is kept there, named by a hash of everything that produced it, and
read back by any worker of this run or a later one. An object is written once and appears whole:
object stores make a created object visible only when it is closed; a local folder gets a
temporary name first, then os.replace. Two writers of one key wrote the same inputs' result,
so whichever lands last is as good as the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

from . import files


def digest(value: Any) -> str:
    """sha256 of `value` as canonical JSON (sorted keys), hex."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest_bytes(data: bytes) -> str:
    """sha256 of `data`, hex: the key of an object that is its own content."""
    return hashlib.sha256(data).hexdigest()


class Objects:
    """Objects named by a hex key under `root`, fanned out by the key's first two characters
    (a local folder stays small; object stores spread the load over prefixes)."""

    def __init__(self, root: str, suffix: str = ".json"):
        self.root, self.suffix = root, suffix

    def path(self, key: str) -> str:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"object key {key!r} is not a hex digest")
        return files.join(self.root, key[:2], key + self.suffix)

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when no worker wrote it yet."""
        path = self.path(key)
        if files.is_local(path):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None
        return files.read_bytes(path) if files.exists(path) else None

    def put(self, key: str, data: bytes) -> str:
        """Write the object whole (see the module's note); returns its path."""
        path = self.path(key)
        if not files.is_local(path):
            with files.open_write(path) as f:  # visible only once closed
                f.write(data)
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"  # unique per writer: pids repeat across machines
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    def get_json(self, key: str) -> Any | None:
        data = self.get(key)
        return None if data is None else json.loads(data)

    def put_json(self, key: str, value: Any) -> str:
        return self.put(key, json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8"))
