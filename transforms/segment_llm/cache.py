"""Valid answers as content-addressed objects under `segment.llm.cache_dir` (default
<work_dir>/llm_answers, any Beam filesystem): one JSON object per utterance, named by its answer
key (the texts, model, prompt, levels and temperature: prompt.answer_identity), written once and
read by every worker of this run and of any later run with the same work_dir, so a re-run makes
no calls wherever it runs. Nothing is kept on a worker's own disk."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..objects import Objects
from ..records import Segmentation
from .prompt import Item

log = logging.getLogger(__package__)
LEGACY_SQLITE = "segment_llm.sqlite"  # the cache of simulforge before objects: no longer read


def _to_json(segs: dict[str, Segmentation]) -> dict[str, Any]:
    return {
        level: {"source_chunks": s.source_chunks, "target_chunks": s.target_chunks}
        for level, s in segs.items()
    }


def _from_json(data: dict[str, Any]) -> dict[str, Segmentation]:
    return {level: Segmentation(level, s["source_chunks"], s["target_chunks"]) for level, s in data.items()}


class AnswerCache:
    """Valid answers, one object each; holds no handle, so any number of threads, processes and
    machines may share one."""

    def __init__(self, root: str | None):
        if not root:
            raise ValueError("segment.llm.cache_dir is not set; pipeline.config.load puts it under work_dir")
        self.objects = Objects(root)

    def get(self, item: Item) -> dict[str, Segmentation] | None:
        data = self.objects.get(item.key)
        if data is None:
            return None
        try:
            kept = json.loads(data)
            if kept["source"] == item.source and kept["translations"] == item.translations:
                return _from_json(kept["levels"])
            problem = "it holds another utterance's texts"
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            problem = f"it cannot be read ({type(e).__name__}: {e})"
        # asked again, and the new answer replaces it
        log.warning("segment llm: ignoring the cached answer %s: %s", self.objects.path(item.key), problem)
        return None

    def put(self, item: Item, segs: dict[str, Segmentation]) -> None:
        self.objects.put_json(
            item.key, {"source": item.source, "translations": item.translations, "levels": _to_json(segs)}
        )

    def close(self) -> None:
        """Nothing to release (kept so callers need not know the storage)."""


def legacy_sqlite(cache_dir: str) -> str | None:
    """The sqlite answer cache an older simulforge left beside the default cache_dir, if any. It is
    not read: its keys hash fewer settings (no temperature, no prompt text), so its answers
    cannot be matched to today's keys safely."""
    from .. import files

    if not files.is_local(cache_dir):
        return None
    path = os.path.join(os.path.dirname(os.path.normpath(cache_dir)), LEGACY_SQLITE)
    return path if os.path.isfile(path) else None
