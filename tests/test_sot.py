"""SOT strings, the segment table and RTTM of simulated conversations."""

import numpy as np
import pytest
from pyannote.core import Annotation, Segment, Timeline
from pyannote.database.util import load_rttm
from pyannote.metrics.diarization import DiarizationErrorRate

from simulforge.settings import ConfigError
from simulforge.transforms import pairing, simulate, sot
from simulforge.transforms.records import AudioRef, Utterance

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
