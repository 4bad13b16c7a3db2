"""The segmenter: the cache first, then batched, concurrent requests; an invalid answer gets
one repair re-ask with the reasons, then becomes a reject."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..records import Segmentation, StageError, Utterance
from .answers import InvalidAnswer, validate_all
from .cache import AnswerCache
from .client import Completion, LlmClient
from .keys import api_key, redact
from .prompt import Item, build_messages, fill, load_prompt, make_item
from .settings import LlmSettings, local_path


def check_ready(settings: LlmSettings, levels: Sequence[str]) -> None:
    """Everything the llm backend needs, checked once before the pipeline starts."""
    local_path(settings.cache_path, "cache_path")
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
                self.cache.put(it.key, results[it.key])
                outcomes[it.key].segmentations = results[it.key]
        return outcomes

