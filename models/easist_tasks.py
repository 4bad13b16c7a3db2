"""The EASiST family's training examples (the family itself is easist.py): rows of the published
configs as `Layout`s, the interleaved sequences `Easist.forward` is trained on.

A `Layout` is a list of `Speech` (a run of encoder blocks, with a policy label at each block's last
position) and `Text` (token ids, which ones are predicted, policy labels) segments:
- task `simulmt` (stage I, `simulmt` config): interleaved SimulMT strings, every token predicted, and
  offline MT (prompt, source, <|end-of-read|>, target, <|end-of-write|>; the target predicted);
- task `st` (stage II, `offline`): prompt, all speech, <|end-of-read|>, translation, <|end-of-write|>;
- task `sft` (stage III, `simulst`): per latency level and language the interleaved SimulST sequence
  with policy labels, plus the offline ST sequence.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from simulforge.training.config import ConfigError
from simulforge.training.data import get
from simulforge.training.simulst import check_simulst_features, chunks, offline_reference
from simulforge.training.simulst import texts as simulst_texts
from simulforge.training.tasks import Task, batch_features
from simulforge.training.tokenizer import lang_tag, prompt_ids, target_chunks

END_OF_READ, END_OF_WRITE = "<|end-of-read|>", "<|end-of-write|>"


@dataclass
class Speech:
    """Encoder blocks [start, stop) of the utterance; policy[i] labels the last position of block start+i."""

    start: int
    stop: int
    policy: list[int]  # 0 read, 1 write, -100 unlabelled


@dataclass
class Text:
    ids: list[int]
    predict: list[bool]  # token i is a cross-entropy target (predicted from the position before it)
    policy: list[int]


@dataclass
class Layout:
    """One training sequence; `task` names its cross-entropy term (e.g. simulst, st, simulmt, mt)."""

    task: str
    segments: list[Speech | Text]
    utterance: int = -1  # row of the batch's features the Speech segments read (-1: text only)


@dataclass
class EasistOptions:
    languages: list[str] = field(default_factory=lambda: ["de"])
    prompt: str = "{tag}"  # formatted with tag (<2de>) and lang; not predicted
    chat_template: bool = False  # the prompt as a user turn of the LM tokenizer's chat template (Instruct LMs)
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
        # With the LM tokenizer's BOS (and chat format), as decoding feeds it (run.yaml records both).
        ids = prompt_ids(self.tok, self.opts.prompt, lang, self.opts.chat_template)
        return Text(ids, [False] * len(ids), [-100] * len(ids))

    def interleaved(self, text: str) -> list[int]:
        """A published read/write string "c1<|end-of-read|>t1<|end-of-write|> c2..." as ids, each target
        chunk encoded on its own with its separating space (tokenizer.target_chunks): the ids decoding
        writes, and their decoded stream is the joined target chunks."""
        parts = text.split(END_OF_WRITE)
        if parts[-1].strip() or any(END_OF_READ not in p for p in parts[:-1]):
            raise ConfigError(f"simulmt text is not in the read/write format "
                              f"(source{END_OF_READ}target{END_OF_WRITE} ...): {text[:80]!r}")
        pairs = [p.split(END_OF_READ, 1) for p in parts[:-1]]
        ids = []
        for (source, _), target in zip(pairs, target_chunks([t for _, t in pairs]), strict=True):
            ids += self.encode(source) + [self.special(END_OF_READ)]
            ids += self.encode(target) + [self.special(END_OF_WRITE)]
        return ids

    def write_segment(self, target: list[int], policy: bool):
        """<|end-of-read|> target <|end-of-write|>: the target and <|end-of-write|> are predicted;
        with `policy`, <|end-of-read|> and the target tokens are labelled write (1)."""
        ids = [self.special(END_OF_READ)] + target + [self.special(END_OF_WRITE)]
        predict = [False] + [True] * (len(target) + 1)
        labels = [1] * (len(target) + 1) + [-100] if policy else [-100] * len(ids)
        return Text(ids, predict, labels)

    def loss(self, model, batch):
        losses, metrics = model(batch["layouts"], batch.get("feats"), batch.get("lengths"))
        total = sum(self.opts.weights.get(name, 1.0) * value for name, value in losses.items())
        return total, metrics

    def blocks(self, n_frames: int) -> int:
        """Input blocks of an utterance of `n_frames` 10 ms frames, whatever the encoder's frame rate."""
        return max(1, math.ceil(n_frames / self.model_cfg.encoder.block_frames))

    def examples(self, n_rows):
        return [(i, lang) for i in range(n_rows) for lang in self.langs]


