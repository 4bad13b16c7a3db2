"""`simulforge curate`: plan the reads, run the Beam graph, then publish stats, rejects and the card.

The graph writes into a staging folder of the run's own inside the output (pipeline/output.py
owns the folder, its lock and the swap). A run is published only when it finished, every
stage balanced its counts, and no stage failed wholesale; otherwise it raises RunError and
the previous build stays as it was.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import subprocess
import time
from typing import Any

import apache_beam as beam

from .. import __version__
from ..settings import ConfigError
from ..transforms import files, publish, readers
from . import card, dataset_configs, graph, output, report, runners, steps
from .config import CurateSettings

log = logging.getLogger("simulforge.curate")


class RunError(RuntimeError):
    """The run finished but its output cannot be published as it is."""


def ensure_demo(settings: CurateSettings, echo) -> None:
    """The demo corpora, when they are the input, built into the work dir the first time."""
    root = settings.demo_root()
    if settings.input != root or files.exists(files.join(root, "README.txt")):
        return
    from ..demo.corpora import build_demo_corpora

    echo(f"no input given: building the demo corpora into {root}")
    build_demo_corpora(root)


def plan(settings: CurateSettings, echo) -> tuple[list[readers.ReadTask], dict[str, list[str]]]:
    tasks, missing = [], {}
    for name in settings.corpora:
        found, absent = readers.plan(name, settings.corpus_root(name), settings.corpus[name], settings.languages)
        tasks += found
        if absent:
            missing[name] = absent
            echo(f"{name}: no English→{', '.join(absent)} in this corpus; curating it for the other languages")
        if not found:
            echo(f"{name}: nothing to read under {settings.corpus_root(name)}")
    nowhere = [lang for lang in settings.languages if all(lang in missing.get(n, []) for n in settings.corpora)]
    if nowhere:
        raise ConfigError(f"languages: no corpus has English→{', '.join(nowhere)} "
                          f"(looked in {', '.join(settings.corpora)})")
    if not tasks:
        raise ConfigError("nothing to curate: no corpus files found for the requested languages")
    return tasks, missing


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sort_rejects(path: str) -> None:
    if files.exists(path):
        lines = files.read_bytes(path).decode("utf-8").splitlines(keepends=True)
        lines.sort(key=lambda line: operator.itemgetter("stage", "id")(json.loads(line)))
        with files.open_write(path) as f:
            f.write("".join(lines).encode("utf-8"))


def build_info(settings: CurateSettings, summary: dict[str, Any], built: list[steps.Step]) -> dict[str, str]:
    """The card's "how it was built" lines: the run's, then each step's."""
    info = {"pipeline": f"simulforge {summary['simulforge']}", "git commit": summary["git_commit"],
            "config hash": summary["config_hash"], "sampling rate": f"{settings.sampling_rate} Hz",
            "dataset configs": ", ".join(settings.configs)}
    for step in built:
        info.update(step.info(settings) if step.info else {})
    return info


def reject_limits(settings: CurateSettings, built: list[steps.Step]) -> dict[str, tuple[float, frozenset[str]]]:
    """Per stage: the fraction of its input it may reject because the stage itself failed."""
    return {step.name: (getattr(settings, step.name).max_reject_fraction, step.systemic)
            for step in built if step.systemic}


def run(settings: CurateSettings, extra_beam_args: list[str] | None = None, echo=print) -> dict[str, Any]:
    """Curate into `settings.output`; raises ConfigError (nothing done) or RunError (the previous build
    is left as it was)."""
    beam_args = runners.beam_args(settings.runner, settings.beam_args, list(extra_beam_args or []))
    options = runners.validate(beam_args, {"input": settings.input, "output": settings.output,
                                           "work_dir": settings.work_dir})
    output.check_writable(settings.work_dir, "work_dir")
    output.check_writable(settings.output, "output")
    with output.Lock(settings.output, echo):
        output.recover(settings.output, echo)
        output.check_target(settings.output, overwrite=settings.overwrite)
        ensure_demo(settings, echo)
        tasks, missing = plan(settings, echo)
        staging = output.new_staging(settings.output)
        try:
            stats, build = _build(settings, options, beam_args, tasks, missing, staging, echo)
        except BaseException:
            _keep_failed(staging, settings.work_dir, echo)
            raise
        # A swap that stops half way (a full disk, a kill) is finished or undone by the next run.
        output.promote(staging, settings.output, build, echo)
    for line in report.summary_lines(stats):
        echo(line)
    return stats


