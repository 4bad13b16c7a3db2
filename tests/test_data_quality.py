"""`simulforge evaluate data`: monotonicity of the published chunks against the offline pairs, word-time
error against a truth file, CometKiwi only with a local model, and what a dataset without `simulst` gets."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_training_data import build_published  # noqa: E402  (the fixture dataset builder)

from simulforge.eval import data_quality as Q  # noqa: E402
from simulforge.evaluate import main  # noqa: E402


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return build_published(tmp_path_factory.mktemp("published"))


def _reversing_aligner(pairs, settings, extra=()):
    """Links that reverse the word order of a target starting with "w", else keep it."""
    links = []
    for source, target in pairs:
        n = min(len(source.split()), len(target.split()))
        links.append({(i, n - 1 - i) if target.startswith("w") else (i, i) for i in range(n)})
    return links


def test_crossing_rates_hand_computed(monkeypatch):
    monkeypatch.setattr("simulforge.transforms.segment_align.align_corpus", _reversing_aligner)
    utts = {
        # Reversed: all 6 comparable link pairs cross offline; read as "a b | c d", only the 4 pairs
        # across the two chunks do; read as one chunk, none.
        "u1": Q.Utt("a b c d", {"de": "w x y z"}, {"low": (["a b", "c d"], {"de": ["w x", "y z"]}),
                                                   "high": (["a b c d"], {"de": ["w x y z"]})}),
        # In order: 3 pairs, none crossing, in every view.
        "u2": Q.Utt("e f g", {"de": "u v t"}, {"low": (["e", "f g"], {"de": ["u", "v t"]}),
                                               "high": (["e f g"], {"de": ["u v t"]})}),
        # Chunks that do not rebuild the source cannot be placed: counted, not measured.
        "u3": Q.Utt("h i", {"de": "s r"}, {"low": (["h"], {"de": ["s"]})}),
    }
    result = Q.monotonicity(utts)
    assert result["counts"]["de"] == {"offline": {"discordant": 6, "pairs": 10},
                                      "low": {"discordant": 4, "pairs": 9},
                                      "high": {"discordant": 0, "pairs": 9}}
    assert result["crossing_rate"]["de"] == {"offline": 0.6, "low": round(4 / 9, 4), "high": 0.0}
    assert result["reduction"]["de"] == {"low": round(1 - (4 / 9) / 0.6, 4), "high": 1.0}
    assert result["chunks_not_matching_source"] == 1
    assert result["sentences"]["de"]["offline"] == [1.0, 0.0, 0.0]


def test_dataset_quality_with_a_truth_file(published, tmp_path):
    import datasets

    rows = datasets.load_dataset(published, "simulst", split="train", columns=["id", "words"])
    truth = []
    for i, row in enumerate(rows):
        if i < 3:  # every start 10 ms early, every end 30 ms late
            truth.append({"id": row["id"], "words": [[w["word"], w["start"] - 0.010, w["end"] + 0.030]
                                                     for w in row["words"]]})
        elif i == 3:  # other words: not comparable
            truth.append({"id": row["id"], "words": [["something", 0.0, 0.5]]})
    path = tmp_path / "word_times.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in truth))

    out = tmp_path / "quality"
    result = Q.evaluate_dataset(published, truth=str(path), split="train", out=str(out), echo=lambda *_: None)
    assert result["configs"] == ["offline", "simulst", "simulmt", "conversations"]
    assert result["chunks_from"] == "simulst" and result["utterances"] == 6
    error = result["alignment_error"]
    assert (error["clips"], error["unmatched_clips"], error["clips_without_truth"]) == (3, 1, 2)
    assert error["mean"] == pytest.approx(20.0, abs=0.01) and error["p50"] == pytest.approx(20.0, abs=0.01)
    assert error["p90"] == pytest.approx(30.0, abs=0.01)
    for lang in ("de", "es"):  # eflomal on the real pairs
        rates = result["monotonicity"]["crossing_rate"][lang]
        assert list(rates) == ["offline", "low", "high"]
        assert rates["offline"] >= rates["low"] >= rates["high"] == 0.0  # the fixture's high level is one chunk
    assert "cometkiwi skipped: no --cometkiwi model folder given" in result["notes"]
    written = json.loads((out / "quality.json").read_text())
    assert "errors_ms" not in written["alignment_error"] and written["alignment_error"]["mean"] == error["mean"]
    assert (out / "data_quality.png").stat().st_size > 0


def test_a_dataset_without_simulst_is_evaluated_as_far_as_it_can(tmp_path, capsys):
    data = build_published(tmp_path, drop_configs=("simulst",))
    truth = tmp_path / "truth.jsonl"
    truth.write_text("")
    assert main(["data", data, "--truth", str(truth), "--out", str(tmp_path / "q")]) == 0
    printed = capsys.readouterr().out
    assert "configs found: offline, simulmt, conversations" in printed and "chunks from simulmt" in printed
    assert "alignment_error skipped: word times live in the simulst config, which this dataset lacks" in printed
    result = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert set(result["monotonicity"]["crossing_rate"]) == {"de", "es"}
    assert list(result["monotonicity"]["crossing_rate"]["de"]) == ["offline", "low", "high"]


def test_offline_pairs_only_and_bad_input(tmp_path, capsys):
    data = build_published(tmp_path, drop_configs=("simulst", "simulmt"))
    assert main(["data", data, "--out", str(tmp_path / "q")]) == 0
    assert "no simulst or simulmt config: monotonicity of the offline pairs only" in capsys.readouterr().out
    result = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert list(result["monotonicity"]["crossing_rate"]["de"]) == ["offline"]
    assert main(["data", data, "--cometkiwi", str(tmp_path / "no-model")]) == 2
    assert "--cometkiwi: no COMET checkpoint at" in capsys.readouterr().err
    assert main(["data", data, "--split", "test"]) == 2
    assert "has no split 'test'" in capsys.readouterr().err


def test_what_cometkiwi_is_given_and_how_its_scores_are_summarised(published):
    """The model itself is untested: unbabel-comet 2.2.7 needs transformers<5 and numpy<2, which the lock
    excludes (README). What is ours is tested: what each view sends the model, and the summary."""
    utts, _ = Q.read_utterances(published, ["offline", "simulst"], "train", 1)
    items = Q.kiwi_inputs(utts)
    # One clip, two languages, three views each (offline, low, high), source and translation only.
    assert [(lang, view) for lang, view, _ in items] == [(lang, view) for lang in ("de", "es")
                                                         for view in ("offline", "low", "high")]
    assert {x["src"] for _, _, x in items} == {"the cat sleeps on the mat"}
    assert [x["mt"] for lang, _, x in items if lang == "de"] == ["die Katze schläft auf der Matte"] * 3
    result = Q.kiwi_summary(items, [0.5 if lang == "de" else 0.75 + 0.05 * i for i, (lang, _, _) in enumerate(items)])
    assert result["mean"] == {"de": {"offline": 50.0, "low": 50.0, "high": 50.0},
                              "es": {"offline": 90.0, "low": 95.0, "high": 100.0}}
    with pytest.raises(ValueError):  # a score per item, no more, no less
        Q.kiwi_summary(items, [0.5])


def test_cometkiwi_without_the_package_says_so(published, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "comet", None)  # as here: unbabel-comet is not installed
    (tmp_path / "kiwi" / "checkpoints").mkdir(parents=True)
    (tmp_path / "kiwi" / "checkpoints" / "model.ckpt").write_bytes(b"")
    assert main(["data", published, "--cometkiwi", str(tmp_path / "kiwi"), "--out", str(tmp_path / "q")]) == 2
    assert "--cometkiwi needs the unbabel-comet package" in capsys.readouterr().err
