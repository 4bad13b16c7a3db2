"""Distributions the dataset card reports, read from the published shards, and their plots.

stats.json holds counts; a trainer also wants to see distributions (utterance durations, chunk
lengths per latency level, rooms and overlap of the conversations) and rows per language.
They come from the shards' small columns only, read with pyarrow: audio and embeddings never
leave the disk. Plots are drawn with matplotlib's object API, not pyplot, so the driver keeps
no global figure or backend state.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..transforms import files

PLOTS_DIR = "plots"


@dataclass
class Figures:
    """What the card shows beyond stats.json; every list holds one value per row or chunk."""

    # config -> split -> language -> [rows, audio seconds]
    languages: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)  # offline utterances, seconds
    all_languages: list[int] = field(default_factory=lambda: [0, 0])  # offline rows with every language, rows
    chunk_words: dict[str, list[int]] = field(default_factory=dict)  # level -> words per source chunk
    chunk_seconds: dict[str, list[float]] = field(default_factory=dict)  # level -> speech per chunk (simulst)
    rooms: dict[str, list[float]] = field(default_factory=dict)  # rt60_s, snr_db, overlap_ratio


def _read(path: str, wanted: list[str]) -> pa.Table:
    """The columns of `wanted` that the shard has; never audio or embeddings."""
    with files.open_read(path) as f:
        shard = pq.ParquetFile(f)
        names = [c for c in dict.fromkeys(wanted) if c in shard.schema_arrow.names]
        return shard.read(columns=names) if names else pa.table({})


def words_per_chunk(chunks: pa.Array) -> np.ndarray:
    """Whitespace-separated words of every chunk in a list-of-strings column."""
    flat = pc.list_flatten(chunks)
    return pc.list_value_length(pc.utf8_split_whitespace(flat)).to_numpy(zero_copy_only=False)


def collect(shards: dict[str, dict[str, list[str]]], langs: list[str], configs: dict) -> Figures:
    """Read the figures from `shards` (config -> split -> shard paths), one shard at a time:
    rows and hours per language, and what each config (`configs`: name -> its module) adds.
    A figure whose columns a config lacks is left out rather than failing the run that writes
    the card.
    """
    fig = Figures()
    for name, splits in shards.items():
        config = configs[name]
        wanted = [config.LANGUAGE_COLUMN, "duration", *config.FIGURE_COLUMNS]
        for split, paths in splits.items():
            per_lang = fig.languages.setdefault(name, {}).setdefault(split, {lang: [0, 0.0] for lang in langs})
            for path in paths:
                table = _read(path, wanted)
                _add_languages(table, config.LANGUAGE_COLUMN, langs, per_lang)
                config.add_figures(table, fig, langs, shards)
    return fig


def _add_languages(table: pa.Table, column: str, langs: list[str], per_lang: dict[str, list[float]]) -> None:
    if column not in table.column_names:
        return
    struct = table[column].combine_chunks()
    durations = table["duration"].to_numpy(zero_copy_only=False) if "duration" in table.column_names else None
    for lang in langs:
        if struct.type.get_field_index(lang) < 0:
            continue
        has = pc.is_valid(pc.struct_field(struct, lang)).to_numpy(zero_copy_only=False)
        per_lang[lang][0] += int(has.sum())
        if durations is not None:
            per_lang[lang][1] += float(np.nan_to_num(durations[has].astype(float)).sum())


def rows_with_every(table: pa.Table, column: str, langs: list[str]) -> int:
    """Rows whose per-language struct `column` has every language of `langs`."""
    if column not in table.column_names:
        return 0
    struct = table[column].combine_chunks()
    masks = [pc.is_valid(pc.struct_field(struct, lang)) for lang in langs if struct.type.get_field_index(lang) >= 0]
    if len(masks) < len(langs):
        return 0
    every = masks[0]
    for mask in masks[1:]:
        every = pc.and_(every, mask)
    return int(pc.sum(every).as_py() or 0)


def summary(values: list[float]) -> dict[str, float]:
    """n, mean and the 10th / 50th / 90th percentiles, as the card's tables show them."""
    a = np.asarray(values, dtype=float)
    p10, p50, p90 = np.percentile(a, [10, 50, 90]) if len(a) else (np.nan,) * 3
    return {"n": len(a), "mean": float(a.mean()) if len(a) else np.nan, "p10": float(p10),
            "p50": float(p50), "p90": float(p90)}


