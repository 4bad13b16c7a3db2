"""`simulforge curate`: plan the reads, run the Beam graph, then publish stats, rejects and the card.

The graph writes into a staging folder of the run's own inside the output (pipeline/output.py
owns the folder, its lock and the swap). A run is published only when it finished, every
stage balanced its counts, and no stage failed wholesale; otherwise it raises RunError and
the previous build stays as it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import os
import re
import subprocess
import tempfile
import time
from typing import Any, TextIO

import apache_beam as beam
import yaml
from apache_beam.io.filesystems import FileSystems

from .. import __version__
from ..settings import ConfigError
from ..transforms import files, publish, readers
from . import card, dataset_configs, graph, logs, output, progress, provenance, report, runners, steps
from .config import CurateSettings

log = logging.getLogger("simulforge.curate")
SETTINGS_FILE = "curate.yaml"  # the build's resolved settings, beside stats.json


class RunError(RuntimeError):
    """The run finished but its output cannot be published as it is."""


def ensure_demo(settings: CurateSettings, echo) -> None:
    """The demo corpora, when they are the input, built into the work dir the first time."""
    root = settings.demo_root()
    if settings.input != root or files.exists(files.join(root, "README.txt")):
        return
    from ..demo.corpora import build_demo_corpora

    echo(f"no input given: building the demo corpora into {root}")
    if files.is_local(root):
        build_demo_corpora(root)
        return
    with tempfile.TemporaryDirectory(prefix="simulforge-demo-") as tmp:  # built here, then uploaded
        build_demo_corpora(tmp)
        files.upload_tree(tmp, root, last="README.txt")  # its README says the copy is whole


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


def resolved_config(settings: CurateSettings, extra_beam_args: list[str], portable: bool = False) -> str:
    """The settings a run uses, as YAML that `--config` takes back (same config hash): the defaults, the
    file and --set merged, paths resolved, the command line's Beam flags after the config's.

    `portable` (what a build ships): without where this run wrote (output, overwrite, work_dir) and the
    paths it derived from the work dir (the demo input, its truth file, caches: null again), so that the
    same settings give the same file, and the same build, wherever they run. No secrets: the LLM key
    lives in the environment only; were its value or a URL's password in a setting, it is redacted.
    """
    from ..transforms.segment_llm import keys

    data = dataclasses.asdict(settings)
    data["beam_args"] = runners.redacted([*settings.beam_args, *extra_beam_args])
    if portable:
        for key in ("output", "overwrite", "work_dir"):
            data.pop(key)
        if settings.input == settings.demo_root():
            data["input"] = None
            if settings.align.truth == files.join(settings.input, "truth", "word_times.jsonl"):
                data["align"]["truth"] = None
        seg, derived = data["segment"], files.join(settings.work_dir, "")
        for section, key in (("align", "cache_dir"), ("llm", "cache_dir"), ("llm", "batch_dir")):
            if (seg[section][key] or "").startswith(derived):
                seg[section][key] = None
        if (data["align"]["cache_dir"] or "").startswith(derived):  # the trained aligners
            data["align"]["cache_dir"] = None
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)
    key = os.environ.get(settings.segment.llm.api_key_env, "").strip()
    if len(key) >= keys.KEY_FRAGMENT:  # shorter: a placeholder for servers that ignore keys
        text = keys.redact(text, key)
    text = re.sub(r"(\w+://[^/\s:@]+:)[^@\s/]+@", rf"\1{keys.REDACTED}@", text)
    where = ("; output, overwrite and work_dir are the command's to give" if portable else "")
    return (f"# The resolved settings of a simulforge {__version__} curate run (config hash {settings.fingerprint()}).\n"
            f"# `simulforge curate --config THIS_FILE` runs them again{where}.\n" + text)


def log_file(settings: CurateSettings) -> str:
    """Where the run's full log goes: under the work dir (for a bucket, uploaded at the end)."""
    return files.join(settings.work_dir, "logs", f"curate-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


def run(settings: CurateSettings, extra_beam_args: list[str] | None = None, echo=print,
        progress_stream: TextIO | None = None) -> dict[str, Any]:
    """Curate into `settings.output`; raises ConfigError (nothing done) or RunError (the previous build
    is left as it was). Progress goes to `progress_stream` (stderr), the full log to a file under the work
    dir once the checks have passed."""
    started = time.time()
    extra_beam_args = list(extra_beam_args or [])
    beam_args = runners.beam_args(settings.runner, settings.beam_args, extra_beam_args)
    options = runners.validate(beam_args, {"input": settings.input, "output": settings.output,
                                           "work_dir": settings.work_dir})
    # The launcher's own reads and writes (lock, plan, staging, swap) reach the store with the run's
    # options (--s3_endpoint_url, ...), as the workers do with theirs.
    FileSystems.set_options(options)
    output.check_writable(settings.work_dir, "work_dir")
    output.check_writable(settings.output, "output")
    with output.Lock(settings.output, echo):
        output.recover(settings.output, echo)
        output.check_target(settings.output, overwrite=settings.overwrite)
        ensure_demo(settings, echo)
        tasks, missing = plan(settings, echo)
        with logs.to_file(log_file(settings)) as log_path:
            staging = output.new_staging(settings.output)
            try:
                stats, build = _build(settings, options, beam_args, tasks, missing, staging, echo,
                                      resolved_config(settings, extra_beam_args, portable=True), progress_stream)
            except BaseException:
                _keep_failed(staging, settings.work_dir, echo)
                if log_path:
                    echo(f"the run's log is {log_path}")
                raise
            # A swap that stops half way (a full disk, a kill) is finished or undone by the next run.
            output.promote(staging, settings.output, build, echo)
            for line in report.summary_lines(stats):
                echo(line)
            for line in report.closing_lines(stats, build=build.build, output=settings.output,
                                             wall_s=time.time() - started, log=log_path,
                                             settings_file=SETTINGS_FILE):
                echo(line)
    return stats


def _keep_failed(staging: str, work_dir: str, echo) -> None:
    """A failed run's stats and rejects go to the work dir for a look; its staging folder goes."""
    kept = files.join(work_dir, "failed-runs", staging.rstrip("/").rsplit("/", 1)[-1])
    for name in ("stats.json", graph.REJECTS_FILE, SETTINGS_FILE):
        src = files.join(staging, name)
        if files.exists(src):
            with files.open_write(files.join(kept, name)) as f:
                f.write(files.read_bytes(src))
    output.discard(staging)
    if files.exists(kept):
        echo(f"the failed run's stats.json and rejected.jsonl are in {kept}")


def _build(settings: CurateSettings, options, beam_args: list[str], tasks, missing, staging: str,
           echo, resolved: str, progress_stream: TextIO | None) -> tuple[dict[str, Any], output.Build]:
    """Run the graph into `staging` and finish the build there; returns its stats and the build."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process
    echo(f"curating {', '.join(settings.corpora)} for English→{', '.join(settings.languages)}: "
         f"{len(tasks)} files to read, output {settings.output}")
    with files.open_write(files.join(staging, SETTINGS_FILE)) as f:
        f.write(resolved.encode("utf-8"))
    local = runners.local_workers(options)
    if not local and settings.progress.display != "none":
        echo("progress: the runner's UI shows each stage's Beam counters (in, out, rejected, audio_ms)")
    started = time.time()
    with logs.raw_stderr_to_file(), progress.Watch(settings.progress, settings.work_dir, local,
                                                   progress_stream) as watch:
        with beam.Pipeline(options=options) as p:
            parents = graph.build(p, settings, tasks, staging)
            watch.start(parents, len(tasks))
    elapsed = time.time() - started

    sums = report.load_sums(files.join(staging, graph.SUMS_FILE))
    summary = {
        "simulforge": __version__, "git_commit": git_commit(), "config_hash": settings.fingerprint(),
        "languages": settings.languages, "corpora": settings.corpora, "configs": settings.configs,
        "beam_args": runners.redacted(beam_args), "seed": settings.seed, "wall_s": round(elapsed, 1),
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
        about=provenance.about(settings, tasks),
    )
    written += [p for p in output.walk(staging) if not p.startswith("data/")]
    return stats, output.write_marker(staging, build, written)
