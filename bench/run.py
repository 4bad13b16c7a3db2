"""`make bench`: what each stage costs, how the graph scales, and what Beam adds, as one table + JSON.

- Per stage: audio seconds per CPU second, measured by calling the stage functions in a plain
  loop (no Beam) on the demo corpora scaled up (`--scale`), one process, one thread.
- End to end: `curate` through Beam (in-process runner) without LLM and simulation, as a
  fresh process (imports and start-up counted), and in a warm process beside the plain loop.
- Scaling: the multi-process runner with 2 workers against 1 (wall time).
- Beam overhead: CPU through Beam's in-process runner against the same functions in a plain
  loop, both in one warm process (startup and imports are not counted), for the offline path
  alone and for offline + simulst + simulmt (bench/stage_loop.py).
  End to end, scaling and overhead are measured at ×1 and again at ×4, where fixed costs weigh less.
- Memory: peak RSS of the offline graph at ×1 and ×4 corpus size.
- LLM: requests and tokens per utterance against the local OpenAI-compatible test server,
  and the calls a re-run makes (the cache must answer all).
- The stage benchmarks beside this file (simulate, align, eval) run as they are and report JSON.

Every curate run is a child process, so its CPU time and peak RSS are its own. Figures are
for comparing commits on one machine, never limits asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("bench/out")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
NO_SIM = ["--set", "configs=[offline,simulst,simulmt]"]
OFFLINE = ["--set", "configs=[offline]", "--set", "embed.enabled=false"]


def child(args: list[str]) -> dict:
    """Run `args` under bench.peak, which reports the run's own CPU time and peak RSS."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.peak", *args], env=ENV, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    usage = json.loads(done.stderr.strip().splitlines()[-1])
    return {"wall_s": wall, **usage, "stdout": done.stdout}


def demo(scale: float) -> Path:
    root = OUT / f"demo_x{scale:g}"
    if not (root / "README.txt").exists():
        child([sys.executable, "-m", "simulforge.cli", "demo-data", str(root), "--scale", str(scale)])
    return root


def curate(root: Path, name: str, *flags: str) -> dict:
    out, work = OUT / name, OUT / "work" / name
    for old in (out, work):  # a first run into a new folder: no clips, eflomal or LLM cache from an earlier bench
        shutil.rmtree(old, ignore_errors=True)
    f = child([sys.executable, "-m", "simulforge.cli", "curate", "--input", str(root), "--output", str(out),
               "--work-dir", str(work), *flags])
    f.pop("stdout")
    stats = json.loads((out / "stats.json").read_text())
    f["audio_s"] = sum(stats["published"]["offline"]["audio_hours"].values()) * 3600
    f["audio_s_per_cpu_s"] = f["audio_s"] / f["cpu_s"]
    return f


def stage_loop(root: Path) -> dict:
    """Per-stage CPU seconds of the stage functions in a plain loop (bench/stage_loop.py)."""
    work = OUT / "work" / f"loop_{root.name}"
    shutil.rmtree(work, ignore_errors=True)
    f = child([sys.executable, "-m", "bench.stage_loop", str(root), str(work)])
    return {**json.loads(f.pop("stdout")), **f}


def plain_loop_throughput(loop: dict) -> float:
    """Audio seconds per CPU second of the whole graph's functions in the plain loop."""
    return round(loop["audio_s"] / loop["loop_cpu_s"]["full"], 1)


