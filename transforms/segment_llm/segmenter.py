"""The segmenter: the cache first, then batched, concurrent requests; an invalid answer gets
one repair re-ask with the reasons, then becomes a reject."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..records import Segmentation, StageError, Utterance
from .answers import InvalidAnswer, validate_all
from .cache import AnswerCache, legacy_sqlite, log
from .client import Completion, LlmClient
from .keys import api_key, redact
from .prompt import Item, answer_identity, build_messages, fill, load_prompt, make_item
from .settings import LlmSettings

LOOKUPS = 16  # cache reads in flight: an object store answers each in tens of milliseconds


def check_ready(settings: LlmSettings, levels: Sequence[str]) -> None:
    """Everything the llm backend needs, checked once before the pipeline starts."""
    AnswerCache(settings.cache_dir)
    old = legacy_sqlite(settings.cache_dir)
    if old:
        log.warning("segment llm: %s (the answer cache of an older simulforge) is not read: its keys lack the "
                    "temperature and prompt text that today's keys hash, so its answers are asked again "
                    "into %s; delete it when you like", old, settings.cache_dir)
    load_prompt(settings.prompt, levels)
    LlmClient(settings, api_key(settings)).preflight()


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
        self.identity = answer_identity(settings, self.prompt, self.levels)
        self.key = api_key(settings)
        self.client = LlmClient(settings, self.key)
        self.cache = AnswerCache(settings.cache_dir)

    def close(self) -> None:
        self.cache.close()

    def segment(self, utts: Sequence[Utterance]) -> list[Outcome]:
        """One Outcome per utterance, in order. Copies of one utterance's texts are asked once; the
        first copy carries the request and token counts, so their sums are what the server saw."""
        items = [make_item(u, self.identity) for u in utts]
        distinct = list({it.key: it for it in items}.values())
        with ThreadPoolExecutor(max_workers=LOOKUPS) as pool:
            cached = dict(zip([it.key for it in distinct], pool.map(self.cache.get, distinct), strict=True))
        outcomes = {key: Outcome(segmentations=segs, cache_hit=True) for key, segs in cached.items() if segs is not None}
        pending = [it for it in distinct if it.key not in outcomes]
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            for result in pool.map(self._ask, group_items(pending, self.settings.batch_size)):
                outcomes.update(result)
        out, seen = [], set()
        for it in items:
            first = outcomes[it.key]
            out.append(dataclasses.replace(first) if it.key not in seen else dataclasses.replace(
                first, requests=0.0, repair_requests=0.0, retries=0.0, prompt_tokens=0.0, completion_tokens=0.0))
            seen.add(it.key)
        return out

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
        except StageError as e:
            return {
                it.key: Outcome(reason=e.reason, detail=e.detail, requests=1 / len(items)) for it in items
            }
        _charge(outcomes, [it.key for it in items], first, repair=False)
        results = validate_all(items, first.content, self.levels, first.truncated, self.key)
        invalid = [it for it in items if isinstance(results[it.key], InvalidAnswer)]
        if invalid:
            errors = "\n".join(f"- item {items.index(it) + 1}: {results[it.key]}" for it in invalid)
            ids = ", ".join(str(items.index(it) + 1) for it in invalid)
            repair = [
                *messages,
                {"role": "assistant", "content": first.content or ""},
                {"role": "user", "content": fill(self.prompt.repair, errors=errors, ids=ids)},
            ]
            try:
                second = self.client.complete(repair, self.levels, langs)
            except StageError as e:
                for it in invalid:
                    outcomes[it.key].reason, outcomes[it.key].detail = e.reason, f"repair request: {e.detail}"
                invalid = []
            else:
                _charge(outcomes, [it.key for it in invalid], second, repair=True)
                retried = validate_all(items, second.content, self.levels, second.truncated, self.key)
                for it in invalid:
                    if isinstance(retried[it.key], InvalidAnswer):
                        outcomes[it.key].reason = "llm_invalid_answer"
                        outcomes[it.key].detail = f"{results[it.key]}; after one repair: {retried[it.key]}"
                    else:
                        results[it.key] = retried[it.key]
        for it in items:
            if not outcomes[it.key].reason and not isinstance(results[it.key], InvalidAnswer):
                self.cache.put(it, results[it.key])
                outcomes[it.key].segmentations = results[it.key]
        return outcomes

