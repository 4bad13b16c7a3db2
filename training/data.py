"""The published dataset as training batches, through `datasets` only (docs/architecture.md §6).

- `open_split` loads one config/split (or a slice of one, `train[:100]`) with
  `datasets.load_dataset` and refuses, with the configs or splits that do exist, a config or
  split the dataset lacks; `check_columns` does the same for (dotted) columns, e.g. `translation.de`.
- `audio_rate` and `audio_channels` read what the published audio is (its feature's sampling
  rate, the first file's channel count), so a config can leave both to the data.
- `add_features` decodes the audio and computes 80-dim log-mel features with torch only
  (25 ms Hann window, 10 ms hop, HTK mel scale), all channels kept side by side as (T, C*80);
  `datasets` caches the result (keyed by the data's fingerprint and these parameters), so a
  second run, or the next stage, decodes nothing. A model whose encoder takes the waveform
  (`input_kind` "wave", models/hf_encoder.py) gets 10 ms frames of raw samples, (T, C*hop), instead:
  frames, `n_frames` and blocks then count the same 10 ms.
- `BucketBatches` makes length-bucketed batches, deterministic per (seed, epoch).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError

FRAME_HOP_S = 0.01
INPUT_KINDS = ("logmel", "wave")  # what an encoder takes: log-mel frames, or raw samples in 10 ms frames


def input_kind(model) -> str:
    """What `model`'s encoder declares it takes (`input_kind`); log-mel when it declares nothing."""
    return getattr(getattr(model, "encoder", None), "input_kind", "logmel")


# -- loading -------------------------------------------------------------------------------------
def open_split(data: str, config: str, split: str, cache_dir: str | None = None, limit: int | None = None,
               ids: list[str] | str | None = None):
    """`datasets.load_dataset(data, config, split=split)` with errors that say what exists; only the rows
    whose `id` is in `ids` (a list, or a file of one id a line) when given, then the first `limit`."""
    import datasets

    local = Path(data)
    if not local.exists() and (data.startswith((".", "/")) or data.count("/") != 1):
        raise ConfigError(f"dataset {data} does not exist (a published dataset folder or a hub id)")
    try:
        configs = datasets.get_dataset_config_names(data)
    except Exception as e:  # noqa: BLE001 - any failure to read the card is the same problem for the user
        raise ConfigError(f"cannot read the dataset card of {data}: {e}") from None
    if config not in configs:
        raise ConfigError(f"dataset {data} has no config {config!r}; it has: {', '.join(configs)}")
    builder = datasets.load_dataset_builder(data, config, cache_dir=cache_dir)
    splits = list((builder.config.data_files or {}).keys())
    name = split.split("[", 1)[0]  # `datasets` slicing: train[:100], train[-3:], train[10%:20%]
    if splits and name not in splits:
        raise ConfigError(f"dataset {data} config {config!r} has no split {name!r}; it has: {', '.join(splits)}")
    try:
        ds = datasets.load_dataset(data, config, split=split, cache_dir=cache_dir)
    except ValueError as e:
        if split == name:
            raise
        raise ConfigError(f"split {split!r}: {e}") from None
    if ids is not None:
        ds = _only(ds, ids, f"config {config!r} split {split!r}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _only(ds, ids: list[str] | str, where: str):
    """The rows of `ds` whose id is listed (rows keep their order; a config may lack some ids, e.g. the
    clips alignment rejected, but not all of them)."""
    if isinstance(ids, str):
        try:
            ids = Path(ids).read_text(encoding="utf-8").split()
        except OSError as e:
            raise ConfigError(f"data.ids: cannot read the id list {ids}: {e.strerror}") from None
    keep = set(ids)
    if not keep:
        raise ConfigError("data.ids: the id list is empty")
    ds = ds.filter(lambda i: i in keep, input_columns="id")
    if not len(ds):
        raise ConfigError(f"data.ids: {where} has none of the {len(keep)} listed ids")
    return ds


def has_column(features: Any, dotted: str) -> bool:
    node = features
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_columns(ds, columns: list[str], where: str) -> None:
    missing = [c for c in columns if not has_column(ds.features, c)]
    if missing:
        raise ConfigError(f"{where}: the dataset lacks column(s) {', '.join(missing)}; it has: "
                          f"{', '.join(ds.column_names)}")


def get(row: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        row = row[part] if row is not None else None
    return row


# -- features ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced on the HTK mel scale."""

    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(mel(20.0), mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)))
    return torch.from_numpy(fb.T.astype(np.float32))


def log_mel(wave: torch.Tensor, sample_rate: int, n_mels: int = 80) -> torch.Tensor:
    """(C, n) samples -> (C, T, n_mels) log-mel energies, T = 1 + (n - win) // hop (at least 1)."""
    win, hop, n_fft = round(0.025 * sample_rate), round(FRAME_HOP_S * sample_rate), 512
    while n_fft < win:
        n_fft *= 2
    wave = wave.float()
    if wave.shape[-1] < win:
        wave = torch.nn.functional.pad(wave, (0, win - wave.shape[-1]))
    frames = wave.unfold(-1, win, hop) * torch.hann_window(win, periodic=False)  # (C, T, win)
    power = torch.fft.rfft(frames, n=n_fft).abs().pow(2)  # (C, T, bins)
    return (power @ mel_filterbank(n_fft, n_mels, sample_rate)).clamp_min(1e-10).log()