def stage_bench(module: str, *args: str) -> dict:
    if not Path(f"bench/{module}.py").exists():
        return {"skipped": f"bench/{module}.py is not there"}
    out = child([sys.executable, "-m", f"bench.{module}", *args])["stdout"]
    return json.loads(out[out.index("{"):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=2.0, help="corpus size, × the demo set")
    ap.add_argument("--quick", action="store_true", help="skip the ×4 runs (memory, scaling, overhead) and the stage benchmarks")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    base = demo(args.scale)
    mp = ["--direct_running_mode=multi_processing"]
    r = {
        "stages_plain_loop": stage_loop(base),
        "offline_beam": curate(base, "offline_beam", *OFFLINE),
        "end_to_end": curate(base, "end_to_end", *NO_SIM),
        "workers_1": curate(base, "workers_1", *NO_SIM, *mp, "--direct_num_workers=1"),
        "workers_2": curate(base, "workers_2", *NO_SIM, *mp, "--direct_num_workers=2"),
        "llm": json.loads(child([sys.executable, "-m", "bench.llm", str(base)])["stdout"]),
    }
    if not args.quick:
        large = demo(args.scale * 4)
        r["offline_beam_x4"] = curate(large, "offline_beam_x4", *OFFLINE)
        # End to end, scaling and overhead again, where the fixed start-up costs weigh less.
        r["end_to_end_x4"] = curate(large, "end_to_end_x4", *NO_SIM)
        r["workers_1_x4"] = curate(large, "workers_1_x4", *NO_SIM, *mp, "--direct_num_workers=1")
        r["workers_2_x4"] = curate(large, "workers_2_x4", *NO_SIM, *mp, "--direct_num_workers=2")
        r["stages_plain_loop_x4"] = stage_loop(large)
        r["simulate"] = stage_bench("bench_simulate")
        r["align"] = stage_bench("bench_align")
        r["eval"] = stage_bench("bench_eval")
    loop = r["stages_plain_loop"]
    summary = {
        "audio_s_per_cpu_s_by_stage": loop["audio_s_per_cpu_s"],
        "end_to_end_audio_s_per_cpu_s": round(r["end_to_end"]["audio_s_per_cpu_s"], 1),
        "end_to_end_warm_beam_audio_s_per_cpu_s": round(loop["audio_s"] / loop["beam_cpu_s"]["full"], 1),
        "end_to_end_plain_loop_audio_s_per_cpu_s": plain_loop_throughput(loop),
        "speedup_2_workers_over_1": round(r["workers_1"]["wall_s"] / r["workers_2"]["wall_s"], 2),
        "beam_overhead_vs_plain_loop": loop["beam_overhead"],
        "peak_rss_mib_x1": round(r["offline_beam"]["peak_rss_mib"], 1),
        "llm_requests_per_utterance": r["llm"]["requests_per_utterance"],
        "llm_tokens_per_utterance": r["llm"]["tokens_per_utterance"],
        "llm_calls_on_rerun": r["llm"]["calls_on_rerun"],
    }
    if "offline_beam_x4" in r:
        summary["peak_rss_mib_x4"] = round(r["offline_beam_x4"]["peak_rss_mib"], 1)
        summary["peak_rss_growth_x4"] = round(summary["peak_rss_mib_x4"] / summary["peak_rss_mib_x1"] - 1, 3)
        summary["end_to_end_audio_s_per_cpu_s_x4"] = round(r["end_to_end_x4"]["audio_s_per_cpu_s"], 1)
        summary["speedup_2_workers_over_1_x4"] = round(r["workers_1_x4"]["wall_s"] / r["workers_2_x4"]["wall_s"], 2)
        summary["beam_overhead_vs_plain_loop_x4"] = r["stages_plain_loop_x4"]["beam_overhead"]
        summary["end_to_end_plain_loop_audio_s_per_cpu_s_x4"] = plain_loop_throughput(r["stages_plain_loop_x4"])
    result = {"scale": args.scale, "cpus": os.cpu_count(), "summary": summary, "runs": r}
    (OUT / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"{'run':<16}{'wall s':>9}{'cpu s':>9}{'audio s':>10}{'audio s/cpu s':>15}{'peak MiB':>10}")
    for name, f in r.items():
        if "cpu_s" in f and "wall_s" in f:
            print(f"{name:<16}{f['wall_s']:>9.1f}{f['cpu_s']:>9.1f}{f.get('audio_s', 0):>10.0f}"
                  f"{f.get('audio_s_per_cpu_s', 0) if isinstance(f.get('audio_s_per_cpu_s'), float) else 0:>15.1f}"
                  f"{f['peak_rss_mib']:>10.0f}")
    for k, v in summary.items():
        print(f"{k}: {v}")
    for name in ("simulate", "align", "eval"):
        if name in r:
            print(f"{name}: {json.dumps(r[name])}")
    print(f"written to {OUT / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
