"""stats.json from the summed stage stats: per stage in / out / rejected by reason, and the checks.

Every stage must balance: what it took in is what it passed on plus what it rejected, and
what it took in is what its parent stage produced (`parents`, from the graph). The read
stage's input is what the readers met (entries), so it balances by definition; the join
counts parts in and produces utterances; `simulate/pairing` takes utterances and produces
conversations; a publish stage takes records and writes rows (one or more per record).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from ..transforms import files
from ..transforms.publish import split_order

# The stat a stage's children count as their input, where it is not "out".
PRODUCED = {"join": "utterances", "simulate/pairing": "conversations"}


def load_sums(path: str) -> dict[str, dict[str, float]]:
    """stage -> stat -> sum; sorted, so stats.json and the card do not follow the runner's output order."""
    sums: dict[str, dict[str, float]] = defaultdict(dict)
    for stage, name, value in sorted(json.loads(line) for line in files.read_bytes(path).decode().splitlines()):
        sums[stage][name] = value
    return dict(sums)


def _rejected(s: dict[str, float]) -> dict[str, int]:
    return {k.split("/", 1)[1]: int(v) for k, v in sorted(s.items()) if k.startswith("rejected/")}


def _per_split(s: dict[str, float], prefix: str, scale: float = 1.0) -> dict[str, float]:
    found = {k.split("/", 1)[1]: v * scale for k, v in s.items() if k.startswith(prefix + "/")}
    order = sorted(found, key=split_order)
    return {k: found[k] for k in order}


