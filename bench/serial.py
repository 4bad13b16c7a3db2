"""How much of a multi-worker run is serial: curate the demo corpora scaled up (`--scale`, ×8 by
default) on the multi-process runner with 1 and with 2 workers, and sample the machine's busy cores
(/proc/stat) every 0.2 s while each runs.

    python -m bench.serial [--scale 8] [--workers 2] [--set KEY=VALUE ...]

- serial fraction: the time with at most one core busy (< 1.5 cores) ÷ the wall time of the
  N-worker run; what stays serial (one worker training, the runner's start and end) shows here;
- CPU of N workers ÷ 1 worker: what running in parallel adds in work (start-up per worker,
  elements moved between processes).

Run it on an otherwise idle machine: the sampler counts every process's CPU, not only the run's.
"""

from __future__ import annotations

import argparse
import json
import os
import threading

from .run import OUT, curate, demo

PERIOD_S = 0.2


def _jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class BusyCores:
    """Samples of how many cores were busy over each period, while the block runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cores = os.cpu_count() or 1
        last = _jiffies()
        while not self._stop.wait(PERIOD_S):
            now = _jiffies()
            total = now[1] - last[1]
            self.samples.append(cores * (now[0] - last[0]) / total if total else 0.0)
            last = now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(root, workers: int, overrides: list[str] = ()) -> dict:
    sets = [flag for kv in overrides for flag in ("--set", kv)]
    with BusyCores() as busy:
        run = curate(root, f"serial_w{workers}", "--runner-profile", "direct-mp",
                     f"--direct_num_workers={workers}", *sets)
    one_core = sum(PERIOD_S for s in busy.samples if s < 1.5)
    return {"wall_s": round(run["wall_s"], 2), "cpu_s": round(run["cpu_s"], 2),
            "audio_s": round(run["audio_s"], 1), "one_core_busy_s": round(one_core, 2),
            "serial_fraction": round(one_core / run["wall_s"], 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=8.0, help="corpus size, × the demo set")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for both runs, as curate's --set (repeatable)")
    args = ap.parse_args(argv)
    root = demo(args.scale)
    one, many = measure(root, 1, args.set), measure(root, args.workers, args.set)
    result = {"scale": args.scale, "cpus": os.cpu_count(), "set": args.set, "workers_1": one,
              f"workers_{args.workers}": many,
              "cpu_ratio": round(many["cpu_s"] / one["cpu_s"], 3)}
    (OUT / "serial.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
