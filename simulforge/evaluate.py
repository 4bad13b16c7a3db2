"""`simulforge evaluate`: score a trained run the way SimulST papers do, or the quality of a dataset.

Model mode:

    simulforge evaluate --run RUN --data DATASET [--split test] [--config offline] [--lang de,es]
                        [--policy waitk] [--sweep k=1,3,5] [--segment-ms 40] [--limit N] [--out DIR]

decodes every utterance of the split simultaneously, under the policy at each swept setting,
and offline, then writes per setting and target `<setting>/<target>/instances.log`
(SimulEval-compatible), `scores.json` and the BLEU-LAAL / BLEU-LAAL_CA curves into `--out`
(default `<run>/eval/<split>`). The policy defaults by family: waitk for wait-k and SAMU models,
policy-head for EASiST, transducer for JSTAR (eval/policies.py lists them all).

Data mode:

    simulforge evaluate data DATASET [--truth word_times.jsonl] [--cometkiwi MODEL_DIR] [--split S] [--out DIR]

measures the published chunks' monotonicity against the offline pairs, the word timings'
error against a truth file, and CometKiwi with a local model (eval/data_quality.py).

Bad input (a missing run, dataset config, split, column or language, a policy the family cannot
run) stops with a message and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

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
    p.add_argument("--segment-ms", type=float, default=40.0, help="source segment size (default 40 ms)")
    p.add_argument("--limit", type=int, help="only the first N utterances")
    p.add_argument("--out", help="output folder (default <run>/eval/<split>)")
    p.add_argument("--prompt", default="{tag}", help="EASiST prompt template, with {tag} (<2de>) and {lang} "
                                                     "(default {tag}, as the EASiST configs train)")
    p.add_argument("--max-len", type=int, default=200, help="at most this many tokens per output")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
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
    p.add_argument("--out", help="output folder (default <dataset>/eval/quality for a local dataset)")
    return p


# -- model mode ----------------------------------------------------------------------------------
def _dataset_languages(ds, column: str) -> list[str]:
    feature = ds.features.get(column)
    return list(feature) if isinstance(feature, dict) else []


def _languages(family: str, model, tok, requested: list[str] | None, available: list[str]) -> list[str]:
    """The run's target languages (all, or the requested ones), checked against the model and the data."""
    from simulforge.training.tokenizer import lang_tag

    if family in ("waitk", "samu"):
        own = list((model.cfg.st if family == "samu" else model.cfg).languages)
    elif family == "easist":  # a language is trained when its tag is one piece of the run's vocabulary
        own = [lang for lang in available if tok.piece_id(lang_tag(lang)) is not None]
    else:  # JSTAR's one target language is a stage option the run does not record
        own = requested or (available if len(available) == 1 else [])
        if len(own) != 1:
            raise ValueError(f"JSTAR translates into one language: pass --lang (one of {', '.join(available)}), "
                             "the language of its joint stage")
    languages = requested or own
    missing = [lang for lang in languages if lang not in available]
    if missing:
        raise ValueError(f"--lang: the dataset has no {', '.join(missing)} references; it has {', '.join(available)}")
    unknown = [lang for lang in languages if lang not in own]
    if unknown:
        raise ValueError(f"--lang: the run does not translate into {', '.join(unknown)}; it has {', '.join(own)}")
    if not languages:
        raise ValueError("no target language of the run has references in the dataset")
    return languages


def evaluate_run(run_dir: str, data: str, *, split: str = "test", config: str | None = None,
                 languages: list[str] | None = None, policy: str | None = None, sweep: str | None = None,
                 segment_ms: float = 40.0, limit: int | None = None, out: str | None = None, prompt: str = "{tag}",
                 max_len: int = 200, device: str = "cpu", echo=print) -> dict[str, Any]:
    """Decode `split` under each setting of the policy and offline; write the logs, scores.json and plots."""
    import datasets

    from simulforge.eval import policies as P
    from simulforge.eval import report
    from simulforge.eval.driver import ASR, Decoder
    from simulforge.eval.instances import write_instances
    from simulforge.eval.quality import _SPEAKER_TAG
    from simulforge.training import data as D
    from simulforge.training.recipes import load_run
    from simulforge.training.tasks import JointOptions
    from simulforge.training.tokenizer import lang_tag

    model, tok, info = load_run(run_dir, device)
    family = info["family"]
    config = config or ("conversations" if family == "jstar" else "offline")
    settings = P.parse(family, policy, sweep, model.cfg)
    if policy != "offline":
        settings.append(P.Offline())
    rate, n_mels = info["data"]["sampling_rate"], info["data"]["n_mels"]
    cache_dir = info["data"].get("cache_dir") or str(Path(run_dir) / "cache")

    ds = D.open_split(data, config, split, cache_dir, limit)
    column, transcript = ("sot_translation", "sot_text") if config == "conversations" else ("translation",
                                                                                          "source_text")
    D.check_columns(ds, ["audio", "id", column] + ([transcript] if family == "jstar" else []), "--data")
    languages = _languages(family, model, tok, languages, _dataset_languages(ds, column))
    mono = family != "jstar" or model.cfg.channels == 1
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=rate, num_channels=1 if mono else None))
    # SOT outputs (JSTAR): speaker tags are words of the transcript (scored by SA-WER when the references
    # carry them) but not of the translation (left out of its log, hence of BLEU).
    found = {f"<{t}>" for text in (ds[transcript] if transcript in ds.column_names else [])
             for t in _SPEAKER_TAG.findall(text or "")}
    tag_ids = set()
    if family == "jstar":
        tag_ids = {i for i in map(tok.piece_id, found | set(JointOptions().speaker_tokens)) if i is not None}

    prompts = {lang: tok.encode(prompt.format(tag=lang_tag(lang), lang=lang)) for lang in languages}
    decoder = Decoder(model, family, languages, prompts=prompts if family == "easist" else None,
                      sampling_rate=rate, n_mels=n_mels, segment_ms=segment_ms, max_len=max_len)

    def references(row: dict) -> dict[str, str | None]:
        refs = {lang: row[column][lang] for lang in languages}
        refs = {lang: report.strip_speakers(r) if found and r else r for lang, r in refs.items()}
        return refs | ({ASR: row[transcript]} if family == "jstar" else {})

    logs, compute = _decode(decoder, ds, settings, references, tok, tag_ids)
    out_dir = Path(out or Path(run_dir) / "eval" / split)
    results = []
    for setting in settings:
        name = P.label(setting)
        targets = {}
        for target, instances in logs[name].items():
            if not instances:
                continue
            path = out_dir / name / target / "instances.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_instances(path, instances)
            targets[target] = report.score_log(path, transcript=target == ASR, speakers=bool(found)) | {
                "log": str(path.relative_to(out_dir))}
        value = getattr(setting, setting.param) if setting.param else None
        results.append({"name": name, "policy": setting.name, "param": setting.param, "value": value,
                        "compute": compute[name], "targets": targets})
        echo(_line(name, results[-1]))
    header = {"run": str(run_dir), "family": family, "data": data, "config": config, "split": split,
              "segment_ms": segment_ms, "languages": languages, "utterances": len(ds)}
    return report.write(out_dir, header, results)


