"""SOT strings, the segment table and RTTM of simulated conversations."""

from itertools import pairwise

import numpy as np
import pytest
from pyannote.core import Annotation, Segment, Timeline
from pyannote.database.util import load_rttm
from pyannote.metrics.diarization import DiarizationErrorRate

from simulforge.settings import ConfigError
from simulforge.transforms import pairing, simulate, sot
from simulforge.transforms.records import AudioRef, Segmentation, StageError, Timing, Utterance

TOKENS = {sot.SELF: "<SELF>", sot.OTHER: "<OTHER>"}


def _utterance(i: int, speaker: str, languages=("de", "es")) -> Utterance:
    return Utterance(
        id=f"fixture/u{i:04d}",
        corpus="fixture",
        split="train",
        audio=AudioRef(f"u{i}.wav"),
        speaker=speaker,
        source_lang="en",
        source_text=f"words of utterance {i}",
        translations={lang: f"{lang} words {i}" for lang in languages},
    )


def _conversations(count: int, overlap_probability=0.6):
    """(truth turns, segment table) of `count` random conversations, timelines drawn as the stage draws them."""
    settings = simulate.load_settings({"turn_taking": {"overlap_probability": overlap_probability}})
    rng = np.random.default_rng(7)
    for c in range(count):
        durations = [int(d) for d in rng.integers(800, 6000, rng.integers(2, 9))]
        while sum(durations) > settings.pairing.max_length_s * 1000:  # as pairing guarantees
            durations.pop()
        starts = pairing.draw_timeline(durations, rng, settings.turn_taking, settings.pairing.max_length_s)
        first = rng.integers(2)
        turns = [
            (
                (sot.SELF, sot.OTHER)[(first + k) % 2],
                start,
                start + d,
                _utterance(100 * c + k, f"spk{(first + k) % 2}"),
            )
            for k, (start, d) in enumerate(zip(starts, durations, strict=True))
        ]
        yield turns, sot.segment_table(turns)


def test_sot_follows_start_order_and_tokens_match_the_truth():
    for turns, segments in _conversations(50):
        truth_role = {utt.id: role for role, _, _, utt in turns}
        by_start = sorted(turns, key=lambda t: t[1])
        assert [s["utterance_id"] for s in segments] == [utt.id for *_, utt in by_start]
        pieces = sot.split_sot(sot.sot_text(segments, TOKENS), TOKENS)
        assert [text for _, text in pieces] == [utt.source_text for *_, utt in by_start]
        assert [role for role, _ in pieces] == [truth_role[utt.id] for *_, utt in by_start]
        for lang, text in sot.sot_translations(segments, TOKENS).items():
            pieces = sot.split_sot(text, TOKENS)
            assert [t for _, t in pieces] == [utt.translations[lang] for *_, utt in by_start]
            assert [r for r, _ in pieces] == [truth_role[utt.id] for *_, utt in by_start]


def test_custom_speaker_tokens():
    tokens = sot.LabelSettings(self_token="[ME]", other_token="[YOU]").tokens()
    turns, segments = next(_conversations(1))
    text = sot.sot_text(segments, tokens)
    assert text.startswith(("[ME] ", "[YOU] ")) and "<SELF>" not in text
    assert len(sot.split_sot(text, tokens)) == len(turns)


@pytest.mark.parametrize(
    "tokens, match",
    [
        ({"self_token": "<S>", "other_token": "<S>"}, "both"),
        ({"self_token": "<S ELF>", "other_token": "<O>"}, "spaces"),
    ],
)
def test_bad_speaker_tokens_are_config_errors(tokens, match):
    with pytest.raises(ConfigError, match=match):
        simulate.load_settings({"labels": tokens})


def test_translations_only_for_languages_every_segment_has():
    turns = [
        (sot.SELF, 0, 1000, _utterance(1, "a")),
        (sot.OTHER, 1200, 2000, _utterance(2, "b", languages=("de",))),
    ]
    assert set(sot.sot_translations(sot.segment_table(turns), TOKENS)) == {"de"}


def test_split_sot_needs_a_leading_token():
    with pytest.raises(ValueError, match="speaker token"):
        sot.split_sot("hello <SELF> there", TOKENS)


