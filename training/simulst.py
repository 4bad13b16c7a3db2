"""Reading the `simulst` config (pipeline/dataset_configs/simulst.py): per latency level, which encoder
blocks each target chunk is written after, and the read/write policy labels.

A row holds every level of one utterance (audio stored once) under `latency.<level>`:
`target_chunks.<lang>`, `chunk_end_s`, `speech_seg_size` (cumulative samples read before each
chunk is written, rounded up to a block of `block_samples`) and `labels` (one per block read:
0 read, 1 write). When the model's block is the published one, the published sizes and labels
are used as they are; otherwise the same rule is applied to `chunk_end_s` with the model's
block, so a model with any block size trains on the same rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ConfigError

LEVELS = "latency"
FRAMES_PER_S = 100  # log-mel frames every 10 ms: a block of F frames is F * rate / 100 samples


@dataclass
class Chunk:
    stop_block: int  # blocks read when this chunk is written (cumulative)
    labels: list[int]  # policy labels of the blocks read since the previous chunk
    target: str


def check_simulst_features(features: dict, levels: list[str] | None, langs: list[str], where: str) -> None:
    """Refuse, before training, a simulst config without the fields the trainer reads."""
    found = features.get(LEVELS)
    if not isinstance(found, dict):
        raise ConfigError(f"{where}: the simulst config has no {LEVELS!r} column; it has: {', '.join(features)}")
    missing = [lvl for lvl in (levels or []) if lvl not in found]
    if missing:
        raise ConfigError(f"{where}.levels: the dataset has no latency level(s) {', '.join(missing)}; "
                          f"it has: {', '.join(found)}")
    for lvl in levels or list(found):
        level = found[lvl]
        for field in ("chunk_end_s", "target_chunks"):
            if field not in level:
                raise ConfigError(f"{where}: latency level {lvl!r} lacks {field}")
        absent = [lang for lang in langs if lang not in level["target_chunks"]]
        if absent:
            raise ConfigError(f"{where}: the dataset lacks column(s) "
                              f"{', '.join(f'{LEVELS}.{lvl}.target_chunks.{a}' for a in absent)}")


def chunks(row: dict, lang: str, levels: list[str] | None, block_frames: int,
           sampling_rate: int) -> dict[str, list[Chunk]]:
    """{level: [Chunk]} for the levels of `row` that have `lang`, in the model's encoder blocks of
    features computed at `sampling_rate` (the rate the audio is decoded at)."""
    block = block_frames * sampling_rate // FRAMES_PER_S
    published = row.get("block_samples") == block
    num_samples = round((row.get("duration") or 0.0) * sampling_rate)
    out = {}
    for name, level in (row.get(LEVELS) or {}).items():
        if level is None or (levels is not None and name not in levels):
            continue
        targets = (level.get("target_chunks") or {}).get(lang)
        ends = level.get("chunk_end_s") or []
        if not targets or len(targets) != len(ends):
            continue
        if published and level.get("speech_seg_size") and level.get("labels") is not None:
            sizes, labels = list(level["speech_seg_size"]), list(level["labels"])
        else:
            sizes = [min(math.ceil(round(e * sampling_rate) / block) * block, num_samples or 10**12) for e in ends]
            labels = [0] * math.ceil(sizes[-1] / block)
            for size in sizes:
                labels[math.ceil(size / block) - 1] = 1
        read, level_chunks = 0, []
        for size, target in zip(sizes, targets, strict=True):
            stop = max(read, math.ceil(size / block))
            level_chunks.append(Chunk(stop, labels[read:stop], target))
            read = stop
        out[name] = level_chunks
    return out


def offline_reference(row: dict, lang: str, column: str, levels: dict[str, list[Chunk]]) -> str | None:
    """The offline ST target: the row's reference translation, else the joined chunks of a level."""
    value = row.get(column)
    if isinstance(value, dict) and value.get(lang):
        return value[lang]
    for level in levels.values():
        return " ".join(" ".join(c.target.split()) for c in level if c.target.strip())
    return None


def texts(row: dict, langs: list[str]) -> list[str]:
    out = []
    for level in (row.get(LEVELS) or {}).values():
        for lang in langs:
            out += [t for t in ((level or {}).get("target_chunks") or {}).get(lang) or [] if t]
    return out
