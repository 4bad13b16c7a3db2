"""One plain training loop: AdamW (on fp32 master copies of bf16/fp16 weights), linear warmup then
cosine decay, gradient accumulation and clipping, autocast on GPU, checkpoints that resume exactly,
JSONL + stdout logs, a progress bar.

Exact resume: the checkpoint holds the model, the optimizer, the grad scaler, the step, the
position in the batch order (epoch, batch index; the order is a pure function of the seed
and the epoch) and every RNG state, and collation draws no randomness of its own; so a run
stopped and resumed logs the same losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ConfigError, TrainConfig

CHECKPOINT, FINAL, DONE = "checkpoint.pt", "model.pt", "done.json"


@dataclass
class StagePlan:
    """What the loop needs to run one stage."""

    name: str
    steps: int
    lr: float
    warmup_steps: int
    accum_steps: int
    trainable: list[str] | None
    batches: Callable[[int], list[list[int]]]  # epoch -> batches of row indices
    collate: Callable[[list[int]], Any]
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
    valid: Callable[[], list[Any]] | None = None  # ready batches of the validation split


class JsonlLog:
    """Appends one JSON object per line; echoes a short line to stdout."""

    def __init__(self, path: Path, echo: bool = True):
        self.path, self.echo = path, echo
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any], bar=None) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.echo:
            text = " ".join(f"{k}={_fmt(v)}" for k, v in record.items())
            (bar.write if bar is not None else print)(text)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no GPU is available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = full precision. Autocast is used on GPU only."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lr_at(step: int, plan: StagePlan, min_ratio: float) -> float:
    """Linear warmup to plan.lr, then cosine decay to plan.lr * min_ratio at plan.steps."""
    if step < plan.warmup_steps:
        return plan.lr * (step + 1) / plan.warmup_steps
    progress = (step - plan.warmup_steps) / max(1, plan.steps - plan.warmup_steps)
    return plan.lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def select_trainable(model: nn.Module, patterns: list[str] | None) -> list[nn.Parameter]:
    """Freeze every parameter whose name matches no pattern; returns the trainable ones."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(patterns is None or any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
        if p.requires_grad:
            params.append(p)
    if not params:
        raise ConfigError(f"trainable {patterns} matches no parameter of the model")
    return params


class MasterWeights:
    """fp32 master copies of the trainable bf16/fp16 parameters, which the optimizer steps.

    AdamW's update (~lr per step) is far below a bf16 weight's spacing (2**-8 of its size): at lr 1e-5
    most weights, and every norm weight (1.0, spacing 2**-7), would round back to themselves at every
    step and never train. The model keeps its own dtype (a frozen 8B LM stays bf16 in every stage;
    only the trainable tensors get a copy), each update accumulates in fp32 and is rounded into the
    model after the step. fp32 parameters are their own master (no copy)."""

    def __init__(self, params: list[nn.Parameter]):
        self.model = params
        self.master = [p if p.dtype == torch.float32 else p.detach().float().requires_grad_() for p in params]

    def grads_to_master(self) -> None:
        for p, m in zip(self.model, self.master, strict=True):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None

    def master_to_model(self) -> None:
        with torch.no_grad():
            for p, m in zip(self.model, self.master, strict=True):
                if m is not p:
                    p.copy_(m)

    def state_dict(self) -> list[torch.Tensor | None]:
        return [None if m is p else m.detach().clone() for p, m in zip(self.model, self.master, strict=True)]

    def load_state_dict(self, state: list[torch.Tensor | None] | None) -> None:
        """The saved copies; None (a checkpoint from before master weights): the model's loaded weights."""
        with torch.no_grad():
            for p, m, saved in zip(self.model, self.master, state or [None] * len(self.master), strict=True):
                if m is not p:
                    m.copy_(p if saved is None else saved)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class _Batches:
    """Endless micro-batches from a (epoch, index) position; collation happens here, in order."""

    def __init__(self, plan: StagePlan, epoch: int, index: int):
        self.plan, self.epoch, self.index = plan, epoch, index
        self.order = plan.batches(epoch)

    def next(self) -> Any:
        while self.index >= len(self.order):
            self.epoch, self.index = self.epoch + 1, 0
            self.order = self.plan.batches(self.epoch)
        batch = self.plan.collate(self.order[self.index])
        self.index += 1
        return batch