def test_rttm_has_zero_der_against_the_sampler_truth(tmp_path):
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    overlapped = 0.0
    for c, (turns, segments) in enumerate(_conversations(30)):
        uri = f"train/conv-{c:04d}"
        path = tmp_path / f"{c}.rttm"
        path.write_text(sot.rttm_text(uri, segments))
        truth = Annotation(uri=uri)
        for k, (role, start_ms, end_ms, _) in enumerate(turns):
            truth[Segment(start_ms / 1000, end_ms / 1000), k] = role
        hypothesis = load_rttm(path)[uri]
        uem = Timeline([truth.get_timeline().extent()])
        assert metric(truth, hypothesis, uem=uem) == pytest.approx(0.0, abs=1e-9)
        overlapped += sot.overlap_s(segments)
    assert overlapped > 0  # the check covered overlapping speech


def test_overlap_seconds_counts_time_with_two_talkers():
    turns = [(sot.SELF, 0, 2000, _utterance(1, "a")), (sot.OTHER, 1500, 3000, _utterance(2, "b"))]
    assert sot.overlap_s(sot.segment_table(turns)) == pytest.approx(0.5)


# -- Word-level SOT on hand-built conversations with known word times ---------------------------------
LEVEL = "medium"
WORD = sot.SotSettings(mode="word", latency_level=LEVEL)
UTTERANCE = sot.SotSettings(mode="utterance", latency_level=LEVEL)


def _said(uid: str, words: list[tuple[str, float, float]], chunks: list[tuple[str, str]]) -> Utterance:
    """An aligned utterance: its words with clip-relative (start, end) seconds, and its `LEVEL` chunks as
    (source chunk, German chunk) pairs, each ending where its last word does."""
    text = " ".join(w for w, _, _ in words)
    spoken = [w.strip(",.?!") for w, _, _ in words]
    ends, k = [], 0
    for source, _ in chunks:
        k += len(source.split())
        ends.append(words[k - 1][2])
    assert k == len(words)
    return Utterance(
        id=f"fixture/{uid}", corpus="fixture", split="train", audio=AudioRef(f"{uid}.wav"), speaker=uid,
        source_lang="en", source_text=text, translations={"de": " ".join(t for _, t in chunks)},
        duration_s=max(e for *_, e in words) + 0.05,
        segmentations={LEVEL: Segmentation(LEVEL, [s for s, _ in chunks], {"de": [t for _, t in chunks]})},
        timing=Timing([(w, s, e) for w, (_, s, e) in zip(spoken, words, strict=True)], {LEVEL: ends}),
    )


def _turn(role: str, start_ms: int, utt: Utterance) -> tuple[str, int, int, Utterance]:
    return role, start_ms, start_ms + round(utt.duration_s * 1000), utt


CLEAN = [  # SELF asks, a pause, OTHER answers
    _turn(sot.SELF, 0, _said("a", [("How", 0.05, 0.25), ("are", 0.3, 0.45), ("you?", 0.5, 0.9)],
                             [("How are", "Wie geht"), ("you?", "es dir?")])),
    _turn(sot.OTHER, 1200, _said("b", [("Fine,", 0.1, 0.4), ("thanks.", 0.5, 0.9)],
                                 [("Fine,", "Gut,"), ("thanks.", "danke.")])),
]
# OTHER starts at 1.1 s, while SELF is mid-utterance. Word ends in the conversation (ms): I 200, think 600,
# we 1200, Wait 1450, should 1600, really 1900, go 2300, now 2900; chunk ends: SELF 600, 1600, 2900; OTHER 1450, 1900.
OVERLAP = [
    _turn(sot.SELF, 0, _said("c", [("I", 0.1, 0.2), ("think", 0.3, 0.6), ("we", 1.0, 1.2), ("should", 1.3, 1.6),
                                   ("go", 2.0, 2.3), ("now.", 2.5, 2.9)],
                             [("I think", "Ich denke,"), ("we should", "wir sollten"), ("go now.", "jetzt gehen.")])),
    _turn(sot.OTHER, 1100, _said("d", [("Wait,", 0.05, 0.35), ("really?", 0.45, 0.8)],
                                 [("Wait,", "Warte,"), ("really?", "wirklich?")])),
]


