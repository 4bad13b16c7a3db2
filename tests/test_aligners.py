"""The aligner backends and their parts: pronunciations, features, Viterbi, the GMM-HMM, MFA."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import stat
import sys

import numpy as np
import pytest

from simulforge.transforms.align import load_settings
from simulforge.transforms.aligners import Aligned, Clip, make_backend
from simulforge.transforms.aligners.features import FeatureSettings, frame_levels_db, mfcc
from simulforge.transforms.aligners.gmm_model import (
    _top,
    _word_pdfs,
    align_features,
    base_phone,
    mismatch,
    project,
    spliced,
    word_graph,
)
from simulforge.transforms.aligners.gmm_train import _lda, _lda_stats, holdout_split
from simulforge.transforms.aligners.mfa import MfaBackend, match_words, missing_reason
from simulforge.transforms.aligners.pronounce import Phonemizer, PronounceError, phone_names
from simulforge.transforms.aligners.viterbi import augment, build_graph, gaussian_weights, viterbi
from simulforge.transforms.records import StageError
from simulforge.transforms.timing import spoken_words

RATE = 16000


# -- pronunciations ----------------------------------------------------------------------------


def test_phone_names_drop_stress_pauses_and_language_switches():
    assert phone_names("h_@_l_'oU") == ["h", "@", "l", "oU"]
    assert phone_names("m_'O@_n_I_N__:__: 'E_v_r_i_;") == ["m", "O@", "n", "I", "N", "E", "v", "r", "i"]
    assert phone_names("(en)t_'u: T_'aU_z_@_n_d(de)") == ["t", "u:", "T", "aU", "z", "@", "n", "d"]


def test_words_are_phonemized_in_their_sentence_with_one_entry_per_word():
    with Phonemizer("en-us") as p:
        [in_the_end, a_cat, year, no_sound] = p.phones(
            [["In", "the", "end"], ["a", "cat"], ["in", "2024", "again"], ["hello", "♪", "world"]])
    assert in_the_end[1] == ("D", "I2")  # "the" before a vowel, not merged into "in the"
    assert a_cat[0] == ("a#",)  # the article, not the letter's name
    assert len(year) == 3 and len(year[1]) > 8  # a number's several spoken words stay with it
    assert no_sound[1] == () and no_sound[0] and no_sound[2]


def test_a_voice_espeak_lacks_is_a_clear_error():
    with Phonemizer("xx-nowhere") as p, pytest.raises(PronounceError, match="no voice 'xx-nowhere'"):
        p.phones([["hello"]])


# -- features and Viterbi ----------------------------------------------------------------------


def test_frames_stand_for_their_own_stretch_of_audio():
    s = FeatureSettings(frame_shift_ms=10, window_ms=25, num_mel_bins=23, num_ceps=13, preemphasis=0.97,
                        delta_window=2, dereverb_rt60_s=1.0, dereverb_delay_ms=30, dereverb_floor_db=-15)
    audio = np.zeros(RATE, np.float32)
    audio[8000:] = 0.3 * np.sin(np.arange(8000) * 0.3)  # sound from 0.5 s exactly
    assert mfcc(audio, RATE, s).shape == (100, 39)
    level = frame_levels_db(audio, RATE, 10)
    assert level[49] < -90 < -20 < level[50]


def test_augmented_frames_times_gaussian_weights_are_log_densities():
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    means, variances, log_w = rng.normal(size=(2, 3)), rng.uniform(0.5, 2, (2, 3)), np.log([0.3, 0.7])
    got = augment(x) @ gaussian_weights(means, variances, log_w).T
    want = log_w + norm.logpdf(x[:, None, :], means, np.sqrt(variances)).sum(axis=2)
    assert np.allclose(got, want, atol=1e-4)


def _one_gaussian_per_pdf(pdfs: int, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pdf j: a 1-D Gaussian at j, narrow enough that a frame one away scores 10 lower."""
    means = np.arange(float(pdfs))[:, None, None]
    return gaussian_weights(means, np.full_like(means, 0.05), log_w[:, None]), np.ones(pdfs, np.int64)


