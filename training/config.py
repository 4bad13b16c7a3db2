"""The training YAML: read, merged with `--set` overrides, checked against dataclasses.

Every default lives in configs/models/*.yaml; the dataclasses here only describe the shape, so
an unknown key or a wrong type is refused with its dotted name before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import settings

# A configuration, dataset or tokenizer that cannot be trained on; raised before training starts.
ConfigError = settings.ConfigError


@dataclass
class DataConfig:
    sampling_rate: int | None = None  # None: the published audio's rate; a number: resample to it
    n_mels: int = 80
    train_split: str = "train"
    valid_split: str | None = None
    limit: int | None = None  # use only the first N rows of each split (quick runs)
    ids: list[str] | str | None = None  # train only on these utterances (a list, or a file of one id a line),
    # in every config the stages read; applied before `limit`
    max_frames: int = 20000  # length bucketing: padded feature frames (or text tokens x 4) per batch
    max_batch: int = 32
    bucket_window: int = 1000  # sort by length within windows of this many shuffled rows
    max_seconds: float | None = None  # drop longer utterances
    cache_dir: str | None = None  # datasets cache (decoded features land here); None: <out>/cache
    num_proc: int | None = None  # processes computing features


@dataclass
class TokenizerConfig:
    kind: str = "sentencepiece"  # sentencepiece | hf
    path: str | None = None  # a given tokenizer (.model file, or an HF tokenizer folder); None: train one
    vocab_size: int = 1000
    model_type: str = "unigram"  # sentencepiece: unigram | bpe
    add_missing: bool = False  # hf: add the special tokens the model needs (an LLM's vocabulary grows)
    max_sentences: int = 200000


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto (cuda when torch sees a GPU, else cpu) | cpu | cuda; run.yaml records the one used
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grad_clip: float = 1.0
    accum_steps: int = 1
    log_every: int = 10
    ckpt_every: int = 500
    eval_every: int = 0  # 0: only at the end of a stage (when a valid split is set)
    progress: bool = True


@dataclass
class InitConfig:
    path: str  # a local state dict (.pt/.safetensors) or a run's model.pt
    into: str = ""  # module prefix to load into, e.g. "st.encoder."
    strip: str = ""  # prefix to remove from the file's keys first
    strict: bool = False


@dataclass
class StageConfig:
    name: str
    task: str
    config: str  # the dataset config it reads (offline, simulst, simulmt, conversations)
    steps: int | None = None
    epochs: float | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    warmup_ratio: float | None = None  # or warm-up as a fraction of the stage's steps (papers give ratios)
    accum_steps: int | None = None
    max_frames: int | None = None
    trainable: list[str] | None = None  # parameter-name globs; None: everything
    init: InitConfig | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the task's own options (checked by the task)


@dataclass
class RunConfig:
    family: str
    model: dict[str, Any]
    stages: list[StageConfig]
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from plain YAML data, refusing unknown keys and wrong types.

    Model configs are validated later, once the tokenizer has set their sizes."""
    return settings.build(cls, data, where, validate=False)


def load(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, dict]:
    """The run config of a YAML file with overrides applied -> (RunConfig, the plain data)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        data = settings.override(data, item)
    return build(RunConfig, data, ""), data


def to_plain(obj: Any) -> Any:
    """Dataclasses -> plain YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