def stage_table(sums: dict[str, dict[str, float]], parents: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """Per stage, in graph order: in, out, rejected (by reason), what it produced, balanced."""
    table: dict[str, dict[str, Any]] = {}
    for stage, parent in parents.items():
        s = sums.get(stage, {})
        rejected = _rejected(s)
        if stage == "read":
            entry = {"files": int(s.get("in", 0)), "in": int(s.get("out", 0)) + sum(rejected.values()),
                     "out": int(s.get("out", 0))}
        elif stage == "join":
            entry = {"in": table["read"]["out"], "out": int(s.get("parts_merged", 0)),
                     "utterances": int(s.get("out", 0))}
        elif stage == "simulate/pairing":
            entry = {"in": int(s.get("in", 0)), "out": int(s.get("out", 0)),
                     "conversations": int(s.get("conversations", 0))}
        else:
            entry = {"in": int(s.get("in", 0)), "out": int(s.get("out", 0))}
        entry["rejected"] = rejected
        entry["rejected_total"] = sum(rejected.values())
        if parent is not None:
            entry["expected_in"] = table[parent][PRODUCED.get(parent, "out")]
        entry["balanced"] = (entry["in"] == entry["out"] + entry["rejected_total"]
                             and entry.get("expected_in", entry["in"]) == entry["in"])
        table[stage] = entry
    return table


def build_stats(sums, parents, *, run: dict, missing: dict[str, list[str]], sections: dict[str, Any],
                fixes: list[tuple[str, str]]) -> dict[str, Any]:
    """stats.json; `fixes` names the (stage, stat) pairs that count records mended rather than rejected."""
    stages = stage_table(sums, parents)
    coverage: dict[str, dict[str, Any]] = defaultdict(dict)
    for name, value in sums.get("join", {}).items():
        if name.startswith("coverage/"):
            _, corpus, what = name.split("/")
            coverage[corpus][what] = int(value)
    for corpus, langs in missing.items():
        coverage[corpus]["not_in_corpus"] = langs
    published = {}
    for stage, s in sums.items():
        if stage.startswith("publish/"):
            published[stage.split("/", 1)[1]] = {
                "rows": {k: int(v) for k, v in _per_split(s, "rows").items()},
                "audio_hours": {k: round(v, 4) for k, v in _per_split(s, "audio_s", 1 / 3600).items()},
            }
    # What was mended rather than rejected, in records; each row lists its own in `fixes`.
    fixes = {name: int(sums.get(stage, {}).get(name, 0)) for stage, name in fixes}
    return {
        "run": run,
        "stages": stages,
        "published": published,
        "coverage": dict(coverage),
        "fixes": {k: v for k, v in fixes.items() if v},
        **sections,
        "balanced": all(e["balanced"] for e in stages.values()),
    }


def failures(stages: dict[str, dict[str, Any]], limits: dict[str, tuple[float, frozenset[str]]]) -> list[str]:
    """Why a run could not do its job, one line per stage: it rejected everything it was given, or
    more of its input than its `max_reject_fraction` for reasons that mean the stage's service or
    model failed (`limits`: stage -> (fraction, those reasons)). Other rejects are data faults."""
    out = []
    for stage, e in stages.items():
        reasons = ", ".join(f"{k} {v}" for k, v in e["rejected"].items())
        if e["in"] and e["rejected_total"] == e["in"]:
            out.append(f"{stage}: rejected all {e['in']} of its input ({reasons})")
        elif stage in limits and e["in"]:
            fraction, systemic = limits[stage]
            failed = {k: v for k, v in e["rejected"].items() if k in systemic}
            if sum(failed.values()) > fraction * e["in"]:
                out.append(f"{stage}: {sum(failed.values())} of {e['in']} rejected because the stage failed ("
                           + ", ".join(f"{k} {v}" for k, v in failed.items())
                           + f"), above its max_reject_fraction {fraction}")
    return out


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """The table printed at the end of a run."""
    lines = [f"{'stage':<24}{'in':>8}{'out':>8}{'rejected':>10}  reasons"]
    for stage, e in stats["stages"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in e["rejected"].items())
        lines.append(f"{stage:<24}{e['in']:>8}{e['out']:>8}{e['rejected_total']:>10}  {reasons}")
    for config, p in stats["published"].items():
        rows = ", ".join(f"{k} {v}" for k, v in p["rows"].items())
        hours = sum(p["audio_hours"].values())
        lines.append(f"published {config}: {rows}" + (f" ({hours:.3f} h of audio)" if hours else ""))
    for corpus, c in stats["coverage"].items():
        langs = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("clips", "not_in_corpus"))
        note = f"; not in corpus: {', '.join(c['not_in_corpus'])}" if c.get("not_in_corpus") else ""
        lines.append(f"coverage {corpus}: {c.get('clips', 0)} clips ({langs}){note}")
    return lines


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def closing_lines(stats: dict[str, Any], *, build: str, output: str, wall_s: float, log: str | None,
                  settings_file: str) -> list[str]:
    """What a finished run tells its operator last: the build, where each part of it is, and what to
    run next."""
    def at(name: str) -> str:
        return files.join(output, name)

    rejected = sum(e["rejected_total"] for e in stats["stages"].values())
    configs = list(stats["published"])
    lines = [f"build {build} in {output}: {_duration(wall_s)} in all, the pipeline {_duration(stats['run']['wall_s'])}",
             f"  card      {at('README.md')}",
             f"  rejects   {at('rejected.jsonl')} ({rejected} rejected record{'' if rejected == 1 else 's'}"
             + (", each with its reason and detail)" if rejected else ")"),
             f"  stats     {at('stats.json')}",
             f"  settings  {at(settings_file)} (simulforge curate --config {at(settings_file)} --output DIR "
             f"runs them again)"]
    if log:
        lines.append(f"  log       {log}")
    model = "easist_tiny" if {"simulst", "simulmt"} <= set(configs) else "bilingual_tiny"
    lines += ["next:",
              f"  simulforge publish {output} --repo-id ORG/NAME --dry-run   # or make publish OUTPUT={output} "
              f"REPO=ORG/NAME DRY_RUN=1",
              f"  simulforge train --config configs/models/{model}.yaml --data {output} --out runs/{model}"]
    return lines
