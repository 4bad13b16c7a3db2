import collections
import csv
import dataclasses
import random
import re
from importlib import resources

import pytest

from segment_run import run_segment
from simulforge.pipeline.summaries import segment_card_section, segment_summary
from simulforge.settings import ConfigError
from simulforge.transforms import segment_align
from simulforge.transforms.monotonicity import chunked_crossings, crossings
from simulforge.transforms.records import AudioRef, StageError, Utterance
from simulforge.transforms.segment import Segment, load_settings
from simulforge.transforms.segment_align import (
    EflomalSettings,
    LevelRule,
    align_corpus,
    alignment_tokens,
    grow_diag_final_and,
    merge_cuts,
    monotone_cuts,
    read_parallel,
    segment_pair,
    target_cuts,
)

SETTINGS = load_settings()
LEVELS, RULES = SETTINGS.levels, SETTINGS.align.levels

# 48 short en/de pairs built from a few slots, so that eflomal sees every word many times:
# the same words in the same order (V2 after "yesterday") and reordered (verb-final
# participle, "gestern" moved forward).
SUBJECTS = [
    ("I", "ich", "habe", "sah"),
    ("we", "wir", "haben", "sahen"),
    ("they", "sie", "haben", "sahen"),
    ("you", "du", "hast", "sahst"),
]
OBJECTS = [
    ("the old man", "den alten Mann"),
    ("the small dog", "den kleinen Hund"),
    ("the red car", "das rote Auto"),
    ("the new house", "das neue Haus"),
]
PLACES = [("in the park", "im Park"), ("in the city", "in der Stadt")]


def _cap(s):
    return s[0].upper() + s[1:]


def corpus():
    pairs = []
    for a, (s, s_de, aux, saw) in enumerate(SUBJECTS):
        for b, (o, o_de) in enumerate(OBJECTS):
            p, p_de = PLACES[(a + b) % 2]
            pairs.append((f"Yesterday {s} saw {o} {p}.", f"Gestern {saw} {s_de} {o_de} {p_de}."))
            pairs.append(
                (
                    f"{_cap(s)} have seen {o} {p} yesterday.",
                    f"{_cap(s_de)} {aux} gestern {o_de} {p_de} gesehen.",
                )
            )
            pairs.append(
                (
                    f"{_cap(s)} have seen {o}, and then {s} went home.",
                    f"{_cap(s_de)} {aux} {o_de} gesehen, und dann ging {s_de} nach Hause.",
                )
            )
    return pairs


def _utt(n, en, translations, duration=2.0):
    return Utterance(
        id=f"t/{n}",
        corpus="t",
        split="train",
        audio=AudioRef("x.wav", duration_s=duration),
        speaker="s",
        source_lang="en",
        source_text=en,
        translations=translations,
    )


# -- pieces ------------------------------------------------------------------------------------


def test_alignment_tokens_drop_punctuation_and_remember_words():
    assert alignment_tokens("Well, it's 5 o'clock — go!") == (
        ["well", "it", "s", "5", "o", "clock", "go"],
        [0, 1, 1, 2, 3, 3, 5],
    )


def test_grow_diag_final_and():
    fwd = {(0, 0), (1, 1), (2, 1)}
    rev = {(0, 0), (1, 1), (1, 2), (3, 3)}
    # intersection grows to the diagonal neighbour (1,2) and the neighbour (2,1); (3,3) joins in final-and
    assert grow_diag_final_and(fwd, rev) == {(0, 0), (1, 1), (1, 2), (2, 1), (3, 3)}


def test_no_cut_where_a_link_crosses():
    # I(0) have(1) seen(2) him(3) -> ich(0) habe(1) ihn(2) gesehen(3): seen/him cross
    links = {(0, 0), (1, 1), (2, 3), (3, 2)}
    assert monotone_cuts(4, {"de": links}) == [1, 2]


