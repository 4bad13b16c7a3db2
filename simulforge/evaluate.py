"""`simulforge evaluate`: score a trained run the way SimulST papers do, or the quality of a dataset.

Model mode:

    simulforge evaluate --run RUN --data DATASET [--split test] [--config offline] [--lang de,es]
                        [--policy waitk] [--sweep k=1,3,5 | --k de=3,es=5] [--segment-ms 40] [--limit N]
                        [--out DIR] [--device auto]

decodes every utterance of the split simultaneously, under the policy at each swept setting,
and offline, then writes per setting and target `<setting>/<target>/instances.log`
(SimulEval-compatible), `scores.json` and the BLEU-LAAL / BLEU-LAAL_CA curves into `--out`
(default `<run>/eval/<split>`). The policy defaults by family: waitk for wait-k and SAMU models,
policy-head for EASiST, transducer for JSTAR (eval/policies.py lists them all). `--k` is wait-k's
k: one (`--k 3`, as `--sweep k=3`), a sweep (`--k 1,3,5`), or one per language (`--k de=3,es=5`:
one joint decoding with each language at its own k, as asynchronously trained models are
evaluated). `--device auto` (the default) decodes on the GPU when torch sees one, so that the
computation-aware latencies are not timed on the CPU by accident. This module only
reads the command line: the evaluation itself is eval/run.py (a run) and eval/data_quality.py (a dataset).

Data mode:

    simulforge evaluate data DATASET [--truth word_times.jsonl] [--cometkiwi MODEL_DIR] [--split S] [--out DIR]

measures the published chunks' monotonicity against the offline pairs, the word timings'
error against a truth file, and CometKiwi with a local model (eval/data_quality.py), into
`<dataset>-eval/quality` by default. No evaluation writes into a curated dataset folder (`--out`
there is refused): `simulforge publish` refuses files a build did not write.

Bad input (a missing run, dataset config, split, column or language, a policy the family cannot
run, a malformed `--k` or one naming a language the run lacks, `--device cuda` without a GPU) stops
with a message and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DATA_MODE = "data"


def model_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulforge evaluate",
                                description="Score a trained run the way SimulST papers do: simultaneous decoding "
                                            "under a policy across its latency settings, and offline.",
                                epilog="`simulforge evaluate data DATASET ...` evaluates a dataset instead "
                                       "(see `simulforge evaluate data --help`).")
    p.add_argument("--run", required=True, help="a finished run directory (simulforge train --out)")
    p.add_argument("--data", required=True, help="published dataset folder or hub id")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--config", help="dataset config to read (default: conversations for JSTAR, else offline)")
    p.add_argument("--lang", help="target languages, comma-separated (default: every language of the run)")
    p.add_argument("--policy", help="waitk | policy-head | edatt | alignatt | transducer | offline "
                                    "(default: the family's own)")
    p.add_argument("--sweep", help="latency settings of the policy, e.g. k=1,3,5 | tau=0.3,0.5,0.7 | "
                                   "alpha=0.6,0.4,0.2 | f=2,4,6")
    p.add_argument("--k", help="wait-k's k (implies --policy waitk): one (3), a sweep (1,3,5), or one per target "
                               "language, decoded jointly (de=3,es=5)")
    p.add_argument("--segment-ms", type=float, default=40.0, help="source segment size (default 40 ms)")
    p.add_argument("--limit", type=int, help="only the first N utterances")
    p.add_argument("--ids", help="only the rows whose id a file lists (one a line), e.g. what a run trained on")
    p.add_argument("--out", help="output folder (default <run>/eval/<split>)")
    p.add_argument("--prompt", help="EASiST prompt template, with {tag} (<2de>) and {lang} "
                                    "(default: the one the run trained with, from its run.yaml)")
    p.add_argument("--max-len", type=int, default=200, help="at most this many tokens per output")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda when torch sees a GPU, else cpu; "
                                                    "the default) | cpu | cuda | cuda:N")
    return p


def data_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulforge evaluate data",
                                description="Data-quality evaluation of a published dataset.")
    p.add_argument("dataset", help="published dataset folder or hub id")
    p.add_argument("--truth", help="true word times, JSONL of {id, words: [[word, start, end]]} "
                                   "(the demo corpora's truth/word_times.jsonl)")
    p.add_argument("--cometkiwi", help="local CometKiwi model folder (skipped without one)")
    p.add_argument("--split", help="only this split (default: every split)")
    p.add_argument("--limit", type=int, help="only the first N rows of each split")
    p.add_argument("--out", help="output folder (default <dataset>-eval/quality beside a local dataset: never "
                                 "inside it, where `simulforge publish` would refuse the stray files)")
    return p


# -- entry point ---------------------------------------------------------------------------------
def quality_dir(dataset: str, out: str | None) -> str | None:
    """`evaluate data`'s output folder: `--out`, or `<dataset>-eval/quality` beside a local dataset
    (None for a hub id, which needs --out)."""
    if out is None and Path(dataset).is_dir():
        return f"{str(dataset).rstrip('/')}-eval/quality"
    return out


def check_outside(dataset: str, out: str | None) -> None:
    """An evaluation writes nothing into a curated dataset folder: `publish` refuses files a build did
    not write."""
    from simulforge.pipeline.output import MARKER

    if out and (Path(dataset) / MARKER).is_file() and Path(out).resolve().is_relative_to(Path(dataset).resolve()):
        raise ValueError(f"--out {out} is inside the dataset folder {dataset}, where `simulforge publish` would "
                         f"refuse the stray files; give a folder outside it")


def _split_langs(value: str | None) -> list[str] | None:
    return [v for v in re.split(r"[,\s]+", value) if v] if value else None


def _k_option(k: str | None, policy: str | None, sweep: str | None) -> tuple[str | None, str | None, dict | None]:
    """`--k` -> (policy, sweep, per-language k): "3" and "1,3,5" are `--sweep k=...`; "de=3,es=5" a k per language."""
    if k is None:
        return policy, sweep, None
    if sweep is not None:
        raise ValueError(f"--k {k} and --sweep {sweep}: give the latency setting once")
    policy = policy or "waitk"
    if "=" not in k:
        return policy, f"k={k}", None
    from simulforge.eval.policies import parse_per_language

    return policy, None, parse_per_language(k)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Bad input raises FileNotFoundError or a ValueError (ConfigError, PolicyError): a message, exit code 2.
    if argv and argv[0] == DATA_MODE:
        args = data_parser().parse_args(argv[1:])
        from simulforge.eval.data_quality import evaluate_dataset

        try:
            out = quality_dir(args.dataset, args.out)
            check_outside(args.dataset, out)
            evaluate_dataset(args.dataset, truth=args.truth, cometkiwi=args.cometkiwi, split=args.split,
                             limit=args.limit, out=out)
        except (FileNotFoundError, ValueError) as e:
            print(f"simulforge evaluate data: {e}", file=sys.stderr)
            return 2
        return 0
    args = model_parser().parse_args(argv)
    from simulforge.eval.run import evaluate_run

    try:
        check_outside(args.data, args.out)
        policy, sweep, per_language = _k_option(args.k, args.policy, args.sweep)
        evaluate_run(args.run, args.data, split=args.split, config=args.config, languages=_split_langs(args.lang),
                     policy=policy, sweep=sweep, k=per_language, segment_ms=args.segment_ms, limit=args.limit,
                     ids=args.ids, out=args.out, prompt=args.prompt, max_len=args.max_len, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"simulforge evaluate: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