def test_viterbi_finds_the_path_and_the_beam_can_lose_it():
    sil, w0, w1 = [0], [1, 2], [3, 4]
    graph = build_graph([w0, w1], sil, between_words=True)
    # states: sil w0 w0 sil w1 w1 sil; the audio: 2 frames silence, w0 3+2, w1 2+3, silence 1
    truth = [0, 0, 1, 1, 1, 2, 2, 4, 4, 5, 5, 5, 6]
    frames = augment(graph.pdf[truth][:, None].astype(np.float32))  # each frame on its pdf's mean
    loop = np.log(np.full((graph.size, 2), 0.5))
    log_w = np.zeros(5)
    assert viterbi(frames, graph, *_one_gaussian_per_pdf(5, log_w), loop, 1.0, beam=100).tolist() == truth
    # A pdf every path must pass scores so badly that the beam prunes whatever enters it.
    log_w[2] = -100.0
    assert viterbi(frames, graph, *_one_gaussian_per_pdf(5, log_w), loop, 1.0, beam=5) is None
    assert viterbi(frames, graph, *_one_gaussian_per_pdf(5, log_w), loop, 1.0, beam=200) is not None


def _exhaustive_viterbi(scores: np.ndarray, graph, loop: np.ndarray) -> np.ndarray:
    """The best path by plain dynamic programming over every state: no beam, no laziness."""
    frames, states = scores.shape
    source = {int(t): int(f) for t, f in zip(graph.skip_to, graph.skip_from, strict=True)}
    best = np.full(states, -np.inf)
    best[graph.starts] = scores[0, graph.starts]
    back = np.zeros((frames, states), np.int64)
    for t in range(1, frames):
        new = np.full(states, -np.inf)
        for s in range(states):
            for prev in {s, s - 1, source.get(s, -1)} - {-1}:  # stay, advance, jump a silence
                lp = loop[s, 0] if prev == s else loop[prev, 1]
                if best[prev] + lp > new[s]:
                    new[s], back[t, s] = best[prev] + lp, prev
        best = new + scores[t]
    path = [graph.finals[np.argmax(best[graph.finals])]]
    for t in range(frames - 1, 0, -1):
        path.append(back[t, path[-1]])
    return np.array(path[::-1])


def test_viterbi_with_a_wide_beam_finds_the_exhaustive_search_s_path():
    rng = np.random.default_rng(1)
    graph = build_graph([[1, 2, 3], [4, 5], [6, 7, 8]], [0], between_words=True)
    gaussians = gaussian_weights(rng.normal(size=(9, 3, 4)), rng.uniform(0.5, 2, (9, 3, 4)),
                                 np.log(np.full((9, 3), 1 / 3)))
    sizes = rng.integers(1, 4, 9)
    feats = rng.normal(size=(40, 4))
    loop = np.log(rng.dirichlet([4, 1], graph.size))
    frames = augment(feats)
    scores = np.stack([[max(frames[t] @ gaussians[p, m] for m in range(sizes[p])) for p in graph.pdf]
                       for t in range(len(frames))])
    expected = _exhaustive_viterbi(0.5 * scores, graph, loop)
    assert viterbi(frames, graph, gaussians, sizes, loop, 0.5, beam=1e9).tolist() == expected.tolist()


def test_lda_keeps_the_direction_that_tells_states_apart_and_whitens_their_spread():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 3000)
    x = rng.normal(size=(3000, 4))
    x[:, 0] *= 10  # the widest spread, within every class: what LDA must not keep
    x[:, 2] += 3 * labels  # the classes differ along this one
    projection = _lda(*_lda_stats([(x.astype(np.float32), labels)], 3, splice=0), 1)
    direction = projection[:, 0] / np.linalg.norm(projection[:, 0])
    assert abs(direction[2]) > 0.99
    y = x @ projection
    assert np.mean([y[labels == k].var() for k in range(3)]) == pytest.approx(1.0, rel=0.05)


