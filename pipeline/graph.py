"""The Beam graph of `curate`: the planned steps (steps.py), each dataset config published from
its source step, and every stage's rejects and stats written beside the shards.

Segment reads the embedded utterances and simulate the aligned ones, so a clip that cannot be
segmented or aligned still appears in `offline` (but in no conversation). `build` returns each stage's parent so the report can check
that counts carry over.
"""

from __future__ import annotations

import json

import apache_beam as beam

from ..transforms import files
from ..transforms.publish import WriteConfig
from ..transforms.records import Stat, to_dict
from . import dataset_configs, steps
from .config import CurateSettings

REJECTS_FILE, SUMS_FILE = "rejected.jsonl", "stats.sums.jsonl"


def features(settings: CurateSettings):
    """The `datasets.Features` of every config this run publishes."""
    return {config.NAME: config.features(settings) for config in dataset_configs.enabled(settings)}


def build(p: beam.Pipeline, settings: CurateSettings, tasks, staging: str) -> dict[str, str | None]:
    configs = dataset_configs.enabled(settings)
    parents: dict[str, str | None] = {}
    outputs, stats, rejects = {}, [], []
    planned = p | "Tasks" >> beam.Create(tasks) | "Spread" >> beam.Reshuffle()
    for item in steps.plan(settings, configs):
        step, parent = item.step, item.parent
        out, rejected, summed = step.build(planned if parent is None else outputs[parent.name], settings)
        outputs[step.name] = out
        rejects.append(rejected)
        stats.append(summed)
        previous = parent.stage_names[-1] if parent else None
        for name in step.stage_names:  # each counts what the one before it produced
            parents[name] = previous
            previous = name
        for config in item.configs:
            parents[f"publish/{config.NAME}"] = previous
            stats.append(out | f"Publish[{config.NAME}]" >> WriteConfig(
                config.NAME, config.features(settings), _rows_of(config, settings), staging,
                settings.num_shards, settings.records_per_shard))

    rejected = tuple(rejects) | "Rejects" >> beam.Flatten()
    _ = (
        rejected
        | "RejectJson" >> beam.Map(lambda r: json.dumps(to_dict(r), ensure_ascii=False, sort_keys=True))
        | "WriteRejects" >> beam.io.WriteToText(
            files.join(staging, REJECTS_FILE), num_shards=1, shard_name_template="")
    )
    reasons = rejected | "Reasons" >> beam.Map(lambda r: Stat(r.stage, f"rejected/{r.reason}"))
    _ = (
        (*stats, reasons)
        | "Stats" >> beam.Flatten()
        | "StatKey" >> beam.Map(lambda s: ((s.stage, s.name), s.value))
        | "Sum" >> beam.CombinePerKey(sum)
        | "StatJson" >> beam.MapTuple(lambda k, v: json.dumps([k[0], k[1], v]))
        | "WriteSums" >> beam.io.WriteToText(files.join(staging, SUMS_FILE), num_shards=1, shard_name_template="")
    )
    return parents


def _rows_of(config, settings: CurateSettings):
    def rows(record):
        return config.rows(record, settings)

    return rows
