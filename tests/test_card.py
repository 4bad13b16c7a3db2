"""The dataset card: its YAML header loads with `datasets` and the Hub's parser, it states the
build, licenses, citations, sizes and quality figures of the run, and its plots sit beside it."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from conftest import curate
from simulforge.pipeline import card, hub, plots
from simulforge.pipeline.dataset_configs import CONFIGS as DATASET_CONFIGS

CONFIGS = ("offline", "simulmt", "conversations")  # the order the dataset config registry gives


@pytest.fixture(scope="module")
def built(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "out"
    stats = curate(demo_root, out, configs=CONFIGS, overrides=["embed.enabled=false"])
    text = (out / "README.md").read_text(encoding="utf-8")
    return out, stats, text


def test_header_parses_and_every_config_loads(built, tmp_path):
    out, stats, text = built
    head = card.front_matter(text)
    assert DatasetCard(text).data.to_dict()["license"] == head["license"]  # the Hub's own parser agrees
    assert head["language"] == ["en", "de", "es"]
    assert head["task_categories"] == ["automatic-speech-recognition", "translation"]
    assert head["size_categories"] == ["n<1K"]
    assert head["simulforge"]["config_hash"] == stats["run"]["config_hash"]
    assert [c["config_name"] for c in head["configs"]] == list(CONFIGS)
    assert datasets.get_dataset_config_names(str(out)) == list(CONFIGS)
    features = {i["config_name"]: datasets.Features._from_yaml_list(i["features"]) for i in head["dataset_info"]}
    for config in CONFIGS:
        ds = datasets.load_dataset(str(out), config, cache_dir=str(tmp_path / "cache"))
        assert {s: len(ds[s]) for s in ds} == stats["published"][config]["rows"]
        assert ds["train"].features == features[config]


def test_card_states_version_sources_and_sizes(built):
    out, stats, text = built
    build = card.front_matter(text)["simulforge"]["build"]
    assert build == card.build_id([str(p) for p in out.glob("data/*/*.parquet")], stats["run"]["config_hash"])
    assert f"**Dataset version: build `{build}`**" in text
    # The mixed build is offered under the most restrictive of its sources' terms.
    assert "license: cc-by-nc-nd-4.0" in text
    for row in ("| MuST-C | CC BY-NC-ND 4.0", "| CoVoST 2 | CC0 1.0", "| FLEURS | CC BY 4.0"):
        assert row in text
    for key in ("@inproceedings{di-gangi-etal-2019-must", "@inproceedings{wang21s_interspeech",
                "@inproceedings{conneau2023fleurs"):
        assert key in text
    for config in CONFIGS:
        assert f'ds = datasets.load_dataset(REPO, "{config}", revision=BUILD)' in text
    rows = stats["published"]["offline"]["rows"]["train"]
    assert f"| train | {rows} | {stats['published']['offline']['audio_hours']['train']:.3f} |" in text
    assert "| CoVoST 2 | " in text and "not in corpus" in text  # coverage: CoVoST 2 has no English→Spanish
    assert "| simulate/pairing |" in text  # rejects per stage
    for item in ("git commit", "config hash", "segmenter", "simulation"):
        assert f"- {item}: `" in text


def test_quality_figures_and_plots(built):
    out, stats, text = built
    for name in ("durations", "chunk_length", "monotonicity", "conversations"):
        png = out / plots.PLOTS_DIR / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plots.PLOTS_DIR}/{name}.png)" in text
    assert "| duration (s) | " in text
    assert "| low: words per chunk |" in text
    assert "| RT60 (s) |" in text and "| SNR (dB) |" in text and "| overlap ratio |" in text
    assert "Crossing rate" in text  # the segment stage's monotonicity table
    hub.check(str(out))  # what curate wrote is publishable as it is


def test_most_restrictive_license():
    assert card.most_restrictive(["cc0-1.0", "cc-by-4.0"]) == "cc-by-4.0"
    assert card.most_restrictive(["cc0-1.0", "cc-by-nc-nd-4.0", "cc-by-4.0"]) == "cc-by-nc-nd-4.0"
    assert card.most_restrictive(["cc0-1.0"]) == "cc0-1.0"
    assert card.most_restrictive(["cc0-1.0", "custom-research-only"]) == "other"  # never guess looser terms


def test_simulst_levels_and_alignment_error(tmp_path):
    """The simulst config (chunk times) and the align section appear on the card when present."""
    # The layout the simulst config publishes: a `latency` struct with one field per level.
    level = pa.struct([("source_chunks", pa.list_(pa.string())), ("chunk_end_s", pa.list_(pa.float64())),
                       ("speech_seg_size", pa.list_(pa.int64()))])
    table = pa.table({
        "id": ["a", "b"], "duration": [2.0, 3.0], "translation": [{"de": "x"}, {"de": None}],
        "latency": pa.array([{"low": {"source_chunks": ["one two", "three"], "chunk_end_s": [0.5, 1.25],
                                      "speech_seg_size": [8000, 20000]}},
                             {"low": {"source_chunks": ["four five six"], "chunk_end_s": [2.0],
                                      "speech_seg_size": [32000]}}], pa.struct([("low", level)])),
    })
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, path)
    figures = plots.collect({"simulst": {"train": [str(path)]}}, ["de"], DATASET_CONFIGS)
    assert figures.chunk_words == {"low": [2, 1, 3]}
    assert np.allclose(figures.chunk_seconds["low"], [0.5, 0.75, 2.0])
    assert figures.languages["simulst"]["train"]["de"] == [1, 2.0]

    stats = {"run": {"simulforge": "0", "config_hash": "c", "git_commit": "g"},
             "published": {"simulst": {"rows": {"train": 2}, "audio_hours": {"train": 0.0014}}},
             "coverage": {}, "stages": {},
             "align": {"utterances": {"in": 2, "out": 2, "rejected": 0}, "words": 6,
                       "error_ms": {"clips": 2, "boundaries": 12, "unmatched_clips": 0, "mean": 21.5, "p50": 18.0,
                                    "p90": 40.0}}}
    features = datasets.Features({"id": datasets.Value("string")})
    pictures = plots.draw(figures, stats, str(tmp_path))
    text = card.render({"simulst": features}, stats, splits={"simulst": ["train"]}, langs=["de"],
                       corpora={"covost": "cc0-1.0"}, build_info={}, build="b", figures=figures,
                       pictures=pictures, sections=[])
    assert "| low: seconds per chunk | 3 | 1.08 |" in text
    assert "mean 21.5 ms, median 18.0 ms, p90 40.0 ms over 12 boundaries in 2 clips" in text
    assert "](plots/chunk_length.png)" in text and "license: cc0-1.0" in text
    assert json.loads(json.dumps(card.front_matter(text)))["configs"][0]["config_name"] == "simulst"
