"""The cluster contract on a local S3 store (tests/bucket.py): input, output and work_dir in the bucket,
workers that share nothing with the launcher but the bucket, and the same bytes as a local run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from bucket import ACCESS_KEY, SECRET_KEY, S3Server, WorkerPool
from conftest import ALL_CONFIGS
from simulforge.pipeline import output
from simulforge.transforms import files


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    (root / "cwd").mkdir()
    server = S3Server(root / "cwd", root / "moto.log")
    yield server
    FileSystems.set_options(None)
    server.close()


@pytest.fixture
def s3_options(store):
    """This process's own reads and writes reach the store, as curate sets them from the run's options."""
    FileSystems.set_options(PipelineOptions(store.beam_args()))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Beam's worker pool in an empty folder, with no credentials and no path of the launcher's."""
    root = tmp_path_factory.mktemp("pool")
    (root / "cwd").mkdir()
    boot = shutil.which("simulforge-worker", path=str(Path(sys.executable).parent))
    assert boot, "simulforge-worker is not installed (pip install -e .)"
    workers = WorkerPool(root / "cwd", root / "pool.log", boot, env={})
    yield workers, root / "cwd"
    workers.close()


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# What stats.json measures of the machine rather than the data: two local runs differ in these too.
TIMINGS = {"wall_s", "cpu_s", "cpu_s_per_audio_min", "audio_s_per_cpu_s", "serial_cpu_s"}


def _drop_timings(node):
    if isinstance(node, dict):
        for key in TIMINGS & set(node):
            node.pop(key)
        for value in node.values():
            _drop_timings(value)


def _settings(output_dir: str, work_dir: str, *more: str):
    from simulforge.pipeline import config

    # No input: the demo corpora in the work dir, so the two runs have the same config wherever they run.
    return config.load(overrides=[f"output={output_dir}", f"work_dir={work_dir}", "languages=[de,es]",
                                  f"configs=[{','.join(ALL_CONFIGS)}]", *more])


def test_the_demo_curated_in_a_bucket_by_external_workers_is_the_local_build_byte_for_byte(
        demo_root, store, pool, tmp_path):
    """Input, output and work_dir in the bucket; PortableRunner's embedded job server hands the work to a
    worker pool in its own empty folder, which has no credentials: the S3 endpoint and keys reach its
    workers only through the pipeline options. The published build equals a local run's, file for file
    (stats.json but for its CPU and wall times and the flags it ran with), and `datasets` reads the copy back."""
    import datasets

    from simulforge.pipeline.curate import run

    workers, pool_cwd = pool
    shutil.copytree(demo_root, tmp_path / "work" / "demo")
    bucket = store.make_bucket("sf-cluster")
    store.upload_tree(demo_root, f"{bucket}/work/demo")  # a user's corpora would already be there

    local_stats = run(_settings(str(tmp_path / "out"), str(tmp_path / "work")), [], echo=lambda *_: None)
    lines = []
    remote_stats = run(_settings(f"{bucket}/out", f"{bucket}/work", "runner=portable-external"),
                       [*workers.beam_args()[1:], *store.beam_args()], echo=lines.append)

    copy = tmp_path / "copy"
    store.download_tree(f"{bucket}/out", copy)
    local, remote = _tree(tmp_path / "out"), _tree(copy)
    stats = {name: json.loads(tree.pop("stats.json")) for name, tree in (("local", local), ("remote", remote))}
    for s in stats.values():
        _drop_timings(s)
    assert "--environment_type=EXTERNAL" in stats["remote"]["run"].pop("beam_args")
    stats["local"]["run"].pop("beam_args")
    assert stats["local"] == stats["remote"]
    local_yaml, remote_yaml = local.pop("curate.yaml").decode(), remote.pop("curate.yaml").decode()
    assert local_yaml.split("\nbeam_args:")[0] == remote_yaml.split("\nbeam_args:")[0].replace(
        "runner: portable-external", "runner: direct")
    assert sorted(remote) == sorted(local) and [p for p in local if local[p] != remote[p]] == []
    assert any(p.startswith("data/conversations/") for p in remote)
    assert local_stats["run"]["config_hash"] == remote_stats["run"]["config_hash"]

    # Nothing secret in what was published or logged; the log went to the bucket's work dir.
    logs = [k for k in store.keys(f"{bucket}/work") if k.startswith("logs/")]
    assert len(logs) == 1, logs
    log = files.read_bytes(f"{bucket}/work/{logs[0]}")
    for blob in [*remote.values(), remote_yaml.encode(), json.dumps(stats["remote"]).encode(), log]:
        assert SECRET_KEY.encode() not in blob and ACCESS_KEY.encode() not in blob
    assert not [k for k in store.keys(f"{bucket}/work") if k.startswith("progress/")]
    assert list(pool_cwd.iterdir()) == []  # the workers wrote nothing where the pool runs

    for config in ALL_CONFIGS:
        ds = datasets.load_dataset(str(copy), config)
        assert {split: ds[split].num_rows for split in ds} == remote_stats["published"][config]["rows"]


def test_an_empty_file_and_a_folder_on_the_store(store, s3_options):
    """Beam's S3 writer fails every 0-byte file (a multipart upload with no part); files.py mends it.
    An object store has no folders: a prefix with objects under it exists."""
    bucket = store.make_bucket("sf-files")
    with files.open_write(f"{bucket}/a/empty.jsonl"):
        pass
    assert files.read_bytes(f"{bucket}/a/empty.jsonl") == b""
    assert files.exists(f"{bucket}/a") and files.exists(f"{bucket}/a/") and not files.exists(f"{bucket}/b")


def test_the_output_lock_on_the_store_refuses_a_second_run_and_mends_a_dead_one(store, s3_options):
    bucket = store.make_bucket("sf-lock")
    out = f"{bucket}/out"
    seen = []
    with output.Lock(out, seen.append):
        assert files.exists(f"{out}/{output.LOCK}")
        with pytest.raises(output.OutputError, match="is locked by a run"):
            output.Lock(out).__enter__()
    assert not files.exists(f"{out}/{output.LOCK}")
    # A lock left by a process of this host that is gone is taken over, and said so.
    import socket

    with files.open_write(f"{out}/{output.LOCK}") as f:
        f.write(json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname(), "started": "then"}).encode())
    with output.Lock(out, seen.append):
        pass
    assert any("stale lock" in line for line in seen), seen
