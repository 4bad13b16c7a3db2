"""Recipes: a run config -> checked inputs -> tokenizer -> model -> its stages, in order.

Every check happens before the first step: local paths (tokenizer, LM, init weights), the
dataset's configs, splits and columns, the task options, the tokenizer's special tokens, the
model config. Then each stage trains in `<out>/<stage>/` (checkpoint.pt while running, model.pt
and done.json when finished); a rerun skips finished stages and resumes the running one exactly.
The run's final weights, tokenizer and resolved config (`run.yaml`) are what `load_run` reads.

Everything that differs between model families (the model, its config, its tasks, its special
tokens and the ids the config takes from the tokenizer) comes from the family's registry entry
(models/registry.py); the stages are the config's.
"""

from __future__ import annotations

import itertools
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from simulforge.models import registry
from simulforge.models.family import Family

from . import data as D
from .config import ConfigError, InitConfig, RunConfig, StageConfig, build, to_plain
from .loop import FINAL, JsonlLog, StagePlan, resolve_device, seed_everything, train_stage
from .tasks import Task
from .tokenizer import Tokenizer, build_tokenizer, load_tokenizer

TOKENIZER_FILE, RUN_FILE = "tokenizer.model", "run.yaml"


def family_of(name: str) -> Family:
    try:
        return registry.get(name)
    except KeyError as e:
        raise ConfigError(f"family: {e.args[0]}") from None


def build_model_config(family: Family, model: dict[str, Any]):
    return build(family.config, model, "model")


