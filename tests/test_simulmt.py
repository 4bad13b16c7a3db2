from datasets import Dataset

from simulforge.pipeline.dataset_configs.simulmt import (
    interleave,
    offline_text,
    simulmt_features,
    simulmt_rows,
)
from simulforge.transforms.records import AudioRef, Segmentation, Utterance


def _utt():
    return Utterance(
        id="demo/1",
        corpus="demo",
        split="train",
        audio=AudioRef("x.wav"),
        speaker="s",
        source_lang="en",
        source_text="When I was young,  I lived in Spain.",
        translations={"de": "Als ich jung war, lebte ich in Spanien."},
        segmentations={
            "low": Segmentation(
                "low",
                ["When I was young,", "I lived", "in Spain."],
                {"de": ["Als ich jung war,", "lebte ich", "in Spanien."]},
            ),
            "high": Segmentation(
                "high",
                ["When I was young, I lived in Spain."],
                {"de": ["Als ich jung war, lebte ich in Spanien."]},
            ),
        },
    )


def test_interleaved_string_follows_the_read_write_format():
    assert (
        interleave(["c1", "c2"], ["t1", "t2"])
        == "c1<|end-of-read|>t1<|end-of-write|> c2<|end-of-read|>t2<|end-of-write|>"
    )


def test_offline_form_is_one_whole_chunk():
    assert offline_text(" a  b ", "x y") == "a b<|end-of-read|>x y<|end-of-write|>"


def test_one_row_per_level_with_every_language_column():
    rows = simulmt_rows(_utt(), ["de", "es"])
    assert [r["latency"] for r in rows] == ["low", "high"]
    low = rows[0]
    assert low["id"] == "demo/1"
    assert low["target_chunks"] == {"de": ["Als ich jung war,", "lebte ich", "in Spanien."], "es": None}
    assert low["text"]["de"] == (
        "When I was young,<|end-of-read|>Als ich jung war,<|end-of-write|> "
        "I lived<|end-of-read|>lebte ich<|end-of-write|> in Spain.<|end-of-read|>in Spanien.<|end-of-write|>"
    )
    assert low["text"]["es"] is None and low["offline"]["es"] is None
    assert (
        low["offline"]["de"]
        == "When I was young, I lived in Spain.<|end-of-read|>Als ich jung war, lebte ich in Spanien.<|end-of-write|>"
    )


def test_rows_load_as_a_dataset_with_the_declared_features(tmp_path):
    features = simulmt_features(["de", "es"])
    ds = Dataset.from_list(simulmt_rows(_utt(), ["de", "es"]), features=features)
    ds.to_parquet(tmp_path / "simulmt.parquet")
    back = Dataset.from_parquet(str(tmp_path / "simulmt.parquet"))
    assert back.features == features
    assert back[1]["source_chunks"] == ["When I was young, I lived in Spain."]
    assert back[0]["target_chunks"]["es"] is None
