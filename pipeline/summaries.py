"""The stats.json sections and card sections of stages, from the stats each stage summed.

A stage emits `Stat`s as it works (transforms/); the run sums them per stage, and the steps
(pipeline/steps.py) name the function here that reads a stage's sums into its section.
"""

from __future__ import annotations

from typing import Any

from ..transforms.align import CONFIDENCE_BUCKETS, ERROR_BUCKET_MS, ERROR_BUCKETS
from ..transforms.monotonicity import OFFLINE


def _ratio(num: float, den: float, digits: int) -> float | None:
    return round(num / den, digits) if den else None


def _number(v: float) -> float | int:
    v = round(float(v), 4)  # sums of per-utterance shares carry float noise
    return int(v) if v.is_integer() else v


def segment_summary(sums: dict[str, float]) -> dict[str, Any]:
    """The `segment` section of stats.json from the stage's summed stats.

    Per-utterance figures divide by the utterances that came in (a cached re-run shows 0
    requests per utterance); per-audio-hour figures by the audio of those utterances.
    Levels are listed lowest latency first (most chunks per utterance first).
    """
    n_in, n_out = sums.get("in", 0), sums.get("out", 0)
    hours = sums.get("audio_s", 0) / 3600
    chunks = {name.split("/", 1)[1]: v for name, v in sums.items() if name.startswith("chunks/")}
    levels = sorted(chunks, key=lambda level: -chunks[level])
    result: dict[str, Any] = {
        "utterances": {"in": _number(n_in), "out": _number(n_out), "rejected": _number(n_in - n_out)},
        "audio_hours": round(hours, 4),
        "chunks_per_utterance": {level: _ratio(chunks[level], n_out, 4) for level in levels},
    }
    if any(name.startswith(("llm/", "tokens/")) for name in sums):
        requests = sums.get("llm/requests", 0)
        result["llm"] = {
            "requests": _number(requests),
            "requests_per_utterance": _ratio(requests, n_in, 4),
            "repair_requests": _number(sums.get("llm/repair_requests", 0)),
            "retries": _number(sums.get("llm/retries", 0)),
            "cache_hits": _number(sums.get("llm/cache_hits", 0)),
        }
        tokens: dict[str, Any] = {}
        for kind in ("prompt", "completion"):
            total = sums.get(f"tokens/{kind}", 0)
            tokens[kind] = _number(total)
            tokens[f"{kind}_per_utterance"] = _ratio(total, n_in, 4)
            tokens[f"{kind}_per_audio_hour"] = _ratio(total, hours, 4)
        result["tokens"] = tokens
    counts: dict[str, dict[str, dict[str, float]]] = {}
    for name, v in sums.items():
        parts = name.split("/")
        if parts[0] == "crossing" and len(parts) == 4:
            _, view, lang, kind = parts
            counts.setdefault(lang, {}).setdefault(view, {})[kind] = v
    if counts:
        rates = {
            lang: {
                view: _ratio(by_view[view].get("discordant", 0), by_view[view].get("pairs", 0), 4)
                for view in [OFFLINE, *levels]
                if view in by_view
            }
            for lang, by_view in sorted(counts.items())
        }
        result["crossing_rate"] = rates
        result["crossing_reduction"] = {
            lang: {
                level: round(1 - r[level] / r[OFFLINE], 4)
                for level in levels
                if r.get(level) is not None and r.get(OFFLINE)
            }
            for lang, r in rates.items()
        }
    return result


def segment_card_section(summary: dict[str, Any]) -> str:
    """Markdown for the dataset card from `segment_summary`'s result: cost and, as in EASiST's data
    table, the crossing rate of the offline pairs vs each latency level's chunked pairs."""
    lines = ["### Segmentation", ""]
    u = summary["utterances"]
    lines.append(
        f"{u['out']} of {u['in']} utterances segmented ({u['rejected']} rejected, see rejected.jsonl)."
    )
    if "llm" in summary:
        llm, tok = summary["llm"], summary["tokens"]
        lines.append(
            f"LLM: {llm['requests']} requests ({llm['requests_per_utterance']} per utterance, "
            f"{llm['cache_hits']} answers from cache); tokens per utterance {tok['prompt_per_utterance']} prompt / "
            f"{tok['completion_per_utterance']} completion, per audio hour {tok['prompt_per_audio_hour']} / "
            f"{tok['completion_per_audio_hour']}."
        )
    rates = summary.get("crossing_rate", {})
    if rates:
        levels = list(summary["chunks_per_utterance"])
        lines += [
            "",
            "Crossing rate (share of aligned word pairs translated out of reading order; lower is more monotone):",
            "",
            "| language | offline | " + " | ".join(levels) + " |",
            "|---|---|" + "---|" * len(levels),
        ]
        for lang, r in rates.items():
            lines.append(
                f"| {lang} | {r.get('offline')} | " + " | ".join(str(r.get(level)) for level in levels) + " |"
            )
        chunks = ", ".join(f"{level} {n}" for level, n in summary["chunks_per_utterance"].items())
        lines += ["", f"Chunks per utterance: {chunks}."]
    return "\n".join(lines) + "\n"