def test_projection_is_the_spliced_frames_times_the_matrix():
    rng = np.random.default_rng(4)
    feats, matrix = rng.normal(size=(7, 6)).astype(np.float32), rng.normal(size=(2 * 5, 3)).astype(np.float32)
    wide = spliced(feats[:, :2], 2)  # 2 columns, 2 frames each side, edges repeated
    assert wide.shape == (7, 10) and np.array_equal(wide[0, :6], np.tile(feats[0, :2], 3))
    assert np.allclose(project(feats, matrix, 2, 2), wide @ matrix, atol=1e-5)


def test_top_keeps_the_largest_values_as_they_change():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(50, 30)).astype(np.float32)
    top = np.arange(4)
    for t in range(len(values)):
        _top(values, t, top)
        assert set(top.tolist()) == set(np.argsort(values[t])[-4:].tolist())


# -- the GMM-HMM backend -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def espeak_clips():
    """40 s of synthetic speech in two voices, with the synthesizer's true word times."""
    from simulforge.demo.espeak import synthesize
    from simulforge.demo.script import load_sentences

    clips, truth = [], []
    for i, sentence in enumerate(load_sentences()[:24]):
        syn = synthesize(sentence.en, ["en-us", "en-gb+m3"][i % 2], rate=170)
        clips.append(Clip(f"s{i}", syn.samples, RATE, spoken_words(sentence.en), f"spk{i % 2}"))
        truth.append(syn.words)
    return clips, truth


@pytest.fixture(scope="module")
def trained(espeak_clips):
    backend = make_backend(load_settings())
    model, report = backend.train("en", espeak_clips[0])
    yield backend, model, report
    backend.close()


def test_gmm_trains_on_the_clips_and_aligns_them(trained, espeak_clips):
    backend, model, report = trained
    clips, truth = espeak_clips
    assert report.clips == len(clips) and report.audio_s > 30
    results = backend.align(pickle.loads(pickle.dumps(model)), clips)  # as a Beam side input travels
    errors = [abs(a - b) for r, t in zip(results, truth, strict=True)
              for (_, s, e), (_, ts, te) in zip(r.words, t, strict=True) for a, b in ((s, ts), (e, te))]
    assert np.mean(errors) < 0.04


