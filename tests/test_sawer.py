"""Speaker-attributed WER and word delays of SOT transcripts against a conversation's timed words (eval/sawer.py)."""

import math

import pytest

from simulforge.eval import sawer
from simulforge.eval.instances import make_instance, write_instances

# The overlap conversation of tests/test_sot.py: word ends in ms; OTHER's "Wait," starts while SELF talks.
WORDS = [("SELF", "I", 0.2), ("SELF", "think", 0.6), ("SELF", "we", 1.2), ("OTHER", "Wait,", 1.45),
         ("SELF", "should", 1.6), ("OTHER", "really?", 1.9), ("SELF", "go", 2.3), ("SELF", "now.", 2.9)]
ROW_WORDS = [{"word": w, "speaker": s, "start_s": e - 0.1, "end_s": e} for s, w, e in WORDS]
REFERENCE = "<SELF> I think we <OTHER> Wait, <SELF> should <OTHER> really? <SELF> go now."


def test_reference_words_keep_speaker_word_and_end_in_ms():
    assert sawer.reference_words(ROW_WORDS)[3] == ["OTHER", "Wait,", 1450.0]
    assert sawer.reference_words(None) == []


def test_delays_count_hits_only_from_each_words_true_end():
    timed = sawer.reference_words(ROW_WORDS)
    # "think" is heard as "thing" (a substitution), "Wait," is given to SELF (SELF: an insertion, OTHER: a
    # deletion), "now." is dropped; the hits are I, we, should, really?, go.
    prediction = "<SELF> I thing we Wait, should <OTHER> really? <SELF> go"
    delays = [300, 300, 700, 1400, 1600, 1800, 2000, 2000, 2400, 2400]
    found = sawer.word_delays(prediction, delays, REFERENCE, timed)
    assert found == pytest.approx([300 - 200, 1400 - 1200, 1800 - 1600, 2400 - 2300, 2000 - 1900])
    # Utterance order for the same words: OTHER's words come out after SELF's last, 1000+ ms late.
    late = "<SELF> I think we should go now. <OTHER> Wait, really?"
    found = sawer.word_delays(late, [300, 700, 1300, 1700, 2400, 3000, 3000, 3000, 3000, 3000], REFERENCE, timed)
    assert sorted(found)[-2:] == pytest.approx([3000 - 1900, 3000 - 1450])


def test_a_tag_takes_the_times_of_the_role_that_speaks_its_words():
    other_tokens = REFERENCE.replace("<SELF>", "<ME>")  # a dataset curated with labels.self_token "<ME>"
    assert sawer.word_delays("<ME> I", [200, 250], other_tokens, sawer.reference_words(ROW_WORDS)) == [50.0]


def test_timed_words_that_do_not_spell_the_reference_are_not_scored():
    assert sawer.word_delays("<SELF> I", [200, 200], REFERENCE, sawer.reference_words(ROW_WORDS[:-1])) is None


def test_score_log_reads_the_times_kept_in_the_log(tmp_path):
    timed = sawer.reference_words(ROW_WORDS)
    first = make_instance(0, "<SELF> I think <OTHER> Wait,", [300, 300, 700, 700, 1500], [], REFERENCE, "c0", 3000)
    second = make_instance(1, "<OTHER> hello", [100, 100], [], "<OTHER> hi", "c1", 1000)
    first[sawer.KEY], second[sawer.KEY] = timed, [["OTHER", "bye", 500.0]]  # second: times of other words
    path = tmp_path / "instances.log"
    write_instances(path, [first, second])
    scores = sawer.score_log(path)
    # Hits: I (300 - 200), think (700 - 600), Wait, (1500 - 1450).
    assert scores["word_delay_ms"] == {"mean": pytest.approx(250 / 3), "max": pytest.approx(100.0), "words": 3,
                                       "unscored": 1}
    # SELF: 2 hits of 6 words; OTHER: 1 of 2 words in the first, "hello" for "hi" in the second.
    assert scores["SA-WER_per_speaker"] == pytest.approx({"OTHER": 200 / 3, "SELF": 400 / 6})
    plain = tmp_path / "plain.log"  # a log without timed words (a dataset built before them)
    write_instances(plain, [make_instance(0, "<SELF> hi", [1, 1], [], "<SELF> hi", "c", 10)])
    assert sawer.score_log(plain) == {}
    empty = make_instance(0, "", [], [], REFERENCE, "c0", 3000) | {sawer.KEY: timed}
    write_instances(plain, [empty])
    assert math.isnan(sawer.score_log(plain)["word_delay_ms"]["mean"])
