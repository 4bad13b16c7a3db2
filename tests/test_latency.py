"""Latency metrics on hand-computed cases, the instance log, and a cross-check with SimulEval 1.1.4."""

from __future__ import annotations

import json
import math
from argparse import Namespace

import numpy as np
import pytest

from simulforge.eval.instances import make_instance, read_instances, write_instances
from simulforge.eval.latency import (
    average_lagging,
    average_proportion,
    computation_time,
    differentiable_average_lagging,
    first_token_latency,
    instance_latency,
    length_adaptive_average_lagging,
    ms_per_token,
    score_instances,
)

# The running example: 1000 ms of source, 5 predicted words, a 4-word reference.
SOURCE = 1000.0
DELAYS = [200, 400, 600, 1000, 1000]
# Computation so far when each word came out: 50, 80, 100, 150, 180 ms.
ELAPSED = [250, 480, 700, 1150, 1180]
REF_LEN = 4


def test_al_hand_computed():
    # step |X|/|Y| = 1000/4 = 250; tau = 4 (first delay >= 1000).
    # (200-0) + (400-250) + (600-500) + (1000-750) = 200+150+100+250 = 700; 700/4 = 175
    assert average_lagging(DELAYS, SOURCE, REF_LEN) == pytest.approx(175.0)
    # Without a reference the prediction length sets the step: 1000/5 = 200;
    # (200-0) + (400-200) + (600-400) + (1000-600) = 1000; 1000/4 = 250
    assert average_lagging(DELAYS, SOURCE) == pytest.approx(250.0)


def test_laal_does_not_reward_over_generation():
    # The prediction (5) is longer than the reference (4): LAAL uses max(5, 4) = 5, step 200,
    # the 250 computed above, where AL's step of 250 lowers the lag to 175.
    assert length_adaptive_average_lagging(DELAYS, SOURCE, REF_LEN) == pytest.approx(250.0)
    # A prediction shorter than the reference: LAAL is AL (both use the reference length).
    # step 1000/4 = 250, tau = 3: (200-0) + (400-250) + (1000-500) = 850; 850/3
    short = [200, 400, 1000]
    assert length_adaptive_average_lagging(short, SOURCE, REF_LEN) == pytest.approx(850 / 3)
    assert average_lagging(short, SOURCE, REF_LEN) == pytest.approx(850 / 3)


def test_dal_hand_computed():
    # step 1000/5 = 200. d' = 200, max(400, 400)=400, max(600, 600)=600, max(1000, 800)=1000,
    # max(1000, 1200)=1200; minus (i-1)*200: 200+200+200+400+400 = 1400; 1400/5 = 280
    assert differentiable_average_lagging(DELAYS, SOURCE) == pytest.approx(280.0)


def test_dal_charges_for_bursts_that_al_credits():
    # Three words at 300 ms, the last at the end; step 1000/4 = 250.
    # AL: (300-0) + (300-250) + (300-500) + (1000-750) = 300+50-200+250 = 400; 400/4 = 100
    # DAL: d' = 300, 550, 800, 1050 (each at least 250 after the previous);
    #      (300-0) + (550-250) + (800-500) + (1050-750) = 1200; 1200/4 = 300
    burst = [300, 300, 300, 1000]
    assert average_lagging(burst, SOURCE, 4) == pytest.approx(100.0)
    assert differentiable_average_lagging(burst, SOURCE) == pytest.approx(300.0)


def test_ap_hand_computed():
    # (200+400+600+1000+1000) / (1000 * 5) = 3200/5000 = 0.64; with the reference length 4: 3200/4000
    assert average_proportion(DELAYS, SOURCE) == pytest.approx(0.64)
    assert average_proportion(DELAYS, SOURCE, target_length=REF_LEN) == pytest.approx(0.8)


def test_computation_aware_is_the_same_formula_on_elapsed():
    # AL_CA: step 250, tau = 4 (1150 is the first >= 1000):
    # (250-0) + (480-250) + (700-500) + (1150-750) = 250+230+200+400 = 1080; 1080/4 = 270
    assert average_lagging(ELAPSED, SOURCE, REF_LEN) == pytest.approx(270.0)
    assert first_token_latency(DELAYS) == 200.0
    assert first_token_latency(ELAPSED) == 250.0
    # The computation is cumulative: 1180 - 1000 = 180 ms for 5 words = 36 ms/word.
    assert computation_time(DELAYS, ELAPSED) == pytest.approx(180.0)
    assert ms_per_token(DELAYS, ELAPSED) == pytest.approx(36.0)


def test_first_token_after_the_source_ends():
    # Slow computation: the first word comes out 200 ms after the source ended, so tau = 1
    # and AL = LAAL = the first delay.
    elapsed = [1200, 1300]
    assert average_lagging(elapsed, SOURCE, 3) == pytest.approx(1200.0)
    assert length_adaptive_average_lagging(elapsed, SOURCE, 3) == pytest.approx(1200.0)