def _tie(first: str, second: str):
    """`first` says "yes no" from 0 ms, `second` says "okay sure" from 300 ms: "okay" ends with "yes" (500 ms)
    but starts later; "sure" starts and ends with "no" (600-900 ms)."""
    return [
        _turn(first, 0, _said("e", [("yes", 0.1, 0.5), ("no", 0.6, 0.9)], [("yes no", "ja nein")])),
        _turn(second, 300, _said("f", [("okay", 0.0, 0.2), ("sure", 0.3, 0.6)], [("okay sure", "gut klar")])),
    ]


@pytest.mark.parametrize("turns, word, word_de, utterance, utterance_de", [
    (CLEAN, "<SELF> How are you? <OTHER> Fine, thanks.", "<SELF> Wie geht es dir? <OTHER> Gut, danke.",
     "<SELF> How are you? <OTHER> Fine, thanks.", "<SELF> Wie geht es dir? <OTHER> Gut, danke."),
    (OVERLAP, "<SELF> I think we <OTHER> Wait, <SELF> should <OTHER> really? <SELF> go now.",
     "<SELF> Ich denke, <OTHER> Warte, <SELF> wir sollten <OTHER> wirklich? <SELF> jetzt gehen.",
     "<SELF> I think we should go now. <OTHER> Wait, really?",
     "<SELF> Ich denke, wir sollten jetzt gehen. <OTHER> Warte, wirklich?"),
    # Same end: the earlier start first; same start and end: SELF first. Both chunks end at 900 ms, and
    # "yes no" started first.
    (_tie(sot.SELF, sot.OTHER), "<SELF> yes <OTHER> okay <SELF> no <OTHER> sure",
     "<SELF> ja nein <OTHER> gut klar", "<SELF> yes no <OTHER> okay sure", "<SELF> ja nein <OTHER> gut klar"),
    (_tie(sot.OTHER, sot.SELF), "<OTHER> yes <SELF> okay sure <OTHER> no",
     "<OTHER> ja nein <SELF> gut klar", "<OTHER> yes no <SELF> okay sure", "<OTHER> ja nein <SELF> gut klar"),
], ids=["clean_turn_change", "overlap_mid_utterance", "tie_self_first", "tie_start_first"])
def test_word_and_utterance_order_give_the_hand_written_targets(turns, word, word_de, utterance, utterance_de):
    by_word = sot.labels(turns, TOKENS, WORD)
    assert (by_word.sot_text, by_word.sot_translations) == (word, {"de": word_de})
    by_utterance = sot.labels(turns, TOKENS, UTTERANCE)
    assert (by_utterance.sot_text, by_utterance.sot_translations) == (utterance, {"de": utterance_de})
    assert by_word.words == by_utterance.words  # the published word times do not depend on the mode
    assert by_word.reordered == (word != utterance)


def test_overlap_words_carry_their_conversation_times_and_the_waits_of_each_order():
    labels = sot.labels(OVERLAP, TOKENS, WORD)
    assert [(w["word"], w["speaker"], w["start_s"], w["end_s"]) for w in labels.words] == [
        ("I", sot.SELF, 0.1, 0.2), ("think", sot.SELF, 0.3, 0.6), ("we", sot.SELF, 1.0, 1.2),
        ("Wait,", sot.OTHER, 1.15, 1.45), ("should", sot.SELF, 1.3, 1.6), ("really?", sot.OTHER, 1.55, 1.9),
        ("go", sot.SELF, 2.0, 2.3), ("now.", sot.SELF, 2.5, 2.9)]
    # Utterance order holds OTHER's words until SELF's "now." ends at 2.9 s: 1450 and 1000 ms of waiting.
    assert labels.waits_ms == {"word": [0] * 8, "utterance": [0, 0, 0, 0, 0, 0, 1450, 1000]}


