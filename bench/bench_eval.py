"""Streaming vs offline decoding cost of the evaluator's driver, per model token, on CPU, as JSON.

Builds (once) the tiny published dataset of the training tests (tests/test_training_data.py: every
config, six espeak clips) and trains the tiny configs on it on their own schedules (seconds each),
then decodes every clip `--repeats` times with each model's streaming policy and offline,
interleaved, on one thread, after a warm-up pass. For each it reports the wall-clock computation
per model token (features, encoder, decoder, policy: what `elapsed` counts) and streaming divided
by offline. EASiST's paper reports 28.95 vs 23.25 ms/token for its system (1.25); 38.51 (wait-k),
123.75 (AlignAtt) and 120.92 (EDAtt) over the offline 23.25.

    python -m bench.bench_eval [--repeats 10] [--segment-ms 40]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-core figures; set before torch loads a BLAS
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.run import OUT
from simulforge.eval import policies as P
from simulforge.eval.driver import Decoder
from simulforge.models import registry

ROOT = Path(__file__).resolve().parents[1]
WORK = OUT / "eval"
# (run, policy): the tiny configs' models under their own streaming policies.
CASES = [("easist", P.PolicyHead(0.5)), ("bilingual", P.WaitK(3)), ("unified", P.WaitK(3)),
         ("unified", P.AlignAtt(4)), ("jstar", P.Transducer())]
LANGUAGES = {"easist": ["de"], "bilingual": ["de"], "unified": ["de", "es"], "jstar": ["de"]}


def published() -> str:
    folder = WORK / "published"
    if not (folder / "README.md").is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from test_training_data import build_published

        folder.mkdir(parents=True, exist_ok=True)
        build_published(folder)
    return str(folder)


def trained(name: str, data: str) -> Path:
    from simulforge.training import config as C
    from simulforge.training.recipes import run

    out = WORK / "runs" / name
    cfg, _ = C.load(ROOT / "configs" / "models" / f"{name}_tiny.yaml",
                    ["train.progress=false", "train.ckpt_every=1000", "train.device=cpu"])
    run(cfg, data, out, echo=False)  # a finished run is loaded, not trained again
    return out


def clips(data: str, config: str, rate: int, channels: int) -> list[torch.Tensor]:
    import datasets

    ds = datasets.load_dataset(data, config, split="train").cast_column(
        "audio", datasets.Audio(sampling_rate=rate, num_channels=channels))
    return [row["audio"].get_all_samples().data for row in ds]


def measure(decoder: Decoder, waves: list[torch.Tensor], policy, repeats: int) -> dict:
    totals = {"streaming": [0.0, 0], "offline": [0.0, 0]}
    modes = {"streaming": policy, "offline": P.Offline()}
    for wave in waves:  # warm-up
        for p in modes.values():
            decoder.decode(wave, p)
    for r in range(repeats):
        for wave in waves:
            for mode in (("streaming", "offline") if r % 2 == 0 else ("offline", "streaming")):
                out = decoder.decode(wave, modes[mode])
                totals[mode][0] += out.compute_ms
                totals[mode][1] += sum(len(s.tokens) for s in out.streams.values())
    result = {f"{mode}_ms_per_token": round(ms / tokens, 4) for mode, (ms, tokens) in totals.items()}
    result |= {f"{mode}_tokens_per_pass": tokens // repeats for mode, (_, tokens) in totals.items()}
    result["ratio"] = round(result["streaming_ms_per_token"] / result["offline_ms_per_token"], 3)
    result["clips"] = len(waves)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed passes over the clips")
    ap.add_argument("--segment-ms", type=float, default=40.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from simulforge.training.recipes import load_run

    data = published()
    results = {}
    for name, policy in CASES:
        model, tok, info = load_run(trained(name, data))
        langs = LANGUAGES[name]
        prompts = {lang: tok.encode(f"<2{lang}>") for lang in langs}  # a decoder-only family's prompt
        rate, family = info["data"]["sampling_rate"], registry.get(info["family"])
        decoder = Decoder(model, family.name, langs, prompts=prompts, sampling_rate=rate, segment_ms=args.segment_ms)
        waves = clips(data, family.eval_config, rate, family.channels(model.cfg))
        results[f"{name} {P.label(policy)}"] = measure(decoder, waves, policy, args.repeats)
    summary = {"cases": results, "repeats": args.repeats, "segment_ms": args.segment_ms,
               "threads": torch.get_num_threads(), "device": "cpu", "goal_ratio": 1.10}
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "bench_eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