def test_one_language_forcing_a_merge_coarsens_the_shared_cuts():
    de = {(0, 0), (1, 1), (2, 2), (3, 3)}
    es = {(0, 0), (1, 2), (2, 1), (3, 3)}  # words 1 and 2 swap in es
    assert monotone_cuts(4, {"de": de}) == [1, 2, 3]
    assert monotone_cuts(4, {"de": de, "es": es}) == [1, 3]


def test_every_chunk_keeps_a_link_in_every_language():
    # word 1 is unaligned: it joins the next chunk; the unaligned last word joins the chunk before
    assert monotone_cuts(4, {"de": {(0, 0), (2, 1)}}) == [1]
    assert monotone_cuts(3, {"de": set()}) == []


def test_unlinked_target_words_open_the_next_chunk_unless_they_end_a_clause():
    links = {(0, 0), (1, 2)}
    assert target_cuts(2, links, [1], ["A", "der", "B"]) == [1]
    assert target_cuts(2, links, [1], ["A", "kam,", "B"]) == [2]


def test_merging_follows_each_level_and_never_adds_chunks():
    words = "one two three four, five six seven eight nine ten eleven twelve.".split()
    units = list(range(1, len(words)))
    low = merge_cuts(words, units, LevelRule(2, 2, True, None))
    medium = merge_cuts(words, low, LevelRule(4, 10, True, None))
    high = merge_cuts(words, medium, LevelRule(8, 14, True, 2))
    assert low == [2, 4, 6, 8, 10]
    assert medium == [4]  # the clause end; the rest is shorter than max_words
    assert high == []  # 4 words before the clause end is below min_words: whole sentence
    assert merge_cuts(words, units, LevelRule(1, None, False, 3)) == []
    assert merge_cuts(words, units, LevelRule(1, 1, False, 3)) == [4, 8]  # max_chunks: an even split


def test_a_short_clause_end_moves_the_last_cut():
    words = "in the city, and then home".split()
    # "city," would otherwise start the chunk "city, and"; the 1-word tail joins "and then"
    assert merge_cuts(words, [1, 2, 3, 4, 5], LevelRule(2, 2, True, None)) == [3]


