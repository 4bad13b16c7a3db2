"""Tasks: what one training stage reads from the dataset, how rows become a batch, and its loss.

A task names its dataset config and the columns it needs (checked before training), the text
it contributes to tokenizer training, the special tokens it needs, and turns rows into
batches. Options come from the stage's `options:` in the YAML and are checked here.

| family | task | config | loss |
|---|---|---|---|
| waitk, samu | st | offline | joint wait-k cross-entropy over the target languages |
| samu | distill | offline | 1 - cos(speech embedding, `embedding`) |
| jstar | mt | offline / simulmt | text-to-text transducer (slow encoder + ST head) |
| jstar | joint | conversations / offline | lam * ASR RNN-T + (1 - lam) * ST RNN-T on SOT targets |
| easist | simulmt | simulmt | CE on interleaved SimulMT + CE on offline MT targets |
| easist | st | offline | offline ST CE (speech, <|end-of-read|>, translation, <|end-of-write|>) |
| easist | sft | simulst | SimulST CE + offline ST CE + lam * policy CE |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ConfigError, build
from .data import get, iter_texts, pad, pad_features
from .tokenizer import lang_tag

END_OF_READ, END_OF_WRITE = "<|end-of-read|>", "<|end-of-write|>"


class Task:
    """Base: subclasses set `options_cls` and implement the hooks they need."""

    options_cls: type = object
    needs_audio = True

    def __init__(self, options: dict[str, Any], model_cfg: Any, where: str):
        self.opts = build(self.options_cls, options, where)
        self.model_cfg, self.where = model_cfg, where
        self.tok = None  # set once the tokenizer exists
        self.mono = True
        self.rate = None  # the published audio's sampling rate (fit_to_data)

    def columns(self) -> list[str]:
        return []

    def text_columns(self) -> list[str]:
        return []

    def texts(self, ds):
        """Text for tokenizer training."""
        return iter_texts(ds, self.text_columns())

    def check_features(self, features) -> None:
        """Checks beyond column presence (widths, nested fields); raise ConfigError."""

    def fit_to_data(self, ds, source: str) -> None:
        """What the model takes from the dataset (`source` names it in errors): here the audio's rate."""
        if self.needs_audio:
            from .data import audio_rate

            self.rate = audio_rate(ds)

    def specials(self) -> list[str]:
        return []

    def keep(self, row: dict) -> bool:
        return True

    def examples(self, n_rows: int) -> list[tuple[int, Any]]:
        """(row index, variant) pairs the batches index into; one per row by default."""
        return [(i, None) for i in range(n_rows)]

    def text_length(self, row: dict) -> int:
        return 1

    def collate(self, rows: list[dict], variants: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    # helpers
    def encode(self, text: str | None) -> list[int]:
        return [] if not text else self.tok.encode(text)

    def special(self, token: str) -> int:
        i = self.tok.piece_id(token)
        assert i is not None, f"{token} is checked before training"
        return i


def _feats(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_features([r["features"] for r in rows])


def _languages(opts_langs: list[str] | None, model_langs: list[str], where: str) -> list[str]:
    langs = list(opts_langs or model_langs)
    unknown = [lang for lang in langs if lang not in model_langs]
    if unknown:
        raise ConfigError(f"{where}.languages: {', '.join(unknown)} not among the model's languages {model_langs}")
    return langs


# -- wait-k ST (families a, b, c; SAMU stage 2) -------------------------------------------------
@dataclass
class StOptions:
    languages: list[str] | None = None  # None: every language of the model
    waitk: int | dict[str, int | None] | None = None  # None: offline; one k for all (synchronous) or per language
    column: str = "translation"  # {lang: text}


class WaitkStTask(Task):
    options_cls = StOptions

    def __init__(self, options, model_cfg, where):
        super().__init__(options, model_cfg, where)
        self.st_cfg = getattr(model_cfg, "st", model_cfg)  # SAMU wraps a wait-k model
        self.langs = _languages(self.opts.languages, self.st_cfg.languages, where)
        k = self.opts.waitk
        self.waitk = {lang: (k.get(lang) if isinstance(k, dict) else k) for lang in self.langs}
        if isinstance(k, dict) and set(k) - set(self.langs):
            raise ConfigError(f"{where}.waitk names languages not trained here: {sorted(set(k) - set(self.langs))}")
        bad = {lang: v for lang, v in self.waitk.items() if v is not None and v < 1}
        if bad:
            raise ConfigError(f"{where}.waitk: k must be >= 1 (blocks), got {bad}")

    def columns(self):
        return ["audio"] + [f"{self.opts.column}.{lang}" for lang in self.langs]

    text_columns = columns

    def specials(self):
        return [lang_tag(lang) for lang in self.langs] if self.st_cfg.decoder_mode == "unified" else []

    def keep(self, row):
        return any(get(row, f"{self.opts.column}.{lang}") for lang in self.langs)

    def collate(self, rows, variants):
        feats, lengths = _feats(rows)
        targets = {lang: pad([self.encode(get(r, f"{self.opts.column}.{lang}")) for r in rows], self.tok.pad_id)
                   for lang in self.langs}
        return {"feats": feats, "lengths": lengths, "targets": targets}

    def loss(self, model, batch):
        return model(batch["feats"], batch["lengths"], batch["targets"], self.waitk)


# -- SAMU stage 1 ---------------------------------------------------------------------------------
@dataclass
class DistillOptions:
    column: str = "embedding"


class DistillTask(Task):
    options_cls = DistillOptions

    def columns(self):
        return ["audio", self.opts.column]

    def keep(self, row):
        return row.get(self.opts.column) is not None

    def check_features(self, features) -> None:
        width = getattr(features[self.opts.column], "length", None)
        if width not in (None, -1) and width != self.model_cfg.embedding_dim:
            raise ConfigError(f"{self.where}: column {self.opts.column} holds {width}-dim vectors but "
                              f"model.embedding_dim is {self.model_cfg.embedding_dim}")

    def collate(self, rows, variants):
        feats, lengths = _feats(rows)
        target = torch.tensor([r[self.opts.column] for r in rows], dtype=torch.float32)
        return {"feats": feats, "lengths": lengths, "target": target}

    def loss(self, model, batch):
        return model.distill_loss(batch["feats"], batch["lengths"], batch["target"])


# -- JSTAR ---------------------------------------------------------------------------------------
@dataclass
class JointOptions:
    language: str = "de"
    transcript: str = "sot_text"  # SOT transcript column (offline config: source_text)
    translation: str = "sot_translation"  # {lang: SOT translation} (offline config: translation)
    speaker_tokens: list[str] = field(default_factory=lambda: ["<SELF>", "<OTHER>"])
    prefix: str = ""  # prepended to both targets, e.g. "<SELF> " for single-talker offline rows


class JointTask(Task):
    options_cls = JointOptions

    def __init__(self, options, model_cfg, where):
        super().__init__(options, model_cfg, where)
        self.mono = model_cfg.channels == 1
        self.channels_from = None  # the data model.channels was taken from, when the config left it null

    def columns(self):
        return ["audio", self.opts.transcript, f"{self.opts.translation}.{self.opts.language}"]

    def fit_to_data(self, ds, source: str) -> None:
        """model.channels left null takes the audio's channel count; a count given must be the audio's."""
        from .data import audio_channels

        super().fit_to_data(ds, source)
        found = audio_channels(ds)
        if self.model_cfg.channels is None:
            self.model_cfg.channels, self.channels_from = found, f"taken from the {source}"
        elif self.model_cfg.channels != found:
            given = self.channels_from or "leave it null to take the dataset's"
            raise ConfigError(f"{self.where}: the audio of {source} has {found} channel(s) but model.channels is "
                              f"{self.model_cfg.channels} ({given})")
        self.mono = found == 1

    def text_columns(self):
        return self.columns()[1:]

    def specials(self):
        return list(self.opts.speaker_tokens)

    def keep(self, row):
        return bool(get(row, self.opts.transcript)) and bool(get(row, f"{self.opts.translation}.{self.opts.language}"))

    def collate(self, rows, variants):
        feats, lengths = _feats(rows)
        asr = [self.encode(self.opts.prefix + get(r, self.opts.transcript)) for r in rows]
        st = [self.encode(self.opts.prefix + get(r, f"{self.opts.translation}.{self.opts.language}")) for r in rows]
        return {"feats": feats, "lengths": lengths, "asr": pad(asr, 0), "asr_lengths": torch.tensor([len(a) for a in asr]),
                "st": pad(st, 0), "st_lengths": torch.tensor([len(s) for s in st])}

    def loss(self, model, batch):
        return model(batch["feats"], batch["lengths"], batch["asr"], batch["asr_lengths"], batch["st"],
                     batch["st_lengths"])


@dataclass
class MtOptions:
    language: str = "de"
    source: str = "source_text"  # simulmt config: source_chunks (joined)
    target: str = "translation"  # {lang: text}; simulmt config: target_chunks (joined)
    prefix: str = ""


class TransducerMtTask(Task):
    options_cls = MtOptions
    needs_audio = False

    def columns(self):
        return [self.opts.source, f"{self.opts.target}.{self.opts.language}"]

    text_columns = columns

    def _text(self, row, column) -> str | None:
        value = get(row, column)
        return " ".join(value) if isinstance(value, list) else value

    def keep(self, row):
        return bool(self._text(row, self.opts.source)) and bool(self._text(row, f"{self.opts.target}.{self.opts.language}"))

    def text_length(self, row):
        return len(self._text(row, self.opts.source) or "") // 3 + 1

    def collate(self, rows, variants):
        src = [self.encode(self.opts.prefix + self._text(r, self.opts.source)) for r in rows]
        tgt = [self.encode(self.opts.prefix + self._text(r, f"{self.opts.target}.{self.opts.language}")) for r in rows]
        return {"src": pad(src, 0), "src_lengths": torch.tensor([len(s) for s in src]),
                "tgt": pad(tgt, 0), "tgt_lengths": torch.tensor([len(t) for t in tgt])}

    def loss(self, model, batch):
        return model.mt_loss(batch["src"], batch["src_lengths"], batch["tgt"], batch["tgt_lengths"])


# -- EASiST --------------------------------------------------------------------------------------
@dataclass
class EasistOptions:
    languages: list[str] = field(default_factory=lambda: ["de"])
    prompt: str = "{tag}"  # formatted with tag (<2de>) and lang; not predicted
    weights: dict[str, float] = field(default_factory=dict)  # per loss term (ce/<task>, policy); default 1
    levels: list[str] | None = None  # simulmt / sft: latency levels to use (None: all)
    translation: str = "translation"  # offline ST reference column {lang: text}


class _EasistTask(Task):
    options_cls = EasistOptions

    def __init__(self, options, model_cfg, where):
        super().__init__(options, model_cfg, where)
        self.langs = list(self.opts.languages)

    def specials(self):
        return [END_OF_READ, END_OF_WRITE] + [lang_tag(lang) for lang in self.langs]

    def prompt(self, lang: str):
        from simulforge.models.easist import Text

        ids = self.encode(self.opts.prompt.format(tag=lang_tag(lang), lang=lang))
        return Text(ids, [False] * len(ids), [-100] * len(ids))

    def write_segment(self, target: list[int], policy: bool):
        """<|end-of-read|> target <|end-of-write|>: the target and <|end-of-write|> are predicted;
        with `policy`, <|end-of-read|> and the target tokens are labelled write (1)."""
        from simulforge.models.easist import Text

        ids = [self.special(END_OF_READ)] + target + [self.special(END_OF_WRITE)]
        predict = [False] + [True] * (len(target) + 1)
        labels = [1] * (len(target) + 1) + [-100] if policy else [-100] * len(ids)
        return Text(ids, predict, labels)

    def loss(self, model, batch):
        losses, metrics = model(batch["layouts"], batch.get("feats"), batch.get("lengths"))
        total = sum(self.opts.weights.get(name, 1.0) * value for name, value in losses.items())
        return total, metrics

    def blocks(self, n_frames: int) -> int:
        enc = math.ceil(n_frames / 4)
        return max(1, math.ceil(enc / self.model_cfg.encoder.block_len))

    def examples(self, n_rows):
        return [(i, lang) for i in range(n_rows) for lang in self.langs]


class EasistSimulMtTask(_EasistTask):
    """Stage I: interleaved SimulMT strings (every token predicted) and offline MT (target predicted)."""

    needs_audio = False

    def columns(self):
        return ["latency"] + [f"text.{lang}" for lang in self.langs] + [f"offline.{lang}" for lang in self.langs]

    def text_columns(self):
        return [f"text.{lang}" for lang in self.langs] + [f"offline.{lang}" for lang in self.langs]

    def keep(self, row):
        return self.opts.levels is None or row["latency"] in self.opts.levels

    def text_length(self, row):
        return sum(len(v or "") for v in row["text"].values()) // 3 + 1

    def collate(self, rows, variants):
        from simulforge.models.easist import Layout, Text

        layouts = []
        first_level = (self.opts.levels or [None])[0]
        for row, lang in zip(rows, variants, strict=True):
            text = row["text"].get(lang)
            if text:
                ids = self.encode(text)
                layouts.append(Layout("simulmt", [self.prompt(lang), Text(ids, [True] * len(ids), [-100] * len(ids))]))
            offline = row["offline"].get(lang)
            if offline and (first_level is None or row["latency"] == first_level) and END_OF_READ in offline:
                source, target = offline.split(END_OF_READ, 1)
                src = self.encode(source)
                tgt = self.encode(target.replace(END_OF_WRITE, ""))
                layouts.append(Layout("mt", [self.prompt(lang), Text(src, [False] * len(src), [-100] * len(src)),
                                             self.write_segment(tgt, policy=False)]))
        if not layouts:  # a batch of rows without text in these languages: keep the step well-defined
            layouts.append(Layout("simulmt", [self.prompt(variants[0])]))
        return {"layouts": layouts}


class EasistOfflineStTask(_EasistTask):
    """Stage II: prompt, all speech, <|end-of-read|>, the reference translation, <|end-of-write|>."""

    def columns(self):
        return ["audio"] + [f"{self.opts.translation}.{lang}" for lang in self.langs]

    text_columns = columns

    def keep(self, row):
        return any(get(row, f"{self.opts.translation}.{lang}") for lang in self.langs)

    def collate(self, rows, variants):
        from simulforge.models.easist import Layout, Speech

        feats, lengths = _feats(rows)
        layouts = []
        for i, (row, lang) in enumerate(zip(rows, variants, strict=True)):
            text = get(row, f"{self.opts.translation}.{lang}")
            if not text:
                continue
            n = self.blocks(int(lengths[i]))
            layouts.append(Layout("st", [self.prompt(lang), Speech(0, n, [-100] * n),
                                         self.write_segment(self.encode(text), policy=False)], utterance=i))
        return {"layouts": layouts or [Layout("st", [self.prompt(variants[0])])], "feats": feats, "lengths": lengths}


class EasistSftTask(_EasistTask):
    """Stage III: per (utterance, level, language) the interleaved SimulST sequence with policy labels,
    plus (once per utterance and language) the offline ST sequence."""

    def columns(self):
        return ["audio"]

    def check_features(self, features):
        from .simulst import check_simulst_features

        check_simulst_features(features, self.opts.levels, self.langs, self.where)

    def texts(self, ds):
        from .simulst import texts

        for row in ds.remove_columns([c for c in ("audio",) if c in ds.column_names]):
            yield from texts(row, self.langs)
            reference = row.get(self.opts.translation)
            if isinstance(reference, dict):
                yield from (reference.get(lang) or "" for lang in self.langs)

    def collate(self, rows, variants):
        from simulforge.models.easist import Layout, Speech

        from .simulst import chunks, offline_reference

        feats, lengths = _feats(rows)
        layouts = []
        for i, (row, lang) in enumerate(zip(rows, variants, strict=True)):
            total = self.blocks(int(lengths[i]))
            levels = chunks(row, lang, self.opts.levels, self.model_cfg.encoder.block_frames, self.rate)
            for level in levels.values():
                pieces, read = [self.prompt(lang)], 0
                for chunk in level:
                    stop, labels = min(chunk.stop_block, total), chunk.labels[: max(0, total - read)]
                    if stop > read:
                        labels[-1] = 1  # a chunk cut short by the features' end is still written after it
                        pieces.append(Speech(read, stop, labels))
                        read = stop
                    pieces.append(self.write_segment(self.encode(chunk.target), policy=True))
                layouts.append(Layout("simulst", pieces, utterance=i))
            reference = offline_reference(row, lang, self.opts.translation, levels)
            if reference:
                layouts.append(Layout("st", [self.prompt(lang), Speech(0, total, [-100] * total),
                                             self.write_segment(self.encode(reference), policy=False)], utterance=i))
        return {"layouts": layouts or [Layout("st", [self.prompt(variants[0])])], "feats": feats, "lengths": lengths}


TASKS: dict[str, dict[str, type[Task]]] = {
    "waitk": {"st": WaitkStTask},
    "samu": {"distill": DistillTask, "st": WaitkStTask},
    "jstar": {"mt": TransducerMtTask, "joint": JointTask},
    "easist": {"simulmt": EasistSimulMtTask, "st": EasistOfflineStTask, "sft": EasistSftTask},
}
