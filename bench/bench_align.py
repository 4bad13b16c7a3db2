"""Forced alignment on the demo corpora, clean and as rooms record them: speed and accuracy, as JSON.

Builds (once) the demo corpora at `--scale`, takes their English clips as the audio stage
leaves them, and runs the configured backend the way the align stage does, in one process on
one core, on three corpora made of them:
- `clean`: the synthesized clips as they are;
- `degraded`: every clip said in a random room (RT60 0.35-0.55 s, the talker 1-3 m from the
  microphone) with pink noise at 12 dB SNR (transforms/aligners/degrade.py: BENCHMARK); the
  truth stays the dry speech's word times;
- `mixed`: every other clip (by a hash of its id) degraded so, the rest clean, as a corpus
  recorded in many places is; its errors are given for each half.
Each corpus trains the aligner on the stage's bounded sample of its own clips, as the stage
would, and aligns them all. Reported per corpus:
- training: CPU seconds per minute of training audio;
- alignment: audio seconds per CPU second;
- the word-boundary error (starts, ends and both: mean, p50, p90) against the true word times;
- clips rejected, by reason, and the clips' alignment confidence (p10, p50, p90).
CPU time includes the espeak-ng helper process and making the training's degraded copies, not
making the benchmark's own degraded clips.

    python -m bench.bench_align [--scale 1] [--train-minutes 10] [--corpus clean] [--set gmm.passes=12]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-core figures; set before numpy loads a BLAS

import argparse
import json
from collections import Counter
from dataclasses import replace

import numpy as np

from bench.run import OUT, demo
from simulforge.pipeline import config
from simulforge.settings import override
from simulforge.transforms import readers
from simulforge.transforms.align import (
    TrainingSample,
    boundary_errors_ms,
    cpu_seconds,
    load_settings,
    read_truth,
    sample_priority,
    to_clip,
    training_entry,
)
from simulforge.transforms.aligners import Aligned, Clip, make_backend
from simulforge.transforms.aligners.degrade import BENCHMARK, Degrader, RoomDegradation
from simulforge.transforms.audio import attach_audio
from simulforge.transforms.records import StageError, Utterance

CORPORA = ("clean", "degraded", "mixed")


def english_clips(root, work_dir) -> list[Utterance]:
    settings = config.load(overrides=[f"input={root}", f"work_dir={work_dir}"])
    found: dict[str, Utterance] = {}
    for name in settings.corpora:
        tasks, _ = readers.plan(name, settings.corpus_root(name), settings.corpus[name], settings.languages)
        for task in tasks:
            for item in readers.read_task(task, settings.corpus[name], settings.work_dir):
                if isinstance(item, tuple) and isinstance(item[1], Utterance):
                    found.setdefault(item[1].id, item[1])
    clips_dir = os.path.join(str(work_dir), "clips")
    return [a for u in found.values() for a in attach_audio(u, settings.sampling_rate, clips_dir)
            if isinstance(a, Utterance)]


def degraded(clips: list[Clip], which=lambda clip: True, d: RoomDegradation = BENCHMARK) -> list[Clip]:
    """The clips `which` picks as rooms record them (module docstring); same words, ids and truth."""
    if not clips:
        return []
    degrader = Degrader(d, clips[0].rate)
    return [replace(c, samples=degrader(c.id, c.samples)) if which(c) else c for c in clips]


def in_mixed_half(clip: Clip) -> bool:
    """The clips the mixed corpus degrades: every other one by the stage's own hash of the id."""
    return sample_priority(clip.id) % 2 == 0


def spread(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": round(float(np.mean(values)), 2),
            "p50": round(float(np.percentile(values, 50)), 2), "p90": round(float(np.percentile(values, 90)), 2)}


def errors(clips: list[Clip], results: list, truth: dict) -> dict:
    """Boundary errors (ms), rejects and confidence of the clips' results."""
    starts, ends, confidence, rejected = [], [], [], Counter()
    for clip, result in zip(clips, results, strict=True):
        if isinstance(result, StageError):
            rejected[result.reason] += 1
            continue
        found = boundary_errors_ms(result.words, truth[clip.id]) or []
        starts += found[0::2]
        ends += found[1::2]
        if isinstance(result, Aligned) and result.confidence is not None:
            confidence.append(result.confidence)
    quantiles = np.percentile(confidence, [10, 50, 90]) if confidence else []
    return {"clips": len(clips),
            "error_ms": {"all": spread(starts + ends), "starts": spread(starts), "ends": spread(ends)},
            "rejected": dict(rejected),
            "confidence": {k: round(float(v), 3) for k, v in zip(("p10", "p50", "p90"), quantiles, strict=False)}}


def measure(settings, train_clips: list[Clip], clips: list[Clip], truth: dict, halves=None) -> dict:
    """Train on `train_clips`, align `clips`: speed, and the errors of all (or of each of `halves`:
    name -> which clips)."""
    backend = make_backend(settings)
    started = cpu_seconds()
    model, report = backend.train("en", train_clips)
    backend.close()
    train_cpu = cpu_seconds() - started

    backend = make_backend(settings)
    size = getattr(settings, settings.backend).batch_size
    started = cpu_seconds()
    results = []
    for i in range(0, len(clips), size):
        results += backend.align(model, clips[i : i + size])
    backend.close()
    align_cpu = cpu_seconds() - started

    audio_s = sum(c.duration_s for c in clips)
    figures = {"audio_min": round(audio_s / 60, 2), "train_audio_min": round(report.audio_s / 60, 2),
               "train_cpu_s_per_audio_min": round(train_cpu / (report.audio_s / 60), 3),
               "align_audio_s_per_cpu_s": round(audio_s / align_cpu, 1)}
    for name, which in (halves or {"": lambda c: True}).items():
        picked = [(c, r) for c, r in zip(clips, results, strict=True) if which(c)]
        measured = errors([c for c, _ in picked], [r for _, r in picked], truth)
        figures.update({f"{name}/{k}" if name else k: v for k, v in measured.items()})
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="demo corpus size")
    ap.add_argument("--train-minutes", type=float, help="the stage's train_minutes (default: its config's)")
    ap.add_argument("--corpus", choices=CORPORA, action="append", help="default: all three")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an align setting, e.g. gmm.degraded_copies=0")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    root = demo(args.scale)
    utts = english_clips(root, OUT / "work" / f"align_x{args.scale:g}")
    overrides = {"truth": str(root / "truth" / "word_times.jsonl")}
    if args.train_minutes is not None:
        overrides["train_minutes"] = args.train_minutes
    for item in args.set:
        overrides = override(overrides, item)
    settings = load_settings(overrides)
    truth = read_truth(settings.truth)

    sample = TrainingSample()
    acc = sample.create_accumulator()
    for utt in utts:
        for _, entry in training_entry(utt, settings):
            acc = sample.add_input(acc, entry)
    order = {e.utt.id: i for i, e in enumerate(sample.extract_output(acc))}  # the stage's order: the holdout's
    clean = [to_clip(u) for u in utts]
    figures = {"backend": settings.backend, "scale": args.scale, "set": args.set}
    for corpus in args.corpus or CORPORA:
        clips = {"clean": lambda: clean, "degraded": lambda: degraded(clean),
                 "mixed": lambda: degraded(clean, in_mixed_half)}[corpus]()
        train = sorted((c for c in clips if c.id in order), key=lambda c: order[c.id])
        halves = {"clean": lambda c: not in_mixed_half(c), "degraded": in_mixed_half} if corpus == "mixed" else None
        figures[corpus] = measure(settings, train, clips, truth, halves)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
