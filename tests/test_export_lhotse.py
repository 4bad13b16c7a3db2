"""lhotse export: a small published dataset → manifests that lhotse loads, with audio of the right length."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import lhotse  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from simulforge.export_lhotse import main  # noqa: E402
from simulforge.pipeline.dataset_configs.offline import offline_features, offline_row  # noqa: E402
from simulforge.transforms.audio import encode_flac  # noqa: E402
from simulforge.transforms.records import AudioRef, Utterance  # noqa: E402

RATE = 16000
LANGS = ["de", "es"]
WORDS = {"mustc/ted_1_0": [("Hello", 0.1, 0.4), ("world.", 0.5, 0.9)], "covost/clip_7": [("Yes.", 0.05, 0.3)]}


CLIPS = Path(tempfile.mkdtemp(prefix="simulforge-lhotse-"))  # where the audio stage would leave the clips
atexit.register(shutil.rmtree, CLIPS, ignore_errors=True)


def utterance(uid: str, split: str, seconds: float, translations: dict[str, str]) -> Utterance:
    t = np.arange(round(seconds * RATE)) / RATE
    clip = CLIPS / f"{uid.replace('/', '_')}.flac"
    clip.write_bytes(encode_flac(0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32), RATE))
    text = " ".join(w for w, _, _ in WORDS.get(uid, [("Hi.", 0, 0)]))
    return Utterance(
        id=uid,
        corpus=uid.split("/")[0],
        split=split,
        audio=AudioRef(str(clip)),
        speaker="spk1",
        source_lang="en",
        source_text=text,
        translations=translations,
        duration_s=seconds,
        embedding=[0.5, 0.5, 0.5, 0.5],
    )


UTTERANCES = [
    utterance("mustc/ted_1_0", "train", 1.0, {"de": "Hallo Welt.", "es": "Hola mundo."}),
    utterance("covost/clip_7", "train", 0.5, {"de": "Ja."}),
    utterance("fleurs/42", "test", 1.5, {"de": "Hi.", "es": "Hola."}),
]


def simulst_features() -> datasets.Features:
    # The offline columns plus `words`, the word timings the simulst config carries.
    features = dict(offline_features(LANGS, RATE, embedding_dim=4))
    features["words"] = datasets.List(
        {
            "word": datasets.Value("string"),
            "start": datasets.Value("float32"),
            "end": datasets.Value("float32"),
        }
    )
    return datasets.Features(features)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A dataset folder in the published layout, with `offline` and `simulst` configs."""
    root = tmp_path_factory.mktemp("published")
    configs = {"offline": offline_features(LANGS, RATE, embedding_dim=4), "simulst": simulst_features()}
    card = {"configs": [], "dataset_info": []}
    for name, features in configs.items():
        splits = ["train", "test"]
        for split in splits:
            rows = [offline_row(u, LANGS) for u in UTTERANCES if u.split == split]
            if name == "simulst":
                for row in rows:
                    row["words"] = [{"word": w, "start": s, "end": e} for w, s, e in WORDS.get(row["id"], [])]
            (root / "data" / name).mkdir(parents=True, exist_ok=True)
            pq.write_table(
                pa.Table.from_pylist(rows, schema=features.arrow_schema),
                root / "data" / name / f"{split}-00000-of-00001.parquet",
            )
        card["configs"].append(
            {
                "config_name": name,
                "data_files": [{"split": split, "path": f"data/{name}/{split}-*"} for split in splits],
            }
        )
        card["dataset_info"].append({"config_name": name, "features": features._to_yaml_list()})
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n# test dataset\n")
    return root


