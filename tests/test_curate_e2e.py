"""End to end: `curate` on the demo corpora on each runner mode, read back with `datasets` only."""

from __future__ import annotations

import csv
import json
import os
from importlib import resources

import datasets
import pytest

from conftest import curate

ALL = ("offline", "simulst", "simulmt", "conversations")
RUNNERS = {
    "multi_process": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "portable_embed": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}


def parallel_set():
    text = resources.files("simulforge.demo").joinpath("sentences.tsv").read_text(encoding="utf-8")
    return {row["en"]: row for row in csv.DictReader(text.splitlines(), delimiter="\t")}


@pytest.fixture(scope="module")
def curated(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated") / "in_process"
    return out, curate(demo_root, out, configs=ALL)


def check_offline(out, stats):
    assert stats["balanced"], stats["stages"]
    ds = datasets.load_dataset(str(out), "offline")
    published = stats["published"]["offline"]["rows"]
    assert {s: len(ds[s]) for s in ds} == published
    sentences = parallel_set()
    for split in ds:
        for row in ds[split]:
            ref = sentences[row["source_text"]]
            for lang, text in row["translation"].items():
                assert text is None or text == ref[lang], (row["id"], lang)
    row = ds["train"][0]
    samples = row["audio"].get_all_samples()
    assert samples.sample_rate == 16000 and samples.data.shape[0] == 1
    assert abs(samples.data.shape[1] / 16000 - row["duration"]) < 1e-3
    # Everything read is published or rejected, stage by stage.
    with open(out / "rejected.jsonl", encoding="utf-8") as f:
        rejects = [json.loads(line) for line in f]
    assert len(rejects) == sum(e["rejected_total"] for e in stats["stages"].values())
    assert stats["stages"]["publish/offline"]["out"] == sum(published.values())
    return ds


def test_in_process_publishes_every_config(curated):
    out, stats = curated
    ds = check_offline(out, stats)
    train = ds["train"]
    assert set(train["corpus"]) == {"mustc", "covost", "fleurs"}
    assert [t for t in train["translation"] if t["de"] and t["es"]], "multi-way rows carry both languages"
    assert stats["coverage"]["covost"]["not_in_corpus"] == ["es"]
    assert any("resampled 48000->16000" in fixes for fixes in train["audio_fixes"])
    assert len(train[0]["embedding"]) == stats["embedding_teacher"]["dim"]
    card = (out / "README.md").read_text()
    for config in stats["published"]:
        assert f"config_name: {config}" in card
        loaded = datasets.load_dataset(str(out), config)
        assert {s: len(loaded[s]) for s in loaded} == stats["published"][config]["rows"]
    assert set(stats["published"]) == set(ALL) - ({"simulst"} if "align" not in stats["stages"] else set())
    simulst = datasets.load_dataset(str(out), "simulst", split="train")
    row = simulst[0]
    for chunks in row["latency"].values():
        assert " ".join(chunks["source_chunks"]) == row["source_text"]
        assert all(len(t) == len(chunks["source_chunks"]) for t in chunks["target_chunks"].values() if t)
        assert chunks["chunk_end_s"] == sorted(chunks["chunk_end_s"]) and chunks["chunk_end_s"][-1] <= row["duration"]
    assert any(rate is not None for r in simulst for level in r["monotonicity"].values() for rate in level.values())
    assert stats["align"]["error_ms"]["mean"] < 60  # the demo's true word times are known
    conv = datasets.load_dataset(str(out), "conversations", split="train")[0]
    assert conv["audio"].get_all_samples().data.shape[0] == 7  # the glasses array
    assert conv["sot_text"].startswith(("<SELF>", "<OTHER>"))
    assert "cc-by-nc-nd-4.0" in card and not (out / ".incoming").exists()


def _rows(out, config, columns):
    ds = datasets.load_dataset(str(out), config)
    return {split: sorted(zip(*(ds[split][c] for c in columns), strict=True), key=str) for split in ds}


@pytest.mark.slow
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_other_runners_publish_the_same_dataset(runner, curated, demo_root, tmp_path):
    reference_out, reference_stats = curated
    out = tmp_path / runner
    stats = curate(demo_root, out, beam_args=RUNNERS[runner], configs=("offline", "conversations"),
                   work_dir=str(reference_out) + ".work")
    check_offline(out, stats)
    columns = ["id", "source_text", "translation", "duration", "embedding"]
    assert _rows(out, "offline", columns) == _rows(reference_out, "offline", columns)
    # Conversations draw every choice from seeded RNGs: the same bytes on any runner.
    ours = datasets.load_dataset(str(out), "conversations").cast_column("audio", datasets.Audio(decode=False))
    ref = datasets.load_dataset(str(reference_out), "conversations").cast_column(
        "audio", datasets.Audio(decode=False))
    for split in ref:
        a = {r["id"]: r["audio"]["bytes"] for r in ours[split]}
        b = {r["id"]: r["audio"]["bytes"] for r in ref[split]}
        assert a == b
    for stage in ("read", "join", "audio", "embed", "publish/offline", "simulate/pairing", "simulate/render"):
        assert stats["stages"][stage] == reference_stats["stages"][stage]


def test_rerun_replaces_the_previous_build(demo_root, tmp_path):
    out = tmp_path / "out"
    curate(demo_root, out, corpora=("covost",), langs=("de",))
    stray = out / "data" / "offline" / "train-00007-of-00009.parquet"
    stray.write_bytes(b"old build")
    stats = curate(demo_root, out, corpora=("covost",), langs=("de",))
    assert not stray.exists()
    assert set(os.listdir(out / "data" / "offline")) == {
        f"{s}-00000-of-00001.parquet" for s in stats["published"]["offline"]["rows"]}