def make_model(family: Family, model_cfg) -> nn.Module:
    try:
        return family.model(model_cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_tasks(family: Family, cfg: RunConfig, model_cfg) -> list[Task]:
    """One task per stage, its options checked."""
    tasks = []
    for stage in cfg.stages:
        if stage.task not in family.tasks:
            raise ConfigError(f"stages.{stage.name}.task: {family.name} has tasks {', '.join(family.tasks)}, "
                              f"not {stage.task!r}")
        tasks.append(family.tasks[stage.task](stage.options, model_cfg, f"stages.{stage.name}.options"))
    return tasks


def specials(family: Family, model_cfg, tasks: list[Task]) -> list[str]:
    """The special tokens the vocabulary needs: the model config's, then its tasks'."""
    return list(dict.fromkeys(family.specials(model_cfg) + [s for t in tasks for s in t.specials()]))


# -- checks before anything runs --------------------------------------------------------------
def check_paths(cfg: RunConfig, family: Family, model_cfg) -> None:
    """Every local path the config names must exist."""
    if cfg.tokenizer.path and not Path(cfg.tokenizer.path).exists():
        raise ConfigError(f"tokenizer.path: {cfg.tokenizer.path} does not exist")
    family.check_paths(model_cfg)
    for stage in cfg.stages:
        if stage.init is not None and not Path(stage.init.path).is_file():
            raise ConfigError(f"stages.{stage.name}.init.path: local weights {stage.init.path} do not exist")


@dataclass
class PreparedStage:
    cfg: StageConfig
    task: Task
    train: Any  # datasets.Dataset
    valid: Any | None


def _open(data: str, stage: StageConfig, task: Task, split: str, cfg: RunConfig, cache_dir: str, ids=None):
    where = f"stages.{stage.name}"
    ds = D.open_split(data, stage.config, split, cache_dir, cfg.data.limit, ids)
    D.check_columns(ds, task.columns(), where)
    task.check_features(ds.features)
    task.fit_to_data(ds, f"dataset config {stage.config!r} split {split!r}")
    return ds


def _sampling_rate(cfg: RunConfig, tasks: list[Task]) -> int | None:
    """data.sampling_rate, or when null the published audio's (one rate for every config the stages read).

    A run without audio stages has none: its evaluation decodes at the evaluated data's rate."""
    rates = {t.rate for t in tasks if t.needs_audio}
    if cfg.data.sampling_rate is not None:
        return cfg.data.sampling_rate  # the audio is resampled to it
    if len(rates) > 1:
        raise ConfigError(f"data.sampling_rate: the stages' audio is published at {sorted(rates)} Hz; set one rate")
    return rates.pop() if rates else None


def _materialize(ds, task: Task, cfg: RunConfig, stage: StageConfig, kind: str):
    """Features of the `kind` the model's encoder takes (audio tasks, cached by datasets), then the
    rows the task keeps."""
    if task.needs_audio:
        ds = D.add_features(ds, cfg.data.sampling_rate, cfg.data.n_mels, task.mono, cfg.data.num_proc, kind)
    elif "audio" in ds.column_names:
        ds = ds.remove_columns(["audio"])
    plain = ds.remove_columns([c for c in ("features",) if c in ds.column_names])
    limit = None if cfg.data.max_seconds is None else cfg.data.max_seconds / D.FRAME_HOP_S
    keep = [i for i, row in enumerate(plain) if task.keep(row) and (limit is None or row.get("n_frames", 0) <= limit)]
    if not keep:
        raise ConfigError(f"stages.{stage.name}: no usable rows in dataset config {stage.config!r}")
    ds = ds.select(keep)
    if task.needs_audio:
        ds = ds.with_format("torch", columns=["features"], output_all_columns=True)
    return ds


def _plan(prepared: PreparedStage, cfg: RunConfig, index: int) -> StagePlan:
    stage, task, ds = prepared.cfg, prepared.task, prepared.train
    examples = task.examples(len(ds))
    if task.needs_audio:
        frames = ds.with_format(None)["n_frames"]
        lengths = [int(frames[row]) for row, _ in examples]
    else:
        rows = list(ds)
        lengths = [task.text_length(rows[row]) for row, _ in examples]
    batcher = D.BucketBatches(lengths, stage.max_frames or cfg.data.max_frames, cfg.data.max_batch,
                              cfg.data.bucket_window, cfg.train.seed + index)
    accum = stage.accum_steps or cfg.train.accum_steps
    if stage.steps is not None:
        steps = stage.steps
    elif stage.epochs is not None:
        steps = max(1, math.ceil(stage.epochs * len(batcher) / accum))
    else:
        raise ConfigError(f"stages.{stage.name}: give steps or epochs")
    warmup = cfg.train.warmup_steps if stage.warmup_steps is None else stage.warmup_steps
    if stage.warmup_ratio is not None:
        if stage.warmup_steps is not None:
            raise ConfigError(f"stages.{stage.name}: give warmup_steps or warmup_ratio, not both")
        warmup = max(1, round(stage.warmup_ratio * steps))

    def collate(ids: list[int], source=ds, examples=examples) -> Any:
        picked = [examples[i] for i in ids]
        return task.collate(D.rows_at(source, [r for r, _ in picked]), [v for _, v in picked])

    valid = None
    if prepared.valid is not None:
        v_examples = task.examples(len(prepared.valid))
        v_batches = [list(range(i, min(i + cfg.data.max_batch, len(v_examples))))
                     for i in range(0, len(v_examples), cfg.data.max_batch)]

        def valid() -> list[Any]:
            return [collate(b, prepared.valid, v_examples) for b in v_batches]

    return StagePlan(name=stage.name, steps=steps, lr=stage.lr or cfg.train.lr, warmup_steps=min(warmup, steps),
                     accum_steps=accum, trainable=stage.trainable, batches=batcher.epoch, collate=collate,
                     loss=task.loss, valid=valid)


def load_init(model: nn.Module, init: InitConfig, where: str) -> dict[str, int]:
    """Local pretrained weights into (part of) the model; returns counts of loaded/missing keys."""
    path = Path(init.path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("model", state) if isinstance(state, dict) else state
    state = {init.into + k[len(init.strip):]: v for k, v in state.items() if k.startswith(init.strip)}
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ConfigError(f"{where}.init: no tensor of {init.path} fits the model (check into/strip)")
    if init.strict and len(matched) != len(state):
        raise ConfigError(f"{where}.init: {len(state) - len(matched)} tensors of {init.path} do not fit the model")
    model.load_state_dict(matched, strict=False)
    return {"loaded": len(matched), "skipped": len(state) - len(matched)}


# -- the run ------------------------------------------------------------------------------------
def run(cfg: RunConfig, data: str, out: str | Path, only_stage: str | None = None, stop_after: int | None = None,
        echo: bool = True) -> dict[str, Any]:
    """Train every stage of `cfg` on the published dataset `data` into `out`; returns the summaries."""
    out = Path(out)
    family = family_of(cfg.family)
    model_cfg = build_model_config(family, cfg.model)
    check_paths(cfg, family, model_cfg)
    names = [s.name for s in cfg.stages]
    if not cfg.stages or len(set(names)) != len(names):
        raise ConfigError(f"stages: need at least one stage, with distinct names; got {names}")
    if only_stage is not None and only_stage not in names:
        raise ConfigError(f"--stage {only_stage}: the config's stages are {', '.join(names)}")
    tasks = make_tasks(family, cfg, model_cfg)

    cache_dir = cfg.data.cache_dir or str(out / "cache")
    opened = [(_open(data, s, t, cfg.data.train_split, cfg, cache_dir, cfg.data.ids),
               _open(data, s, t, cfg.data.valid_split, cfg, cache_dir) if cfg.data.valid_split else None)
              for s, t in zip(cfg.stages, tasks, strict=True)]

    cfg.data.sampling_rate = _sampling_rate(cfg, tasks)

    def texts():
        return itertools.chain.from_iterable(t.texts(train) for t, (train, _) in zip(tasks, opened, strict=True))

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(cfg.tokenizer, specials(family, model_cfg, tasks), texts, out / TOKENIZER_FILE)
    for t in tasks:
        t.tok = t.tok or tok
    family.finalize(model_cfg, tok)

    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = make_model(family, model_cfg).to(device)

    kind = D.input_kind(model)
    prepared = [PreparedStage(s, t, _materialize(tr, t, cfg, s, kind),
                              _materialize(va, t, cfg, s, kind) if va is not None else None)
                for s, t, (tr, va) in zip(cfg.stages, tasks, opened, strict=True)]
    audio = next((p.train for p in prepared if p.task.needs_audio), None)
    if audio is not None:
        model.feature_norm.set_stats(*(x.to(device) for x in D.feature_stats(audio)))

    (out / RUN_FILE).write_text(yaml.safe_dump({
        "family": cfg.family, "model": to_plain(model_cfg), "tokenizer": to_plain(cfg.tokenizer),
        "data": to_plain(cfg.data), "stages": [s.name for s in cfg.stages], **trained_prompt(tasks),
        "waitk": trained_waitk(tasks),
        "device": str(device)},
        sort_keys=False))
    log = JsonlLog(out / "log.jsonl", echo=echo)
    summaries = {}
    for index, p in enumerate(prepared):
        stage_dir = out / p.cfg.name
        if only_stage is not None and p.cfg.name != only_stage:
            if (stage_dir / FINAL).is_file():
                model.load_state_dict(torch.load(stage_dir / FINAL, map_location=device, weights_only=False))
            continue
        fresh = not (stage_dir / "checkpoint.pt").is_file() and not (stage_dir / "done.json").is_file()
        if fresh:
            seed_everything(cfg.train.seed + index)
            if p.cfg.init is not None:
                counts = load_init(model, p.cfg.init, f"stages.{p.cfg.name}")
                log.write({"stage": p.cfg.name, "event": "init", "path": p.cfg.init.path, **counts})
        summary = train_stage(model, _plan(p, cfg, index), cfg.train, stage_dir, log, device, stop_after)
        summaries[p.cfg.name] = summary
        if "stopped_at" in summary:
            return summaries
    last = out / cfg.stages[-1].name / FINAL
    if last.is_file():
        shutil.copyfile(last, out / FINAL)
    return summaries


def trained_prompt(tasks: list[Task]) -> dict[str, Any]:
    """The prompt template, and whether the chat template wrapped it, that the last prompted stage trained
    with: what evaluation feeds (both None for a family without prompts)."""
    last = next((t.opts for t in reversed(tasks) if isinstance(getattr(t.opts, "prompt", None), str)), None)
    return {"prompt": getattr(last, "prompt", None), "chat_template": getattr(last, "chat_template", None)}


def trained_waitk(tasks: list[Task]) -> dict[str, int | None] | None:
    """{language: k} of the last stage that trained wait-k (None: offline attention), what `evaluate`
    decodes with by default; None for a run without such a stage."""
    last = next((t for t in reversed(tasks) if isinstance(getattr(t, "waitk", None), dict)), None)
    return dict(last.waitk) if last is not None else None


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """A finished run's model (eval mode), tokenizer and resolved config, for evaluation."""
    run_dir = Path(run_dir)
    if not (run_dir / FINAL).is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run ({FINAL} is missing)")
    info = yaml.safe_load((run_dir / RUN_FILE).read_text())
    family = family_of(info["family"])
    model = make_model(family, build_model_config(family, info["model"]))
    model.load_state_dict(torch.load(run_dir / FINAL, map_location=device, weights_only=False))
    return model.to(device).eval(), load_tokenizer(run_dir / TOKENIZER_FILE), info
