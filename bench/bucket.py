"""The bucket's cost: the same curate on local disk (in-process runner) and on a local S3 store with an
external worker pool (`portable-external`, as tests/test_bucket.py runs it), end-to-end audio seconds
per CPU second of each, and their ratio.

    python -m bench.bucket [--scale 0.25] [--configs offline,simulst,simulmt,conversations]

Each process runs under bench.peak (its CPU time, its children's included): the launcher, the worker
pool with the workers it started, and the store (reported apart: on a cluster it is a service).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bucket import S3Server, WorkerPool  # noqa: E402

OUT = Path("bench/out/bucket")
PEAK = (sys.executable, "-m", "bench.peak")


def measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd` under bench.peak: its wall and CPU seconds."""
    started = time.perf_counter()
    with open(log, "wb") as f:
        done = subprocess.run([*PEAK, *cmd], stdout=f, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return {"wall_s": time.perf_counter() - started, **json.loads(done.stderr.strip().splitlines()[-1])}


def stop_measured(proc: subprocess.Popen) -> None:
    """Interrupt the server bench.peak runs (not bench.peak itself, which then reports its CPU)."""
    import psutil

    for child in psutil.Process(proc.pid).children():
        child.send_signal(signal.SIGINT)
    proc.wait(timeout=60)


def cpu_from_log(log: Path) -> float:
    """What bench.peak wrote last in a server's log when the server stopped."""
    return json.loads(log.read_text().strip().splitlines()[-1])["cpu_s"]


def audio_s(stats: dict) -> float:
    return sum(stats["published"]["offline"]["audio_hours"].values()) * 3600


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--configs", default="offline,simulst,simulmt,conversations")
    a = ap.parse_args(argv)
    os.environ["PYTHONPATH"] = os.getcwd()  # bench.peak for the servers, which run in folders of their own
    shutil.rmtree(OUT, ignore_errors=True)
    for d in ("s3", "pool"):
        (OUT / d).mkdir(parents=True)
    out = OUT.resolve()
    raw = out / "raw"
    subprocess.run([sys.executable, "-m", "simulforge.cli", "demo-data", str(raw), "--scale", str(a.scale)],
                   check=True, capture_output=True)
    curate = [sys.executable, "-m", "simulforge.cli", "curate", "--langs", "de,es", "--set", f"configs=[{a.configs}]"]
    r: dict = {"scale": a.scale, "configs": a.configs}
    r["local"] = measured([*curate, "--input", str(raw), "--output", str(out / "local"),
                           "--work-dir", str(out / "local-work")], OUT / "local.log")
    r["local"]["audio_s"] = audio_s(json.loads((out / "local" / "stats.json").read_text()))

    store = S3Server(OUT / "s3", OUT / "s3.log", prefix=PEAK)
    boot = shutil.which("simulforge-worker", path=str(Path(sys.executable).parent))
    pool = WorkerPool(OUT / "pool", OUT / "pool.log", boot, env={"PYTHONPATH": os.getcwd()}, prefix=PEAK)
    try:
        bucket = store.make_bucket("bench")
        store.upload_tree(raw, f"{bucket}/raw")
        r["bucket"] = measured([*curate, "--input", f"{bucket}/raw", "--output", f"{bucket}/out", "--work-dir",
                                f"{bucket}/work", "--runner-profile", "portable-external",
                                *pool.beam_args()[1:], *store.beam_args()], OUT / "bucket.log")
        stats = json.loads(store.client.get_object(Bucket="bench", Key="out/stats.json")["Body"].read())
        r["bucket"]["audio_s"] = audio_s(stats)
    finally:
        stop_measured(pool.proc)
        stop_measured(store.proc)
        pool.close()
        store.close()
    r["bucket"]["launcher_cpu_s"] = r["bucket"]["cpu_s"]
    r["bucket"]["workers_cpu_s"] = cpu_from_log(OUT / "pool.log")
    r["bucket"]["store_cpu_s"] = cpu_from_log(OUT / "s3.log")
    r["bucket"]["cpu_s"] = r["bucket"]["launcher_cpu_s"] + r["bucket"]["workers_cpu_s"]
    for k in ("local", "bucket"):
        r[k]["audio_s_per_cpu_s"] = r[k]["audio_s"] / r[k]["cpu_s"]
    b = r["bucket"]
    b["audio_s_per_cpu_s_with_store"] = b["audio_s"] / (b["cpu_s"] + b["store_cpu_s"])
    r["bucket_over_local"] = b["audio_s_per_cpu_s"] / r["local"]["audio_s_per_cpu_s"]
    print(json.dumps(r, indent=1))
    (OUT / "result.json").write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
