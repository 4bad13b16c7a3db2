"""`simulforge segment-batch submit|status|collect`: the LLM segmenter through the Batch API.

For large corpora: `submit` writes one chat request per batch of utterances (the same
requests the online mode sends, skipping what the cache already holds), uploads them and
starts the batches; `status` polls; `collect` validates the answers into the segment cache.
The next `curate` run with the same configuration then finds them there and asks online
only for what the batch did not answer validly. Every step saves its progress in the
work folder (segment.llm.batch_dir), so any of them can be re-run after an interruption.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from simulforge.transforms import segment_llm
from simulforge.transforms.records import AudioRef, Utterance
from simulforge.transforms.segment import load_settings
from simulforge.transforms.settings import ConfigError


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


def _settings(config: Path | None):
    overrides = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"{config}: no config file there")
        data = yaml.safe_load(config.read_text()) or {}
        overrides = data.get("segment", data)  # a curation config, or just its segment section
    return load_settings({**overrides, "backend": "llm"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulforge segment-batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["submit", "status", "collect"])
    parser.add_argument("--config", type=Path, help="YAML with a `segment:` section (or the section itself)")
    parser.add_argument(
        "--input", type=Path, help="submit: utterances as .jsonl, or a .tsv with id, en, <lang> columns"
    )
    parser.add_argument(
        "--languages", default="", help="comma-separated target languages (default: all in a .jsonl)"
    )
    parser.add_argument("--work-dir", type=Path, help="overrides segment.llm.batch_dir")
    args = parser.parse_args(argv)
    try:
        settings = _settings(args.config)
        work_dir = str(args.work_dir or settings.llm.batch_dir)
        if args.action == "submit":
            if args.input is None:
                parser.error("submit needs --input")
            languages = [lang for lang in args.languages.split(",") if lang]
            utts = read_utterances(args.input, languages)
            result = segment_llm.batch_submit(settings.llm, settings.levels, utts, work_dir)
        elif args.action == "status":
            result = segment_llm.batch_status(settings.llm, work_dir)
        else:
            result = segment_llm.batch_collect(settings.llm, settings.levels, work_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except segment_llm.openai_errors() as e:
        key = os.environ.get(settings.llm.api_key_env, "")
        print(f"error: the batch API call failed: {segment_llm.redact(str(e), key)}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
