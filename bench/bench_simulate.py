"""Simulated audio seconds per CPU second of the `simulate` stage (7 mics, 2 talkers), printed as JSON.

Renders the same planned conversations three ways, in one process on one core:
- with RIR reuse, cache warm: the steady state of a worker once its rooms are computed;
- with RIR reuse, counting the pool's image-source computations too (what a short run pays);
- without reuse: every conversation computes its room (cache capacity 0).
Utterances are synthetic speech-like signals; decoding, FLAC encoding and labels are included.

    python -m bench.bench_simulate [--conversations 24] [--pool-size 8]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-core figures; set before numpy loads a BLAS

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from simulforge.transforms import pairing, rooms, simulate
from simulforge.transforms.records import AudioRef, Conversation, Segmentation, Timing, Utterance

GOAL_X_REALTIME = 40.0


def speech_like_flac(seconds: float, seed: int, fs: int) -> bytes:
    """Harmonics of a gliding pitch under a syllable-rate envelope, plus breath noise, as FLAC."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    phase = 2 * np.pi * np.cumsum(rng.uniform(100, 220) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / fs
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t), 0, None) ** 2
    signal = (voiced + 0.3 * rng.standard_normal(len(t))) * envelope
    buffer = io.BytesIO()
    sf.write(
        buffer, (0.3 * signal / np.abs(signal).max()).astype(np.float32), fs, format="FLAC", subtype="PCM_16"
    )
    return buffer.getvalue()


def aligned(utt: Utterance, level: str) -> Utterance:
    """The utterance as the align stage leaves it (simulate reads aligned utterances): its words spread
    over the clip, and one chunk at `level`."""
    words = utt.source_text.split()
    step = utt.duration_s / len(words)
    timed = [(w, i * step, (i + 1) * step) for i, w in enumerate(words)]
    seg = Segmentation(level, [utt.source_text], {lang: [t] for lang, t in utt.translations.items()})
    return utt.replace(segmentations={level: seg}, timing=Timing(timed, {level: [timed[-1][2]]}))


def utterances(count: int, speakers: int, fs: int, clips: Path, level: str) -> list[Utterance]:
    """Synthetic utterances, their clips written into `clips` as the audio stage leaves them."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        flac = speech_like_flac(rng.uniform(2.0, 10.0), i, fs)
        (clips / f"{i}.flac").write_bytes(flac)
        out.append(aligned(Utterance(
            id=f"bench/{i:05d}",
            corpus="bench",
            split="train",
            audio=AudioRef(str(clips / f"{i}.flac")),
            speaker=f"spk{i % speakers}",
            source_lang="en",
            source_text=f"utterance {i}",
            translations={"de": f"Äußerung {i}"},
            duration_s=sf.info(io.BytesIO(flac)).duration,  # as the audio stage sets it
        ), level))
    return out


def render_all(plans, settings, specs, cache) -> float:
    """CPU seconds to render every plan through the stage function."""
    start = time.process_time()
    for plan in plans:
        produced = list(simulate.render_conversation(plan, cache, settings=settings, room_specs=specs))
        assert any(isinstance(c, Conversation) for c in produced), plan.id
    return time.process_time() - start


def figures(audio_s: float, cpu_s: float) -> dict:
    return {"cpu_s": round(cpu_s, 3), "x_realtime_per_core": round(audio_s / cpu_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--pool-size", type=int, default=8, help="rooms in the pool")
    args = parser.parse_args()

    settings = simulate.load_settings({"room": {"pool_size": args.pool_size}})
    fs = settings.sampling_rate
    clips = tempfile.TemporaryDirectory(prefix="bench-simulate-")
    plans = [
        p
        for p in pairing.plan_conversations(
            "train", 0, utterances(args.conversations * 6, 12, fs, Path(clips.name), settings.sot.latency_level),
            settings)
        if isinstance(p, pairing.ConversationPlan)
    ][: args.conversations]
    specs = simulate.room_pool(settings)
    audio_s = sum(p.duration_ms() for p in plans) / 1000

    cache = rooms.RirCache(capacity=args.pool_size)
    start = time.process_time()
    for index in sorted({p.room_index for p in plans}):
        cache.get(specs[index], fs)
    pool_cpu_s = time.process_time() - start
    warm_cpu_s = render_all(plans, settings, specs, cache)
    cold_cpu_s = render_all(plans, settings, specs, rooms.RirCache(capacity=0))

    print(
        json.dumps(
            {
                "channels": len(settings.channel_names()),
                "talkers": 2,
                "sampling_rate": fs,
                "conversations": len(plans),
                "audio_s": round(audio_s, 1),
                "rooms_used": len({p.room_index for p in plans}),
                "rir_pool_cpu_s": round(pool_cpu_s, 3),
                "with_reuse": figures(audio_s, warm_cpu_s),
                "with_reuse_including_rir_pool": figures(audio_s, warm_cpu_s + pool_cpu_s),
                "without_reuse": figures(audio_s, cold_cpu_s),
                "goal_x_realtime_with_reuse": GOAL_X_REALTIME,
                "goal_met": audio_s / warm_cpu_s >= GOAL_X_REALTIME,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
