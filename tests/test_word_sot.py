"""Word-level SOT where it is used: the curated `conversations` rows, and JSTAR's check of the order it trains on."""

from __future__ import annotations

import json
from itertools import pairwise

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from simulforge.models.jstar import JointTask, JstarConfig
from simulforge.pipeline.dataset_configs import conversations as conversations_config
from simulforge.training.config import ConfigError
from simulforge.transforms import sot
from simulforge.transforms.records import AudioRef, Conversation

TOKENS = {sot.SELF: "<SELF>", sot.OTHER: "<OTHER>"}


def _own(pieces: list[tuple[str, str]], role: str) -> str:
    return " ".join(text for r, text in pieces if r == role and text)


def test_curated_conversations_are_time_ordered_aligned_and_counted(curated_demo):
    out, stats = curated_demo
    conversations = datasets.load_dataset(str(out), "conversations").remove_columns("audio")
    simulst = datasets.load_dataset(str(out), "simulst").select_columns("id")
    aligned = {i for split in simulst for i in simulst[split]["id"]}
    with open(out / "rejected.jsonl", encoding="utf-8") as f:
        unaligned = {r["id"] for r in map(json.loads, f) if r["stage"] in ("segment", "align")}
    reordered = rows = 0
    for split in conversations:
        for row in conversations[split]:
            rows += 1
            used = {s["utterance_id"] for s in row["segments"]}
            # Made of aligned utterances only: what segment or align rejected is in no conversation.
            assert used <= aligned and not used & unaligned, row["id"]
            words = row["words"]
            assert [w["end_s"] for w in words] == sorted(w["end_s"] for w in words), row["id"]
            # The transcript is the words in that order, a speaker token at each change of speaker.
            pieces = sot.split_sot(row["sot_text"], TOKENS)
            assert all(a != b for (a, _), (b, _) in pairwise(pieces)), row["id"]
            assert [(r, w) for r, text in pieces for w in text.split()] == [(w["speaker"], w["word"]) for w in words]
            for w in words:  # inside a turn of its speaker (the RTTM's segments)
                assert any(s["speaker"] == w["speaker"] and s["start_s"] <= w["start_s"] <= w["end_s"] <= s["end_s"]
                           for s in row["segments"]), (row["id"], w)
            # Per speaker, the transcript and each translation hold that speaker's utterances in order.
            for role in (sot.SELF, sot.OTHER):
                turns = [s for s in row["segments"] if s["speaker"] == role]
                assert _own(pieces, role) == " ".join(s["text"] for s in turns)
                for lang, text in row["sot_translation"].items():
                    if text is not None:
                        theirs = " ".join(s["translations"][lang] for s in turns)
                        assert _own(sot.split_sot(text, TOKENS), role) == theirs, (row["id"], lang)
            by_start = sorted(row["segments"], key=lambda s: s["start_s"])
            reordered += [w["word"] for w in words] != [w for s in by_start for w in s["text"].split()]
    section = stats["simulate"]
    assert section["sot"] == {"mode": "word", "latency_level": "medium", "unaligned_utterances": "left out"}
    assert section["conversations"] == rows == sum(stats["published"]["conversations"]["rows"].values())
    assert section["reordered"]["conversations"] == reordered > 0
    assert section["wait"]["word"] == {"mean_ms": 0.0, "waiting_words": 0}
    assert section["wait"]["utterance"]["mean_ms"] > 0
    card = (out / "README.md").read_text()
    assert "### Serialized output (conversations)" in card and "left out" in card


def _task(order: str = "word") -> JointTask:
    return JointTask({"order": order}, JstarConfig(), "stages.joint.options")


WORDS = [(sot.SELF, "I", 0.3), (sot.SELF, "think", 0.6), (sot.OTHER, "Wait,", 0.8), (sot.SELF, "so.", 1.0)]


def _dataset(tmp_path, rows: list[tuple[str, list]]):
    """A `conversations` split whose rows have these (sot_text, words), with 2-channel silence for audio."""
    tmp_path.mkdir()
    silence = tmp_path / "silence.flac"
    sf.write(silence, np.zeros((16000, 2), np.float32), 16000, format="FLAC")
    convs = [Conversation(
        id=f"conv{k}", split="train", channels=2, sampling_rate=16000, room={}, sot_text=text, sot_translations={},
        segments=[{"speaker": sot.SELF, "source_speaker": "a", "start_s": 0.0, "end_s": 1.0, "utterance_id": "u",
                   "text": ""}],
        words=[{"word": w, "speaker": s, "start_s": e - 0.2, "end_s": e} for s, w, e in words],
        audio=AudioRef(str(silence)))
        for k, (text, words) in enumerate(rows)]
    features = conversations_config.conversation_features([], 16000)
    table = pa.Table.from_pylist([conversations_config.row(c, []) for c in convs], schema=features.arrow_schema)
    pq.write_table(table, tmp_path / "train.parquet")
    return datasets.load_dataset("parquet", data_files=str(tmp_path / "train.parquet"), split="train")


def test_jstar_refuses_utterance_ordered_targets_unless_told(tmp_path):
    good = ("<SELF> I think <OTHER> Wait, <SELF> so.", WORDS)
    _task().fit_to_data(_dataset(tmp_path / "a", [good, ("<SELF> I think so. <OTHER> Wait,", [])]), "train")  # no
    # times to check in the second row
    by_utterance = _dataset(tmp_path / "b", [good, ("<SELF> I think so. <OTHER> Wait,", WORDS)])
    with pytest.raises(ConfigError, match=r"sot_text of row conv1 in train is not in word order.*options.order: any"):
        _task().fit_to_data(by_utterance, "train")
    _task("any").fit_to_data(by_utterance, "train")  # which trains on the column as it is
    with pytest.raises(ConfigError, match="order: .utterance. is not one of .word., .any."):
        _task("utterance")
