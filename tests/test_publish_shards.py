"""Shard writing: record batches end at a row count or an audio byte budget."""

import datasets
import pyarrow.parquet as pq

from simulforge.transforms import publish


def _schema():
    return datasets.Features({"id": datasets.Value("string"), "audio": datasets.Audio(sampling_rate=16000)}).arrow_schema


def test_batches_end_at_the_audio_byte_budget(tmp_path):
    big = publish.RECORD_BATCH_BYTES // 3 + 1  # three long clips overflow one batch
    rows = [{"id": f"u{i}", "audio": {"bytes": bytes([i]) * big, "path": f"u{i}.flac"}} for i in range(10)]
    path = str(tmp_path / "long.parquet")
    assert publish.write_shard(path, _schema(), iter(rows)) == 10
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [3, 3, 3, 1]
    assert pq.read_table(path).column("id").to_pylist() == [r["id"] for r in rows]


def test_short_clips_batch_by_rows(tmp_path):
    n = publish.RECORD_BATCH + 5
    rows = [{"id": f"u{i}", "audio": {"bytes": b"x" * 100, "path": None}} for i in range(n)]
    path = str(tmp_path / "short.parquet")
    assert publish.write_shard(path, _schema(), iter(rows)) == n
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [publish.RECORD_BATCH, 5]
