"""The launcher's view of a running curate: per stage, records in (of how many), out, rejected,
audio hours done, rate and ETA, from the events the workers write (transforms/progress.py).

On a terminal the table is redrawn in place every `refresh_s` (log records print above it); elsewhere
(CI, cluster logs) one plain line goes out every `every_s`. A stage's input total is what the stage
it reads from produced, final once that stage is done; `read`'s is the number of files to read; a
stage is done when it has taken in that final total. A stage in GROUPS takes key groups of its
parent's records, a number no one knows beforehand: it has no total, and is done once its parent is
and every bundle it started has ended. A stage's rate is over the last WINDOW_S seconds of its
events, and its ETA is shown once its total is final. Runs whose workers cannot reach this machine's
disk report through Beam counters instead (see transforms/progress.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from ..settings import ConfigError
from ..transforms import files
from ..transforms.progress import ENV
from . import logs

WINDOW_S = 30.0  # a stage's rate is over its events of the last this many seconds
GROUPS = frozenset({"join"})  # takes CoGroupByKey groups of its parent's parts (transforms/multiway.py)


@dataclass
class ProgressSettings:
    display: Literal["auto", "live", "lines", "none"]  # auto: live on a terminal, lines elsewhere
    refresh_s: float  # live: the table is redrawn this often
    every_s: float  # lines: one line this often

    def validate(self, where: str) -> None:
        for name in ("refresh_s", "every_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}.{name}: must be more than 0, got {getattr(self, name)}")


@dataclass
class StageProgress:
    name: str
    parent: str | None
    taken: int = 0
    produced: int = 0
    rejected: int = 0
    audio_s: float = 0.0
    bundles: int = 0  # started
    ended: int = 0  # bundles ended
    first: float | None = None  # when its first counted record started
    last: float | None = None  # when its latest event left the worker
    recent: deque = field(default_factory=deque)  # (t0, t, taken) of the last WINDOW_S seconds


class Progress:
    """The workers' events summed per stage, in graph order (`parents`: stage -> the stage it reads
    from); `read_total`: the files the read stage takes."""

    def __init__(self, parents: dict[str, str | None], read_total: int):
        # publish/* stages are sinks (transforms/publish.py WriteConfig), not run_stage stages: no events.
        self.stages = {s: StageProgress(s, p) for s, p in parents.items() if not s.startswith("publish/")}
        self.read_total = read_total
        self.finished = False  # the pipeline ended: every stage is done whatever the counts say

    def add(self, event: dict[str, Any]) -> None:
        s = self.stages.get(event.get("stage"))
        if s is None:
            return
        s.bundles += event.get("started", 0)
        s.ended += event.get("ended", 0)
        if "in" not in event:
            return
        s.taken += int(event["in"])
        s.produced += int(event["out"])
        s.rejected += int(event["rejected"])
        s.audio_s += float(event["audio_s"])
        s.first = min(s.first or event["t0"], event["t0"])
        s.last = max(s.last or event["t"], event["t"])
        s.recent.append((event["t0"], event["t"], int(event["in"])))

    def total(self, name: str) -> tuple[int | None, bool]:
        """(how many records the stage takes in, whether that number is final)."""
        s = self.stages[name]
        if s.parent is None:
            return self.read_total, True
        parent = self.stages.get(s.parent)
        if parent is None or name in GROUPS:
            return None, False
        return parent.produced, self.done(parent.name)

    def done(self, name: str) -> bool:
        if self.finished:
            return True
        s = self.stages[name]
        if name in GROUPS:
            return (s.parent is None or self.done(s.parent)) and s.bundles > 0 and s.ended >= s.bundles
        total, final = self.total(name)
        return final and total is not None and s.taken >= total

    def rate(self, name: str, now: float) -> float | None:
        """Records taken in per second over the last WINDOW_S seconds; None with no events there."""
        s = self.stages[name]
        while s.recent and s.recent[0][1] < now - WINDOW_S:
            s.recent.popleft()
        if not s.recent:
            return None
        start = min(t0 for t0, _, _ in s.recent)
        return sum(n for _, _, n in s.recent) / max(now - start, 1e-3)

    def rows(self, now: float) -> list[dict[str, Any]]:
        out = []
        for name, s in self.stages.items():
            total, final = self.total(name)
            done = self.done(name)
            rate = None if done or s.first is None else self.rate(name, now) or 0.0  # 0: no events of late
            eta = None
            if not done and final and total is not None and rate:
                eta = max(total - s.taken, 0) / rate
            state = "done" if done else "running" if s.first is not None else "waiting"
            out.append({"stage": name, "in": s.taken, "total": total, "final": final, "out": s.produced,
                        "rejected": s.rejected, "audio_h": s.audio_s / 3600, "rate": rate, "eta_s": eta,
                        "state": state})
        return out


class EventFiles:
    """Tails every events file in `folder`: each call returns the whole lines written since the last."""

    def __init__(self, folder: str):
        self.folder = folder
        self.offsets: dict[str, int] = {}

    def read(self) -> list[dict[str, Any]]:
        events = []
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return events
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(name, 0))
                    data = f.read()
            except OSError:
                continue
            whole = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
            self.offsets[name] = self.offsets.get(name, 0) + len(whole)
            events += [json.loads(line) for line in whole.decode("utf-8").splitlines() if line.strip()]
        return events


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _of(row: dict[str, Any]) -> str:
    if row["total"] is None:
        return str(row["in"])
    return f"{row['in']}/{row['total']}" + ("" if row["final"] else "+")


def table(rows: list[dict[str, Any]], elapsed: float) -> list[str]:
    """The live display: a header and one line per stage."""
    done = sum(r["state"] == "done" for r in rows)
    lines = [f"curate {clock(elapsed)} elapsed, {done}/{len(rows)} stages done",
             f"  {'stage':<18}{'in':>14}{'out':>8}{'rejected':>10}{'audio':>10}{'rate':>10}{'ETA':>9}"]
    for r in rows:
        audio = f"{r['audio_h']:.2f} h" if r["audio_h"] else ""
        rate = f"{r['rate']:.1f}/s" if r["rate"] is not None else ""
        eta = "done" if r["state"] == "done" else clock(r["eta_s"]) if r["eta_s"] is not None else \
            "waiting" if r["state"] == "waiting" else ""
        lines.append(f"  {r['stage']:<18}{_of(r):>14}{r['out']:>8}{r['rejected']:>10}{audio:>10}{rate:>10}{eta:>9}")
    return lines


def line(rows: list[dict[str, Any]], elapsed: float) -> str:
    """One plain line: the stages running with their numbers; the done and the waiting by name."""
    parts = [f"progress {clock(elapsed)}"]
    done = [r["stage"] for r in rows if r["state"] == "done"]
    if done:
        parts.append("done: " + ", ".join(done))
    for r in rows:
        if r["state"] != "running":
            continue
        bits = [f"{_of(r)} in", f"{r['out']} out"]
        bits += [f"{r['rejected']} rejected"] if r["rejected"] else []
        bits += [f"{r['audio_h']:.2f} h"] if r["audio_h"] else []
        bits += [f"{r['rate']:.1f}/s"] if r["rate"] is not None else []
        bits += [f"ETA {clock(r['eta_s'])}"] if r["eta_s"] is not None else []
        parts.append(f"{r['stage']} " + " ".join(bits))
    waiting = [r["stage"] for r in rows if r["state"] == "waiting"]
    if waiting:
        parts.append("waiting: " + ", ".join(waiting))
    return " | ".join(parts)


class Live:
    """A block of lines redrawn in place (ANSI cursor moves), cut to the terminal's width so that no
    line wraps; `paused` clears it while something else is printed."""

    def __init__(self, stream: TextIO):
        self.stream, self.shown, self.lock = stream, [], threading.RLock()

    def show(self, lines: list[str]) -> None:
        width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
        with self.lock:
            up = f"\x1b[{len(self.shown)}F\x1b[J" if self.shown else ""  # back to the block's first line
            self.stream.write(up + "".join(f"{text[:width]}\n" for text in lines))
            self.stream.flush()
            self.shown = lines

    @contextmanager
    def paused(self):
        with self.lock:
            shown, self.shown = self.shown, []
            if shown:
                self.stream.write(f"\x1b[{len(shown)}F\x1b[J")
                self.stream.flush()
            try:
                yield
            finally:
                if shown:
                    self.show(shown)


def choose(settings: ProgressSettings, stream: TextIO) -> str:
    """live, lines or none for this stream: auto is live on a terminal that takes cursor moves."""
    if settings.display != "auto":
        return settings.display
    terminal = stream.isatty() and os.environ.get("TERM", "") not in ("", "dumb")
    return "live" if terminal else "lines"


class Monitor:
    """Reads the events folder in a thread and shows the progress until `stop`."""

    def __init__(self, folder: str, parents: dict[str, str | None], read_total: int, settings: ProgressSettings,
                 stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.mode = choose(settings, self.stream)
        self.files, self.progress = EventFiles(folder), Progress(parents, read_total)
        self.settings, self.started = settings, time.time()
        self.live = Live(self.stream) if self.mode == "live" else None
        self._stop, self._thread = threading.Event(), None

    def start(self) -> Monitor:
        if self.mode != "none":
            if self.live is not None:
                logs.pause_while_printing(self.live.paused)
            self._thread = threading.Thread(target=self._loop, name="simulforge-progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        tick = self.settings.refresh_s if self.live else min(self.settings.refresh_s, self.settings.every_s)
        next_line = self.started + self.settings.every_s
        while not self._stop.wait(tick):
            self._read()
            now = time.time()
            if self.live is not None:
                self._show(now)
            elif now >= next_line:
                self._show(now)
                next_line += self.settings.every_s * max(1, int((now - next_line) // self.settings.every_s) + 1)

    def _read(self) -> None:
        for event in self.files.read():
            self.progress.add(event)

    def _show(self, now: float) -> None:
        rows, elapsed = self.progress.rows(now), now - self.started
        if self.live is not None:
            self.live.show(table(rows, elapsed))
        else:
            self.stream.write(line(rows, elapsed) + "\n")
            self.stream.flush()

    def stop(self, finished: bool) -> list[dict[str, Any]]:
        """Stop, read the last events and show the end state (`finished`: the pipeline ended, so
        every stage is done); returns its rows."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            logs.pause_while_printing(None)
        self._read()
        self.progress.finished = finished
        if self.mode != "none":
            self._show(time.time())
        return self.progress.rows(time.time())