def test_lhotse_loads_the_offline_export(published, tmp_path):
    out = tmp_path / "lhotse"
    assert main([str(published), str(out)]) == 0
    recs = lhotse.load_manifest(out / "simulforge_offline_recordings_train.jsonl.gz")
    sups = lhotse.load_manifest(out / "simulforge_offline_supervisions_train.jsonl.gz")
    assert isinstance(recs, lhotse.RecordingSet) and isinstance(sups, lhotse.SupervisionSet)
    lhotse.qa.validate_recordings_and_supervisions(recs, sups)
    assert sorted(recs.ids) == ["covost/clip_7", "mustc/ted_1_0"]

    rec = recs["covost/clip_7"]
    assert rec.sampling_rate == RATE and rec.duration == pytest.approx(0.5)
    assert rec.load_audio().shape == (1, RATE // 2)
    assert (out / "audio" / "covost" / "clip_7.flac").exists()

    sup = next(s for s in sups if s.recording_id == "mustc/ted_1_0")
    assert (sup.text, sup.language, sup.speaker) == ("Hello world.", "en", "spk1")
    assert sup.duration == pytest.approx(1.0) and sup.alignment is None
    assert sup.custom["translation"] == {"de": "Hallo Welt.", "es": "Hola mundo."}
    assert "embedding" not in sup.custom and sup.custom["corpus"] == "mustc"  # the embedding only when asked
    assert next(s for s in sups if s.id == "covost/clip_7").custom["translation"] == {"de": "Ja."}

    test_recs = lhotse.load_manifest(out / "simulforge_offline_recordings_test.jsonl.gz")
    assert test_recs["fleurs/42"].load_audio().shape == (1, round(1.5 * RATE))
    assert not (out / ".partial").exists()


def test_the_embedding_is_exported_only_when_asked(published, tmp_path):
    out = tmp_path / "lhotse"
    assert main([str(published), str(out), "--embedding", "--split", "train"]) == 0
    sups = lhotse.load_manifest(out / "simulforge_offline_supervisions_train.jsonl.gz")
    assert sups["mustc/ted_1_0"].custom["embedding"] == [0.5, 0.5, 0.5, 0.5]


def test_simulst_export_carries_word_alignments(published, tmp_path):
    out = tmp_path / "lhotse"
    assert main([str(published), str(out), "--config", "simulst", "--split", "train"]) == 0
    assert not (out / "simulforge_simulst_recordings_test.jsonl.gz").exists()
    sups = lhotse.load_manifest(out / "simulforge_simulst_supervisions_train.jsonl.gz")
    words = sups["mustc/ted_1_0"].alignment["word"]
    assert [(w.symbol, w.start, w.end) for w in words] == [("Hello", 0.1, 0.4), ("world.", 0.5, 0.9)]
    assert "words" not in sups["mustc/ted_1_0"].custom
    cuts = lhotse.CutSet.from_manifests(
        recordings=lhotse.load_manifest(out / "simulforge_simulst_recordings_train.jsonl.gz"),
        supervisions=sups,
    )
    assert sorted(c.duration for c in cuts) == pytest.approx([0.5, 1.0])


def test_bad_arguments_fail_with_a_message(published, tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    assert main([str(published), str(tmp_path / "o"), "--split", "dev"]) == 2
    assert "has no split 'dev'; it has train, test" in capsys.readouterr().err


def test_conversations_export_validates_in_lhotse(curated_demo, tmp_path, capsys):
    """A real build's conversations: one multi-channel recording each, one supervision per turn with its
    speaker, words and translations, the conversation's own columns on a cut; no embedding anywhere."""
    data, stats = curated_demo
    out = tmp_path / "lhotse"
    assert main([str(data), str(out), "--config", "conversations"]) == 0
    printed = capsys.readouterr().out
    rows = datasets.load_dataset(str(data), "conversations").cast_column("audio", datasets.Audio(decode=False))
    for split, n in stats["published"]["conversations"]["rows"].items():
        recs = lhotse.load_manifest(out / f"simulforge_conversations_recordings_{split}.jsonl.gz")
        sups = lhotse.load_manifest(out / f"simulforge_conversations_supervisions_{split}.jsonl.gz")
        cuts = lhotse.load_manifest(out / f"simulforge_conversations_cuts_{split}.jsonl.gz")
        lhotse.qa.validate_recordings_and_supervisions(recs, sups, read_data=True)
        lhotse.qa.validate(cuts, read_data=True)
        turns = sum(len(r["segments"]) for r in rows[split])
        assert len(recs) == len(cuts) == n and len(sups) == turns
        assert f"{split}: {n} recordings, {turns} supervisions, {n} cuts" in printed
        for row in rows[split]:
            rec, cut = recs[row["id"]], cuts[row["id"]]
            assert rec.num_channels == len(row["room"]["channel_names"]) == 7
            assert rec.duration == pytest.approx(row["duration"], abs=1e-3)
            mine = sorted((s for s in sups if s.recording_id == row["id"]), key=lambda s: s.id)
            assert len(mine) == len(row["segments"]) and isinstance(cut, lhotse.MultiCut)
            for sup, turn in zip(mine, row["segments"], strict=True):
                assert (sup.speaker, sup.text, sup.language) == (turn["speaker"], turn["text"], "en")
                assert sup.start == pytest.approx(turn["start_s"]) and sup.end == pytest.approx(turn["end_s"])
                assert sup.channel == list(range(7))
                assert sup.custom["translation"] == {k: v for k, v in turn["translations"].items() if v}
                assert sup.custom["source_speaker"] == turn["source_speaker"]
                assert sup.custom["utterance_id"] == turn["utterance_id"]
                assert "embedding" not in sup.custom
                spoken = [w["word"] for w in row["words"] if w["speaker"] == turn["speaker"]
                          and turn["start_s"] <= (w["start_s"] + w["end_s"]) / 2 <= turn["end_s"]]
                assert [w.symbol for w in sup.alignment["word"]] == spoken == turn["text"].split()
            assert sum(len(s.alignment["word"]) for s in mine) == len(row["words"])
            room = {("array_preset" if k == "array" else k): v for k, v in row["room"].items()}
            assert cut.custom["sot_text"] == row["sot_text"] and cut.custom["room"] == room
            assert cut.custom["sot_translation"] == {k: v for k, v in row["sot_translation"].items() if v}
            assert cut.custom["translation_chunks"] == {k: v for k, v in row["translation_chunks"].items() if v}
            assert len(cut.supervisions) == len(mine)
    audio = recs[0].load_audio()
    assert audio.shape == (7, recs[0].num_samples) and np.abs(audio).max() > 0