def test_offline_output():
    # Every word after the whole source: AL = LAAL = 1000 (tau = 1), AP = 1.
    # DAL: d' = 1000, 1200, 1400, 1600, 1800 minus 0, 200, 400, 600, 800 = 1000 each.
    offline = [SOURCE] * 5
    assert instance_latency(offline, SOURCE, REF_LEN) == pytest.approx(
        {"AL": 1000.0, "LAAL": 1000.0, "DAL": 1000.0, "AP": 1.0, "StartOffset": 1000.0}
    )


def test_empty_prediction_has_no_latency():
    for metric in (
        average_lagging,
        length_adaptive_average_lagging,
        differentiable_average_lagging,
        average_proportion,
    ):
        with pytest.raises(ValueError, match="empty prediction"):
            metric([], SOURCE)
    with pytest.raises(ValueError, match="empty prediction"):
        first_token_latency([])
    with pytest.raises(ValueError, match="source_length"):
        average_lagging(DELAYS, 0)


def _instance(index, delays, elapsed, reference, source_length=SOURCE, prediction=None):
    prediction = " ".join(f"w{i}" for i in range(len(delays))) if prediction is None else prediction
    return make_instance(index, prediction, delays, elapsed, reference, f"{index}.wav", source_length)


def test_score_instances_is_a_mean_over_instances():
    offline = [SOURCE] * 5
    instances = [
        _instance(0, DELAYS, ELAPSED, "a b c d"),
        _instance(1, offline, [x + 100 for x in offline], "a b c d"),
        _instance(2, [], [], "a b"),  # empty: left out of every mean
    ]
    scores = score_instances(instances)
    assert scores["AL"] == pytest.approx((175 + 1000) / 2)
    assert scores["LAAL"] == pytest.approx((250 + 1000) / 2)
    assert scores["DAL"] == pytest.approx((280 + 1000) / 2)
    assert scores["AP"] == pytest.approx((0.64 + 1.0) / 2)
    assert scores["StartOffset"] == pytest.approx((200 + 1000) / 2)
    # Instance 1 computed for 100 ms throughout: AL_CA = 1100 (tau = 1).
    assert scores["AL_CA"] == pytest.approx((270 + 1100) / 2)
    # (180 + 100) ms of computation over 10 words.
    assert scores["ms_per_token"] == pytest.approx(28.0)
    assert (scores["num_instances"], scores["num_empty"]) == (3, 1)


def test_score_instances_edge_cases():
    # No elapsed times (e.g. text input): no CA metrics and no ms/token.
    scores = score_instances([_instance(0, DELAYS, [], None)])
    assert "AL_CA" not in scores and "ms_per_token" not in scores
    assert scores["AL"] == pytest.approx(250.0)  # no reference: prediction length, as above
    # Only empty predictions: every metric is NaN rather than an error.
    scores = score_instances([_instance(0, [], [], "a")])
    assert math.isnan(scores["LAAL"]) and scores["num_empty"] == 1
    with pytest.raises(ValueError, match="all or none"):
        score_instances([_instance(0, DELAYS, ELAPSED, "a"), _instance(1, DELAYS, [], "a")])
    bad = _instance(0, DELAYS, ELAPSED, "a") | {"prediction_length": 4}
    with pytest.raises(ValueError, match="instance 0: prediction_length"):
        score_instances([bad])
    with pytest.raises(ValueError, match="instance 0: target length"):
        score_instances([_instance(0, DELAYS, [], "")])  # an empty reference has no rate


def test_instance_log_round_trip(tmp_path):
    instances = [_instance(i, DELAYS, ELAPSED, "Grüße an alle") for i in range(3)]
    path = tmp_path / "instances.log"
    write_instances(path, instances)
    assert read_instances(path) == instances
    assert not (tmp_path / "instances.log.partial").exists()
    assert list(json.loads(path.read_text().splitlines()[0])) == [
        "index",
        "prediction",
        "delays",
        "elapsed",
        "prediction_length",
        "reference",
        "source",
        "source_length",
    ]
    with pytest.raises(ValueError, match="3 delays for 2 predicted words"):
        make_instance(0, "a  b", [1, 2, 3], [], "a", "x.wav", SOURCE)


def test_read_instances_rejects_bad_logs(tmp_path):
    path = tmp_path / "instances.log"
    good = json.dumps(_instance(0, DELAYS, ELAPSED, "a"))
    path.write_text(good + "\n" + good[:30])
    with pytest.raises(ValueError, match=r"instances.log:2: not JSON.*interrupted"):
        read_instances(path)
    path.write_text(good + "\n\n" + good + "\n")
    with pytest.raises(ValueError, match=r":3: index 0 appears twice"):
        read_instances(path)
    path.write_text(json.dumps({"index": 0, "prediction": "a"}) + "\n")
    with pytest.raises(ValueError, match=r":1: missing \['delays'"):
        read_instances(path)