def _percentile(buckets: dict[int, float], total: float, q: float) -> float:
    """The q-quantile of the errors from their 5 ms histogram, linear inside a bucket."""
    rank, seen = q * total, 0.0
    for k in sorted(buckets):
        if seen + buckets[k] >= rank:
            return ERROR_BUCKET_MS * (k + (rank - seen) / buckets[k])
        seen += buckets[k]
    return ERROR_BUCKET_MS * ERROR_BUCKETS


def align_summary(sums: dict[str, float]) -> dict[str, Any]:
    """The `align` section of stats.json from the stage's summed stats.

    Training and alignment speed are separate: training CPU seconds per minute of training
    audio, and audio seconds aligned per CPU second of the aligner. `error_ms` (with a truth
    file) is the word-boundary error, starts and ends of every word, against the true times.
    """
    skipped = {k.split("/", 2)[2]: int(v) for k, v in sorted(sums.items()) if k.startswith("train/skipped/")}
    train_audio, train_cpu = sums.get("train/audio_s", 0.0), sums.get("train/cpu_s", 0.0)
    audio, cpu = sums.get("aligner/audio_s", 0.0), sums.get("aligner/cpu_s", 0.0)
    result: dict[str, Any] = {
        "utterances": {"in": int(sums.get("in", 0)), "out": int(sums.get("out", 0)),
                       "rejected": int(sums.get("in", 0) - sums.get("out", 0))},
        "audio_hours": round(sums.get("audio_s", 0.0) / 3600, 4),
        "words": int(sums.get("words", 0)),
        "training": {"clips": int(sums.get("train/clips", 0)), "audio_min": round(train_audio / 60, 3),
                     "cpu_s": round(train_cpu, 2), "cpu_s_per_audio_min": _ratio(train_cpu, train_audio / 60, 3),
                     # of cpu_s, what ran as one element per language (the rest is spread over the workers)
                     "serial_cpu_s": round(sums.get("train/serial_cpu_s", 0.0), 2),
                     "cached_models": int(sums.get("train/cached", 0)),  # read from align.cache_dir, not trained
                     "skipped": skipped},
        "alignment": {"audio_s": round(audio, 2), "cpu_s": round(cpu, 2),
                      "audio_s_per_cpu_s": _ratio(audio, cpu, 1), "retried": int(sums.get("aligner/retried", 0))},
    }
    n = sums.get("error/boundaries", 0)
    if n or sums.get("error/unmatched_clips"):
        buckets = {int(k.rsplit("/", 1)[1]): v for k, v in sums.items() if k.startswith("error/bucket/")}
        result["error_ms"] = {
            "clips": int(sums.get("error/clips", 0)), "boundaries": int(n),
            "unmatched_clips": int(sums.get("error/unmatched_clips", 0)),
            "mean": _ratio(sums.get("error/sum_ms", 0.0), n, 2),
            "p50": round(_percentile(buckets, n, 0.5), 2) if n else None,
            "p90": round(_percentile(buckets, n, 0.9), 2) if n else None,
        }
    if sums.get("confidence/clips"):
        result["confidence"] = _confidence(sums)
    return result