def test_an_utterance_that_failed_alignment_is_refused_with_its_reason():
    unaligned = OVERLAP[1][3].replace(timing=None)
    turns = [OVERLAP[0], (*OVERLAP[1][:3], unaligned)]
    for settings in (WORD, UTTERANCE):  # the words column needs the times in either mode
        with pytest.raises(StageError) as failure:
            sot.labels(turns, TOKENS, settings)
        assert failure.value.reason == "not_aligned" and "align stage" in failure.value.detail
    garbled = OVERLAP[1][3].replace(timing=Timing([("Wait", 0.05, 0.35)], {LEVEL: [0.35, 0.8]}))
    with pytest.raises(StageError, match="1 aligned words are not the source text's 2") as failure:
        sot.check_timed(garbled, 900, WORD)
    assert failure.value.reason == "aligned_words_differ"
    no_level = OVERLAP[1][3].replace(segmentations={})
    sot.check_timed(no_level, 900, UTTERANCE)  # utterance order needs no chunks
    with pytest.raises(StageError, match="no 'medium' chunks") as failure:
        sot.check_timed(no_level, 900, WORD)
    assert failure.value.reason == "no_latency_level"


def test_punctuation_alone_takes_the_time_of_the_word_before_it():
    utt = _said("g", [("so", 0.1, 0.3), ("well", 0.4, 0.7)], [("so well", "also gut")])
    utt = utt.replace(source_text="-- so -- well !")
    assert sot.word_spans(utt, 800) == [("--", 100, 300), ("so", 100, 300), ("--", 100, 300), ("well", 400, 700),
                                        ("!", 400, 700)]


def _timed(turns):
    """The random turns of `_conversations` with their words spread over each clip, and one chunk per word."""
    out = []
    for role, start, end, utt in turns:
        words = utt.source_text.split()
        step = (end - start) / 1000 / len(words)
        timed = [(w, round(i * step, 3), round((i + 1) * step, 3)) for i, w in enumerate(words)]
        seg = Segmentation(LEVEL, words, {lang: t.split()[:1] + [" ".join(t.split()[1:])] + [""] * (len(words) - 2)
                                          for lang, t in utt.translations.items()})
        out.append((role, start, end, utt.replace(segmentations={LEVEL: seg},
                                                   timing=Timing(timed, {LEVEL: [e for *_, e in timed]}))))
    return out


def test_word_order_is_causal_keeps_each_speakers_text_and_its_tokens_match_the_rttm(tmp_path):
    reordered = 0
    for c, (turns, segments) in enumerate(_conversations(40)):
        turns = _timed(turns)
        labels = sot.labels(turns, TOKENS, WORD)
        utterance = sot.labels(turns, TOKENS, UTTERANCE)
        reordered += labels.reordered
        assert all(w == 0 for w in labels.waits_ms["word"])
        ends = [w["end_s"] for w in labels.words]
        assert ends == sorted(ends)
        # Per speaker, word order and utterance order hold the same words in the same order.
        assert set(labels.sot_translations) == set(utterance.sot_translations) == {"de", "es"}
        for ours, theirs in [(labels.sot_text, utterance.sot_text),
                             *((labels.sot_translations[k], utterance.sot_translations[k]) for k in ("de", "es"))]:
            for role in (sot.SELF, sot.OTHER):
                own = [text for r, text in sot.split_sot(theirs, TOKENS) if r == role]
                assert " ".join(text for r, text in sot.split_sot(ours, TOKENS) if r == role) == " ".join(own)
        pieces = sot.split_sot(labels.sot_text, TOKENS)
        # A token at each change of speaker, and never twice in a row.
        assert all(a != b for (a, _), (b, _) in pairwise(pieces))
        # Every word's speaker token is the RTTM's speaker over the whole word.
        assert [r for r, text in pieces for _ in text.split()] == [w["speaker"] for w in labels.words]
        uri = f"train/conv-{c:04d}"
        path = tmp_path / f"{c}.rttm"
        path.write_text(sot.rttm_text(uri, segments))
        rttm = load_rttm(path)[uri]
        for w in labels.words:
            word = Segment(w["start_s"], w["end_s"])
            assert any(seg.start - 1e-6 <= word.start and word.end <= seg.end + 1e-6  # RTTM: start + duration
                       for seg, _, label in rttm.itertracks(yield_label=True) if label == w["speaker"]), w
    assert reordered > 10  # overlapping turns interleave
