"""End to end: `curate` on the demo corpora on each runner mode, read back with `datasets` only."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from importlib import resources
from itertools import accumulate, pairwise

import datasets
import numpy as np
import pytest

from conftest import curate

ALL = ("offline", "simulst", "simulmt", "conversations")
RUNNERS = {
    "multi_process": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "portable_embed": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}


# A word is a whitespace token with its edge punctuation stripped (as the demo's truth has it).
_EDGE = re.compile(r"^[^\w]+|[^\w]+$")


def spoken(text):
    return [w for w in (_EDGE.sub("", t) for t in text.split()) if w]


def parallel_set():
    text = resources.files("simulforge.demo").joinpath("sentences.tsv").read_text(encoding="utf-8")
    return {row["en"]: row for row in csv.DictReader(text.splitlines(), delimiter="\t")}


@pytest.fixture(scope="module")
def curated(curated_demo):
    """conftest's session build of the demo with every config (shared with the trainer's tests)."""
    out, stats = curated_demo
    assert stats["run"]["configs"] == list(ALL)
    return out, stats


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


def test_in_process_publishes_every_config(curated, demo_root):
    out, stats = curated
    ds = check_offline(out, stats)
    train = ds["train"]
    assert set(train["corpus"]) == {"mustc", "covost", "fleurs"}
    assert [t for t in train["translation"] if t["de"] and t["es"]], "multi-way rows carry both languages"
    assert stats["coverage"]["covost"]["not_in_corpus"] == ["es"]
    assert any("resampled 48000->16000" in fixes for fixes in train["fixes"])
    assert len(train[0]["embedding"]) == stats["embedding_teacher"]["dim"]
    card = (out / "README.md").read_text()
    # Every config asked for is published, whatever the run's own stats say.
    assert set(stats["published"]) == set(ALL) and set(os.listdir(out / "data")) == set(ALL)
    for config in ALL:
        assert f"config_name: {config}" in card
        loaded = datasets.load_dataset(str(out), config)
        assert {s: len(loaded[s]) for s in loaded} == stats["published"][config]["rows"]
    check_simulst(out, stats, ds, demo_root / "truth" / "word_times.jsonl")
    conv = datasets.load_dataset(str(out), "conversations", split="train")[0]
    assert conv["audio"].get_all_samples().data.shape[0] == 7  # the glasses array
    assert conv["sot_text"].startswith(("<SELF>", "<OTHER>"))
    assert "cc-by-nc-nd-4.0" in card
    # A build and nothing of the run that made it: no staging folder, lock or swap journal.
    assert sorted(p.name for p in out.iterdir()) == [".simulforge-build", "README.md", "curate.yaml", "data",
                                                     "plots", "rejected.jsonl", "stats.json"]


def check_simulst(out, stats, offline, truth_file):
    """Every `simulst` row holds its invariants, and its word times are as accurate as the aligner's own
    test demands against the demo's true times."""
    from simulforge.pipeline import config

    settings = config.load()
    levels, block, rate = settings.segment.levels, settings.align.block_samples, settings.sampling_rate
    simulst = datasets.load_dataset(str(out), "simulst").remove_columns(["audio", "embedding"])
    with open(out / "rejected.jsonl", encoding="utf-8") as f:
        unaligned = {r["id"] for r in map(json.loads, f) if r["stage"] in ("segment", "align")}
    with open(truth_file, encoding="utf-8") as f:
        truth = {t["id"]: t["words"] for t in map(json.loads, f)}
    errors_ms = []
    for split in simulst:
        offline_rows = {r["id"]: r for r in offline[split].remove_columns(["audio", "embedding"])}
        rows = list(simulst[split])
        # Every clip is in simulst unless the segment or align stage rejected it, and as in offline.
        assert {r["id"] for r in rows} == set(offline_rows) - unaligned
        for row in rows:
            same = dict(offline_rows[row["id"]])
            offline_fixes = same.pop("fixes")  # the align stage may add its own (a clamped word end)
            assert {k: row[k] for k in same} == same and row["fixes"][:len(offline_fixes)] == offline_fixes, row["id"]
            check_simulst_row(row, levels, block, rate)
            true = truth[row["id"]]
            assert [w for w, _, _ in true] == [w["word"] for w in row["words"]], row["id"]
            for w, (_, start, end) in zip(row["words"], true, strict=True):
                errors_ms += [1000 * abs(w["start"] - start), 1000 * abs(w["end"] - end)]
    # The aligner's own bounds (tests/test_align.py): mean 40 ms, p90 80 ms. A broken aligner's guess,
    # spreading the words over the clip by their letters, scores about 67 / 163 ms on the demo.
    assert np.mean(errors_ms) < 40 and np.percentile(errors_ms, 90) < 80, (np.mean(errors_ms),
                                                                           np.percentile(errors_ms, 90))
    error = stats["align"]["error_ms"]
    assert error["boundaries"] == len(errors_ms) and error["unmatched_clips"] == 0
    assert error["mean"] == pytest.approx(np.mean(errors_ms), abs=0.01) and error["p90"] < 80


