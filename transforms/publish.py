"""Publish: rows of each dataset config written as Parquet shards in the Hugging Face layout.

`data/<config>/<split>-NNNNN-of-MMMMM.parquet`, with the `datasets.Features` stored in the
schema metadata so `datasets.load_dataset(folder, config)` decodes audio with no code of ours.
Beam's file sinks write to a temporary location and rename on success, so an interrupted run
leaves no shard that looks complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import datasets

from . import files
from .audio import clip_bytes
from .records import Stat, Utterance
from .stage import run_stage

# Rows per Arrow record batch: audio rows are large, so keep batches (and worker memory) small.
RECORD_BATCH = 64


def offline_features(langs: list[str], sampling_rate: int, embedding_dim: int | None = None) -> datasets.Features:
    features = {
        "id": datasets.Value("string"),
        "corpus": datasets.Value("string"),
        "audio": datasets.Audio(sampling_rate=sampling_rate),
        "duration": datasets.Value("float32"),
        "speaker": datasets.Value("string"),
        "source_lang": datasets.Value("string"),
        "source_text": datasets.Value("string"),
        "translation": {lang: datasets.Value("string") for lang in langs},
        "audio_fixes": datasets.List(datasets.Value("string")),
    }
    if embedding_dim:
        features["embedding"] = datasets.List(datasets.Value("float32"), length=embedding_dim)
    return datasets.Features(features)


def offline_row(utt: Utterance, langs: list[str]) -> dict[str, Any]:
    row = {
        "id": utt.id,
        "corpus": utt.corpus,
        "audio": {"bytes": clip_bytes(utt), "path": utt.id.replace("/", "_") + ".flac"},
        "duration": utt.duration_s,
        "speaker": utt.speaker,
        "source_lang": utt.source_lang,
        "source_text": utt.source_text,
        "translation": {lang: utt.translations.get(lang) for lang in langs},
        "audio_fixes": list(utt.audio_fixes),
    }
    if utt.embedding is not None:
        row["embedding"] = utt.embedding
    return row


def shard_prefix(out_dir: str, config: str, split: str) -> str:
    return files.join(out_dir, "data", config, split)


class WriteConfig(beam.PTransform):
    """Records -> rows of one config -> one Parquet shard set per split; returns the stats."""

    def __init__(self, config: str, features: datasets.Features, to_row: Callable[[Any], Iterator[dict]],
                 splits: list[str], out_dir: str, num_shards: int):
        super().__init__()
        self.config, self.features, self.to_row = config, features, to_row
        self.splits, self.out_dir, self.num_shards = list(splits), out_dir, num_shards

    def expand(self, records):
        config, to_row = self.config, self.to_row
        stage = f"publish/{config}"

        def rows(record):
            produced = list(to_row(record))
            yield Stat(stage, f"rows/{record.split}", len(produced))
            audio = sum(row.get("duration") or 0 for row in produced[:1])  # audio is stored once per record
            if audio:
                yield Stat(stage, f"audio_s/{record.split}", audio)
            yield record.split, produced

        listed, _, stats = run_stage(records, stage, rows)
        keyed = listed | f"Rows[{config}]" >> beam.FlatMapTuple(lambda split, rs: ((split, r) for r in rs))
        index = {split: i for i, split in enumerate(self.splits)}
        parts = keyed | f"BySplit[{config}]" >> beam.Partition(lambda kv, n: index[kv[0]], len(self.splits))
        schema = self.features.arrow_schema
        for split, part in zip(self.splits, parts, strict=True):
            _ = (
                part
                | f"Row[{config}/{split}]" >> beam.Values()
                | f"Write[{config}/{split}]" >> beam.io.WriteToParquet(
                    shard_prefix(self.out_dir, config, split),
                    schema,
                    record_batch_size=RECORD_BATCH,
                    codec="snappy",
                    use_compliant_nested_type=True,
                    file_name_suffix=".parquet",
                    num_shards=self.num_shards,
                    shard_name_template="-SSSSS-of-NNNNN",
                )
            )
        return stats
