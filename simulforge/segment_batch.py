"""`simulforge segment-batch submit|status|collect`: the LLM segmenter through the Batch API.

For large corpora: `submit` writes one chat request per batch of utterances (the same
requests the online mode sends, skipping what the cache already holds), uploads them and
starts the batches; `status` polls; `collect` validates the answers into the segment cache.
The next `curate` run with the same configuration then finds them there and asks online
only for what the batch did not answer validly. Every step saves its progress in the
work folder (segment.llm.batch_dir), so any of them can be re-run after an interruption.

The configuration is read exactly as `curate` reads it (configs/curate.yaml, then --config,
then --set, then --work-dir as the run's work_dir), so the cache and the work folder resolve
to the same places: give both commands the same config and work dir and they share one cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from simulforge.pipeline import config as curate_config
from simulforge.settings import ConfigError
from simulforge.transforms.records import AudioRef, Utterance
from simulforge.transforms.segment import SegmentSettings
from simulforge.transforms.segment_llm import batch
from simulforge.transforms.segment_llm.client import openai_errors
from simulforge.transforms.segment_llm.keys import redact


def read_utterances(path: Path, languages: list[str]) -> Iterator[Utterance]:
    """Utterances from JSON lines (records.to_dict form) or from a TSV with `id`, `en` and language columns."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    yield Utterance(
                        id=d["id"],
                        corpus=d.get("corpus", ""),
                        split=d.get("split", ""),
                        audio=AudioRef(**d["audio"]) if d.get("audio") else AudioRef(""),
                        speaker=d.get("speaker", ""),
                        source_lang=d.get("source_lang", "en"),
                        source_text=d["source_text"],
                        translations={
                            k: v for k, v in d["translations"].items() if not languages or k in languages
                        },
                    )
        return
    if not languages:
        raise ConfigError(f"{path}: a TSV input needs --languages to name its translation columns")
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            missing = [c for c in ("id", "en", *languages) if c not in row]
            if missing:
                raise ConfigError(f"{path}: no column(s) {', '.join(missing)}")
            yield Utterance(
                id=row["id"],
                corpus=path.stem,
                split="",
                audio=AudioRef(""),
                speaker="",
                source_lang="en",
                source_text=row["en"],
                translations={lang: row[lang] for lang in languages if row[lang].strip()},
            )


def _settings(config: Path | None, sets: list[str], work_dir: Path | None) -> SegmentSettings:
    """The `segment` section as `curate` would see it, with its paths resolved under work_dir."""
    if config is not None and not config.is_file():
        raise ConfigError(f"{config}: no config file there")
    overrides = [*sets, "segment.backend=llm"]
    if work_dir is not None:
        overrides.append(f"work_dir={json.dumps(str(work_dir))}")  # a JSON string is a YAML string
    return curate_config.load(str(config) if config else None, overrides).segment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulforge segment-batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["submit", "status", "collect"])
    parser.add_argument("--config", type=Path, help="the curation config (YAML merged over configs/curate.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, as for curate (repeatable)")
    parser.add_argument(
        "--input", type=Path, help="submit: utterances as .jsonl, or a .tsv with id, en, <lang> columns"
    )
    parser.add_argument(
        "--languages", default="", help="comma-separated target languages (default: all in a .jsonl)"
    )
    parser.add_argument("--work-dir", type=Path,
                        help="the run's work_dir, as curate's --work-dir (the cache and batch_dir go under it)")
    args = parser.parse_args(argv)
    settings = None
    try:
        settings = _settings(args.config, args.set, args.work_dir)
        work_dir = settings.llm.batch_dir
        if args.action == "submit":
            if args.input is None:
                parser.error("submit needs --input")
            languages = [lang for lang in args.languages.split(",") if lang]
            utts = read_utterances(args.input, languages)
            result = batch.submit(settings.llm, settings.levels, utts, work_dir)
        elif args.action == "status":
            result = batch.status(settings.llm, work_dir)
        else:
            result = batch.collect(settings.llm, settings.levels, work_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except openai_errors() as e:
        key = os.environ.get(settings.llm.api_key_env, "").strip() if settings else ""
        print(f"error: the batch API call failed: {redact(str(e), key)}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as e:  # a reply that is not JSON (the client does not wrap that)
        print(f"error: the server's reply is not JSON ({e.msg} at character {e.pos})", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
