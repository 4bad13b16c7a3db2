"""End to end: `curate` on the demo corpora on each runner mode, read back with `datasets` only."""

from __future__ import annotations

import csv
import json
import os
from importlib import resources

import datasets
import pytest

from conftest import curate

RUNNERS = {
    "in_process": [],
    "multi_process": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "portable_embed": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}


def parallel_set():
    text = resources.files("simulforge.demo").joinpath("sentences.tsv").read_text(encoding="utf-8")
    return {row["en"]: row for row in csv.DictReader(text.splitlines(), delimiter="\t")}


@pytest.fixture(scope="module")
def curated(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated") / "in_process"
    return out, curate(demo_root, out)


def check_published(out, stats):
    assert stats["balanced"]
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


def test_in_process_publishes_a_loadable_multiway_dataset(curated):
    out, stats = curated
    ds = check_published(out, stats)
    train = ds["train"]
    assert set(train["corpus"]) == {"mustc", "covost", "fleurs"}
    both = [t for t in train["translation"] if t["de"] and t["es"]]
    assert both, "multi-way rows carry both languages"
    assert stats["coverage"]["covost"]["not_in_corpus"] == ["es"]
    assert any("resampled 48000->16000" in fixes for fixes in train["audio_fixes"])
    card = (out / "README.md").read_text()
    assert "config_name: offline" in card and "cc-by-nc-nd-4.0" in card
    assert not (out / ".incoming").exists()


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["multi_process", "portable_embed"])
def test_other_runners_publish_the_same_dataset(runner, curated, demo_root, tmp_path):
    reference_out, reference_stats = curated
    out = tmp_path / runner
    stats = curate(demo_root, out, beam_args=RUNNERS[runner], work_dir=str(reference_out) + ".work")
    ds = check_published(out, stats)
    ref = datasets.load_dataset(str(reference_out), "offline")
    for split in ref:
        cols = ["id", "source_text", "translation", "duration"]
        assert sorted(zip(*(ds[split][c] for c in cols), strict=True), key=str) == sorted(
            zip(*(ref[split][c] for c in cols), strict=True), key=str
        )
    assert stats["stages"] == reference_stats["stages"]


def test_rerun_replaces_the_previous_build(demo_root, tmp_path):
    out = tmp_path / "out"
    curate(demo_root, out, corpora=("covost",), langs=("de",))
    stray = out / "data" / "offline" / "train-00007-of-00009.parquet"
    stray.write_bytes(b"old build")
    stats = curate(demo_root, out, corpora=("covost",), langs=("de",))
    assert not stray.exists()
    assert set(os.listdir(out / "data" / "offline")) == {
        f"{s}-00000-of-00001.parquet" for s in stats["published"]["offline"]["rows"]
    }
