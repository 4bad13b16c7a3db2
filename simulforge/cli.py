"""The `simulforge` command: one entry point, one subcommand per step of the workflow."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .pipeline import logs

VERBOSITY_FLAGS = {"-v": 1, "--verbose": 1, "-vv": 2, "-q": -9, "--quiet": -9}


def demo_summary(root: str, summary: dict) -> list[str]:
    """A few lines for `demo-data`: per corpus its clips, audio and speakers, then the next command."""
    lines = [f"demo corpora written to {root} in {summary['build_s']:.1f} s "
             f"(scale {summary['scale']:g}, seed {summary['seed']}):"]
    for name in ("mustc", "covost", "fleurs"):
        c = summary[name]
        talks = f", {c['talks']} talks" if "talks" in c else ""
        audio = f"{c['audio_s'] / 60:.1f} min" if c["audio_s"] < 3600 else f"{c['audio_s'] / 3600:.2f} h"
        lines.append(f"  {name:<7}{c['clips']:>5} clips, {audio}, {len(c['speakers'])} speakers{talks}")
    lines.append(f"  truth  {summary['truth_clips']:>5} clips with true word times: "
                 f"{os.path.join(root, 'truth', 'word_times.jsonl')}")
    lines.append(f"next: simulforge curate --input {root} --output out")
    return lines


def _demo_data(args) -> int:
    from .demo.corpora import build_demo_corpora

    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        print(f"simulforge demo-data: {args.dir} is a file, not a folder", file=sys.stderr)
        return 2
    try:
        summary = build_demo_corpora(args.dir, scale=args.scale, seed=args.seed)
    except FileExistsError as e:  # the folder holds corpora that no demo build wrote: never replaced
        print(f"simulforge demo-data: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        for line in demo_summary(args.dir, summary):
            logs.echo(line)
    return 0


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number more than 0, got {text!r}")
    return value


def _curate(args, beam_args: list[str], verbosity: int) -> int:
    from .pipeline import config, curate

    overrides = ["progress.display=none"] if verbosity < 0 else []
    overrides += list(args.set or [])
    for key in ("input", "output", "work_dir", "runner"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    if args.overwrite:
        overrides.append("overwrite=true")
    for key, value in (("languages", args.langs), ("corpora", args.corpora)):
        if value is not None:  # `--langs ""` is an empty list, refused by validation, not the default
            overrides.append(f"{key}=[{value}]")
    settings = _load_settings(config, args.config, overrides)
    if args.print_config:
        print(curate.resolved_config(settings, beam_args), end="")
        return 0
    if "://" not in settings.work_dir:
        # matplotlib (the card's plots) would keep its font cache under ~/.cache: a run writes only
        # under its output and work dir.
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(settings.work_dir, "matplotlib"))
    try:
        curate.run(settings, beam_args, echo=logs.echo)
    except curate.RunError as e:
        print(f"simulforge curate: failed: {e}", file=sys.stderr)
        return 1
    return 0


def _load_settings(config, path: str | None, overrides: list[str]):
    """The settings; a --config file that cannot be read, or YAML that does not parse, is a one-line
    error naming the file or the --set item."""
    import yaml

    from .settings import ConfigError

    try:
        return config.load(path, overrides)
    except OSError as e:
        if path is None or e.filename != path:
            raise
        raise ConfigError(f"--config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:  # from the file: a --set item that does not parse is a ConfigError
        raise ConfigError(f"--config {path}: not valid YAML: {' '.join(str(e).split())}") from e


# Subcommands that own their argument parsing: name -> (module, help).
DELEGATED = {
    "segment-batch": ("simulforge.segment_batch", "LLM segmentation through the Batch API: submit|status|collect"),
    "export": ("simulforge.export_lhotse", "export a published dataset: `export lhotse DATASET DIR`"),
    "publish": ("simulforge.publish", "check a curated folder and upload it to the Hugging Face Hub"),
    "train": ("simulforge.train", "train a model family from a published dataset"),
    "evaluate": ("simulforge.evaluate", "simultaneous decoding, quality and latency of a run; `evaluate data` scores a dataset"),
}


def _delegate(name: str, argv: list[str]) -> int:
    import importlib

    module = DELEGATED[name][0]
    if name == "export":
        if argv and argv[0] in ("-h", "--help"):
            print("usage: simulforge export lhotse DATASET DIR [options]\n\n"
                  "Export a published dataset; the one format is lhotse (its options: simulforge export lhotse --help).")
            return 0
        if not argv or argv[0] != "lhotse":
            print("simulforge export: the one format is lhotse: simulforge export lhotse DATASET DIR", file=sys.stderr)
            return 2
        argv = argv[1:]
    return importlib.import_module(module).main(argv)


def parser() -> argparse.ArgumentParser:
    # No abbreviations: `--runner=X` is Beam's flag, not a prefix of `--runner-profile` (and an unknown
    # flag must go to Beam whole, not be taken for one of ours).
    p = argparse.ArgumentParser(prog="simulforge", description=__doc__, allow_abbrev=False, parents=[_verbosity()])
    p.add_argument("--version", action="version", version=f"simulforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (_, help_) in DELEGATED.items():
        sub.add_parser(name, help=help_, add_help=False)

    d = sub.add_parser("demo-data", help="write the demo corpora (MuST-C, CoVoST 2, FLEURS layouts) to DIR",
                       allow_abbrev=False, parents=[_verbosity()])
    d.add_argument("dir")
    d.add_argument("--scale", type=_scale, default=1.0, help="<1: a fraction of the sentences; >1: N copies")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true", help="print the whole summary as JSON")

    c = sub.add_parser("curate", help="curate corpora into a published dataset; unknown flags go to Beam",
                       allow_abbrev=False, parents=[_verbosity()],
                       epilog="Any other --flag=value is passed to Beam, e.g. --runner=PortableRunner "
                              "--job_endpoint=embed or --direct_running_mode=multi_processing.")
    c.add_argument("--config", help="YAML merged over configs/curate.yaml")
    c.add_argument("--langs", help="target languages, comma-separated (e.g. de,es)")
    c.add_argument("--input", help="folder holding mustc/, covost/, fleurs/ (default: the demo corpora)")
    c.add_argument("--output", help="dataset folder to publish into")
    c.add_argument("--corpora", help="comma-separated subset of the corpora configs/curate.yaml names (default: all)")
    c.add_argument("--work-dir", dest="work_dir", help="extracted archives and caches")
    c.add_argument("--overwrite", action="store_true",
                   help="replace the simulforge build already in --output (other folders are never overwritten)")
    c.add_argument("--runner-profile", dest="runner", help="a profile of configs/runners.yaml (default: direct)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    c.add_argument("--print-config", action="store_true",
                   help="print the merged settings and exit (a build ships them as curate.yaml, without "
                        "output and work_dir)")
    return p


def _verbosity() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand's flags add to the top level's instead of resetting them to a default.
    v = argparse.ArgumentParser(add_help=False)
    v.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more log lines: -v every library's INFO, -vv simulforge's DEBUG (the full log is in "
                        "a file under work_dir either way)")
    v.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="warnings and errors only: no progress, no summary")
    return v


def _leading_verbosity(argv: list[str]) -> tuple[int, list[str]]:
    """-v/-q given before a delegated command's name (`simulforge -q train ...`)."""
    level = 0
    while argv and argv[0] in VERBOSITY_FLAGS:
        level += VERBOSITY_FLAGS[argv[0]]
        argv = argv[1:]
    return max(level, logs.QUIET), argv


def main(argv: list[str] | None = None) -> int:
    # Nothing here plays sound, but libespeak-ng 1.51 (demo synthesis, the aligner's phonemes) probes
    # PulseAudio at init, which without XDG_RUNTIME_DIR leaves ~/.config/pulse behind: give it no server.
    os.environ["PULSE_SERVER"] = "unix:" + os.devnull
    argv = sys.argv[1:] if argv is None else argv
    level, after = _leading_verbosity(argv)
    if after and after[0] in DELEGATED:
        logs.setup(level)
        return _delegate(after[0], after[1:])
    args, rest = parser().parse_known_args(argv)
    level = logs.QUIET if getattr(args, "quiet", False) else min(getattr(args, "verbose", 0), logs.DEBUG)
    logs.setup(level, keep=args.command == "curate")  # curate's log file starts with what came before it
    from .settings import ConfigError

    try:
        if args.command == "demo-data":
            if rest:
                parser().error(f"unrecognized arguments: {' '.join(rest)}")
            return _demo_data(args)
        return _curate(args, rest, level)
    except (ConfigError, FileNotFoundError) as e:
        print(f"simulforge {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