def test_gmm_rejects_what_it_cannot_align(trained, espeak_clips):
    backend, model, _ = trained
    clips, _ = espeak_clips
    speech = clips[0]
    bad = {
        "silence": Clip("silence", np.zeros(2 * RATE, np.float32), RATE, ["hello", "world"]),
        "noise": Clip("noise", np.random.default_rng(0).normal(0, 0.01, 2 * RATE).astype(np.float32), RATE,
                      ["hello", "world"]),
        "swapped": Clip("swapped", speech.samples, RATE, clips[5].words),
        "one_word_wrong": Clip("wrong", speech.samples, RATE, [*speech.words[:-1], "elephants"]),
        "unpronounceable": Clip("sym", speech.samples, RATE, [*speech.words, "♪"]),
        "no_words": Clip("none", speech.samples, RATE, []),
        "too_short": Clip("short", speech.samples[: RATE // 4], RATE, speech.words * 3),
    }
    got = dict(zip(bad, backend.align(model, list(bad.values())), strict=True))
    assert {k: r.reason for k, r in got.items()} == {
        "silence": "no_speech", "noise": "no_speech", "swapped": "transcript_mismatch",
        "one_word_wrong": "transcript_mismatch", "unpronounceable": "no_pronunciation", "no_words": "no_pronunciation",
        "too_short": "audio_too_short",
    }
    assert "'♪'" in got["unpronounceable"].detail
    with pytest.raises(StageError, match="never occurred"):
        _word_pdfs(model, [("h", "@", "not-a-phone")])


def test_a_wrong_word_has_the_lowest_confidence(trained, espeak_clips):
    backend, model, _ = trained
    clips, _ = espeak_clips
    loose = copy.copy(model)
    loose.mismatch_limit = np.inf  # aligned, however badly it fits
    for clip in clips[:4]:
        j = len(clip.words) // 2
        wrong = Clip(clip.id, clip.samples, RATE, [*clip.words[:j], "elephants", *clip.words[j + 1 :]])
        right, bad = backend.align(loose, [clip, wrong])
        assert bad.word_confidence[j] == min(bad.word_confidence) < np.median(bad.word_confidence)
        assert bad.word_confidence[j] < min(right.word_confidence[j], 0.05)
        assert bad.confidence <= right.confidence and bad.confidence < 0.05


def test_gmm_retries_a_lost_path_with_the_wider_beam(trained, espeak_clips):
    _, model, _ = trained
    clips, _ = espeak_clips
    outcomes = {}
    for beam, retry_beam in ((0.5, 300.0), (0.01, 0.01)):
        backend = make_backend(load_settings({"gmm": {"beam": beam, "retry_beam": retry_beam}}))
        try:
            results = backend.align(model, clips)
        finally:
            backend.close()
        outcomes[beam] = {r.reason if isinstance(r, StageError) else "retried" if r.retried else "first try"
                          for r in results}
    assert "retried" in outcomes[0.5] and "alignment_failed" in outcomes[0.01]


def test_the_holdout_is_an_even_slice_or_nothing_when_too_small():
    assert np.flatnonzero(holdout_split(10, 0.3, 3)).tolist() == [0, 3, 6]
    assert np.flatnonzero(holdout_split(100, 0.1, 10)).tolist() == list(range(0, 100, 10))
    assert not holdout_split(99, 0.1, 10).any()  # 9 clips to spare, fewer than 10: none held out


def test_gmm_sets_the_mismatch_limit_from_held_out_clips(espeak_clips):
    clips, _ = espeak_clips
    settings = load_settings({"gmm": {"holdout": 0.25, "min_holdout": 2}})
    held = [c for c, h in zip(clips, holdout_split(len(clips), 0.25, 2), strict=True) if h]
    backend = make_backend(settings)
    try:
        model, report = backend.train("en", clips)
        pronounced = backend.phonemizer(model.voice).phones([c.words for c in held])
    finally:
        backend.close()
    assert report.clips == len(clips) and len(held) == 6
    gaps, left_out = [], {}
    for clip, phones in zip(held, pronounced, strict=True):
        frames = model.frames(mfcc(clip.samples, clip.rate, settings.features))
        try:
            found = align_features(model, frames, word_graph(model, phones, settings.gmm), settings.gmm)
        except StageError as e:
            left_out[clip.id] = (e.reason, e.detail)
            continue
        gaps.append(mismatch(model, frames, found.path_pdfs))
    # Left out are exactly the clips holding a phone that training never saw (nor its base phone);
    # any other failure is the aligner's, and shows here.
    untrained = {clip.id for clip, phones in zip(held, pronounced, strict=True)
                 if any(p not in model.phones and base_phone(p) not in model.phones
                        for word in phones for p in (model.shared.get(q, q) for q in word))}
    assert {k: reason for k, (reason, _) in left_out.items()} == dict.fromkeys(untrained, "unseen_phone"), left_out
    assert len(gaps) == len(held) - len(untrained) >= 3
    median = np.median(gaps)
    assert model.mismatch_limit == pytest.approx(median + settings.gmm.mismatch_mads * np.median(np.abs(gaps - median)))


def test_gmm_with_no_usable_training_clip_says_why():
    backend = make_backend(load_settings())
    try:
        with pytest.raises(StageError) as e:
            backend.train("en", [Clip("s", np.zeros(RATE, np.float32), RATE, ["hello"])])
    finally:
        backend.close()
    assert e.value.reason == "no_training_data" and "no_speech" in e.value.detail


# -- the MFA backend ---------------------------------------------------------------------------


def test_mfa_words_are_matched_back_across_its_normalisation():
    timed = [("it's", 0.1, 0.3), ("well", 0.3, 0.5), ("known", 0.5, 0.8), ("ok", 0.9, 1.0)]
    assert match_words(["It's", "well-known", "OK"], timed) == [
        ("It's", 0.1, 0.3), ("well-known", 0.3, 0.8), ("OK", 0.9, 1.0)]
    with pytest.raises(StageError):
        match_words(["It's", "known"], timed)


def test_mfa_missing_is_said_clearly():
    from simulforge.settings import ConfigError
    from simulforge.transforms.align import Align

    reason = missing_reason("no-such-mfa-command")
    assert "not on PATH" in reason and "conda install" in reason
    settings = load_settings({"backend": "mfa", "mfa": {"command": "no-such-mfa-command"}})
    with pytest.raises(ConfigError, match="not on PATH"):
        Align(settings)
    with pytest.raises(StageError, match="not on PATH"):
        make_backend(settings).train("en", [])


FAKE_MFA = """\
#!{python}
# Stands in for `mfa align CORPUS DICTIONARY MODEL OUTPUT ...`: words spread evenly, as MFA names them.
import pathlib, sys
import soundfile
from praatio import textgrid
args = sys.argv[1:]
if {fail!r}:
    sys.exit("mfa: something went wrong")
assert args[0] == "align" and "--beam" in args, args
corpus, out = pathlib.Path(args[1]), pathlib.Path(args[4])
for lab in corpus.rglob("*.lab"):
    words = lab.read_text().lower().replace("-", " ").split()
    duration = soundfile.info(str(lab.with_suffix(".wav"))).duration
    step = duration / len(words)
    tg = textgrid.Textgrid()
    tg.addTier(textgrid.IntervalTier("words", [(i * step, (i + 1) * step, w) for i, w in enumerate(words)], 0, duration))
    target = out / lab.relative_to(corpus).with_suffix(".TextGrid")
    target.parent.mkdir(parents=True, exist_ok=True)
    tg.save(str(target), format="long_textgrid", includeBlankSpaces=True)
"""


@pytest.mark.parametrize("fail", [False, True])
def test_mfa_backend_writes_its_corpus_runs_it_and_reads_the_textgrids(tmp_path, fail):
    command = tmp_path / "mfa"
    command.write_text(FAKE_MFA.format(python=sys.executable, fail=fail))
    command.chmod(command.stat().st_mode | stat.S_IEXEC)
    backend = make_backend(load_settings({"backend": "mfa", "mfa": {"command": str(command)}}))
    assert isinstance(backend, MfaBackend)
    model, _ = backend.train("en", [])
    clips = [Clip("a", np.zeros(RATE, np.float32), RATE, ["A", "well-known", "place"], "spk/1"),
             Clip("b", np.zeros(RATE // 2, np.float32), RATE, ["Hi"], "spk2")]
    results = backend.align(model, clips)
    if fail:
        assert {r.reason for r in results} == {"aligner_error"} and "something went wrong" in results[0].detail
        return
    assert results[0].words == [("A", 0.0, 0.25), ("well-known", 0.25, 0.75), ("place", 0.75, 1.0)]
    assert results[1].words == [("Hi", 0.0, 0.5)]


@pytest.mark.skipif(shutil.which("mfa") is None, reason=missing_reason("mfa") or "")
def test_real_mfa_aligns_speech(espeak_clips):
    backend = make_backend(load_settings({"backend": "mfa"}))
    model, _ = backend.train("en", [])
    clips, truth = espeak_clips
    results = backend.align(model, clips[:4])
    assert len(results) == 4
    for clip, result, true in zip(clips[:4], results, truth[:4], strict=True):
        assert isinstance(result, Aligned), result
        assert [w for w, _, _ in result.words] == clip.words
        assert np.mean([abs(s - t[1]) for (_, s, _), t in zip(result.words, true, strict=True)]) < 0.1


def test_backend_names_are_checked():
    settings = load_settings()
    settings.backend = "nonesuch"
    with pytest.raises(ValueError, match="unknown aligner backend"):
        make_backend(settings)


def test_helper_script_needs_nothing_from_the_package():
    # pronounce.py runs as its own process: it must import from the standard library only.
    source = open(os.path.join(os.path.dirname(phone_names.__code__.co_filename), "pronounce.py")).read()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in sys.stdlib_module_names | {"__future__"} for line in imports)
