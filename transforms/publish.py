"""The writer: rows of each dataset config written as Parquet shards in the Hugging Face layout.

`data/<config>/<split>-NNNNN-of-MMMMM[-<build>].parquet`, with the `datasets.Features` stored in
the schema metadata so `datasets.load_dataset(folder, config)` decodes audio with no code of ours.
Each shard is written under a temporary name and renamed when whole. This module is the one
place that makes, lists and reads shard names; the dataset configs (pipeline/dataset_configs/)
say what the rows are.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from . import files
from .records import Stat

# An Arrow record batch ends at this many rows or this many bytes of audio, whichever comes first:
# a worker holds one batch of audio (three copies while it is written), and clips vary in length.
RECORD_BATCH, RECORD_BATCH_BYTES = 64, 2 << 20
SPLITS = ["train", "validation", "test"]  # the order splits are listed in


# The one place shard names are made and read: `data/<config>/<split>-NNNNN-of-MMMMM[-<build>].parquet`.
# A published shard carries its build id, so two builds' shards can lie side by side during a swap.
SHARD = re.compile(r"^data/(?P<config>[^/]+)/(?P<split>[^/]+?)-(?P<index>\d{5})-of-(?P<count>\d{5})"
                   r"(?:-(?P<build>[0-9a-f]{16}))?\.parquet$")


def shard_name(config: str, split: str, index: int, count: int, build: str | None = None) -> str:
    tag = f"-{build}" if build else ""
    return f"data/{config}/{split}-{index:05d}-of-{count:05d}{tag}.parquet"


def shard_pattern(config: str, split: str, build: str) -> str:
    """The card's `data_files` glob for one split of one build."""
    return f"data/{config}/{split}-*-of-*-{build}.parquet"


def parse_shard(path: str) -> re.Match | None:
    """The parts of a shard's name (config, split, index, count, build), wherever its folder is;
    None if `path` is not a shard."""
    return SHARD.match("data/" + "/".join(path.replace("\\", "/").rsplit("/", 2)[-2:]))


def untagged(path: str) -> str:
    """`data/<config>/<split>-NNNNN-of-MMMMM.parquet` of a shard: its name without the build id."""
    m = parse_shard(path)
    if m is None:
        raise ValueError(f"{path} is not named data/<config>/<split>-NNNNN-of-MMMMM[-<build>].parquet")
    return shard_name(m["config"], m["split"], int(m["index"]), int(m["count"]))


def split_order(split: str) -> tuple[int, str]:
    """Sorts train, validation and test first, in that order."""
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def find_shards(root: str) -> dict[str, dict[str, list[str]]]:
    """config -> split -> shard paths (sorted) under `root`, configs by name and splits train first."""
    from apache_beam.io.filesystems import FileSystems

    found: dict[str, dict[str, list[str]]] = {}
    for meta in FileSystems.match([files.join(root, "data", "*", "*.parquet")])[0].metadata_list:
        m = parse_shard(meta.path)
        if m:
            found.setdefault(m["config"], {}).setdefault(m["split"], []).append(meta.path)
    return {c: {s: sorted(found[c][s]) for s in sorted(found[c], key=split_order)} for c in sorted(found)}


def complete_sets(root: str, schemas: dict[str, datasets.Features]) -> None:
    """A shard that no record hashed into is written empty, so `-NNNNN-of-MMMMM` sets are whole."""
    for config, splits in find_shards(root).items():
        for split, paths in splits.items():
            count = int(parse_shard(paths[0])["count"])
            present = {int(parse_shard(p)["index"]) for p in paths}
            for i in set(range(count)) - present:
                write_shard(files.join(root, shard_name(config, split, i, count)), schemas[config].arrow_schema, [])


def tag_build(root: str, build: str) -> list[str]:
    """Give every shard under `root` its build id; returns their new relative paths."""
    tagged = []
    for splits in find_shards(root).values():
        for paths in splits.values():
            for path in paths:
                m = parse_shard(path)
                name = shard_name(m["config"], m["split"], int(m["index"]), int(m["count"]), build)
                files.rename(path, files.join(root, name))
                tagged.append(name)
    return tagged


