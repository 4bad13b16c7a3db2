"""Latency metrics for simultaneous translation, per instance and over a test set.

Conventions (shared by every function here):

- A *delay* is the amount of source, in milliseconds, that had been read when a target
  token was emitted; `delays[i]` belongs to the i-th token. `source_length` is the
  source duration in ms. Tokens are words of the detokenized output split on
  whitespace (SimulEval's `--eval-latency-unit word`), so lengths count words:
  the prediction length is `len(delays)`, the reference length `len(reference.split())`.
- *Computation-aware* (CA) metrics use the same formulas on `elapsed` instead of
  `delays`: `elapsed[i] = delays[i] + wall-clock ms spent computing up to token i`,
  as SimulEval records it. A CA metric is `metric(elapsed, ...)`; there are no separate
  CA functions, and the lengths stay the same.
- Every metric is in ms except AP, which is a fraction of the source (1.0 = offline;
  CA AP can exceed 1).
- A prediction with no tokens has no latency: the per-instance functions raise
  `ValueError`, and `score_instances` leaves such instances out of the means (as
  SimulEval does) and reports how many it left out.

Definitions, with |X| = source_length, d_i the delays (1-based) and |Y*| = len(delays):

- AL   (Ma et al. 2019): (1/tau) * sum_{i<=tau} [d_i - (i-1) * |X|/|Y|], where
  tau = the first i with d_i >= |X| (|Y*| if none) and |Y| the reference length
  (|Y*| without a reference).
- LAAL (Papi et al. 2022): AL with |Y| = max(|Y*|, reference length), so that
  over-generation cannot lower the lag.
- DAL  (Arivazhagan et al. 2019): (1/|Y*|) * sum_i [d'_i - (i-1) * s] with the minimum
  step s = |X|/|Y*|, d'_1 = d_1 and d'_i = max(d_i, d'_{i-1} + s); no tau cut-off.
- AP   (Cho and Esipova 2016): sum_i d_i / (|X| * |Y*|).
- StartOffset: d_1, the first-token latency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

LATENCY_METRICS = ("AL", "LAAL", "DAL", "AP", "StartOffset")


def _check(delays: Sequence[float], source_length: float) -> None:
    if len(delays) == 0:
        raise ValueError("latency is undefined for an empty prediction (no delays)")
    if not source_length > 0:
        raise ValueError(f"source_length must be positive, got {source_length}")


def _lagging(delays: Sequence[float], source_length: float, target_length: int) -> float:
    """The AL sum shared by AL and LAAL; they differ only in `target_length`."""
    if target_length <= 0:
        raise ValueError(f"target length must be positive, got {target_length}")
    step = source_length / target_length  # the ideal (wait-0) lag grows this much per token
    total, tau = 0.0, 0
    for i, delay in enumerate(delays):
        total += delay - i * step
        tau = i + 1
        if delay >= source_length:
            break
    return total / tau


def average_lagging(
    delays: Sequence[float], source_length: float, reference_length: int | None = None
) -> float:
    """AL in ms; `reference_length` (words) sets the ideal rate, the prediction length if None."""
    _check(delays, source_length)
    return _lagging(delays, source_length, len(delays) if reference_length is None else reference_length)


def length_adaptive_average_lagging(
    delays: Sequence[float], source_length: float, reference_length: int | None = None
) -> float:
    """LAAL in ms: AL with max(prediction length, reference length) as the target length."""
    _check(delays, source_length)
    return _lagging(delays, source_length, max(len(delays), reference_length or 0))


def differentiable_average_lagging(delays: Sequence[float], source_length: float) -> float:
    """DAL in ms; a token cannot be emitted sooner than |X|/|Y*| ms after the previous one."""
    _check(delays, source_length)
    step = source_length / len(delays)
    total, previous = 0.0, -math.inf
    for i, delay in enumerate(delays):
        previous = max(delay, previous + step)
        total += previous - i * step
    return total / len(delays)


def average_proportion(
    delays: Sequence[float], source_length: float, target_length: int | None = None
) -> float:
    """AP, a fraction of the source.

    `target_length` defaults to the prediction length (the standard definition); SimulEval
    1.1.4 divides by the reference length instead whenever a reference is given, so pass
    the reference length to reproduce its numbers.
    """
    _check(delays, source_length)
    n = len(delays) if target_length is None else target_length
    if n <= 0:
        raise ValueError(f"target_length must be positive, got {n}")
    return sum(delays) / (source_length * n)


def first_token_latency(delays: Sequence[float]) -> float:
    """Source ms read (or, given `elapsed`, wall-clock ms) before the first token."""
    if len(delays) == 0:
        raise ValueError("first-token latency is undefined for an empty prediction")
    return float(delays[0])


def computation_time(delays: Sequence[float], elapsed: Sequence[float]) -> float:
    """Wall-clock ms spent computing until the last token: `elapsed` minus `delays` is cumulative."""
    if len(delays) == 0 or len(elapsed) != len(delays):
        raise ValueError(
            f"need one elapsed per delay and at least one token, got {len(elapsed)} and {len(delays)}"
        )
    return float(elapsed[-1] - delays[-1])


def ms_per_token(delays: Sequence[float], elapsed: Sequence[float]) -> float:
    """Computation ms per emitted token of one instance (EASiST's speed measure)."""
    return computation_time(delays, elapsed) / len(delays)


def instance_latency(
    delays: Sequence[float], source_length: float, reference_length: int | None = None
) -> dict[str, float]:
    """All of LATENCY_METRICS for one instance; pass `elapsed` as `delays` for the CA ones."""
    return {
        "AL": average_lagging(delays, source_length, reference_length),
        "LAAL": length_adaptive_average_lagging(delays, source_length, reference_length),
        "DAL": differentiable_average_lagging(delays, source_length),
        "AP": average_proportion(delays, source_length),
        "StartOffset": first_token_latency(delays),
    }


def score_instances(instances: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of each latency metric over SimulEval-style instance dicts.

    Uses the keys `delays`, `source_length`, `reference` (None or missing: AL and LAAL
    fall back to the prediction length), `elapsed` and `prediction_length` (checked
    against `len(delays)` when present). Returns LATENCY_METRICS, their `_CA` variants
    when the instances carry `elapsed`, `ms_per_token` (total computation over total
    tokens, so long outputs weigh more), `num_instances` and `num_empty` (instances
    with no tokens, left out of every mean). A metric is NaN when every instance is empty.

    `elapsed` must be given for every non-empty instance or for none (empty or missing:
    not measured): CA means over a subset would not be comparable with the others.
    """
    plain: list[dict[str, float]] = []
    aware: list[dict[str, float]] = []
    compute_ms, tokens, num_empty = 0.0, 0, 0
    for ins in instances:
        index = ins.get("index")
        delays = ins["delays"]
        elapsed = ins.get("elapsed") or []
        if "prediction_length" in ins and ins["prediction_length"] != len(delays):
            raise ValueError(
                f"instance {index}: prediction_length {ins['prediction_length']} != {len(delays)} delays"
            )
        if elapsed and len(elapsed) != len(delays):
            raise ValueError(f"instance {index}: {len(elapsed)} elapsed for {len(delays)} delays")
        if not delays:
            num_empty += 1
            continue
        reference = ins.get("reference")
        reference_length = None if reference is None else len(reference.split())
        try:
            plain.append(instance_latency(delays, ins["source_length"], reference_length))
            if elapsed:
                aware.append(instance_latency(elapsed, ins["source_length"], reference_length))
                compute_ms += computation_time(delays, elapsed)
                tokens += len(delays)
        except ValueError as error:
            raise ValueError(f"instance {index}: {error}") from None
    if aware and len(aware) != len(plain):
        raise ValueError(
            f"{len(aware)} of {len(plain)} non-empty instances have elapsed times; need all or none"
        )

    def means(scores: list[dict[str, float]], suffix: str) -> dict[str, float]:
        return {
            name + suffix: fmean(s[name] for s in scores) if scores else math.nan for name in LATENCY_METRICS
        }

    result = means(plain, "")
    if aware:
        result |= means(aware, "_CA")
        result["ms_per_token"] = compute_ms / tokens
    result["num_instances"] = len(instances)
    result["num_empty"] = num_empty
    return result