def _confidence(sums: dict[str, float]) -> dict[str, Any]:
    """The aligned clips' alignment confidence: mean, quantiles and the share below 0.05, from
    their histogram (CONFIDENCE_BUCKETS equal buckets over [0, 1], linear inside a bucket)."""
    n = sums["confidence/clips"]
    counts = [sums.get(f"confidence/bucket/{k:03d}", 0) for k in range(CONFIDENCE_BUCKETS)]

    def quantile(q: float) -> float:
        rank, seen = q * n, 0.0
        for k, c in enumerate(counts):
            if c and seen + c >= rank:
                return round((k + (rank - seen) / c) / CONFIDENCE_BUCKETS, 3)
            seen += c
        return 1.0

    return {"clips": int(n), "mean": _ratio(sums.get("confidence/sum", 0.0), n, 3),
            **{f"p{q}": quantile(q / 100) for q in (10, 50, 90)},
            "below_0.05": round(sum(counts[: CONFIDENCE_BUCKETS // 20]) / n, 4),
            "clips_per_tenth": [int(sum(counts[k : k + CONFIDENCE_BUCKETS // 10]))
                                for k in range(0, CONFIDENCE_BUCKETS, CONFIDENCE_BUCKETS // 10)]}


def align_card_section(summary: dict[str, Any]) -> str:
    """Markdown for the dataset card from `align_summary`'s result: the distribution of the
    `alignment_confidence` column (nothing when the aligner gives none)."""
    c = summary.get("confidence")
    if not c:
        return ""
    return "\n".join([
        "### Alignment confidence", "",
        "`alignment_confidence` (and `words[].confidence` per word) ranks how well each clip fits its transcript "
        "against the reference clips of its language (held out of the aligner's training where the sample "
        "allows): 0.5 is typical, and a clip of 0.05 fits worse than 95 in 100 of them. Clips fitting far "
        "worse were rejected (`transcript_mismatch`). Low values point at a partly wrong transcript or poor "
        "audio; they say little about how precise a clip's word boundaries are.", "",
        f"Over {c['clips']} aligned clips: mean {c['mean']}, p10 {c['p10']}, median {c['p50']}, p90 {c['p90']}; "
        f"{c['below_0.05']:.1%} below 0.05.", "",
        "| confidence | " + " | ".join(f"{k / 10:.1f}-{(k + 1) / 10:.1f}" for k in range(10)) + " |",
        "|---|" + "---|" * 10,
        "| clips | " + " | ".join(str(n) for n in c["clips_per_tenth"]) + " |",
    ]) + "\n"


def simulate_summary(sot, sums: dict[str, float]) -> dict[str, Any]:
    """The `simulate` section of stats.json: the SOT order (`sot`: the stage's SotSettings), and how
    word order and utterance order differ over the conversations made: how many would be reordered,
    and the wait per word (ms from a word's end until every word before it in the target has ended)."""
    conversations, words = sums.get("conversations", 0), sums.get("words", 0)
    waits = {order: {"mean_ms": _ratio(sums.get(f"wait_ms/{order}", 0), words, 2),
                     "waiting_words": _number(sums.get(f"waiting_words/{order}", 0))}
             for order in ("word", "utterance")}
    return {
        "sot": {"mode": sot.mode, **({"latency_level": sot.latency_level} if sot.mode == "word" else {}),
                "unaligned_utterances": "left out"},
        "conversations": _number(conversations),
        "words": _number(words),
        "reordered": {"conversations": _number(sums.get("reordered", 0)),
                      "fraction": _ratio(sums.get("reordered", 0), conversations, 4)},
        "wait": waits,
    }


def simulate_card_section(summary: dict[str, Any]) -> str:
    """Markdown for the dataset card from `simulate_summary`'s result."""
    sot, wait = summary["sot"], summary["wait"]["utterance"]
    if sot["mode"] == "word":
        order = ("in word order: the words of both speakers by when each ends in the conversation, a speaker "
                 "token at each change of speaker, and the translations' chunks of level "
                 f"`{sot['latency_level']}` at the end of their source chunk")
    else:
        order = "in utterance order: whole utterances first in first out by start time"
    r = summary["reordered"]
    return "\n".join([
        "### Serialized output (conversations)", "",
        f"`sot_text` and `sot_translation` are {order} (`simulate.sot.mode`); `words` gives every word's speaker "
        "and times, `translation_chunks` every translation unit's speaker and the times of its source. Conversations are made of aligned utterances only: an utterance that the segment or align "
        "stage rejected is left out (see their rejects), not serialized in utterance order.",
        f"In {r['conversations']} of {summary['conversations']} conversations ({r['fraction'] or 0:.0%}) word order "
        f"differs from utterance order: there, utterance-level targets would make a streaming model wait "
        f"{wait['mean_ms']} ms per word on average ({wait['waiting_words']} of {summary['words']} words wait).",
    ]) + "\n"