def train_stage(model: nn.Module, plan: StagePlan, cfg: TrainConfig, stage_dir: Path, log: JsonlLog,
                device: torch.device, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) one stage in `stage_dir`; returns its summary. `stop_after` ends early after
    that many optimizer steps in total (an interruption, for tests), leaving a checkpoint."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    if (stage_dir / DONE).is_file():
        model.load_state_dict(torch.load(stage_dir / FINAL, map_location=device, weights_only=False), strict=True)
        return json.loads((stage_dir / DONE).read_text())
    params = select_trainable(model, plan.trainable)
    master = MasterWeights(params)
    opt = make_optimizer(master.master, cfg)
    amp = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    step, epoch, index, first_loss = 0, 0, 0, None
    ckpt = stage_dir / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        master.load_state_dict(state.get("master"))
        scaler.load_state_dict(state["scaler"])
        step, epoch, index, first_loss = state["step"], state["epoch"], state["index"], state["first_loss"]
        _set_rng_state(state["rng"])
        log.write({"stage": plan.name, "event": "resumed", "step": step})
    batches = _Batches(plan, epoch, index)
    n_trainable = sum(p.numel() for p in params)
    if step == 0:
        log.write({"stage": plan.name, "event": "start", "steps": plan.steps, "trainable_params": n_trainable})
    bar = _progress(cfg, plan, step)
    started = time.time()
    model.train()
    while step < plan.steps:
        lr = lr_at(step, plan, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        total, metrics = 0.0, {}
        for _ in range(plan.accum_steps):
            batch = _to_device(batches.next(), device)
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                loss, m = plan.loss(model, batch)
            scaler.scale(loss / plan.accum_steps).backward()
            total += loss.item() / plan.accum_steps
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v / plan.accum_steps
        master.grads_to_master()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(master.master, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        master.master_to_model()
        step += 1
        first_loss = total if first_loss is None else first_loss
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}")
        if step % cfg.log_every == 0 or step == plan.steps or step == 1:
            log.write({"stage": plan.name, "step": step, "loss": total, "lr": lr, "grad_norm": float(grad_norm),
                       **metrics, "epoch": batches.epoch, "elapsed_s": round(time.time() - started, 2)}, bar)
        if plan.valid is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < plan.steps:
            log.write({"stage": plan.name, "step": step, **evaluate(model, plan, device, amp)}, bar)
            model.train()
        if step % cfg.ckpt_every == 0 or step == plan.steps or step == stop_after:
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                         "master": master.state_dict(), "step": step, "epoch": batches.epoch, "index": batches.index,
                         "first_loss": first_loss, "rng": _rng_state()}, ckpt)
        if stop_after is not None and step >= stop_after and step < plan.steps:
            if bar is not None:
                bar.close()
            return {"stage": plan.name, "stopped_at": step}
    if bar is not None:
        bar.close()
    summary = {"stage": plan.name, "steps": step, "first_loss": first_loss, "final_loss": total}
    if plan.valid is not None:
        summary.update(evaluate(model, plan, device, amp))
    save_atomic(model.state_dict(), stage_dir / FINAL)
    (stage_dir / DONE).write_text(json.dumps(summary))
    log.write({**summary, "event": "done"})
    return summary


@torch.no_grad()
def evaluate(model: nn.Module, plan: StagePlan, device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    """Mean loss over the validation batches."""
    model.eval()
    losses = []
    for batch in plan.valid():
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            loss, _ = plan.loss(model, _to_device(batch, device))
        losses.append(loss.item())
    return {"valid_loss": float(np.mean(losses)) if losses else float("nan")}


def _progress(cfg: TrainConfig, plan: StagePlan, step: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=plan.steps, initial=step, desc=plan.name, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=None)  # None: only on a terminal
