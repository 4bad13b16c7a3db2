"""The dataset card: its YAML header loads with `datasets` and the Hub's parser; it explains every
column of every config, the special tokens, missing languages and the embedding; its DataLoader
recipe runs; it states the build, the sources' real licenses, provenance and citations (and says
so when the speech is synthesized), the Hub template's use, limitation and personal-information
sections, sizes and quality figures; its plots sit beside it."""

from __future__ import annotations

import json
import re
import shutil

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import DatasetCard

from conftest import curate
from simulforge.pipeline import card, columns, config, hub, plots, provenance
from simulforge.pipeline.dataset_configs import CONFIGS as DATASET_CONFIGS

CONFIGS = ("offline", "simulmt", "conversations")  # the order the dataset config registry gives
HUB_SECTIONS = ("## Uses", "### Intended use", "### Out-of-scope use", "## Bias, risks and limitations",
                "## Personal and sensitive information")


@pytest.fixture(scope="module")
def built(demo_root, tmp_path_factory):
    """The demo corpora as real corpora would be: without the demo's README.txt, nothing says the
    speech is synthesized, so the configured licenses apply."""
    raw = tmp_path_factory.mktemp("card") / "raw"
    shutil.copytree(demo_root, raw)
    (raw / "README.txt").unlink()
    out = raw.parent / "out"
    stats = curate(raw, out, configs=CONFIGS, overrides=["embed.enabled=false"])
    text = (out / "README.md").read_text(encoding="utf-8")
    return out, stats, text


@pytest.fixture(scope="module")
def demo(curated_demo):
    """conftest's session build of the demo corpora with every config and the embedding."""
    out, stats = curated_demo
    return out, stats, (out / "README.md").read_text(encoding="utf-8")


def test_header_parses_and_every_config_loads(built, tmp_path):
    out, stats, text = built
    head = card.front_matter(text)
    assert DatasetCard(text).data.to_dict()["license"] == head["license"]  # the Hub's own parser agrees
    assert head["language"] == ["en", "de", "es"]
    assert head["task_categories"] == ["automatic-speech-recognition", "translation"]
    assert head["simulforge"]["config_hash"] == stats["run"]["config_hash"]
    assert [c["config_name"] for c in head["configs"]] == list(CONFIGS)
    assert datasets.get_dataset_config_names(str(out)) == list(CONFIGS)
    features = {i["config_name"]: datasets.Features._from_yaml_list(i["features"]) for i in head["dataset_info"]}
    for config_name in CONFIGS:
        ds = datasets.load_dataset(str(out), config_name, cache_dir=str(tmp_path / "cache"))
        assert {s: len(ds[s]) for s in ds} == stats["published"][config_name]["rows"]
        assert ds["train"].features == features[config_name]


def test_size_category_counts_utterances_not_simulmt_rows():
    stats = {"published": {"offline": {"rows": {"train": 600, "test": 300}},
                           "simulmt": {"rows": {"train": 1800, "test": 900}}}}
    assert card.utterances(stats) == 900
    head = card.header({}, {}, {**stats, "run": {"simulforge": "0", "config_hash": "c", "git_commit": "g"}},
                       ["de"], "cc0-1.0", "b")
    assert head["size_categories"] == ["n<1K"]  # 900 utterances, though simulmt has 2,700 rows


def test_card_states_version_real_licenses_provenance_and_citations(built):
    out, stats, text = built
    head = card.front_matter(text)
    build = head["simulforge"]["build"]
    assert build == card.build_id([str(p) for p in out.glob("data/*/*.parquet")], stats["run"]["config_hash"])
    assert f"**Dataset version: build `{build}`**" in text
    # Real corpora: the mixed build is offered under the most restrictive of its sources' terms.
    assert head["license"] == "cc-by-nc-nd-4.0" and "synthesized" not in text.split("---", 2)[2].lower()
    raw = out.parent / "raw"
    sources = head["simulforge"]["sources"]
    assert head["simulforge"]["input"] == str(raw) and head["simulforge"]["synthesized"] is False
    assert {c: s["license"] for c, s in sources.items()} == {"mustc": "cc-by-nc-nd-4.0", "covost": "cc0-1.0",
                                                              "fleurs": "cc-by-4.0"}
    assert sources["covost"]["releases"] == ["v2"] and sources["mustc"]["releases"] == []  # covost_v2.en_de.tsv
    assert f"| MuST-C | CC BY-NC-ND 4.0 (`cc-by-nc-nd-4.0`) | `{raw}/mustc` | en-de, en-es; splits dev, train, " \
           "tst-COMMON; 6 files | none stated" in text
    assert f"| CoVoST 2 | CC0 1.0 (`cc0-1.0`) | `{raw}/covost` | en-de; splits named inside the files; 1 file | `v2` |" \
        in text
    assert f"Input folder: `{raw}`." in text
    assert "NoDerivatives terms cover adapted material" in text
    for key in ("@inproceedings{di-gangi-etal-2019-must", "@inproceedings{wang21s_interspeech",
                "@inproceedings{conneau2023fleurs", "@inproceedings{ardila-etal-2020-common"):
        assert key in text
    assert text.count(card.COMMON_VOICE_RULE) == 2  # with the citation, and under personal information
    positions = [text.index(section) for section in HUB_SECTIONS]
    assert positions == sorted(positions)
    assert "Common Voice volunteers; the id is their hashed `client_id`" in text
    for config_name in CONFIGS:
        assert f'ds = datasets.load_dataset(REPO, "{config_name}", revision=BUILD)' in text
    rows = stats["published"]["offline"]["rows"]["train"]
    assert f"| train | {rows} | {stats['published']['offline']['audio_hours']['train']:.3f} |" in text
    assert "| CoVoST 2 | " in text and "not in corpus" in text  # coverage: CoVoST 2 has no English→Spanish
    assert "| simulate/pairing |" in text  # rejects per stage
    for item in ("git commit", "config hash", "segmenter", "simulation"):
        assert f"- {item}: `" in text
    assert "### Reproducibility" in text and "byte for byte" in text


