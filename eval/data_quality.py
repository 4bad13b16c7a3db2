"""Data-quality evaluation of a published dataset (EASiST's Table 1, and the aligner's accuracy).

- Monotonicity: the crossing rate (transforms/monotonicity.py) of each latency level's chunked
  pairs against the offline pairs, per language. Pairs are word-aligned with eflomal, one corpus per
  language (the segment stage's settings); a chunked target that is not the reference itself is
  aligned on its own. The chunks come from `simulst` (every level of an utterance in one row), else
  from `simulmt` (one row per level); references from the same rows, else from `offline`. With
  neither chunked config, only the offline pairs are measured.
- Alignment error: |start - true start| and |end - true end| of every word of `simulst`'s `words`
  against a truth file (JSONL of {id, words: [[word, start, end]]} relative to the clip, as the demo
  generator writes); a clip whose words differ from the truth's is counted, not measured.
- CometKiwi: reference-free quality (0-100) of the offline pairs and of each level's joined chunks,
  with a local model folder (unbabel-comet); skipped, with a message, without one.

Writes `quality.json` and `data_quality.png` (the per-sentence distributions) into the output folder.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, median
from typing import Any

from simulforge.training.config import ConfigError
from simulforge.transforms.monotonicity import OFFLINE, Crossings, view_crossings

QUALITY_FILE, PLOT_FILE = "quality.json", "data_quality.png"
CHUNKED = ("simulst", "simulmt")


@dataclass
class Utt:
    """What the measures need of one utterance, whichever configs it came from."""

    source: str = ""
    references: dict[str, str] = field(default_factory=dict)
    levels: dict[str, tuple[list[str], dict[str, list[str]]]] = field(default_factory=dict)  # source, target chunks
    words: list[tuple[str, float, float]] | None = None  # from simulst


# -- reading -------------------------------------------------------------------------------------
def _load(data: str, config: str, columns: list[str], split: str | None, limit: int | None) -> list[dict]:
    """Rows of `config` (every split, or one) with only `columns`: audio is never read."""
    import datasets

    builder = datasets.load_dataset_builder(data, config)
    splits = list((builder.config.data_files or {}).keys())
    if split is not None and split not in splits:
        raise ConfigError(f"dataset {data} config {config!r} has no split {split!r}; it has: {', '.join(splits)}")
    rows = []
    for name in [split] if split else splits:
        ds = datasets.load_dataset(data, config, split=name, columns=columns)
        rows += list(ds.select(range(min(limit, len(ds)))) if limit is not None else ds)
    return rows


def _levels_of(chunks: dict[str, list[str] | None]) -> dict[str, list[str]]:
    return {lang: list(c) for lang, c in (chunks or {}).items() if c}


def read_utterances(data: str, configs: list[str], split: str | None, limit: int | None
                    ) -> tuple[dict[str, Utt], str | None]:
    """Utterances by id, and the config their chunks came from (None: no chunked config)."""
    utts: dict[str, Utt] = defaultdict(Utt)
    source = next((c for c in CHUNKED if c in configs), None)
    if "offline" in configs and source != "simulst":  # simulst rows carry their references
        for row in _load(data, "offline", ["id", "source_text", "translation"], split, limit):
            utts[row["id"]].source = row["source_text"]
            utts[row["id"]].references |= {k: v for k, v in row["translation"].items() if v}
    if source == "simulst":
        for row in _load(data, "simulst", ["id", "source_text", "translation", "latency", "words"], split, limit):
            utt = utts[row["id"]]
            utt.source = row["source_text"]
            utt.references |= {k: v for k, v in row["translation"].items() if v}
            utt.levels = {name: (list(level["source_chunks"]), _levels_of(level["target_chunks"]))
                          for name, level in row["latency"].items() if level}
            utt.words = [(w["word"], w["start"], w["end"]) for w in row["words"] or []]
    elif source == "simulmt":
        from simulforge.pipeline.dataset_configs.simulmt import END_OF_READ, END_OF_WRITE

        for row in _load(data, "simulmt", ["id", "latency", "source_chunks", "target_chunks", "offline"], split,
                         limit):
            utt = utts[row["id"]]
            utt.source = " ".join(row["source_chunks"])
            utt.levels[row["latency"]] = (list(row["source_chunks"]), _levels_of(row["target_chunks"]))
            for lang, text in (row["offline"] or {}).items():  # "<source><|end-of-read|><reference><|end-of-write|>"
                if text and END_OF_READ in text and lang not in utt.references:
                    utt.references[lang] = text.split(END_OF_READ, 1)[1].replace(END_OF_WRITE, "").strip()
    if source is not None:  # offline rates over the same utterances as the levels'
        return {k: u for k, u in utts.items() if u.levels}, source
    return dict(utts), source


# -- monotonicity --------------------------------------------------------------------------------
def monotonicity(utts: dict[str, Utt]) -> dict[str, Any]:
    """Corpus crossing rates {lang: {view: rate}} (views: offline, then each level), their counts,
    and the per-sentence rates (sentences with comparable link pairs only)."""
    from simulforge.transforms.segment import load_settings
    from simulforge.transforms.segment_align import align_corpus

    by_lang: dict[str, list[tuple[str, str, list[tuple[str, list[int] | None]]]]] = defaultdict(list)
    mismatched = 0
    for utt in utts.values():
        n_words = len(utt.source.split())
        for lang, reference in utt.references.items():
            views = {" ".join(reference.split()): [(OFFLINE, None)]}
            for level, (source_chunks, targets) in utt.levels.items():
                counts = [len(c.split()) for c in source_chunks]
                if lang not in targets:
                    continue
                if sum(counts) != n_words:  # chunks that do not rebuild the source cannot be placed
                    mismatched += 1
                    continue
                views.setdefault(" ".join(" ".join(targets[lang]).split()), []).append((level, counts))
            by_lang[lang] += [(utt.source, target, named) for target, named in views.items()]
    settings = load_settings().align.eflomal
    totals: dict[str, dict[str, Crossings]] = {}
    sentences: dict[str, dict[str, list[float]]] = {}
    for lang, entries in sorted(by_lang.items()):
        links = align_corpus([(s, t) for s, t, _ in entries], settings)
        for (_, _, named), found in zip(entries, links, strict=True):
            for view, c in view_crossings(found, named):
                old = totals.setdefault(lang, {}).get(view, Crossings(0, 0))
                totals[lang][view] = Crossings(old.discordant + c.discordant, old.pairs + c.pairs)
                if c.pairs:
                    sentences.setdefault(lang, {}).setdefault(view, []).append(c.rate)
    rates = {lang: {view: c.rate for view, c in _ordered(views).items()} for lang, views in totals.items()}
    return {
        "crossing_rate": {lang: {view: round(rate, 4) for view, rate in views.items()} for lang, views in rates.items()},
        # As the segment stage reports it: the share of the offline crossings a level removes.
        "reduction": {lang: {view: round(1 - rate / views[OFFLINE], 4) for view, rate in views.items()
                             if view != OFFLINE and views.get(OFFLINE)} for lang, views in rates.items()},
        "counts": {lang: {view: {"discordant": c.discordant, "pairs": c.pairs} for view, c in _ordered(views).items()}
                   for lang, views in totals.items()},
        "chunks_not_matching_source": mismatched,
        "sentences": sentences,
    }


def _ordered(views: dict[str, Any]) -> dict[str, Any]:
    return {OFFLINE: views[OFFLINE], **{k: v for k, v in views.items() if k != OFFLINE}} if OFFLINE in views else views


# -- alignment error -----------------------------------------------------------------------------
def alignment_error(utts: dict[str, Utt], truth_path: str) -> dict[str, Any]:
    """Word-boundary error (ms) of the published word times against the true ones."""
    from simulforge.transforms.align import boundary_errors_ms, read_truth

    if not os.path.isfile(truth_path):
        raise FileNotFoundError(f"--truth: no file at {truth_path}")
    truth = read_truth(truth_path)
    errors, unmatched, without = [], 0, 0
    for uid, utt in utts.items():
        if utt.words is None:
            continue
        if uid not in truth:
            without += 1
            continue
        found = boundary_errors_ms(utt.words, truth[uid])
        if found is None:
            unmatched += 1
        else:
            errors += found
    ordered = sorted(errors)
    return {
        "clips": sum(1 for u in utts.values() if u.words is not None) - without - unmatched,
        "boundaries": len(errors), "unmatched_clips": unmatched, "clips_without_truth": without,
        "mean": round(fmean(errors), 2) if errors else None,
        "p50": round(median(errors), 2) if errors else None,
        "p90": round(ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)], 2) if errors else None,
        "errors_ms": errors,
    }


# -- CometKiwi -----------------------------------------------------------------------------------
def _checkpoint(model_dir: str) -> Path:
    """The .ckpt of a local COMET model folder (as downloaded: <dir>/checkpoints/model.ckpt), or the file itself."""
    path = Path(model_dir)
    ckpt = path if path.is_file() else path / "checkpoints" / "model.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"--cometkiwi: no COMET checkpoint at {ckpt}")
    try:
        import comet  # noqa: F401
    except ImportError:
        raise ConfigError("--cometkiwi needs the unbabel-comet package (pip install unbabel-comet)") from None
    return ckpt


def kiwi_inputs(utts: dict[str, Utt]) -> list[tuple[str, str, dict[str, str]]]:
    """What CometKiwi scores, as (lang, view, {src, mt}): the offline pairs and each level's joined chunks."""
    items = []
    for utt in utts.values():
        for lang, reference in utt.references.items():
            items.append((lang, OFFLINE, {"src": utt.source, "mt": reference}))
            for level, (_, targets) in utt.levels.items():
                if lang in targets:
                    items.append((lang, level, {"src": utt.source, "mt": " ".join(targets[lang])}))
    return items