# --- Cross-check with SimulEval 1.1.4 --------------------------------------------------------


def _random_instances(seed: int, count: int) -> list[dict]:
    """Speech-to-text runs as SimulEval records them: words emitted at the end of 320 ms source
    segments, the last ones at the source end, elapsed = delay + cumulative computation."""
    rng = np.random.default_rng(seed)
    instances = []
    for index in range(count):
        source_length = float(rng.integers(800, 15000))
        n_words = int(rng.integers(1, 25))
        delays = np.minimum(
            np.sort(rng.integers(1, source_length // 320 + 2, n_words)) * 320.0, source_length
        )
        delays[n_words - int(rng.integers(0, n_words + 1)) :] = source_length
        elapsed = delays + np.cumsum(rng.uniform(5, 600, n_words))
        reference = " ".join(["ref"] * int(rng.integers(1, 30)))  # single spaces, see below
        instances.append(_instance(index, delays.tolist(), elapsed.tolist(), reference, source_length))
    return instances


@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")  # SimulEval's own
def test_matches_simuleval_scorers():
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers.latency_scorer import ALScorer, APScorer, DALScorer, LAALScorer

    instances = _random_instances(seed=7, count=40)
    instances.append(_instance(40, [], [], "an empty prediction"))
    # SimulEval re-scores from log lines; its reference length is len(reference.split(" ")),
    # which equals our whitespace split only for single-spaced references like these.
    theirs = {ins["index"]: LogInstance(json.dumps(ins)) for ins in instances}
    scorers = {"AL": ALScorer, "LAAL": LAALScorer, "DAL": DALScorer}
    for ca, times in (("", "delays"), ("_CA", "elapsed")):
        aware = ca == "_CA"
        for ins in instances[:-1]:
            ours = instance_latency(ins[times], ins["source_length"], len(ins["reference"].split()))
            for name, scorer in scorers.items():
                expected = scorer(computation_aware=aware).compute(theirs[ins["index"]])
                assert ours[name] == pytest.approx(expected), (name + ca, ins["index"])
            # SimulEval's AP divides by the reference length when there is one; ours, by
            # default, by the prediction length (the standard definition).
            assert ours["AP"] == pytest.approx(
                APScorer(aware, use_ref_len=False).compute(theirs[ins["index"]])
            )
            assert average_proportion(
                ins[times], ins["source_length"], len(ins["reference"].split())
            ) == pytest.approx(APScorer(aware).compute(theirs[ins["index"]]))
        # Means over instances, skipping the empty one in both.
        ours = score_instances(instances)
        for name, scorer in scorers.items():
            assert ours[name + ca] == pytest.approx(scorer(computation_aware=aware)(theirs))
        assert ours["AP" + ca] == pytest.approx(APScorer(aware, use_ref_len=False)(theirs))


def test_simuleval_score_only_reads_our_log_and_its_ca_bug(tmp_path):
    """SimulEval 1.1.4 builds each plain scorer with `from_args(args)`, which passes
    `computation_aware=args.computation_aware`; with `--computation-aware` it then adds the
    `_CA` scorer as well. So the plain AL/LAAL/AP/DAL/StartOffset columns are computed on
    `elapsed` too and equal their `_CA` columns. Ours keeps plain metrics on `delays`, so our
    LAAL equals SimulEval's LAAL only without `--computation-aware`, and our LAAL_CA equals
    both of its columns with it."""
    from simuleval.evaluator import evaluator

    instances = _random_instances(seed=11, count=20)
    write_instances(tmp_path / "instances.log", instances)
    ours = score_instances(read_instances(tmp_path / "instances.log"))

    def simuleval_latency(computation_aware: bool) -> dict[str, float]:
        args = Namespace(
            score_only=True,
            output=str(tmp_path),
            no_scoring=False,
            no_progress_bar=True,
            source_type="speech",
            target_type="text",
            eval_latency_unit="word",
            latency_metrics=["AL", "LAAL", "DAL"],
            computation_aware=computation_aware,
            no_use_ref_len=False,
            quality_metrics=[],
            start_index=0,
            end_index=-1,
        )
        return evaluator.SentenceLevelEvaluator.from_args(args).latency

    plain = simuleval_latency(computation_aware=False)
    assert {k: plain[k] for k in ("AL", "LAAL", "DAL")} == pytest.approx(
        {k: ours[k] for k in ("AL", "LAAL", "DAL")}
    )
    with_ca = simuleval_latency(computation_aware=True)
    for name in ("AL", "LAAL", "DAL"):
        assert with_ca[name + "_CA"] == pytest.approx(ours[name + "_CA"])
        assert with_ca[name] == pytest.approx(ours[name + "_CA"])  # the bug: plain == CA
        assert with_ca[name] != pytest.approx(ours[name])
