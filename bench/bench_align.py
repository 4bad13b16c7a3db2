"""Forced alignment on the demo corpora: training and alignment speed, and accuracy, as JSON.

Builds (once) the demo corpora at `--scale`, takes their English clips as the audio stage
leaves them, and runs the configured backend the way the align stage does, in one process
on one core:
- training on the stage's bounded sample: CPU seconds per minute of training audio;
- aligning every clip: audio seconds per CPU second;
- the word-boundary error (starts and ends) against the synthesizer's true word times.
CPU time includes the espeak-ng helper process.

    python -m bench.bench_align [--scale 1] [--train-minutes 10]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-core figures; set before numpy loads a BLAS

import argparse
import json
from collections import Counter

import numpy as np

from bench.run import OUT, demo
from simulforge.pipeline import config
from simulforge.transforms import readers
from simulforge.transforms.align import (
    TrainingSample,
    boundary_errors_ms,
    cpu_seconds,
    load_settings,
    read_truth,
    to_clip,
    training_entry,
)
from simulforge.transforms.aligners import make_backend
from simulforge.transforms.audio import attach_audio
from simulforge.transforms.records import StageError, Utterance


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="demo corpus size")
    ap.add_argument("--train-minutes", type=float, help="the stage's train_minutes (default: its config's)")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    root = demo(args.scale)
    utts = english_clips(root, OUT / "work" / f"align_x{args.scale:g}")
    overrides = {"truth": str(root / "truth" / "word_times.jsonl")}
    if args.train_minutes is not None:
        overrides["train_minutes"] = args.train_minutes
    settings = load_settings(overrides)
    truth = read_truth(settings.truth)

    sample = TrainingSample()
    acc = sample.create_accumulator()
    for utt in utts:
        for _, entry in training_entry(utt, settings):
            acc = sample.add_input(acc, entry)
    train_clips = [to_clip(e.utt) for e in sample.extract_output(acc)]

    backend = make_backend(settings)
    started = cpu_seconds()
    model, report = backend.train("en", train_clips)
    backend.close()
    train_cpu = cpu_seconds() - started

    backend = make_backend(settings)
    clips = [to_clip(u) for u in utts]
    started = cpu_seconds()
    results = []
    for i in range(0, len(clips), settings.gmm.batch_size):
        results += backend.align(model, clips[i : i + settings.gmm.batch_size])
    backend.close()
    align_cpu = cpu_seconds() - started

    errors, rejected = [], Counter()
    for clip, result in zip(clips, results, strict=True):
        if isinstance(result, StageError):
            rejected[result.reason] += 1
        else:
            errors += boundary_errors_ms(result.words, truth[clip.id]) or []
    audio_s = sum(c.duration_s for c in clips)
    figures = {
        "backend": settings.backend,
        "scale": args.scale,
        "clips": len(clips),
        "audio_min": round(audio_s / 60, 2),
        "train_audio_min": round(report.audio_s / 60, 2),
        "train_cpu_s_per_audio_min": round(train_cpu / (report.audio_s / 60), 3),
        "align_audio_s_per_cpu_s": round(audio_s / align_cpu, 1),
        "error_ms": {"boundaries": len(errors), "mean": round(float(np.mean(errors)), 2),
                     "p50": round(float(np.percentile(errors, 50)), 2),
                     "p90": round(float(np.percentile(errors, 90)), 2)},
        "rejected": dict(rejected),
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
