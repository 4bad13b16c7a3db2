"""The curation config: configs/curate.yaml, merged with a user file and --set overrides, validated."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import yaml

from ..settings import ConfigError, build, deep_merge, override, stage_defaults
from ..transforms import files
from ..transforms.align import ForcedAlignSettings
from ..transforms.audio import AudioSettings
from ..transforms.embed import EmbedSettings
from ..transforms.readers import CORPORA, CorpusSettings
from ..transforms.segment import SegmentSettings
from ..transforms.simulate import SimulateSettings
from .dataset_configs import CONFIGS as DATASET_CONFIGS
from .progress import ProgressSettings

LANG_CODE = re.compile(r"^[a-z]{2,3}$")


@dataclass
class CurateSettings:
    input: str | None
    output: str
    overwrite: bool  # replace the simulforge build already in `output` (a folder we did not write: never)
    languages: list[str]
    corpora: list[str]
    work_dir: str
    sampling_rate: int
    seed: int
    num_shards: int
    records_per_shard: int
    runner: str
    beam_args: list[str]
    progress: ProgressSettings
    configs: list[str]
    corpus: dict[str, CorpusSettings]
    audio: AudioSettings
    segment: SegmentSettings
    align: ForcedAlignSettings
    embed: EmbedSettings
    simulate: SimulateSettings

    def validate(self, where: str) -> None:
        if not self.languages:
            raise ConfigError(f"{where}.languages: give at least one target language")
        for lang in self.languages:
            if not LANG_CODE.match(lang):
                raise ConfigError(f"{where}.languages: {lang!r} is not a language code like 'de'")
        if "en" in self.languages:
            raise ConfigError(f"{where}.languages: English is the source language, not a target")
        if not self.corpora:
            raise ConfigError(f"{where}.corpora: name at least one of {', '.join(CORPORA)}")
        for name in self.corpora:
            if name not in CORPORA:
                raise ConfigError(f"{where}.corpora: unknown corpus {name!r}; known: {', '.join(CORPORA)}")
            if name not in self.corpus:
                raise ConfigError(f"{where}.corpus.{name}: missing")
        if self.sampling_rate not in (8000, 16000, 22050, 24000, 32000, 44100, 48000):
            raise ConfigError(f"{where}.sampling_rate: {self.sampling_rate} is not a usual audio rate")
        unknown = [c for c in self.configs if c not in DATASET_CONFIGS]
        if unknown or "offline" not in self.configs:
            raise ConfigError(f"{where}.configs: {self.configs} must hold offline and only names from "
                              f"{', '.join(DATASET_CONFIGS)}")
        if self.num_shards < 0:
            raise ConfigError(f"{where}.num_shards: must be 0 (from records_per_shard) or more")
        if self.records_per_shard < 1:
            raise ConfigError(f"{where}.records_per_shard: must be at least 1")

    def corpus_root(self, name: str) -> str:
        path = self.corpus[name].path
        if path:
            return path
        return f"{self.input.rstrip('/')}/{name}"

    def demo_root(self) -> str:
        return files.join(self.work_dir, "demo")

    def fingerprint(self) -> str:
        """Hash of everything that shapes the output (not where it goes or is cached), for the card."""
        d = asdict(self)
        for key in ("output", "overwrite", "work_dir", "runner", "beam_args", "progress"):
            d.pop(key)
        d["segment"]["align"].pop("cache_dir")
        d["align"].pop("cache_dir")
        if self.input == self.demo_root():  # the demo corpora, wherever the work dir holds them
            d["input"] = None
            if d["align"]["truth"] == files.join(self.input, "truth", "word_times.jsonl"):
                d["align"]["truth"] = None
        for key in ("cache_dir", "batch_dir"):
            d["segment"]["llm"].pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def resolve_paths(self) -> None:
        """Caches left at null go under `work_dir`, so everything a run writes lands in
        `work_dir` or `output`, wherever the command is run from; no input means the demo
        corpora, built into `work_dir` on first use, with their true word times."""
        if files.is_local(self.work_dir):
            self.work_dir = os.path.abspath(self.work_dir)
        if self.input is None:
            self.input = self.demo_root()
            self.align.truth = self.align.truth or files.join(self.input, "truth", "word_times.jsonl")
        seg = self.segment
        seg.align.cache_dir = seg.align.cache_dir or files.join(self.work_dir, "eflomal")
        seg.llm.cache_dir = seg.llm.cache_dir or files.join(self.work_dir, "llm_answers")
        seg.llm.batch_dir = seg.llm.batch_dir or files.join(self.work_dir, "segment_batch")
        self.align.cache_dir = self.align.cache_dir or files.join(self.work_dir, "aligners")


def defaults() -> dict[str, Any]:
    """configs/curate.yaml, and each stage's defaults (configs/stages/<name>.yaml) as its `<name>:` section."""
    configs = resources.files("simulforge.configs")
    data = yaml.safe_load(configs.joinpath("curate.yaml").read_text())
    stages = sorted(f.name.removesuffix(".yaml") for f in configs.joinpath("stages").iterdir() if f.name.endswith(".yaml"))
    return {**data, **{name: stage_defaults(name) for name in stages}}


def load(user_file: str | None = None, overrides: list[str] | None = None) -> CurateSettings:
    data = defaults()
    if user_file:
        with open(user_file, encoding="utf-8") as f:
            user = yaml.safe_load(f) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{user_file}: expected a YAML mapping at the top")
        data = deep_merge(data, user)
    for item in overrides or []:
        data = override(data, item)
    settings = build(CurateSettings, data, "curate")
    settings.resolve_paths()
    return settings
