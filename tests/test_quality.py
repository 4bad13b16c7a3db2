"""Quality metrics on hand-computed cases, and re-scoring a whole instance log."""

from __future__ import annotations

import math

import pytest

from simulforge.eval.instances import make_instance, rescore, write_instances
from simulforge.eval.latency import score_instances
from simulforge.eval.quality import bleu, chrf, speaker_attributed_wer, split_speakers, wer


def test_bleu_hand_computed():
    # n-gram precisions 3/4, 2/3, 1/2 and 0/1, which exp smoothing turns into 1/(2*1) = 1/2;
    # equal lengths, so no brevity penalty: (3/4 * 2/3 * 1/2 * 1/2) ** (1/4) = 2 ** (-3/4)
    score = bleu(["a b c d"], ["a b c e"])
    assert score.score == pytest.approx(100 * 2**-0.75)
    assert score.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert bleu(["Das ist gut."], ["Das ist gut."]).score == pytest.approx(100)
    # Case-sensitive: "das" no longer matches "Das".
    assert bleu(["das ist gut."], ["Das ist gut."]).score < 100
    assert "tok:zh" in bleu(["我们"], ["我们"], tokenize="zh").signature


def test_chrf_hand_computed():
    # Characters a,b,c vs a,b,d: 1-gram P = R = 2/3; 2-grams {ab, bc} vs {ab, bd}: 1/2;
    # 3-grams {abc} vs {abd}: 0; no 4- to 6-grams, so those orders do not count.
    # Mean P = mean R = (2/3 + 1/2 + 0) / 3 = 7/18, so F = 7/18.
    score = chrf(["abc"], ["abd"])
    assert score.score == pytest.approx(100 * 7 / 18)
    assert "nc:6|nw:0" in score.signature and "case:mixed" in score.signature


def test_wer_is_corpus_level():
    # Pair 1: one substitution (b -> x); pair 2: one insertion (f). 2 errors / 5 reference words,
    # not the mean of the sentence WERs (1/3 and 1/2).
    score = wer(["a x c", "d e f"], ["a b c", "d e"])
    assert (score.substitutions, score.deletions, score.insertions, score.reference_words) == (1, 0, 1, 5)
    assert score.score == pytest.approx(40.0)
    # An empty hypothesis is all deletions; whitespace of any kind only separates words.
    assert wer(["", "a\tb "], ["x y", "a  b"]).score == pytest.approx(50.0)
    assert math.isnan(wer([""], [""]).score)


def test_wer_normalisation_is_opt_in():
    # Without normalisation "Hello," != "hello" and "World!" != "world": 2 substitutions / 2.
    assert wer(["Hello, World!"], ["hello world"]).score == pytest.approx(100.0)
    assert wer(["Hello, World!"], ["hello world"], normalize=True).score == 0.0


def test_length_mismatch_and_empty_input():
    for metric in (bleu, chrf, wer, speaker_attributed_wer):
        with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
            metric(["a", "b"], ["a"])
        with pytest.raises(ValueError, match="no segments"):
            metric([], [])


def test_split_speakers():
    # Tags need no spaces around them; words before the first tag belong to speaker "";
    # decoder markers like <|end-of-write|> are words, not tags.
    assert split_speakers("hm <SELF>hi<OTHER> yo <|eow|> <SELF> there") == {
        "": "hm",
        "SELF": "hi there",
        "OTHER": "yo <|eow|>",
    }


def test_speaker_attributed_wer_counts_misattribution_twice():
    # The reference gives "c" to OTHER, the hypothesis to SELF: SELF "a b c" vs "a b" has
    # 1 insertion, OTHER "" vs "c" 1 deletion; 2 errors / 3 words, where plain WER is 0.
    result = speaker_attributed_wer(["<SELF> a b c"], ["<SELF> a b <OTHER> c"])
    assert result.per_speaker["SELF"].insertions == 1 and result.per_speaker["SELF"].score == pytest.approx(
        50.0
    )
    assert result.per_speaker["OTHER"].deletions == 1 and result.per_speaker["OTHER"].score == pytest.approx(
        100.0
    )
    assert result.total.score == pytest.approx(200 / 3)
    assert wer(["a b c"], ["a b c"]).score == 0.0