def test_demo_card_says_its_speech_is_synthesized_and_which_license_applies(demo, demo_root):
    out, stats, text = demo
    head = card.front_matter(text)
    assert head["license"] == "apache-2.0" and "synthetic" in head["tags"]
    assert head["simulforge"]["synthesized"] is True and head["simulforge"]["input"] == str(demo_root)
    assert all(s["synthesized"] and s["configured_license"] for s in head["simulforge"]["sources"].values())
    body = text.split("---", 2)[2]
    assert "> **Synthesized speech.**" in body and "**All audio in this build is synthesized.**" in body
    assert "| MuST-C layout, synthesized | Apache 2.0 (`apache-2.0`) |" in body
    assert "CC BY-NC-ND" not in body and "@inproceedings" not in body  # the corpora's terms and papers do not apply
    assert "No real person's voice or data" in body
    assert provenance.restrictions(head) == []  # nothing stops its upload
    assert all(section in body for section in HUB_SECTIONS)


def test_every_column_of_every_config_is_documented(demo):
    """Each config module documents each of its columns next to its features: a column added without
    a doc, or a doc left for a column that is gone, fails here; the card shows every one with its type."""
    out, stats, text = demo
    settings = config.load(overrides=["embed.enabled=true"])
    types: dict[str, set[str]] = {}
    for name, module in DATASET_CONFIGS.items():
        features = module.features(settings)
        assert columns.undocumented(features, module.COLUMNS) == [], name
        paths = dict(columns.columns(features, module.COLUMNS))
        assert set(module.COLUMNS) - set(paths) == set(), f"{name}: docs for columns it does not have"
        section = text.split(f"### `{name}`", 1)[1].split("```python", 1)[0]
        for path, kind in paths.items():
            unit, meaning = module.COLUMNS[path]
            assert f"| `{path}` | {kind} | {unit or '—'} | {meaning.replace('|', chr(92) + '|')} |" in section
            types.setdefault(path, set()).add(kind)
    # One type per meaning: a column name means one thing in every config that has it, but for these.
    homonyms = {"latency": {"struct", "string"}}  # simulst: a struct of every level's chunks; simulmt: the row's level
    assert {path: kinds for path, kinds in types.items() if len(kinds) > 1} == homonyms
    assert "| `duration` | float32 | s |" in text.split("### `conversations`", 1)[1]
    assert "| `latency.<level>.labels` | list[int8] | — |" in text
    assert "| `embedding` | list[float32, 384] | — |" in text


def test_a_new_column_without_a_doc_is_caught():
    features = DATASET_CONFIGS["offline"].offline_features(["de", "es"], 16000, 384)
    docs = DATASET_CONFIGS["offline"].COLUMNS
    assert columns.undocumented(features, docs) == []
    features["pitch"] = datasets.Value("float32")
    features["translation"]["fr"] = datasets.Value("string")  # a language: the <lang> entry covers it
    features["words"] = datasets.List({"word": datasets.Value("string"), "stress": datasets.Value("int8")})
    assert columns.undocumented(features, docs) == ["pitch", "words", "words[].word", "words[].stress"]


def test_special_tokens_missing_languages_and_embedding_are_explained(demo):
    out, stats, text = demo
    section = text.split("## Special tokens, missing languages and the embedding", 1)[1].split("\n## ", 1)[0]
    for token in (r"<\|end-of-read\|>", r"<\|end-of-write\|>", "<SELF>", "<OTHER>"):
        assert f"| `{token}` |" in section
    assert "who wears the microphone array" in section
    assert "is **null** in that field: never an empty string, never a missing key" in section
    teacher = stats["embedding_teacher"]
    assert f"`{teacher['name']}`'s sentence embedding of `source_text`: {teacher['dim']} float32 values, " \
           "L2-normalised to length 1" in section and repr(teacher["prefix"]) in section
    row = datasets.load_dataset(str(out), "offline", split="train")[0]
    assert abs(np.linalg.norm(row["embedding"]) - 1) < 1e-3 and len(row["embedding"]) == teacher["dim"]