def check_simulst_row(row, levels, block, rate):
    """The invariants of one row (pipeline/dataset_configs/simulst.py, transforms/timing.py), recomputed here."""
    rid, duration, words = row["id"], row["duration"] + 1e-6, row["words"]  # duration is float32
    assert [w["word"] for w in words] == spoken(row["source_text"]), rid
    assert all(0 <= w["start"] < w["end"] <= duration for w in words), rid
    assert all(a["end"] <= b["start"] for a, b in pairwise(words)), rid
    num_samples = round(row["duration"] * rate)
    ends_per_level = []
    for level in levels:
        chunks = row["latency"][level]
        source = chunks["source_chunks"]
        assert " ".join(source) == row["source_text"], (rid, level)
        for lang, text in row["translation"].items():
            target = chunks["target_chunks"][lang]
            assert target is None if text is None else (len(target) == len(source) and " ".join(target) == text), (
                rid, level, lang)
            rate_measured = row["monotonicity"][level][lang]
            assert (rate_measured is None) == (text is None), (rid, level, lang)
            # One chunk has no pair of links across chunks to cross.
            assert text is None or (0 <= rate_measured <= 1 and (len(source) > 1 or rate_measured == 0)), (rid, level)
        # A chunk ends where its last word ends; the ends increase and lie inside the clip.
        ends = chunks["chunk_end_s"]
        assert ends == [words[n - 1]["end"] for n in accumulate(len(spoken(c)) for c in source)], (rid, level)
        assert 0 < ends[0] and all(a < b for a, b in pairwise(ends)) and ends[-1] <= duration, (rid, level)
        sizes = [min(math.ceil(round(end * rate) / block) * block, num_samples) for end in ends]
        assert chunks["speech_seg_size"] == sizes, (rid, level)
        writes = {math.ceil(size / block) - 1 for size in sizes}  # the block each chunk is written after
        assert chunks["labels"] == [int(b in writes) for b in range(math.ceil(sizes[-1] / block))], (rid, level)
        ends_per_level.append(ends)
    assert row["block_samples"] == block
    # Each level coarsens the one before it: its chunks end where some of the finer level's do.
    assert all(set(coarse) <= set(fine) for fine, coarse in pairwise(ends_per_level)), rid


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


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_replaces_the_previous_build_and_rebuilds_the_same_bytes(demo_root, tmp_path):
    """A build replaces another only with overwrite; the old build's files go, the user's stay; and
    the same config run again rebuilds the same build byte for byte, but for how long the run took
    (stats.json's run.wall_s)."""
    out = tmp_path / "out"
    first = curate(demo_root, out, corpora=("covost",), langs=("de",))
    before = _tree(out)
    notes = out / "data" / "offline" / "NOTES.md"  # the user's, beside the shards
    notes.write_text("mine")
    curate(demo_root, out, corpora=("covost", "fleurs"), langs=("de",), overrides=["overwrite=true"])
    other = _tree(out)
    assert notes.read_text() == "mine"
    assert [p for p in other if p.startswith("data/")] and not {p for p in before if p.startswith("data/")} & set(other)
    second = curate(demo_root, out, corpora=("covost",), langs=("de",), overrides=["overwrite=true"])
    after = _tree(out)
    assert after.pop("data/offline/NOTES.md") == b"mine"
    differ = {p for p in before if before[p] != after.get(p)}
    assert set(after) == set(before) and differ <= {"stats.json"}, differ
    first["run"].pop("wall_s"), second["run"].pop("wall_s")
    assert first == second