def _keep_failed(staging: str, work_dir: str, echo) -> None:
    """A failed run's stats and rejects go to the work dir for a look; its staging folder goes."""
    kept = files.join(work_dir, "failed-runs", staging.rstrip("/").rsplit("/", 1)[-1])
    for name in ("stats.json", graph.REJECTS_FILE):
        src = files.join(staging, name)
        if files.exists(src):
            with files.open_write(files.join(kept, name)) as f:
                f.write(files.read_bytes(src))
    output.discard(staging)
    if files.exists(kept):
        echo(f"the failed run's stats.json and rejected.jsonl are in {kept}")


def _build(settings: CurateSettings, options, beam_args: list[str], tasks, missing, staging: str,
           echo) -> tuple[dict[str, Any], output.Build]:
    """Run the graph into `staging` and finish the build there; returns its stats and the build."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process
    echo(f"curating {', '.join(settings.corpora)} for English→{', '.join(settings.languages)}: "
         f"{len(tasks)} files to read, output {settings.output}")
    started = time.time()
    with beam.Pipeline(options=options) as p:
        parents = graph.build(p, settings, tasks, staging)
    elapsed = time.time() - started

    sums = report.load_sums(files.join(staging, graph.SUMS_FILE))
    summary = {
        "simulforge": __version__, "git_commit": git_commit(), "config_hash": settings.fingerprint(),
        "languages": settings.languages, "corpora": settings.corpora, "configs": settings.configs,
        "beam_args": beam_args, "seed": settings.seed, "wall_s": round(elapsed, 1),
    }
    built = steps.built(settings, dataset_configs.enabled(settings))
    sections = {}  # each step's stats.json section, in the order of `steps.STEPS`
    for step in built:
        section = step.summary(settings, sums.get(step.name)) if step.section else None
        if section is not None:
            sections[step.section] = section
    fixes = [(step.name, name) for step in steps.STEPS for name in step.fixes]
    stats = report.build_stats(sums, parents, run=summary, missing=missing, sections=sections, fixes=fixes)
    output.discard(files.join(staging, graph.SUMS_FILE))
    _sort_rejects(files.join(staging, graph.REJECTS_FILE))
    with files.open_write(files.join(staging, "stats.json")) as f:
        f.write(json.dumps(stats, indent=2, ensure_ascii=False).encode())
    if not stats["balanced"]:
        bad = [s for s, e in stats["stages"].items() if not e["balanced"]]
        raise RunError(f"counts do not add up in stage(s) {', '.join(bad)}: "
                       + json.dumps({s: stats["stages"][s] for s in bad}))
    failed = report.failures(stats["stages"], reject_limits(settings, built))
    if failed:
        for line in report.summary_lines(stats):
            echo(line)
        raise RunError("the run could not do its job, so the previous build is left as it was:\n"
                       + "\n".join(f"  {line}" for line in failed))

    schemas = graph.features(settings)
    publish.complete_sets(staging, schemas)
    shards = [p for splits in publish.find_shards(staging).values() for ps in splits.values() for p in ps]
    build = card.build_id(shards, summary["config_hash"])
    written = publish.tag_build(staging, build)
    card.write(
        staging, schemas, stats, build=build, langs=settings.languages,
        corpora={c: settings.corpus[c].license for c in settings.corpora},
        build_info=build_info(settings, summary, built),
        sections=[step.card(sections[step.section]) for step in built if step.card and step.section in sections],
    )
    written += [p for p in output.walk(staging) if not p.startswith("data/")]
    return stats, output.write_marker(staging, build, written)