def test_the_dataloader_recipe_runs_on_a_real_build(demo):
    """The card's code, as a user would paste it, on the session's build of the demo corpora."""
    out, stats, text = demo
    preamble = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    recipe = re.search(r"```python\n(.*?)```", text.split("## Training with PyTorch", 1)[1], re.S).group(1)
    assert 'REPO = "ORG/NAME"' in preamble and "DataLoader(ds" in recipe
    ns: dict = {}
    exec(preamble.replace('"ORG/NAME"', repr(str(out))), ns)  # a local copy instead of the hub repo
    exec(recipe, ns)
    batch, ds = ns["batch"], ns["ds"]
    # The filter kept exactly the train rows with an en-de pair (the card's Size table counts them).
    train = datasets.load_dataset(str(out), "simulst", split="train")
    with_de = [r["id"] for r in train.select_columns(["id", "translation"]) if r["translation"]["de"] is not None]
    assert sorted(ds["id"]) == sorted(with_de) and len(with_de) < len(train)
    assert f"| train | {len(train)} | " in text and f" {len(with_de)} rows, " in text
    assert batch["audio"].dtype == torch.float32 and batch["audio"].shape[:2] == (8, 1)
    durations = dict(zip(train["id"], train["duration"], strict=True))
    assert [round(durations[i] * 16000) for i in batch["id"]] == batch["lengths"].tolist()
    assert batch["audio"].shape[2] == int(batch["lengths"].max())
    for i, n in enumerate(batch["lengths"].tolist()):  # padded with zeros after each clip, audio before
        assert batch["audio"][i, 0, n:].abs().sum() == 0 and batch["audio"][i, 0, :n].abs().max() > 0
    assert all(isinstance(t, str) and t for t in batch["target"])
    with pytest.raises(TypeError, match="AudioDecoder"):  # why the recipe has its own collate function
        torch.utils.data.default_collate([ds[0]["audio"], ds[1]["audio"]])


def test_quality_figures_and_plots(built):
    out, stats, text = built
    for name in ("durations", "chunk_length", "monotonicity", "conversations"):
        png = out / plots.PLOTS_DIR / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plots.PLOTS_DIR}/{name}.png)" in text
    assert "| duration (s) | " in text
    low, medium, high = (text.index(f"| {level}: words per chunk |") for level in ("low", "medium", "high"))
    assert low < medium < high  # the configured order of the levels
    assert "| RT60 (s) |" in text and "| SNR (dB) |" in text and "| overlap ratio |" in text
    assert "Crossing rate" in text  # the segment stage's monotonicity table
    hub.check(str(out))  # what curate wrote is publishable as it is


def test_most_restrictive_license():
    assert card.most_restrictive(["cc0-1.0", "cc-by-4.0"]) == "cc-by-4.0"
    assert card.most_restrictive(["cc0-1.0", "cc-by-nc-nd-4.0", "cc-by-4.0"]) == "cc-by-nc-nd-4.0"
    assert card.most_restrictive(["cc0-1.0"]) == "cc0-1.0"
    assert card.most_restrictive(["apache-2.0", "cc0-1.0"]) == "apache-2.0"
    assert card.most_restrictive(["cc0-1.0", "custom-research-only"]) == "other"  # never guess looser terms


def test_releases_named_in_the_layout():
    assert provenance.releases("/data/MUSTC_v1.0/en-de", []) == ["v1.0"]
    assert provenance.releases("/data/covost", ["/data/covost/covost_v2.en_de.tsv"]) == ["v2"]
    assert provenance.releases("/srv/cv-corpus-4-2019-12-10/en", ["/srv/cv-corpus-4-2019-12-10/en/x.tsv"]) == \
        ["cv-corpus-4-2019-12-10"]
    assert provenance.releases("/data/fleurs", ["/data/fleurs/de_de/train.tsv", "/data/dev2/x.tsv"]) == []


def test_no_derivatives_restrictions_from_the_card_header():
    nd = {"simulforge": {"sources": {"mustc": {"license": "cc-by-nc-nd-4.0"}, "fleurs": {"license": "cc-by-4.0"},
                                     "other": {"license": "cc-by-nc-4.0"}}}}  # NonCommercial, adaptations allowed
    assert provenance.restrictions(nd) == ["mustc: its license cc-by-nc-nd-4.0 forbids sharing adapted material "
                                           "(the chunked, aligned and simulated data here adapt it)"]
    demo = {"license": "apache-2.0", "simulforge": {"sources": {"mustc": {"license": "apache-2.0"}}}}
    assert provenance.restrictions(demo) == []
    older = {"license": "cc-by-nc-nd-4.0", "simulforge": {"build": "b"}}  # a card without sources
    assert provenance.restrictions(older) == ["the card's license cc-by-nc-nd-4.0 forbids sharing adapted material"]


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
