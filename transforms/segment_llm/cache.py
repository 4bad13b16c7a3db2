"""Valid answers in sqlite, keyed by (model, prompt version, levels, input): a re-run of the
same configuration makes no calls."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..records import Segmentation
from .settings import local_path


def _to_json(segs: dict[str, Segmentation]) -> dict[str, Any]:
    return {
        level: {"source_chunks": s.source_chunks, "target_chunks": s.target_chunks}
        for level, s in segs.items()
    }


def _from_json(data: dict[str, Any]) -> dict[str, Segmentation]:
    return {level: Segmentation(level, s["source_chunks"], s["target_chunks"]) for level, s in data.items()}


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