class EasistSimulMtTask(_EasistTask):
    """Stage I: interleaved SimulMT strings (every token predicted) and offline MT (target predicted)."""

    needs_audio = False

    def columns(self):
        return ["latency"] + [f"text.{lang}" for lang in self.langs] + [f"offline.{lang}" for lang in self.langs]

    def text_columns(self):
        return [f"text.{lang}" for lang in self.langs] + [f"offline.{lang}" for lang in self.langs]

    mt_level: str | None = None  # the level whose rows give the offline pair (None: any, before fit_to_data)

    def keep(self, row):
        return self.opts.levels is None or row["latency"] in self.opts.levels

    def fit_to_data(self, ds, source: str) -> None:
        """A simulmt row is one utterance at one latency level, and each carries the same offline pair: it is
        taken from one level's rows only (the first of `levels`, or the level most rows have), so stage I
        sees each MT pair once an epoch, not once per level."""
        super().fit_to_data(ds, source)
        if self.opts.levels:
            self.mt_level = self.opts.levels[0]
        else:
            counts = collections.Counter(ds["latency"])
            self.mt_level = min(counts, key=lambda level: (-counts[level], level)) if counts else None

    def text_length(self, row):
        return sum(len(v or "") for v in row["text"].values()) // 3 + 1

    def collate(self, rows, variants):
        layouts = []
        for row, lang in zip(rows, variants, strict=True):
            text = row["text"].get(lang)
            if text:
                ids = self.interleaved(text)
                layouts.append(Layout("simulmt", [self.prompt(lang), Text(ids, [True] * len(ids), [-100] * len(ids))]))
            offline = row["offline"].get(lang)
            if offline and self.mt_level in (None, row["latency"]) and END_OF_READ in offline:
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
        feats, lengths = batch_features(rows)
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
        check_simulst_features(features, self.opts.levels, self.langs, self.where)

    def texts(self, ds):
        for row in ds.remove_columns([c for c in ("audio",) if c in ds.column_names]):
            yield from simulst_texts(row, self.langs)
            reference = row.get(self.opts.translation)
            if isinstance(reference, dict):
                yield from (reference.get(lang) or "" for lang in self.langs)

    def collate(self, rows, variants):
        feats, lengths = batch_features(rows)
        layouts = []
        for i, (row, lang) in enumerate(zip(rows, variants, strict=True)):
            total = self.blocks(int(lengths[i]))
            levels = chunks(row, lang, self.opts.levels, self.model_cfg.encoder.block_frames, self.rate)
            for level in levels.values():
                pieces, read = [self.prompt(lang)], 0
                for chunk, target in zip(level, target_chunks([c.target for c in level]), strict=True):
                    stop, labels = min(chunk.stop_block, total), chunk.labels[: max(0, total - read)]
                    if stop > read:
                        labels[-1] = 1  # a chunk cut short by the features' end is still written after it
                        pieces.append(Speech(read, stop, labels))
                        read = stop
                    pieces.append(self.write_segment(self.encode(target), policy=True))
                layouts.append(Layout("simulst", pieces, utterance=i))
            reference = offline_reference(row, lang, self.opts.translation, levels)
            if reference:
                layouts.append(Layout("st", [self.prompt(lang), Speech(0, total, [-100] * total),
                                             self.write_segment(self.encode(reference), policy=False)], utterance=i))
        return {"layouts": layouts or [Layout("st", [self.prompt(variants[0])])], "feats": feats, "lengths": lengths}
