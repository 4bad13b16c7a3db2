"""The GMM aligner on speech as rooms record it, and its confidence (issue 19).

The degraded set is the demo corpora's English clips, every other one (by a hash of its id)
said in a simulated room with pink noise at 12 dB SNR (transforms/aligners/degrade.py:
BENCHMARK, the conditions the issue measured), the rest left clean, as a corpus recorded in
many places is; the truth stays the dry speech's word times. The aligner trains on that corpus,
as the align stage would, and aligns it. bench/bench_align.py measures the same at full size.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_align import demo_utterances

from simulforge.transforms.align import (
    boundary_errors_ms,
    load_settings,
    read_truth,
    sample_priority,
    to_clip,
)
from simulforge.transforms.aligners import Aligned, make_backend
from simulforge.transforms.aligners.degrade import BENCHMARK, Degrader, RoomDegradation, degrade, room_pool
from simulforge.transforms.aligners.features import dereverberated
from simulforge.transforms.aligners.gmm import closed_short_pauses
from simulforge.transforms.aligners.gmm_model import confidence, gap_quantiles
from simulforge.transforms.records import StageError
from simulforge.transforms.rooms import seeded_rng

RATE = 16000
# The aligner as it was before issue 19: no degraded copies in training, no dereverberation, no
# short-pause rule, silence modelled like any phone, every retried clip trained on.
PLAIN = {"features": {"dereverb_rt60_s": 0}, "gmm": {"degraded_copies": 0, "min_pause_ms": 0,
                                                     "silence_gaussians": 8, "careful_from_pass": 99,
                                                     "lda_dim": 0}}


# -- the degraded copies -------------------------------------------------------------------------


def test_a_degraded_copy_keeps_the_dry_timeline_its_level_and_the_snr():
    dry = np.zeros(2 * RATE, np.float32)
    dry[RATE // 2 : RATE] = 0.2 * np.sin(np.arange(RATE // 2) * 0.2)  # a tone from 0.5 s to 1.0 s
    d = RoomDegradation(seed="t", rooms=2, rt60_s=[0.3, 0.5], distance_m=[1.0, 2.0], snr_db=[80.0, 80.0])
    room = room_pool(d, RATE)[0]
    wet = degrade(dry, RATE, room, 80.0, np.zeros(len(dry), np.float32) + 1.0)
    # The direct sound starts where the dry sound does: nothing 20 dB below the peak comes earlier
    # than half the image filter's 81 taps (2.5 ms).
    onset = int(np.flatnonzero(np.abs(wet) > 0.1 * np.abs(wet).max())[0])
    assert RATE // 2 - 40 <= onset <= RATE // 2 + RATE // 1000, onset
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(dry**2)), rel=1e-3)
    assert np.abs(wet[RATE + RATE // 10 :]).max() > 1e-3  # reverberation rings on after the tone
    # At 12 dB the noise in the silence before the tone is 12 dB below the speech while the tone sounds.
    noise = np.random.default_rng(0).standard_normal(len(dry)).astype(np.float32)
    noisy = degrade(dry, RATE, room, 12.0, noise)
    speech, quiet = np.mean(noisy[RATE // 2 : RATE] ** 2), np.mean(noisy[: RATE // 2 - 200] ** 2)
    assert 10 * np.log10(speech / quiet) == pytest.approx(12.0, abs=1.5)


def test_degraded_copies_are_the_same_for_the_same_clip_and_differ_between_clips():
    d = RoomDegradation(seed="t", rooms=3, rt60_s=[0.3, 0.5], distance_m=[1.0, 2.0], snr_db=[5.0, 25.0])
    speech = np.random.default_rng(1).normal(0, 0.1, RATE).astype(np.float32)
    first, again = Degrader(d, RATE), Degrader(d, RATE)  # two workers
    assert np.array_equal(first("a", speech), again("a", speech))
    assert not np.array_equal(first("a", speech), first("b", speech))


# -- the features and the word spans ---------------------------------------------------------------


def test_dereverberation_takes_out_the_late_tail_and_keeps_onsets():
    settings = load_settings().features  # RT60 1 s, 30 ms delay, -15 dB floor
    frames = np.full((120, 4), 1e-6, np.float32)
    frames[20:60] = 1.0  # a sound for 400 ms...
    frames[60:] += (10 ** (-6 * np.arange(60) / 100 * 0.45 / 0.45))[:, None].astype(np.float32)  # ...ringing on
    out = dereverberated(frames, settings)
    assert np.allclose(out[20:23], 1.0)  # its first 30 ms (the direct sound) untouched
    assert out[40, 0] < 1.0  # the steady part loses what the model calls its own late reverberation
    assert (out[62:80, 0] < 0.2 * frames[62:80, 0]).all()  # the tail, 30 ms after the sound, loses the most
    assert (out >= frames * 10 ** (-15 / 10) - 1e-9).all()  # never more than the floor


def test_a_short_silence_between_words_goes_to_the_second_word():
    spans = [(0, 10), (13, 20), (30, 40), (40, 45)]
    assert closed_short_pauses(spans, 8) == [(0, 10), (10, 20), (30, 40), (40, 45)]  # 3 frames: closed
    assert closed_short_pauses(spans, 0) == spans


def test_confidence_ranks_a_fit_among_the_reference_fits():
    reference = gap_quantiles(np.arange(1.0, 101.0))  # gaps 1..100
    assert confidence(0.5, reference) == 1.0 and confidence(101.0, reference) == 0.0
    assert confidence(50.5, reference) == pytest.approx(0.5, abs=0.01)
    assert confidence(90.0, reference) == pytest.approx(0.1, abs=0.01)
    ranked = [confidence(g, reference) for g in np.linspace(0, 110, 50)]
    assert ranked == sorted(ranked, reverse=True)
    assert confidence(3.0, gap_quantiles([3.0] * 20 + [5.0])) == pytest.approx(0.52, abs=0.03)  # ties: mid-rank
    assert confidence(3.0, gap_quantiles([])) is None


# -- accuracy on the degraded demo corpus ----------------------------------------------------------


def degraded_half(clip) -> bool:
    return sample_priority(clip.id) % 2 == 0


@pytest.fixture(scope="module")
def mixed_corpus(demo_root, tmp_path_factory):
    """The demo corpora's English clips, every other one degraded, and the true word times."""
    clips = [to_clip(u) for u in demo_utterances(demo_root, tmp_path_factory.mktemp("degraded") / "work")]
    degrader = Degrader(BENCHMARK, RATE)
    clips = [c if not degraded_half(c) else type(c)(c.id, degrader(c.id, c.samples), c.rate, c.words, c.speaker)
             for c in clips]
    return clips, read_truth(str(demo_root / "truth" / "word_times.jsonl"))