def kiwi_scores(utts: dict[str, Utt], ckpt: Path) -> dict[str, Any]:
    """Mean CometKiwi (x100) per language of the offline pairs and of each level's joined chunks.

    Untested: unbabel-comet (2.2.7) needs transformers<5 and numpy<2, which requirements.lock excludes."""
    import torch
    from comet import load_from_checkpoint

    items = kiwi_inputs(utts)
    model = load_from_checkpoint(str(ckpt))
    scores = model.predict([x for _, _, x in items], batch_size=16, gpus=1 if torch.cuda.is_available() else 0,
                           progress_bar=False).scores
    return kiwi_summary(items, scores)


def kiwi_summary(items: list[tuple[str, str, dict[str, str]]], scores: list[float]) -> dict[str, Any]:
    """Per language and view: the mean score (x100), and every sentence's for the plot."""
    sentences: dict[str, dict[str, list[float]]] = {}
    for (lang, view, _), score in zip(items, scores, strict=True):
        sentences.setdefault(lang, {}).setdefault(view, []).append(100 * score)
    return {"mean": {lang: {view: round(fmean(v), 2) for view, v in views.items()} for lang, views in
                     sentences.items()}, "sentences": sentences}


# -- report --------------------------------------------------------------------------------------
def _plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    panels = []
    if result["monotonicity"].get("sentences"):
        panels.append(("crossing rate per sentence", result["monotonicity"]["sentences"]))
    if "errors_ms" in result["alignment_error"]:
        panels.append(("word-boundary error (ms)", result["alignment_error"]["errors_ms"]))
    if "sentences" in result["cometkiwi"]:
        panels.append(("CometKiwi per sentence", result["cometkiwi"]["sentences"]))
    fig = Figure(figsize=(4.6 * max(1, len(panels)), 3.4), layout="constrained")
    for i, (title, values) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        ax.set_title(title, fontsize=9)
        if isinstance(values, dict):  # {lang: {view: [values]}}: one box per (language, view)
            labels = [f"{lang}\n{view}" for lang, views in values.items() for view in views]
            ax.boxplot([v for views in values.values() for v in views.values()], tick_labels=labels, showmeans=True)
            ax.tick_params(axis="x", labelsize=7)
        else:
            ax.hist(values, bins=40, color="C1")
            ax.set_ylabel("word boundaries")
        ax.grid(alpha=0.3)
    if not panels:
        fig.text(0.5, 0.5, "nothing measurable in this dataset", ha="center")
    fig.savefig(path, dpi=110, metadata={"Software": None})


