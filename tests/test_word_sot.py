"""Word-level SOT where it is used: the curated `conversations` rows, and JSTAR's check of the order it trains on."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from simulforge.models.jstar import JointTask, JstarConfig, emission_window, piece_times, token_times
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
            # Each translation's timed units are its text, in its order, each timed inside a turn of its speaker.
            for lang, text in row["sot_translation"].items():
                chunks = row["translation_chunks"][lang]
                if text is None:
                    assert chunks is None, (row["id"], lang)
                    continue
                assert [(r, w) for r, t in sot.split_sot(text, TOKENS) for w in t.split()] == \
                    [(c["speaker"], w) for c in chunks for w in c["text"].split()], (row["id"], lang)
                assert [c["end_s"] for c in chunks] == sorted(c["end_s"] for c in chunks), (row["id"], lang)
                for c in chunks:
                    assert any(s["speaker"] == c["speaker"] and s["start_s"] <= c["start_s"] < c["end_s"] <= s["end_s"]
                               for s in row["segments"]), (row["id"], c)
                    # a unit ends where a word of its speaker ends: it is emitted once its source is heard
                    assert any(w["speaker"] == c["speaker"] and w["end_s"] == c["end_s"] for w in words), (row["id"], c)
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


def _task(order: str = "word", emit_after: str = "heard") -> JointTask:
    return JointTask({"order": order, "emit_after": emit_after}, JstarConfig(), "stages.joint.options")


WORDS = [(sot.SELF, "I", 0.3), (sot.SELF, "think", 0.6), (sot.OTHER, "Wait,", 0.8), (sot.SELF, "so.", 1.0)]


def _dataset(tmp_path, rows: list[tuple]):
    """A `conversations` split whose rows have these (sot_text, words[, de translation, its chunks]), with
    2-channel silence for audio."""
    tmp_path.mkdir()
    silence = tmp_path / "silence.flac"
    sf.write(silence, np.zeros((16000, 2), np.float32), 16000, format="FLAC")
    convs = [Conversation(
        id=f"conv{k}", split="train", channels=2, sampling_rate=16000, room={}, sot_text=text,
        sot_translations={"de": rest[0]} if rest else {},
        segments=[{"speaker": sot.SELF, "source_speaker": "a", "start_s": 0.0, "end_s": 1.0, "utterance_id": "u",
                   "text": "", "translations": {}}],
        words=[{"word": w, "speaker": s, "start_s": e - 0.2, "end_s": e} for s, w, e in words],
        translation_chunks={"de": [{"text": t, "speaker": s, "start_s": 0.0, "end_s": e} for s, t, e in rest[1]]}
        if rest else {},
        audio=AudioRef(str(silence)))
        for k, (text, words, *rest) in enumerate(rows)]
    features = conversations_config.conversation_features(["de"], 16000)
    table = pa.Table.from_pylist([conversations_config.row(c, ["de"]) for c in convs], schema=features.arrow_schema)
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


ROLES = {"<SELF>": sot.SELF, "<OTHER>": sot.OTHER}
TRANSCRIPT = "<SELF> I think <OTHER> Wait, <SELF> so."
TRANSLATION = "<SELF> Ich denke <OTHER> Moment, <SELF> also."
CHUNKS = [(sot.SELF, "Ich denke", 0.6), (sot.OTHER, "Moment,", 0.8), (sot.SELF, "also.", 1.0)]


def test_each_piece_of_a_target_is_timed_by_what_it_says_and_a_speaker_token_by_what_follows_it():
    assert piece_times(TRANSCRIPT, [(s, w, e) for s, w, e in WORDS], ROLES) == [0.3, 0.3, 0.6, 0.8, 0.8, 1.0, 1.0]
    assert piece_times(TRANSLATION, CHUNKS, ROLES) == [0.6, 0.6, 0.6, 0.8, 0.8, 1.0, 1.0]
    # utterance order: each speaker's words are still that speaker's in order, so word-ordered times serve
    assert piece_times("<SELF> I think so. <OTHER> Wait,", WORDS, ROLES) == [0.3, 0.3, 0.6, 1.0, 0.8, 0.8]
    for text, units, match in (("<SELF> I think <OTHER> Wait,", WORDS, "more than the text"),
                               ("<SELF> I think <OTHER> Wait, <SELF> no.", WORDS, "'no.' of SELF is not its next .*'so.'"),
                               ("I think", WORDS, "'I' of no speaker"),
                               (TRANSLATION, CHUNKS[:2], "'also.' of SELF is not its next timed word \\(nothing\\)")):
        with pytest.raises(ValueError, match=match):
            piece_times(text, units, ROLES)


class _Chars:
    """A tokenizer of characters, spaces included: one that does not split at spaces."""

    def encode(self, text):
        return [ord(c) for c in text]


class _Words:
    def encode(self, text):
        return [hash(w) % 1000 for w in text.split()]


def test_every_token_gets_the_time_of_the_piece_it_spells():
    times = [0.3, 0.6, 0.8]
    assert token_times(_Words(), "a bb c", times) == times
    # characters: each space goes with the piece after it, as a growing prefix's token count says
    assert token_times(_Chars(), "a bb c", times) == [0.3, 0.6, 0.6, 0.6, 0.8, 0.8]


def test_the_emission_window_opens_at_a_tokens_time_and_gives_each_token_of_a_piece_a_frame():
    times = torch.tensor([[0.30, 0.30, 0.30, 0.61, 0.0], [0.05, 0.20, 0.20, 0.20, 0.20]])
    first, last = emission_window(times, torch.tensor([0.04, 0.02], dtype=torch.float64), 0.08)
    assert first.tolist() == [[7, 7, 7, 15, 0], [2, 10, 10, 10, 10]]
    assert last.tolist() == [[9, 10, 11, 17, 2], [6, 14, 15, 16, 17]]
    assert emission_window(times, torch.tensor([0.04, 0.02], dtype=torch.float64), None)[1] is None
    untimed = torch.tensor([[0.30, 0.61], [math.nan, math.nan]])  # a row without word times: any frame
    first, last = emission_window(untimed, torch.tensor([0.04, 0.04], dtype=torch.float64), 0.08)
    assert first.tolist()[1] == [0, 0] and min(last.tolist()[1]) > 10**9 and last.tolist()[0] == [9, 17]
    assert emission_window(None, torch.tensor([0.04]), 0.08) == (None, None)


def test_jstar_times_its_targets_from_the_words_and_translation_chunks_or_says_why_it_cannot(tmp_path):
    good = (TRANSCRIPT, WORDS, TRANSLATION, CHUNKS)
    task = _task()
    assert "translation_chunks.de" in task.time_columns() and not _task(emit_after="any").time_columns()
    ds = _dataset(tmp_path / "a", [good])
    task.check_features(ds.features)
    task.fit_to_data(ds, "train")
    with pytest.raises(ConfigError, match=r"emit_after: heard needs .* translation_chunks.de, which the dataset lacks"
                                          r".*curate again, or set emit_after: any"):
        task.check_features(ds.remove_columns("translation_chunks").features)
    _task(emit_after="any").check_features(ds.remove_columns("translation_chunks").features)
    wrong = (TRANSCRIPT, WORDS, TRANSLATION.replace("also", "so"), CHUNKS)
    bad = _dataset(tmp_path / "b", [good, wrong])
    with pytest.raises(ConfigError, match=r"row conv1 of train: piece 'so.' of SELF .*options.emit_after: any"):
        _task().fit_to_data(bad, "train")
    _task(emit_after="any").fit_to_data(bad, "train")
    # a row without word times trains on every alignment: its tokens' times are NaN
    task = _task()
    task.tok = _Words()
    untimed = _dataset(tmp_path / "c", [(TRANSCRIPT, [], TRANSLATION, [])])
    task.fit_to_data(untimed, "train")
    asr, st = task._times(untimed[0], *(task.encode(t) for t in task._targets(untimed[0])))
    assert len(asr) == 7 and len(st) == 7 and asr.isnan().all() and st.isnan().all()
    row = _dataset(tmp_path / "d", [good])[0]
    asr, st = task._times(row, *(task.encode(t) for t in task._targets(row)))
    assert asr.tolist() == pytest.approx([0.3, 0.3, 0.6, 0.8, 0.8, 1.0, 1.0]) and st.tolist()[:3] == pytest.approx([0.6] * 3)
    with pytest.raises(ConfigError, match="emit_after: .soon. is not one of .heard., .any."):
        _task(emit_after="soon")
    with pytest.raises(ConfigError, match="emit_within_ms must be a duration in ms or null, got -1"):
        JointTask({"emit_within_ms": -1}, JstarConfig(), "stages.joint.options")