def test_segment_pair_shares_source_chunks_and_rebuilds_the_texts():
    source = "I have seen him in the park."
    translations = {"de": "Ich habe ihn im Park gesehen.", "es": "Lo he visto en el parque."}
    links = {
        "de": {(0, 0), (1, 1), (2, 5), (3, 2), (4, 3), (5, 3), (6, 4)},
        "es": {(3, 0), (1, 1), (2, 2), (4, 3), (5, 4), (6, 5)},
    }
    segs = segment_pair(source, translations, links, LEVELS, RULES, 30)
    assert list(segs) == LEVELS
    assert segs["low"].source_chunks == [
        "I have seen him in the park."
    ]  # de's "gesehen" at the end forbids every cut
    links["de"] = {(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (6, 5)}
    translations["de"] = "Ich habe gesehen ihn im Park."
    segs = segment_pair(source, translations, links, LEVELS, RULES, 30)
    # es puts "him" (Lo) first, so no cut before "him" is monotone in es: both languages share the coarser cut
    assert monotone_cuts(7, {"de": links["de"]}) == [1, 2, 3, 4, 6]
    assert segs["low"].source_chunks == ["I have seen him", "in the park."]
    assert segs["low"].target_chunks == {
        "de": ["Ich habe gesehen ihn", "im Park."],
        "es": ["Lo he visto", "en el parque."],
    }


def test_a_long_sentence_without_any_monotone_cut_is_refused():
    words = " ".join(f"w{i}" for i in range(12))
    reversed_links = {(i, 11 - i) for i in range(12)}
    with pytest.raises(StageError, match="12 source words") as refused:
        segment_pair(words, {"de": words}, {"de": reversed_links}, LEVELS, RULES, 10)
    assert refused.value.reason == "no_monotone_split"
    assert segment_pair(words, {"de": words}, {"de": reversed_links}, LEVELS, RULES, 12)[
        "low"
    ].source_chunks == [words]


def test_read_parallel(tmp_path):
    path = tmp_path / "extra.tsv"
    path.write_text("a b\tx y\n\nc\tz\n")
    assert read_parallel(str(path)) == [("a b", "x y"), ("c", "z")]
    path.write_text("only one field\n")
    with pytest.raises(ValueError, match="extra.tsv:1"):
        read_parallel(str(path))


# -- eflomal on a small corpus -----------------------------------------------------------------


def test_iterations_are_eflomals_but_capped_for_small_corpora():
    s = EflomalSettings(model=3, n_samplers=3, rel_iterations=1.0, max_iterations=100, null_prior=0.2)
    assert s.iterations(10_000) == (12, 12, 50)  # eflomal's own: 5000 / sqrt(10000)
    assert s.iterations(200) == (25, 25, 100)  # 354 capped
    assert dataclasses.replace(s, max_iterations=None).iterations(200) == (88, 88, 354)
    assert dataclasses.replace(s, model=2).iterations(200) == (25, 100, 0)
    assert dataclasses.replace(s, rel_iterations=0.1).iterations(10_000) == (2, 1, 5)


def test_repeated_pairs_are_aligned_once_and_a_rerun_reads_the_cache(tmp_path, monkeypatch):
    aligned = []
    real = segment_align._align_corpus

    def recording(pairs, settings, extra):
        aligned.append(list(pairs))
        return real(pairs, settings, extra)

    monkeypatch.setattr(segment_align, "_align_corpus", recording)
    pairs = corpus()
    repeated = pairs + pairs[:10]
    links = align_corpus(repeated, SETTINGS.align.eflomal, cache_dir=str(tmp_path))
    assert aligned == [pairs]
    assert links[len(pairs) :] == links[:10]
    assert align_corpus(repeated, SETTINGS.align.eflomal, cache_dir=str(tmp_path)) == links
    assert len(aligned) == 1  # the second run read the links eflomal gave the first


def test_eflomal_chunks_keep_every_invariant():
    pairs = corpus()
    links = align_corpus(pairs, SETTINGS.align.eflomal, extra=pairs[:5])
    assert len(links) == len(pairs) and all(links)
    totals = collections.Counter()
    for (en, de), found in zip(pairs, links, strict=True):
        segs = segment_pair(en, {"de": de}, {"de": found}, LEVELS, RULES, 30)
        counts = [len(segs[level].source_chunks) for level in LEVELS]
        assert counts == sorted(counts, reverse=True)
        for seg in segs.values():
            assert " ".join(seg.source_chunks) == en and " ".join(seg.target_chunks["de"]) == de
            assert len(seg.target_chunks["de"]) == len(seg.source_chunks) and all(
                seg.source_chunks + seg.target_chunks["de"]
            )
            assert chunked_crossings(found, seg.source_chunks).discordant == 0  # the cuts respect the links
        totals["offline"] += crossings(found).discordant
        totals["low"] += chunked_crossings(found, segs["low"].source_chunks).discordant
        totals["low_chunks"] += counts[0]
    assert totals["low"] < totals["offline"]
    assert totals["low_chunks"] > 2 * len(pairs)


# -- the Beam stage ----------------------------------------------------------------------------


def test_segment_stage_publishes_every_level_or_rejects_with_a_reason(tmp_path):
    pairs = corpus()
    utts = [_utt(n, en, {"de": de}) for n, (en, de) in enumerate(pairs)]
    utts += [
        _utt("empty", "  ", {"de": "Hallo"}),
        _utt("none", "Hello there.", {}),
        _utt("blank", "Hello there.", {"de": " "}),
    ]
    out, rejects, stats = run_segment(SETTINGS, utts, tmp_path)
    assert stats["in"] == len(utts) == len(out) + len(rejects)
    assert sorted(r.reason for r in rejects) == ["empty_source", "empty_translation", "no_translation"]
    assert all(r.stage == "segment" and r.detail for r in rejects)
    for u in out:
        assert list(u.segmentations) == LEVELS
    summary = segment_summary(stats)
    assert summary["utterances"] == {"in": len(utts), "out": len(pairs), "rejected": 3}
    assert summary["audio_hours"] == round(2.0 * len(utts) / 3600, 4)
    assert list(summary["chunks_per_utterance"]) == LEVELS
    rates = summary["crossing_rate"]["de"]  # measured on a second, independent alignment
    assert set(rates) == {"offline", *LEVELS} and rates["low"] < rates["offline"]
    card = segment_card_section(summary)
    assert "| language | offline | low | medium | high |" in card and f"| de | {rates['offline']} |" in card
    assert "llm" not in summary



def test_a_pair_in_reverse_order_is_rejected_as_no_monotone_split(tmp_path):
    """A made-up language that says every sentence backwards: eflomal links each word to its
    mirror image, so no cut keeps the links monotone and a sentence over the limit is rejected."""
    rng = random.Random(0)
    vocab = [(f"src{i}", f"tgt{i}") for i in range(30)]
    backwards = []
    for _ in range(12):
        words = rng.sample(vocab, 12)
        backwards.append((" ".join(s for s, _ in words), " ".join(t for _, t in reversed(words))))
    settings = load_settings({"align": {"reject_unsplit_over_words": 10}})
    utts = [_utt(n, en, {"de": de}) for n, (en, de) in enumerate(corpus())]
    utts += [_utt(f"backwards{n}", en, {"de": de}) for n, (en, de) in enumerate(backwards)]
    out, rejects, stats = run_segment(settings, utts, tmp_path)
    assert sorted(r.id for r in rejects) == sorted(f"t/backwards{n}" for n in range(12))
    for r in rejects:
        assert (r.stage, r.reason) == ("segment", "no_monotone_split")
        assert re.fullmatch(r"12 source words but no cut keeps every alignment monotone \(de: \d+ links\); "
                            r"sentences over 10 words need at least one", r.detail), r.detail
    assert sorted(u.id for u in out) == sorted(f"t/{n}" for n in range(len(corpus())))
    assert stats["in"] == len(utts) == len(out) + len(rejects)
    assert segment_summary(stats)["utterances"] == {"in": len(utts), "out": len(corpus()), "rejected": 12}


def test_stage_configuration_errors_come_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings({"align": {"levelz": {}}})
    with pytest.raises(ConfigError, match="max_iterations: must be at least 2"):
        load_settings({"align": {"eflomal": {"max_iterations": 1}}})
    with pytest.raises(ConfigError, match="eflomal.model: must be 1, 2 or 3"):
        load_settings({"align": {"eflomal": {"model": 4}}})
    with pytest.raises(ConfigError, match="no merge rule for level"):
        load_settings({"levels": ["low", "instant"]})
    with pytest.raises(ConfigError, match="extra_parallel.de: no file"):
        Segment(load_settings({"align": {"extra_parallel": {"de": str(tmp_path / "missing.tsv")}}}))
    with pytest.raises(ConfigError, match="simalign"):
        Segment(load_settings({"monotonicity": {"aligner": "simalign", "simalign_model": str(tmp_path)}}))


def test_demo_corpus_low_latency_crosses_far_less_than_offline(tmp_path):
    rows = list(
        csv.DictReader(
            (resources.files("simulforge.demo") / "sentences.tsv").open(encoding="utf-8"), delimiter="\t"
        )
    )
    utts = [_utt(r["id"], r["en"], {"de": r["de"], "es": r["es"]}) for r in rows]
    out, rejects, stats = run_segment(SETTINGS, utts, tmp_path)
    summary = segment_summary(stats)
    assert summary["utterances"]["in"] == len(rows) >= 180
    assert len(out) + len(rejects) == len(rows) and len(out) >= 0.95 * len(rows)
    for lang in ("de", "es"):
        assert summary["crossing_rate"][lang]["offline"] > 0
        assert summary["crossing_reduction"][lang]["low"] >= 0.3
