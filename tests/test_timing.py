"""Chunk end times, encoder-block sizes, read/write labels and the TextGrid / CTM side files."""

from __future__ import annotations

import pytest

from simulforge.transforms.records import StageError
from simulforge.transforms.timing import (
    check_chunk_times,
    chunk_end_times,
    clamp_to_clip,
    ctm_text,
    policy_labels,
    speech_seg_sizes,
    spoken_words,
    textgrid_text,
)

WORDS = [("Well,", 0.10, 0.30), ("the", 0.30, 0.42), ("train", 0.42, 0.80), ("was", 0.95, 1.10), ("late", 1.10, 1.52)]
WORDS = [(w.strip(","), s, e) for w, s, e in WORDS]


def test_spoken_words_drop_edge_punctuation_and_punctuation_tokens():
    assert spoken_words('"Well, the train - was late!"') == ["Well", "the", "train", "was", "late"]
    assert spoken_words("It's O'Brien's") == ["It's", "O'Brien's"]


def test_chunk_ends_are_the_ends_of_their_last_words():
    assert chunk_end_times(WORDS, ["Well, the", "train -", "was late."]) == [0.42, 0.80, 1.52]
    assert chunk_end_times(WORDS, ["Well, the train was late."]) == [1.52]


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        (["Well, the", "-", "train was late."], "silent_chunk"),
        (["Well, the", "bus was late."], "chunks_do_not_match_words"),
        (["Well, the", "train was"], "chunks_do_not_match_words"),
    ],
)
def test_chunks_that_do_not_fit_the_words_are_refused(chunks, reason):
    with pytest.raises(StageError) as e:
        chunk_end_times(WORDS, chunks)
    assert e.value.reason == reason


def test_chunk_times_must_increase_and_stay_inside_the_clip():
    check_chunk_times([0.4, 0.8, 1.52], 1.52)  # the last chunk may end exactly at the clip's end
    for ends, reason in [([0.4, 0.4], "chunk_times_not_increasing"), ([0.8, 0.4], "chunk_times_not_increasing"),
                         ([0.4, 1.6], "chunk_outside_clip"), ([0.0, 0.4], "chunk_outside_clip")]:
        with pytest.raises(StageError) as e:
            check_chunk_times(ends, 1.52)
        assert e.value.reason == reason, ends


def test_seg_sizes_round_chunk_ends_up_to_the_next_block_and_stop_at_the_clip_end():
    rate, block = 16000, 10240  # 640 ms blocks
    n = round(2.1 * rate)
    # 0.2 s -> block 1; exactly 1.28 s -> its own boundary; 1.3 s -> block 3; 2.05 s -> past 1.92 s: clip end
    assert speech_seg_sizes([0.2, 1.28, 1.3, 2.05], n, rate, block) == [10240, 20480, 30720, n]


def test_policy_labels_read_inside_a_chunk_and_write_at_its_last_block():
    block = 100
    # Chunk 1 spans blocks 0-2, chunk 2 ends in block 3, chunk 3 spans blocks 4-5 (partial last block).
    assert policy_labels([300, 400, 550], block) == [0, 0, 1, 1, 0, 1]
    # Two chunks ending in the same block write after that one block.
    assert policy_labels([200, 200, 300], block) == [0, 1, 1]
    assert policy_labels([], block) == []


def test_ctm_lines():
    assert ctm_text("mustc/ted_1_0", WORDS[:2]) == "mustc/ted_1_0 1 0.100 0.200 Well\nmustc/ted_1_0 1 0.300 0.120 the\n"


def test_textgrid_has_words_and_one_chunk_tier_per_level(tmp_path):
    from praatio import textgrid

    text = textgrid_text(WORDS, 1.6, {"low": (["Well, the", "train", "was late."], [0.42, 0.80, 1.52]),
                                      "high": (["Well, the train was late."], [1.52])})
    path = tmp_path / "clip.TextGrid"
    path.write_text(text, encoding="utf-8")
    tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    assert list(tg.tierNames) == ["words", "chunks/low", "chunks/high"]
    assert [(e.start, e.end, e.label) for e in tg.getTier("words").entries][2] == (0.42, 0.80, "train")
    assert [(e.start, e.end) for e in tg.getTier("chunks/low").entries] == [(0, 0.42), (0.42, 0.80), (0.80, 1.52)]
    assert tg.maxTimestamp == 1.6


def test_word_times_within_one_frame_past_the_clip_are_clamped():
    words = [("was", 1.3, 1.9), ("late", 2.0, 3.2412)]
    assert clamp_to_clip(words, 3.236, 0.01) == ([("was", 1.3, 1.9), ("late", 2.0, 3.236)],
                                                 ["last word end clamped 3.2412->3.236 s"])
    assert clamp_to_clip(words, 3.2412, 0.01) == (words, [])  # inside: nothing to do
    assert clamp_to_clip(words, 3.236, 0.005) == (words, [])  # past one frame: left to be refused
    zero_length = [("late", 2.0, 3.2401), ("yes", 3.2401, 3.2412)]
    assert clamp_to_clip(zero_length, 3.236, 0.01) == ([("late", 2.0, 3.236), ("yes", 3.236, 3.236)],
                                                       ["3 word times clamped 3.2412->3.236 s (the clip's end)"])