def evaluate_dataset(data: str, *, truth: str | None = None, cometkiwi: str | None = None, split: str | None = None,
                     limit: int | None = None, out: str | None = None, echo=print) -> dict[str, Any]:
    """Every measure the dataset allows; says which configs it found and what it skipped, and why."""
    import datasets

    if not Path(data).exists() and (data.startswith((".", "/")) or data.count("/") != 1):
        raise ConfigError(f"dataset {data} does not exist (a published dataset folder or a hub id)")
    if out is None and not Path(data).is_dir():
        raise ConfigError("--out is needed for a dataset that is not a local folder")
    ckpt = _checkpoint(cometkiwi) if cometkiwi else None  # checked before the long work
    configs = list(datasets.get_dataset_config_names(data))
    notes = [f"configs found: {', '.join(configs)}"]
    utts, chunks_from = read_utterances(data, configs, split, limit)
    if chunks_from is None:
        notes.append("no simulst or simulmt config: monotonicity of the offline pairs only")
    else:
        notes.append(f"chunks from {chunks_from}")
    result: dict[str, Any] = {"data": data, "configs": configs, "split": split or "all", "utterances": len(utts),
                              "chunks_from": chunks_from}
    result["monotonicity"] = monotonicity(utts) if any(u.references for u in utts.values()) else {
        "skipped": "no translations to align"}
    if truth is None:
        result["alignment_error"] = {"skipped": "no --truth file given"}
    elif chunks_from != "simulst":
        result["alignment_error"] = {"skipped": "word times live in the simulst config, which this dataset lacks"}
    else:
        result["alignment_error"] = alignment_error(utts, truth)
    if ckpt is None:
        result["cometkiwi"] = {"skipped": "no --cometkiwi model folder given"}
    else:
        result["cometkiwi"] = kiwi_scores(utts, ckpt)
    for name in ("alignment_error", "cometkiwi"):
        if "skipped" in result[name]:
            notes.append(f"{name} skipped: {result[name]['skipped']}")
    result["notes"] = notes

    out_dir = Path(out) if out else Path(data) / "eval" / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(result, out_dir / PLOT_FILE)
    result["plot"] = PLOT_FILE
    # The per-sentence values are the plot's; the JSON keeps the summaries.
    summary = {k: {kk: vv for kk, vv in v.items() if kk not in ("sentences", "errors_ms")} if isinstance(v, dict)
               else v for k, v in result.items()}
    (out_dir / QUALITY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    for note in notes:
        echo(note)
    for lang, views in result["monotonicity"].get("crossing_rate", {}).items():
        echo(f"crossing rate {lang}: " + ", ".join(f"{view} {rate}" for view, rate in views.items()))
    if result["alignment_error"].get("mean") is not None:
        e = result["alignment_error"]
        echo(f"alignment error: mean {e['mean']} ms, p50 {e['p50']} ms, p90 {e['p90']} ms over {e['clips']} clips")
    echo(f"written to {out_dir}")
    return result
