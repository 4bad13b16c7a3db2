"""stats.json from the summed stage stats: per stage in / out / rejected by reason, and the checks.

Every stage must balance: what it took in is what it passed on plus what it rejected.
The read stage's input is what the readers met (entries), so it balances by definition;
the join counts parts, the later stages count utterances.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from ..transforms import files

STAGE_ORDER = ["read", "join", "audio"]


def load_sums(path: str) -> dict[str, dict[str, float]]:
    sums: dict[str, dict[str, float]] = defaultdict(dict)
    for line in files.read_bytes(path).decode().splitlines():
        stage, name, value = json.loads(line)
        sums[stage][name] = value
    return sums


def _rejected(s: dict[str, float]) -> dict[str, int]:
    return {k.split("/", 1)[1]: int(v) for k, v in sorted(s.items()) if k.startswith("rejected/")}


def stage_table(sums: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per stage: in, out, rejected (by reason), balanced."""
    table: dict[str, dict[str, Any]] = {}
    read = sums.get("read", {})
    rej = _rejected(read)
    table["read"] = {"files": int(read.get("in", 0)), "in": int(read.get("out", 0)) + sum(rej.values()),
                     "out": int(read.get("out", 0)), "rejected": rej}
    join = sums.get("join", {})
    rej = _rejected(join)
    table["join"] = {"in": table["read"]["out"], "out": int(join.get("parts_merged", 0)), "rejected": rej,
                     "utterances": int(join.get("out", 0))}
    previous = table["join"]["utterances"]
    stages = [s for s in sums if s not in ("read", "join")]
    stages.sort(key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s))
    for stage in stages:
        s = sums[stage]
        entry = {"in": int(s.get("in", 0)), "out": int(s.get("out", 0)), "rejected": _rejected(s)}
        if not stage.startswith("publish/"):
            entry["expected_in"] = previous
            previous = entry["out"]
        table[stage] = entry
    for entry in table.values():
        entry["rejected_total"] = sum(entry["rejected"].values())
        entry["balanced"] = entry["in"] == entry["out"] + entry["rejected_total"] and entry.get(
            "expected_in", entry["in"]) == entry["in"]
    return table


def _split_order(split: str) -> tuple[int, str]:
    order = ["train", "validation", "test"]
    return (order.index(split) if split in order else len(order), split)


def _per_split(s: dict[str, float], prefix: str, scale: float = 1.0) -> dict[str, float]:
    found = {k.split("/", 1)[1]: v * scale for k, v in s.items() if k.startswith(prefix + "/")}
    return {k: found[k] for k in sorted(found, key=_split_order)}


def build_stats(sums, *, settings_summary: dict, missing: dict[str, list[str]]) -> dict[str, Any]:
    stages = stage_table(sums)
    join = sums.get("join", {})
    coverage: dict[str, dict[str, Any]] = defaultdict(dict)
    for name, value in join.items():
        if name.startswith("coverage/"):
            _, corpus, what = name.split("/")
            coverage[corpus][what] = int(value)
    for corpus, langs in missing.items():
        coverage[corpus]["not_in_corpus"] = langs
    published: dict[str, dict[str, Any]] = {}
    for stage, s in sums.items():
        if stage.startswith("publish/"):
            config = stage.split("/", 1)[1]
            published[config] = {
                "rows": {k: int(v) for k, v in _per_split(s, "rows").items()},
                "audio_hours": {k: round(v, 4) for k, v in _per_split(s, "audio_s", 1 / 3600).items()},
            }
    audio = sums.get("audio", {})
    return {
        "run": settings_summary,
        "stages": stages,
        "published": published,
        "coverage": dict(coverage),
        "audio_fixes": {k: int(v) for k, v in audio.items() if k in ("resampled", "downmixed")},
        "balanced": all(e["balanced"] for e in stages.values()),
    }


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """The table printed at the end of a run."""
    lines = [f"{'stage':<18}{'in':>8}{'out':>8}{'rejected':>10}  reasons"]
    for stage, e in stats["stages"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in e["rejected"].items())
        lines.append(f"{stage:<18}{e['in']:>8}{e['out']:>8}{e['rejected_total']:>10}  {reasons}")
    for config, p in stats["published"].items():
        rows = ", ".join(f"{k} {v}" for k, v in p["rows"].items())
        hours = sum(p["audio_hours"].values())
        lines.append(f"published {config}: {rows} ({hours:.3f} h of audio)")
    for corpus, c in stats["coverage"].items():
        langs = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("clips", "not_in_corpus"))
        note = f"; not in corpus: {', '.join(c['not_in_corpus'])}" if c.get("not_in_corpus") else ""
        lines.append(f"coverage {corpus}: {c.get('clips', 0)} clips ({langs}){note}")
    return lines
