"""The Beam graph of `curate`: read → multi-way join → audio → publish, with rejects and stats."""

from __future__ import annotations

import json

import apache_beam as beam

from ..transforms import files
from ..transforms.audio import attach_audio
from ..transforms.multiway import MultiwayJoin
from ..transforms.publish import WriteConfig, offline_features, offline_row
from ..transforms.readers import STAGE as READ, ReadTask, read_task
from ..transforms.records import Reject, Stat, to_dict
from ..transforms.stage import run_stage
from .config import CurateSettings

SPLITS = ["train", "validation", "test"]
REJECTS_FILE, SUMS_FILE = "rejected.jsonl", "stats.sums.jsonl"


def dataset_splits(settings: CurateSettings) -> list[str]:
    names = {name for c in settings.corpora for name in settings.corpus[c].splits.values()}
    return [s for s in SPLITS if s in names] + sorted(names - set(SPLITS))


def build(p: beam.Pipeline, settings: CurateSettings, tasks: list[ReadTask], staging: str) -> None:
    corpus, work_dir, langs = settings.corpus, settings.work_dir, settings.languages
    rate = settings.sampling_rate

    def read(task):
        return read_task(task, corpus[task.corpus], work_dir)

    def audio(utt):
        return attach_audio(utt, rate)

    stats, rejects = [], []
    planned = p | "Tasks" >> beam.Create(tasks) | "Spread" >> beam.Reshuffle()
    parts, rej, st = run_stage(planned, READ, read)
    stats.append(st), rejects.append(rej)
    utts, rej, st = parts | "Join" >> MultiwayJoin(langs)
    stats.append(st), rejects.append(rej)
    utts, rej, st = run_stage(utts, "audio", audio)
    stats.append(st), rejects.append(rej)

    stats.append(utts | "Offline" >> WriteConfig(
        "offline", offline_features(langs, rate), lambda u: [offline_row(u, langs)],
        dataset_splits(settings), staging, settings.num_shards))

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