def test_speaker_attributed_wer_over_segments():
    hypotheses = [
        "<SELF> hello there <OTHER> hi",  # perfect
        "uh <OTHER> good morning <SELF> fine",  # "uh" is untagged; SELF: "fine" for "fine thanks"
        "<SELF> yes <GUEST> no",  # GUEST is not in the reference
    ]
    references = [
        "<SELF> hello there <OTHER> hi",
        "<OTHER> good morning <SELF> fine thanks",
        "<SELF> yes",
    ]
    result = speaker_attributed_wer(hypotheses, references)
    # SELF: 0 + 1 deletion ("thanks") + 0 over 2+2+1 = 5 words; OTHER: 0 errors over 1+2 = 3 words;
    # "": 1 insertion over 0 words; GUEST: 1 insertion over 0 words.
    counts = {
        s: (w.substitutions, w.deletions, w.insertions, w.reference_words)
        for s, w in result.per_speaker.items()
    }
    assert counts == {"SELF": (0, 1, 0, 5), "OTHER": (0, 0, 0, 3), "": (0, 0, 1, 0), "GUEST": (0, 0, 1, 0)}
    assert math.isnan(result.per_speaker["GUEST"].score)
    assert result.total.score == pytest.approx(100 * 3 / 8)
    # Normalisation applies to the words after the tags are taken off.
    normalized = speaker_attributed_wer(["<SELF> Hello, there!"], ["<SELF> hello there"], normalize=True)
    assert normalized.total.score == 0.0


def _log(tmp_path, references):
    instances = [
        make_instance(
            0,
            "Das ist gut .",
            [500, 900, 1200, 1200],
            [600, 1000, 1400, 1450],
            references[0],
            "0.wav",
            1200.0,
        ),
        make_instance(1, "", [], [], references[1], "1.wav", 800.0),  # empty: a zero in quality, no latency
    ]
    write_instances(tmp_path / "instances.log", instances)
    return tmp_path / "instances.log", instances


def test_rescore_from_log(tmp_path):
    path, instances = _log(tmp_path, ["Das ist gut .", "Guten Morgen"])
    scores = rescore(path, quality=("BLEU", "chrF", "WER", "SA-WER"))
    hypotheses, references = ["Das ist gut .", ""], ["Das ist gut .", "Guten Morgen"]
    assert scores["BLEU"] == pytest.approx(bleu(hypotheses, references).score)
    assert scores["BLEU"] < 100  # the empty prediction lowers it
    assert scores["chrF_signature"] == chrf(hypotheses, references).signature
    assert scores["WER"] == pytest.approx(100 * 2 / 6)  # the two missing words
    assert scores["SA-WER"] == pytest.approx(scores["WER"])  # no speaker tags: one speaker ""
    latency = score_instances(instances)
    assert {k: scores[k] for k in latency} == pytest.approx(latency)
    assert latency["num_empty"] == 1


def test_rescore_errors(tmp_path):
    path, _ = _log(tmp_path, ["Das ist gut .", None])
    with pytest.raises(ValueError, match=r"none for instances \[1\]"):
        rescore(path)
    assert "BLEU" not in rescore(path, quality=())  # latency alone needs no reference
    with pytest.raises(ValueError, match="unknown quality metrics"):
        rescore(path, quality=("METEOR",))


def test_bleu_matches_simuleval(tmp_path):
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers.quality_scorer import SacreBLEUScorer

    path, instances = _log(tmp_path, ["Das ist sehr gut .", "Guten Morgen"])
    theirs = {i: LogInstance(line) for i, line in enumerate(path.read_text().splitlines())}
    assert rescore(path)["BLEU"] == pytest.approx(SacreBLEUScorer()(theirs))
