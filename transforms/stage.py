"""The thin Beam wrapper every stage shares.

A stage's logic is a pure function from one record to an iterable of records; it yields
the records it produced, a `Reject` for each it refused, and any `Stat` it wants summed.
`run_stage` routes them to three outputs and counts with Beam Metrics, so that for every
stage `in == out + rejected` holds by construction and shows in the runner's UI. Stats are
summed per bundle and leave in `finish_bundle`: a few elements per bundle instead of several
per record for the runner to move (their totals are summed again downstream either way).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from .records import Reject, Stat

OUT, REJECTS, STATS = "out", "rejects", "stats"


class StageFn(beam.DoFn):
    """Calls `fn(record)` and routes what it yields; `setup` builds per-worker state once."""

    def __init__(self, stage: str, fn: Callable[..., Iterable[Any]], setup: Callable[[], Any] | None = None):
        self.stage, self.fn, self._setup = stage, fn, setup
        self.state = None

    def setup(self):
        self.counters = {k: Metrics.counter(self.stage, k) for k in ("in", "out", "rejected")}
        if self._setup is not None:
            self.state = self._setup()

    def start_bundle(self):
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def process(self, record, *side_inputs):
        self.counters["in"].inc()
        args = (record, self.state, *side_inputs) if self._setup is not None else (record, *side_inputs)
        produced = 0
        for item in self.fn(*args):
            if isinstance(item, Reject):
                self.counters["rejected"].inc()
                Metrics.counter(self.stage, f"rejected/{item.reason}").inc()
                yield beam.pvalue.TaggedOutput(REJECTS, item)
            elif isinstance(item, Stat):
                self.sums[item.stage, item.name] += item.value
            else:
                produced += 1
                yield item
        self.counters["out"].inc(produced)
        self.sums[self.stage, "in"] += 1
        if produced:
            self.sums[self.stage, "out"] += produced

    def finish_bundle(self):
        for (stage, name), value in self.sums.items():
            yield beam.pvalue.TaggedOutput(STATS, GlobalWindows.windowed_value(Stat(stage, name, value)))


def run_stage(pcoll, stage: str, fn, *side_inputs, setup=None):
    """Apply `fn` as stage `stage`; returns (out, rejects, stats) PCollections."""
    results = pcoll | stage >> beam.ParDo(StageFn(stage, fn, setup), *side_inputs).with_outputs(
        REJECTS, STATS, main=OUT
    )
    return results[OUT], results[REJECTS], results[STATS]