def _decode(decoder, ds, settings, references, tok, tag_ids: set[int]
            ) -> tuple[dict[str, dict[str, list]], dict[str, dict[str, float]]]:
    """Every row under every setting -> per setting {target: instances} and computation totals."""
    from simulforge.eval.driver import ASR, to_words
    from simulforge.eval.instances import make_instance
    from simulforge.eval.policies import label

    logs = {label(s): {t: [] for t in decoder.targets} for s in settings}
    compute = {label(s): {"ms": 0.0, "tokens": 0, "utterances": 0} for s in settings}
    channels = decoder.model.cfg.channels if decoder.family == "jstar" else 1
    for index, row in enumerate(ds):
        wave = row["audio"].get_all_samples().data
        if wave.shape[0] != channels:
            raise ValueError(f"{row['id']}: the audio has {wave.shape[0]} channel(s), the model takes {channels}")
        refs = references(row)
        if index == 0:  # warm-up: the first calls pay one-off costs that are no part of decoding
            for setting in settings:
                decoder.decode(wave, setting)
        for setting in settings:
            decoded, name = decoder.decode(wave, setting), label(setting)
            compute[name]["ms"] += decoded.compute_ms
            compute[name]["tokens"] += sum(len(s.tokens) for s in decoded.streams.values())
            compute[name]["utterances"] += 1
            for target, stream in decoded.streams.items():
                if refs[target] is None:  # no translation into this language: nothing to score
                    continue
                prediction, delays, elapsed = to_words(stream, tok.decode, () if target == ASR else tag_ids)
                logs[name][target].append(make_instance(index, prediction, delays, elapsed, refs[target], row["id"],
                                                        decoded.source_ms))
    return logs, compute


def _line(name: str, result: dict[str, Any]) -> str:
    parts = [f"{name}:"]
    for target, s in result["targets"].items():
        quality = f"BLEU {s['BLEU']:.2f}" if "BLEU" in s else f"WER {s['WER']:.2f}"
        parts.append(f"{target} {quality} LAAL {s['LAAL']:.0f} LAAL_CA {s.get('LAAL_CA', float('nan')):.0f}")
    c = result["compute"]
    parts.append(f"({c['ms'] / max(c['tokens'], 1):.2f} ms/token)")
    return " ".join(parts)


# -- entry point ---------------------------------------------------------------------------------
def _split_langs(value: str | None) -> list[str] | None:
    return [v for v in re.split(r"[,\s]+", value) if v] if value else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Bad input raises FileNotFoundError or a ValueError (ConfigError, PolicyError): a message, exit code 2.
    if argv and argv[0] == DATA_MODE:
        args = data_parser().parse_args(argv[1:])
        from simulforge.eval.data_quality import evaluate_dataset

        try:
            evaluate_dataset(args.dataset, truth=args.truth, cometkiwi=args.cometkiwi, split=args.split,
                             limit=args.limit, out=args.out)
        except (FileNotFoundError, ValueError) as e:
            print(f"simulforge evaluate data: {e}", file=sys.stderr)
            return 2
        return 0
    args = model_parser().parse_args(argv)
    try:
        evaluate_run(args.run, args.data, split=args.split, config=args.config, languages=_split_langs(args.lang),
                     policy=args.policy, sweep=args.sweep, segment_ms=args.segment_ms, limit=args.limit,
                     out=args.out, prompt=args.prompt, max_len=args.max_len, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"simulforge evaluate: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
