"""Live progress from the workers: per stage, the records taken in, passed on and rejected and the
audio done, appended as small JSON lines to a folder the launcher reads (pipeline/progress.py).

The launcher names the folder in its environment (`ENV`) for the length of the run; the workers it
runs on this machine inherit it (FnApiRunner in-process or one process per core, PortableRunner
with LOOPBACK workers). Workers elsewhere (Dataflow, Flink, Spark) do not see it and write nothing:
there the stages' Beam counters (in, out, rejected, and `audio_ms` from here) show the same numbers
in the runner's UI. Events are approximate (a bundle the runner retries counts twice here);
stats.json, summed by the pipeline itself, never is.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from apache_beam.metrics import Metrics

from .records import Reject, Stat

ENV = "SIMULFORGE_PROGRESS_DIR"
FLUSH_S = 1.0  # a stage's counts leave a worker at most this often (and at each bundle's end)


class _Sink:
    """One events file per process and folder: a stage's few lines a second, appended whole."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        with self.lock:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line)
            except OSError:  # progress is best effort: a folder removed after the run is no error
                pass


_sinks: dict[str, _Sink] = {}
_sinks_lock = threading.Lock()


def _sink() -> _Sink | None:
    folder = os.environ.get(ENV)
    if not folder or not os.path.isdir(folder):
        return None
    with _sinks_lock:
        return _sinks.setdefault(folder, _Sink(folder))


class Recorder:
    """Counts what one stage's function yields (`watch`) and sends the sums on every FLUSH_S; says when
    a bundle starts and ends (a stage whose input is key groups is done once its bundles are)."""

    def __init__(self, stage: str):
        self.stage, self.sink = stage, _sink()
        self.audio_ms = Metrics.counter(stage, "audio_ms")
        self.flushed = time.time()
        self._reset()

    def _reset(self) -> None:
        self.taken = self.produced = self.rejected = 0
        self.audio_s, self.since = 0.0, None

    def watch(self, items: Iterable[Any], taken: int) -> Iterator[Any]:
        """`items` passed through; audio is the produced records' `duration_s`, or else the stage's own
        `audio_s` stat (a conversation has no duration field)."""
        produced = rejected = 0
        record_audio = stat_audio = 0.0
        started = time.time()
        for item in items:
            if isinstance(item, Reject):
                rejected += 1
            elif isinstance(item, Stat):
                if item.stage == self.stage and item.name == "audio_s":
                    stat_audio += item.value
            else:
                produced += 1
                record_audio += getattr(item, "duration_s", None) or 0.0
            yield item
        audio = record_audio or stat_audio
        self.audio_ms.inc(round(audio * 1000))
        if self.sink is not None:
            self.taken, self.produced, self.rejected = self.taken + taken, self.produced + produced, \
                self.rejected + rejected
            self.audio_s += audio
            self.since = self.since or started
            if time.time() - self.flushed >= FLUSH_S:
                self.flush()

    def start(self) -> None:
        if self.sink is not None:
            self.sink.write(json.dumps({"stage": self.stage, "started": 1, "t": round(time.time(), 3)}) + "\n")

    def flush(self, ended: bool = False) -> None:
        if self.sink is None or (self.since is None and not ended):
            return
        event: dict[str, Any] = {"stage": self.stage, "t": round(time.time(), 3)}
        if self.since is not None:
            event.update({"in": self.taken, "out": self.produced, "rejected": self.rejected,
                          "audio_s": round(self.audio_s, 3), "t0": round(self.since, 3)})
        if ended:
            event["ended"] = 1
        self.sink.write(json.dumps(event) + "\n")
        self.flushed = time.time()
        self._reset()

    def finish(self) -> None:
        """At a bundle's end: what is left, and that the bundle ended."""
        self.flush(ended=True)