class Watch:
    """The progress of one run, around the pipeline's `with` block: `start` (once the graph is built)
    names an events folder to the workers and starts a Monitor; leaving stops it and removes the folder.

    Events need workers on this machine (`local_workers`); a cluster's show in its runner's UI.
    """

    def __init__(self, settings: ProgressSettings, work_dir: str, local_workers: bool, stream: TextIO | None = None):
        self.settings, self.work_dir, self.local_workers, self.stream = settings, work_dir, local_workers, stream
        self.monitor: Monitor | None = None
        self.folder: str | None = None
        self._saved: str | None = None

    def __enter__(self) -> Watch:
        return self

    def start(self, parents: dict[str, str | None], read_total: int) -> None:
        if self.settings.display == "none" or not self.local_workers:
            return
        if files.is_local(self.work_dir):
            self.folder = os.path.join(self.work_dir, "progress", f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.makedirs(self.folder)
        else:  # a local runner writing to remote storage: the events still stay on this machine
            self.folder = tempfile.mkdtemp(prefix="simulforge-progress-")
        self._saved = os.environ.get(ENV)
        os.environ[ENV] = self.folder
        self.monitor = Monitor(self.folder, parents, read_total, self.settings, self.stream).start()

    def __exit__(self, exc_type, *rest) -> None:
        if self.monitor is not None:
            self.monitor.stop(finished=exc_type is None)
        if self.folder is not None:
            if self._saved is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = self._saved
            shutil.rmtree(self.folder, ignore_errors=True)