def shard_count(records: int, num_shards: int, records_per_shard: int) -> int:
    """`num_shards` when set, else enough shards for `records_per_shard` records each."""
    return num_shards or max(1, math.ceil(records / records_per_shard))


def shard_of(record_id: str, count: int) -> int:
    # A stable hash (not Python's salted one): the same record lands in the same shard on every worker.
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "big") % count


def _audio_bytes(row: dict) -> int:
    """Encoded audio in a row: the `bytes` of its Audio columns."""
    return sum(len(v.get("bytes") or b"") for v in row.values() if isinstance(v, dict))


def write_shard(path: str, schema: pa.Schema, rows: Iterable[dict]) -> int:
    """Stream rows into one Parquet file, a record batch at a time; written under a temporary
    name and renamed, so a shard either exists whole or not at all."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    n, batch, size = 0, [], 0
    with files.open_write(tmp) as f, pq.ParquetWriter(f, schema, compression="snappy") as writer:
        for row in rows:
            batch.append(row)
            size += _audio_bytes(row)
            if len(batch) == RECORD_BATCH or size >= RECORD_BATCH_BYTES:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n, batch, size = n + len(batch), [], 0
        if batch:  # an empty shard keeps no row group: `datasets` cannot read a zero-row one
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    files.rename(tmp, path)
    return n


class WriteConfig(beam.PTransform):
    """Records -> rows of one config -> Parquet shards per split; returns the stats.

    Records (small: audio is a path) are grouped by shard; rows, which hold the audio bytes,
    are made one at a time while the shard streams to disk, so a worker holds one record
    batch of audio, never a split. Within a shard rows are sorted by id, so every runner
    writes the same files.
    """

    def __init__(self, config: str, features: datasets.Features, to_row: Callable[[Any], Iterable[dict]],
                 out_dir: str, num_shards: int, records_per_shard: int):
        super().__init__()
        self.config, self.features, self.to_row = config, features, to_row
        self.out_dir, self.num_shards, self.records_per_shard = out_dir, num_shards, records_per_shard

    def expand(self, records):
        config, to_row, out_dir = self.config, self.to_row, self.out_dir
        num_shards, per_shard = self.num_shards, self.records_per_shard
        stage = f"publish/{config}"
        schema = self.features.arrow_schema

        counts = (records | f"Splits[{config}]" >> beam.Map(lambda r: r.split)
                  | f"Count[{config}]" >> beam.combiners.Count.PerElement())

        def assign(record, counts):
            count = shard_count(counts[record.split], num_shards, per_shard)
            return (record.split, shard_of(record.id, count), count), record

        def write(key, members):
            split, index, count = key
            members = sorted(members, key=lambda r: r.id)
            totals = {"rows": 0, "audio_s": 0.0}

            def rows():
                for record in members:
                    produced = list(to_row(record))
                    totals["rows"] += len(produced)
                    # A record's audio is stored once even when it makes several rows.
                    totals["audio_s"] += (produced[0].get("duration") or 0.0) if produced else 0.0
                    yield from produced

            write_shard(files.join(out_dir, shard_name(config, split, index, count)), schema, rows())
            # The shard's totals: one stat each, not one per record, for the runner to move.
            yield Stat(stage, "in", len(members))
            yield Stat(stage, "out", len(members))
            yield Stat(stage, f"rows/{split}", totals["rows"])
            if totals["audio_s"]:
                yield Stat(stage, f"audio_s/{split}", totals["audio_s"])

        return (
            records
            | f"Shard[{config}]" >> beam.Map(assign, beam.pvalue.AsDict(counts))
            | f"GroupShards[{config}]" >> beam.GroupByKey()
            | f"Write[{config}]" >> beam.FlatMapTuple(write)
        )
