"""The Beam graph of `curate`.

read → join → audio → embed ─┬─ publish offline
                              ├─ segment ─┬─ publish simulmt
                              │           └─ align ── publish simulst
                              └─ simulate ── publish conversations

Segment and simulate branch off the embedded utterances, so a clip that cannot be
segmented or aligned still appears in `offline`. Every stage adds its rejects and stats;
`build` returns each stage's parent so the report can check that counts carry over.
"""

from __future__ import annotations

import json

import apache_beam as beam

from ..transforms import files, simulst_rows
from ..transforms.align import Align
from ..transforms.audio import attach_audio
from ..transforms.conversations_rows import conversation_features
from ..transforms.conversations_rows import row as conversation_row
from ..transforms.embed import Embed, teacher_info
from ..transforms.multiway import MultiwayJoin
from ..transforms.publish import WriteConfig, offline_features, offline_row
from ..transforms.readers import STAGE as READ
from ..transforms.readers import ReadTask, read_task
from ..transforms.records import Stat, to_dict
from ..transforms.segment import Segment
from ..transforms.simulate import Simulate
from ..transforms.simulmt import simulmt_features, simulmt_rows
from ..transforms.stage import run_stage
from .config import CurateSettings

REJECTS_FILE, SUMS_FILE = "rejected.jsonl", "stats.sums.jsonl"


def features(settings: CurateSettings):
    """The `datasets.Features` of every config this run publishes."""
    langs, rate = settings.languages, settings.sampling_rate
    teacher = teacher_info(settings.embed)
    dim = teacher["dim"] if teacher else None
    out = {"offline": offline_features(langs, rate, dim)}
    if "simulst" in settings.configs:
        out["simulst"] = simulst_rows.simulst_features(langs, settings.segment.levels, rate, dim)
    if "simulmt" in settings.configs:
        out["simulmt"] = simulmt_features(langs)
    if "conversations" in settings.configs and settings.simulate.enabled:
        out["conversations"] = conversation_features(langs, settings.simulate.sampling_rate)
    return out


def build(p: beam.Pipeline, settings: CurateSettings, tasks: list[ReadTask], staging: str) -> dict[str, str | None]:
    corpus, work_dir, langs = settings.corpus, settings.work_dir, settings.languages
    rate = settings.sampling_rate
    schemas = features(settings)
    parents: dict[str, str | None] = {}
    stats, rejects = [], []

    def add(stage, parent, result):
        parents[stage] = parent
        out, rej, st = result
        rejects.append(rej)
        stats.append(st)
        return out

    def publish(config, records, parent, to_row):
        parents[f"publish/{config}"] = parent
        stats.append(records | f"Publish[{config}]" >> WriteConfig(
            config, schemas[config], to_row, staging, settings.num_shards, settings.records_per_shard))

    def read(task):
        return read_task(task, corpus[task.corpus], work_dir)

    clips_dir = files.join(work_dir, "clips")

    def audio(utt):
        return attach_audio(utt, rate, clips_dir, settings.audio)

    planned = p | "Tasks" >> beam.Create(tasks) | "Spread" >> beam.Reshuffle()
    parts = add(READ, None, run_stage(planned, READ, read))
    utts = add("join", READ, parts | "Join" >> MultiwayJoin(langs))
    utts = add("audio", "join", run_stage(utts, "audio", audio))
    last = "audio"
    if settings.embed.enabled:
        utts = add("embed", last, utts | "Embed" >> Embed(settings.embed))
        last = "embed"
    publish("offline", utts, last, lambda u: [offline_row(u, langs)])

    if "simulmt" in settings.configs or "simulst" in settings.configs:
        segmented = add("segment", last, utts | "Segment" >> Segment(settings.segment))
        if "simulmt" in settings.configs:
            publish("simulmt", segmented, "segment", lambda u: simulmt_rows(u, langs))
        if "simulst" in settings.configs:
            aligned = add("align", "segment", segmented | "Align" >> Align(settings.align))
            levels, block = settings.segment.levels, settings.align.block_samples
            publish("simulst", aligned, "align", lambda u: [simulst_rows.row(
                u, langs, levels, block_samples=block, sampling_rate=rate,
                monotonicity={level: seg.crossing for level, seg in u.segmentations.items()})])

    if "conversations" in settings.configs and settings.simulate.enabled:
        convs = utts | "Simulate" >> Simulate(settings.simulate)
        parents["simulate/pairing"] = last
        convs = add("simulate/render", "simulate/pairing", convs)
        publish("conversations", convs, "simulate/render", lambda c: [conversation_row(c, langs)])

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
