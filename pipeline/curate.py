"""`simulforge curate`: plan the reads, run the Beam graph, then publish stats, rejects and the card.

The graph writes into `<output>/.incoming/`; only a run that finished and balanced its
counts is moved into place, so the published folder never mixes two builds or holds a
partial shard.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import re
import shutil
import subprocess
import time
from typing import Any

import apache_beam as beam

from .. import __version__
from ..transforms import align, files, readers, segment
from ..transforms.embed import teacher_info
from ..transforms.publish import shard_name, write_shard
from ..transforms.settings import ConfigError
from . import card, graph, plots, report, runners
from .config import CurateSettings

log = logging.getLogger("simulforge.curate")
INCOMING = ".incoming"
SHARD = re.compile(r"(?P<split>\w+)-\d{5}-of-(?P<count>\d{5})\.parquet")
PUBLISHED = ["data", "README.md", "stats.json", graph.REJECTS_FILE, plots.PLOTS_DIR]


class RunError(RuntimeError):
    """The run finished but its output cannot be published as it is."""


def ensure_input(settings: CurateSettings, echo) -> CurateSettings:
    """With no input folder, curate the demo corpora (built once into the work dir)."""
    if settings.input is not None:
        return settings
    from ..demo.corpora import build_demo_corpora

    root = os.path.abspath(os.path.join(settings.work_dir, "demo"))
    if not os.path.exists(os.path.join(root, "README.txt")):
        echo(f"no input given: building the demo corpora into {root}")
        build_demo_corpora(root)
    settings.input = root
    if settings.align.truth is None:  # the demo knows its true word timings: measure the aligner
        settings.align.truth = os.path.join(root, "truth", "word_times.jsonl")
    return settings


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


def _remove(path: str) -> None:
    if files.is_local(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    else:
        from apache_beam.io.filesystems import FileSystems

        matches = FileSystems.match([path.rstrip("/") + "/**", path])
        paths = [m.path for r in matches for m in r.metadata_list]
        if paths:
            FileSystems.delete(paths)


def promote(staging: str, output: str) -> None:
    """Replace the published files with the new build's."""
    for name in PUBLISHED:
        _remove(files.join(output, name))
    for name in PUBLISHED:
        src = files.join(staging, name)
        if files.is_local(src):
            if os.path.exists(src):
                os.replace(src, os.path.join(output, name))
        else:
            from apache_beam.io.filesystems import FileSystems

            for r in FileSystems.match([src.rstrip("/") + "/**"]):
                FileSystems.rename([m.path for m in r.metadata_list],
                                   [m.path.replace(staging, output, 1) for m in r.metadata_list])
    _remove(staging)


def _complete_shards(staging: str, schemas: dict) -> None:
    """A shard that no record hashed into is written empty, so `-NNNNN-of-MMMMM` sets are whole."""
    for config, schema in schemas.items():
        folder = files.join(staging, "data", config)
        present = set(os.listdir(folder)) if files.is_local(folder) and os.path.isdir(folder) else set()
        counts = {m["split"]: int(m["count"]) for m in map(SHARD.fullmatch, present) if m}
        for split, count in counts.items():
            for i in range(count):
                name = shard_name(config, split, i, count)
                if name.rsplit("/", 1)[1] not in present:
                    write_shard(files.join(staging, name), schema.arrow_schema, [])


def _sort_rejects(path: str) -> None:
    if files.is_local(path) and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            lines = sorted(f, key=lambda line: operator.itemgetter("stage", "id")(json.loads(line)))
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines)


def build_info(settings: CurateSettings, summary: dict[str, Any], teacher: dict | None) -> dict[str, str]:
    seg = settings.segment
    segmenter = seg.backend if seg.backend == "align" else f"llm {seg.llm.model} (prompt {seg.llm.prompt})"
    info = {"pipeline": f"simulforge {summary['simulforge']}", "git commit": summary["git_commit"],
            "config hash": summary["config_hash"], "sampling rate": f"{settings.sampling_rate} Hz",
            "dataset configs": ", ".join(settings.configs)}
    if "simulst" in settings.configs or "simulmt" in settings.configs:
        info["segmenter"] = f"{segmenter}; levels {', '.join(seg.levels)}"
    if "simulst" in settings.configs:
        info["aligner"] = (f"{settings.align.backend}; encoder block {settings.align.block_samples} samples "
                           f"({1000 * settings.align.block_samples / settings.sampling_rate:.0f} ms)")
    if teacher:
        info["embedding teacher"] = f"{teacher['name']}, {teacher['dim']}-dim, prefix {teacher['prefix']!r}"
    if "conversations" in settings.configs and settings.simulate.enabled:
        sim = settings.simulate
        info["simulation"] = (f"{sim.array.preset} array, RT60 {sim.room.rt60_s} s, SNR {sim.mix.snr_db} dB, "
                              f"target overlap {sim.turn_taking.target_overlap_ratio}, seed {sim.seed}")
    return info


def run(settings: CurateSettings, extra_beam_args: list[str] | None = None, echo=print) -> dict[str, Any]:
    settings = ensure_input(settings, echo)
    beam_args = runners.beam_args(settings.runner, settings.beam_args, list(extra_beam_args or []))
    options = runners.validate(beam_args, {"input": settings.input, "output": settings.output,
                                           "work_dir": settings.work_dir})
    tasks, missing = plan(settings, echo)
    output = settings.output
    staging = files.join(output, INCOMING)
    _remove(staging)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process
    echo(f"curating {', '.join(settings.corpora)} for English→{', '.join(settings.languages)}: "
         f"{len(tasks)} files to read, output {output}")
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
    sections = {}
    if "segment" in sums:
        sections["segment"] = segment.summarize(sums["segment"])
    if "align" in sums:
        sections["align"] = align.summarize(sums["align"])
    teacher = teacher_info(settings.embed)
    if teacher:
        sections["embedding_teacher"] = teacher
    stats = report.build_stats(sums, parents, run=summary, missing=missing, sections=sections)
    if not stats["balanced"]:
        bad = [s for s, e in stats["stages"].items() if not e["balanced"]]
        raise RunError(f"counts do not add up in stage(s) {', '.join(bad)}; output left in {staging}: "
                       + json.dumps({s: stats["stages"][s] for s in bad}))
    _remove(files.join(staging, graph.SUMS_FILE))
    _complete_shards(staging, graph.features(settings))
    _sort_rejects(files.join(staging, graph.REJECTS_FILE))
    with files.open_write(files.join(staging, "stats.json")) as f:
        f.write(json.dumps(stats, indent=2, ensure_ascii=False).encode())
    card.write(
        staging, graph.features(settings), stats, langs=settings.languages,
        corpora={c: settings.corpus[c].license for c in settings.corpora},
        build_info=build_info(settings, summary, teacher),
        sections=[segment.card_section(sections["segment"])] if "segment" in sections else [],
    )
    promote(staging, output)
    for line in report.summary_lines(stats):
        echo(line)
    return stats