def level_order(values: dict[str, list], stats: dict[str, Any], levels: list[str] = ()) -> list[str]:
    """The levels that have values, lowest latency first: as configured (`levels`), else as the segment
    stage lists them."""
    known = list(stats.get("segment", {}).get("chunks_per_utterance", {}))
    return [lv for lv in dict.fromkeys([*levels, *known, *values]) if values.get(lv)]


# -- Drawing -----------------------------------------------------------------------------------


def _figure(panels: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * panels, 3.2), layout="constrained")
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _save(fig, root: str, name: str) -> str:
    relative = f"{PLOTS_DIR}/{name}.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    with files.open_write(files.join(root, PLOTS_DIR, f"{name}.png")) as f:
        f.write(buf.getvalue())
    return relative


def _histogram(ax, values, *, bins, xlabel: str, ylabel: str, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.hist(values, bins=bins, color="#4c72b0", edgecolor="white")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)


def draw(fig_data: Figures, stats: dict[str, Any], root: str, levels: list[str] = ()) -> dict[str, tuple[str, str]]:
    """Save every plot the data allows under `root/plots/`; name -> (relative path, caption). `levels`:
    the latency levels, lowest first."""
    out: dict[str, tuple[str, str]] = {}
    if fig_data.durations:
        fig, (ax,) = _figure(1)
        _histogram(ax, fig_data.durations, bins=30, xlabel="seconds", ylabel="utterances",
                   title=f"Utterance duration (n={len(fig_data.durations)})")
        out["durations"] = (_save(fig, root, "durations"), "Utterance durations (offline config)")
    words, seconds = level_order(fig_data.chunk_words, stats, levels), level_order(fig_data.chunk_seconds, stats, levels)
    if words:
        fig, axes = _figure(2 if seconds else 1)
        top = max(max(fig_data.chunk_words[lv]) for lv in words)
        axes[0].hist([fig_data.chunk_words[lv] for lv in words], bins=np.arange(0.5, top + 1.5), label=words)
        axes[0].set(xlabel="source words per chunk", ylabel="chunks", title="Chunk length per latency level")
        axes[0].legend()
        if seconds:
            axes[1].hist([fig_data.chunk_seconds[lv] for lv in seconds], bins=30, label=seconds)
            axes[1].set(xlabel="seconds of speech per chunk", ylabel="chunks", title="Chunk duration (simulst)")
            axes[1].legend()
        out["chunk_length"] = (_save(fig, root, "chunk_length"), "Chunk length per latency level")
    rates = stats.get("segment", {}).get("crossing_rate", {})
    if rates:
        fig, (ax,) = _figure(1)
        langs = list(rates)
        found = list(dict.fromkeys(k for r in rates.values() for k in r))  # offline first, then the levels
        bars = [b for b in ["offline", *levels] if b in found] + [b for b in found if b not in ("offline", *levels)]
        width = 0.8 / len(bars)
        for i, bar in enumerate(bars):
            ax.bar(np.arange(len(langs)) + i * width, [rates[lang].get(bar) or 0.0 for lang in langs],
                   width, label=bar)
        ax.set_xticks(np.arange(len(langs)) + 0.4 - width / 2, langs)
        ax.set(ylabel="crossing rate (lower is more monotone)", title="Monotonicity per level vs offline")
        ax.legend()
        out["monotonicity"] = (_save(fig, root, "monotonicity"), "Crossing rate per latency level vs offline")
    if fig_data.rooms.get("rt60_s"):
        fig, axes = _figure(3)
        panels = (("rt60_s", "RT60 (s)", "Reverberation"), ("snr_db", "SNR (dB)", "Background noise"),
                  ("overlap_ratio", "overlapped time / conversation time", "Turn overlap"))
        for ax, (key, label, title) in zip(axes, panels, strict=True):
            _histogram(ax, fig_data.rooms.get(key, []), bins=20, xlabel=label, ylabel="conversations", title=title)
        out["conversations"] = (_save(fig, root, "conversations"), "Simulated rooms and turn overlap (conversations)")
    return out