def wave_frames(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(C, n) samples -> (C, T, hop) 10 ms frames of samples, T = ceil(n / hop), the last one zero-padded."""
    hop = round(FRAME_HOP_S * sample_rate)
    frames = max(1, -(-wave.shape[-1] // hop))
    wave = torch.nn.functional.pad(wave.float(), (0, frames * hop - wave.shape[-1]))
    return wave.reshape(wave.shape[0], frames, hop)


def audio_rate(ds) -> int:
    """The sampling rate `datasets` decodes the audio at: the published `Audio` feature's (else the first file's)."""
    rate = getattr(ds.features.get("audio"), "sampling_rate", None)
    return int(rate or ds[0]["audio"].metadata.sample_rate)


def audio_channels(ds) -> int:
    """The channel count of the first row's audio file (read from its header, nothing decoded)."""
    import datasets

    first = ds.select(range(1)).cast_column("audio", datasets.Audio(num_channels=None))[0]["audio"]
    return int(first.metadata.num_channels)


def _features_of(row: dict, sample_rate: int, n_mels: int, channels: int, kind: str = "logmel") -> dict:
    samples = row["audio"].get_all_samples()
    if samples.sample_rate != sample_rate:
        raise ValueError(f"{row.get('id')}: decoded at {samples.sample_rate} Hz, expected {sample_rate}")
    if samples.data.shape[0] != channels:  # one feature width per dataset: a row with other microphones is named
        raise ConfigError(f"{row.get('id')}: the audio has {samples.data.shape[0]} channel(s), the first row "
                          f"{channels}")
    feats = wave_frames(samples.data, sample_rate) if kind == "wave" else log_mel(samples.data, sample_rate, n_mels)
    return {"features": feats.transpose(0, 1).reshape(feats.shape[1], -1).numpy(), "n_frames": feats.shape[1]}


def add_features(ds, sample_rate: int, n_mels: int, mono: bool, num_proc: int | None = None, kind: str = "logmel"):
    """The dataset with `features` (T, C*n_mels) float32 and `n_frames`, without `audio`; cached by datasets.

    The audio is decoded at `sample_rate` (resampled by `datasets` when published at another rate).
    `kind` "wave" (an encoder that takes samples, `input_kind`): (T, C*hop) frames of samples."""
    import datasets

    if kind not in INPUT_KINDS:
        raise ConfigError(f"encoder input {kind!r}: expected one of {', '.join(INPUT_KINDS)}")
    channels = 1 if mono else audio_channels(ds)
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=sample_rate, num_channels=1 if mono else None))
    features = datasets.Features({k: v for k, v in ds.features.items() if k != "audio"})
    width = round(FRAME_HOP_S * sample_rate) if kind == "wave" else n_mels
    features["features"] = datasets.Array2D(shape=(None, channels * width), dtype="float32")
    features["n_frames"] = datasets.Value("int32")
    return ds.map(_features_of, fn_kwargs={"sample_rate": sample_rate, "n_mels": n_mels, "channels": channels,
                                           "kind": kind},
                  remove_columns=["audio"], features=features, num_proc=num_proc, desc=f"{kind} x{channels}")


def feature_stats(ds, max_rows: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over (up to) the first `max_rows` utterances' frames."""
    rows = ds.select(range(min(max_rows, len(ds)))).with_format("torch", columns=["features"])
    total, total_sq, count = 0.0, 0.0, 0
    for row in rows:
        x = row["features"].double()
        total, total_sq, count = total + x.sum(0), total_sq + (x * x).sum(0), count + x.shape[0]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-10).sqrt()
    return mean.float(), std.float()


# -- batching ------------------------------------------------------------------------------------
class BucketBatches:
    """Batches of similar lengths: shuffle (seeded by epoch), sort within windows, cut so that
    batch size x longest item <= max_frames (and <= max_batch items), shuffle the batches."""

    def __init__(self, lengths: list[int], max_frames: int, max_batch: int, window: int, seed: int,
                 shuffle: bool = True):
        if not lengths:
            raise ConfigError("no training examples (empty split, or all filtered out)")
        self.lengths, self.max_frames, self.max_batch = list(lengths), max_frames, max_batch
        self.window, self.seed, self.shuffle = window, seed, shuffle

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start:start + self.window].tolist(), key=lambda i: self.lengths[i])
            batch, longest = [], 0
            for i in window:
                longest_if = max(longest, self.lengths[i])
                if batch and (longest_if * (len(batch) + 1) > self.max_frames or len(batch) >= self.max_batch):
                    batches.append(batch)
                    batch, longest_if = [], self.lengths[i]
                batch.append(i)
                longest = longest_if
            if batch:
                batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        return len(self.epoch(0))


def rows_at(ds, indices: list[int]) -> list[dict]:
    """Rows of `ds` at `indices`, as a list of dicts."""
    cols = ds[indices]
    return [{k: cols[k][i] for k in cols} for i in range(len(indices))]


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """Token lists -> (B, max_len) long tensor."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(T_i, F)] -> (B, T_max, F) zero-padded, and (B,) lengths."""
    lengths = torch.tensor([f.shape[0] for f in feats])
    return torch.nn.utils.rnn.pad_sequence([torch.as_tensor(f) for f in feats], batch_first=True), lengths


def iter_texts(ds, columns: list[str]) -> Iterator[str]:
    if not columns:  # no columns of a filtered dataset would be rows of an empty table (datasets divides by 0)
        return
    for row in ds.select_columns(sorted({c.split(".")[0] for c in columns})):
        for c in columns:
            value = get(row, c)
            if isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))
            elif isinstance(value, str):
                yield value
