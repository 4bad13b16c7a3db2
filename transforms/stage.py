"""The thin Beam wrapper every stage shares.

A stage's logic is a pure function that yields the records it produced, a `Reject` for each
it refused (raise `StageError` where the fault is found; the function that knows the record
turns it into one), and any `Stat` it wants summed. `run_stage` routes them to three outputs
and counts what went in and out, so that for every stage `in == out + rejected` holds unless
the function loses a record, which the run's report then catches. The function is called one
of three ways:

- per record (the default): `fn(record)`.
- batched (`batch=n`): `fn(records)` on batches of n, for work that is cheaper many at a time
  (a model's forward pass); in counts the batch's records.
- grouped (`grouped=True`, on `(key, record)` pairs): `fn(key, members)` once per key, for a
  decision over many records at once (pairing speakers into conversations); in counts the
  members, and out the members that the outputs carry (`carries(output)` -> member ids).

Stats are summed per bundle and leave in `finish_bundle`: a few elements per bundle instead of
several per record for the runner to move (their totals are summed again downstream either way).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from .progress import Recorder
from .records import Reject, Stat

OUT, REJECTS, STATS = "out", "rejects", "stats"


def tally(stage: str, items: Iterable[Any], taken: int,
          carries: Callable[[Any], Iterable[str]] | None = None) -> Iterator[Any]:
    """`items` as a stage function yielded them for `taken` records, then the stage's `in` and `out`
    stats: out counts the records produced, or with `carries` the distinct members they carry."""
    produced, carried = 0, set()
    for item in items:
        if not isinstance(item, (Reject, Stat)):
            produced += 1
            if carries is not None:
                carried.update(carries(item))
        yield item
    yield Stat(stage, "in", taken)
    out = produced if carries is None else len(carried)
    if out:
        yield Stat(stage, "out", out)


class StageFn(beam.DoFn):
    """Calls the stage function and routes what it yields; `setup` builds per-worker state once,
    passed to the function after the element."""

    def __init__(self, stage: str, fn: Callable[..., Iterable[Any]], setup: Callable[[], Any] | None = None,
                 mode: str = "record", carries: Callable[[Any], Iterable[str]] | None = None):
        self.stage, self.fn, self._setup, self.mode, self.carries = stage, fn, setup, mode, carries
        self.state = None

    def setup(self):
        self.counters = {k: Metrics.counter(self.stage, k) for k in ("in", "out", "rejected")}
        self.progress = Recorder(self.stage)  # live progress for the launcher (transforms/progress.py)
        if self._setup is not None:
            self.state = self._setup()

    def start_bundle(self):
        self.sums: dict[tuple[str, str], float] = defaultdict(float)
        self.progress.start()

    def process(self, element, *side_inputs):
        if self.mode == "grouped":
            key, members = element
            members = list(members)
            args, taken = (key, members), len(members)
        else:
            args, taken = (element,), len(element) if self.mode == "batch" else 1
        if self._setup is not None:
            args = (*args, self.state)
        for item in self.progress.watch(tally(self.stage, self.fn(*args, *side_inputs), taken, self.carries), taken):
            if isinstance(item, Reject):
                self.counters["rejected"].inc()
                Metrics.counter(self.stage, f"rejected/{item.reason}").inc()
                yield beam.pvalue.TaggedOutput(REJECTS, item)
            elif isinstance(item, Stat):
                if item.stage == self.stage and item.name in ("in", "out"):
                    self.counters[item.name].inc(int(item.value))
                self.sums[item.stage, item.name] += item.value
            else:
                yield item

    def finish_bundle(self):
        self.progress.finish()
        for (stage, name), value in self.sums.items():
            yield beam.pvalue.TaggedOutput(STATS, GlobalWindows.windowed_value(Stat(stage, name, value)))


def run_stage(pcoll, stage: str, fn, *side_inputs, setup=None, batch: int | None = None, grouped: bool = False,
              carries=None):
    """Apply `fn` as stage `stage` (per record, on batches of `batch`, or per key of `(key, record)`
    pairs when `grouped`); returns (out, rejects, stats) PCollections."""
    mode = "batch" if batch else "grouped" if grouped else "record"
    if batch:  # fixed-size batches: memory per call is bounded and its cost predictable
        pcoll = pcoll | f"Batch[{stage}]" >> beam.BatchElements(min_batch_size=batch, max_batch_size=batch)
    elif grouped:
        pcoll = pcoll | f"Group[{stage}]" >> beam.GroupByKey()
    results = pcoll | stage >> beam.ParDo(StageFn(stage, fn, setup, mode, carries), *side_inputs).with_outputs(
        REJECTS, STATS, main=OUT
    )
    return results[OUT], results[REJECTS], results[STATS]
