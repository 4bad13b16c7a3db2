"""`simulforge train --config configs/models/<name>.yaml --data <dataset> --out <run dir>`.

Trains every stage of a model config on a published dataset (a local folder in the Hugging
Face layout, or a hub id) and writes the run into `--out`: `log.jsonl`, `tokenizer.model`,
`run.yaml`, one folder per stage (checkpoint.pt, model.pt, done.json) and the final `model.pt`.
Running the same command again resumes where it stopped. `train.device: auto` (the tiny configs'
and the default) trains on the GPU when torch sees one, else on the CPU; the realistic configs ask
for `cuda` and stop without one. `run.yaml` records the device used. Bad inputs (a missing dataset config
or column, a tokenizer without the needed special tokens, a local weights path that does not
exist) stop it with a message before training starts (exit code 2).
"""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulforge train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="model YAML, e.g. configs/models/easist_tiny.yaml")
    p.add_argument("--data", required=True, help="published dataset folder or hub id")
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--stage", help="run only this stage (earlier finished stages are loaded)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, value parsed as YAML (e.g. train.device=cpu, stages.0.steps=10)")
    p.add_argument("--quiet", action="store_true", help="no per-step lines on stdout (log.jsonl is still written)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from simulforge.training import config as C
    from simulforge.training.recipes import run

    try:
        cfg, _ = C.load(args.config, args.set)
        if args.quiet:
            cfg.train.progress = False
        summaries = run(cfg, args.data, args.out, only_stage=args.stage, echo=not args.quiet)
    except (C.ConfigError, FileNotFoundError) as e:
        print(f"simulforge train: {e}", file=sys.stderr)
        return 2
    for name, summary in summaries.items():
        print(f"{name}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in summary.items() if k != "stage"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