def train_and_align(clips, overrides=None):
    backend = make_backend(load_settings(overrides))
    try:
        model, _ = backend.train("en", clips)
        return backend.align(model, clips)
    finally:
        backend.close()


def errors_ms(clips, results, truth, which) -> np.ndarray:
    found = [e for c, r in zip(clips, results, strict=True) if which(c) and isinstance(r, Aligned)
             for e in boundary_errors_ms(r.words, truth[c.id])]
    return np.array(found)


# Measured on this corpus (57 clips, 33 degraded; the sample is all of it, 3.5 min): the aligner
# 32 / 87 ms (mean / p90) on the degraded clips and 24 / 47 ms on the clean ones; the plain aligner
# 79 / 165 and 27 / 72 ms, because the reverberant clips it trains on teach a few states to swallow
# any speech, and then whole sentences are crammed before them. (On the full demo set the aligner
# does 18 / 40 and 9 / 18 ms, bench/bench_align.py; this small a sample trains weaker models: its
# LDA less well (without gmm.lda_dim 25 / 58 here), and with fewer degraded copies (gmm.degraded_copies
# 0.75, for training's cost) the p90 went from 67 to 87 ms here while the full set lost nothing.)
# The p90 limit moved from 100 to 110 ms for that: still far below the plain aligner's 165.
DEGRADED_MEAN_MS, DEGRADED_P90_MS = 40, 110  # between the two: 1.25x the aligner's, two thirds of the plain one's
CLEAN_MEAN_MS = 35  # the clean half may not pay for the degraded one: 1.5x its 24 ms


def test_word_boundaries_hold_on_reverberant_noisy_speech(mixed_corpus):
    clips, truth = mixed_corpus
    results = train_and_align(clips)
    rejected = {c.id: r.reason for c, r in zip(clips, results, strict=True) if not isinstance(r, Aligned)}
    assert not rejected
    degraded, clean = (errors_ms(clips, results, truth, w) for w in (degraded_half, lambda c: not degraded_half(c)))
    print(f"\ndegraded: mean {degraded.mean():.1f} p90 {np.percentile(degraded, 90):.1f} ms; "
          f"clean: mean {clean.mean():.1f} p90 {np.percentile(clean, 90):.1f} ms")
    assert len(degraded) > 300 and len(clean) > 200
    assert degraded.mean() < DEGRADED_MEAN_MS and np.percentile(degraded, 90) < DEGRADED_P90_MS
    assert clean.mean() < CLEAN_MEAN_MS
    # Confidence: every aligned clip and word has one. (Not lower on the degraded half: models trained on
    # degraded copies fit reverberant speech as well as clean, and on the bench's mixed corpus the degraded
    # half's median confidence is the higher. test_aligners checks that a wrong word scores lowest.)
    assert all(0 <= r.confidence <= 1 for r in results)
    assert all(len(r.word_confidence) == len(r.words) for r in results)


def test_the_plain_aligner_misses_those_thresholds(mixed_corpus):
    """The degraded set is hard: the aligner as it was before fails the thresholds above."""
    clips, truth = mixed_corpus
    degraded = errors_ms(clips, train_and_align(clips, PLAIN), truth, degraded_half)
    assert degraded.mean() > DEGRADED_MEAN_MS and np.percentile(degraded, 90) > DEGRADED_P90_MS


def test_careful_passes_train_only_on_clips_the_first_beam_aligns(mixed_corpus):
    """With a beam no path survives, every clip needs the retry: passes before `careful_from_pass` use
    it, careful ones leave the clip out, so a run careful from pass 1 has nothing to train on."""
    clips, _ = mixed_corpus
    narrow = {"gmm": {"beam": 0.01, "degraded_copies": 0}}
    backend = make_backend(load_settings({"gmm": {**narrow["gmm"], "careful_from_pass": 99}}))
    try:
        _, report = backend.train("en", clips)
        assert "alignment_failed" not in report.skipped  # every pass retried with the wide beam
        backend.settings = load_settings({"gmm": {**narrow["gmm"], "careful_from_pass": 1}}).gmm
        with pytest.raises(StageError, match="pass 1 aligned none of the"):
            backend.train("en", clips)
    finally:
        backend.close()


def test_rooms_for_training_are_not_the_benchmark_s():
    train = load_settings().gmm.copy_rooms
    assert train.seed != BENCHMARK.seed
    a, b = seeded_rng(train.seed, "rooms").integers(2**31), seeded_rng(BENCHMARK.seed, "rooms").integers(2**31)
    assert a != b
