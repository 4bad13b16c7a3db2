"""The steps of the curate graph: each stage, the step it reads from, and what a run reports of it.

read → join → audio → embed → segment → align → simulate

A dataset config (dataset_configs/) publishes the records of its `SOURCE` step; a run builds
the steps its configs need, and a step that does not run (embed when it is off) hands its
parent's records to its children. `STEPS` lists them in the order stats.json and the card
report their sections and the fixes they made; `plan` puts each after the step it reads from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..settings import ConfigError
from ..transforms import align, embed, files, segment
from ..transforms.align import Align
from ..transforms.audio import attach_audio
from ..transforms.embed import Embed, teacher_info
from ..transforms.multiway import MultiwayJoin
from ..transforms.readers import STAGE as READ
from ..transforms.readers import read_task
from ..transforms.segment import Segment
from ..transforms.simulate import PAIRING_STAGE, Simulate
from ..transforms.simulate import STAGE as RENDER
from ..transforms.stage import run_stage
from .config import CurateSettings
from .summaries import (
    align_card_section,
    align_summary,
    segment_card_section,
    segment_summary,
    simulate_card_section,
    simulate_summary,
)


def _always(settings: CurateSettings) -> bool:
    return True


@dataclass(frozen=True)
class Step:
    name: str  # the stage's name, and its section of the run config where it has one
    parent: str | None  # the step whose records it takes (None: the planned read tasks)
    build: Callable[[Any, CurateSettings], tuple]  # (records, settings) -> (out, rejects, stats)
    stages: tuple[str, ...] = ()  # its names in stats.json when it counts as several (each takes what
    # the one before produced); () is (name,)
    runs: Callable[[CurateSettings], bool] = _always  # when not, its children read its parent's records
    systemic: frozenset[str] = frozenset()  # reject reasons meaning the stage failed: above its
    # max_reject_fraction of the input, the run fails
    fixes: tuple[str, ...] = ()  # its stats that count records mended rather than rejected
    section: str | None = None  # the key of its stats.json section, if it has one, made by `summary`
    summary: Callable[[CurateSettings, dict[str, float] | None], Any] | None = None  # from the settings
    # and its summed stats (None when it summed none); None: no section this run
    card: Callable[[Any], str] | None = None  # markdown from the summary, under the card's data quality
    info: Callable[[CurateSettings], dict[str, str]] | None = None  # the card's "how it was built" lines

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.stages or (self.name,)


# -- Building each step from the run's settings --------------------------------------------------


def _read(tasks, s: CurateSettings):
    corpus, work_dir = s.corpus, s.work_dir

    def read(task):
        return read_task(task, corpus[task.corpus], work_dir)

    return run_stage(tasks, READ, read)


def _audio(utts, s: CurateSettings):
    rate, clips_dir, settings = s.sampling_rate, files.join(s.work_dir, "clips"), s.audio

    def audio(utt):
        return attach_audio(utt, rate, clips_dir, settings)

    return run_stage(utts, "audio", audio)


def _simulate(utts, s: CurateSettings):
    sot = s.simulate.sot
    if sot.mode == "word" and sot.latency_level not in s.segment.levels:
        raise ConfigError(f"simulate.sot.latency_level: {sot.latency_level!r} is not one of segment.levels "
                          f"{s.segment.levels}")
    return utts | "Simulate" >> Simulate(s.simulate, files.join(s.work_dir, "conversations"))


# -- What the run reports of them ----------------------------------------------------------------


def _of_sums(summarize: Callable[[dict[str, float]], Any]):
    return lambda settings, sums: None if sums is None else summarize(sums)


def _segmenter(s: CurateSettings) -> dict[str, str]:
    seg = s.segment
    backend = seg.backend if seg.backend == "align" else f"llm {seg.llm.model} (prompt {seg.llm.prompt})"
    return {"segmenter": f"{backend}; levels {', '.join(seg.levels)}"}


def _aligner(s: CurateSettings) -> dict[str, str]:
    block = s.align.block_samples
    return {"aligner": f"{s.align.backend}; encoder block {block} samples ({1000 * block / s.sampling_rate:.0f} ms)"}


def _teacher(s: CurateSettings) -> dict[str, str]:
    t = teacher_info(s.embed)
    return {"embedding teacher": f"{t['name']}, {t['dim']}-dim, prefix {t['prefix']!r}"}


def _simulation(s: CurateSettings) -> dict[str, str]:
    sim = s.simulate
    sot = f"SOT in {sim.sot.mode} order" + (f" (translations at level {sim.sot.latency_level})"
                                               if sim.sot.mode == "word" else "")
    return {"simulation": f"{sim.array.preset} array, RT60 {sim.room.rt60_s} s, SNR {sim.mix.snr_db} dB, "
                          f"target overlap {sim.turn_taking.target_overlap_ratio}, seed {sim.seed}; {sot}; "
                          f"aligned utterances only"}


STEPS = (
    Step("read", None, _read, fixes=("fixed_text",)),
    Step("join", "read", lambda parts, s: parts | "Join" >> MultiwayJoin(s.languages)),
    Step("audio", "join", _audio, fixes=("resampled", "downmixed")),
    Step("segment", "embed", lambda utts, s: utts | "Segment" >> Segment(s.segment),
         systemic=segment.SYSTEMIC_REASONS, section="segment", summary=_of_sums(segment_summary),
         card=segment_card_section, info=_segmenter),
    Step("align", "segment", lambda utts, s: utts | "Align" >> Align(s.align), systemic=align.SYSTEMIC_REASONS,
         fixes=("word_times_clamped",), section="align", summary=_of_sums(align_summary), card=align_card_section,
         info=_aligner),
    Step("embed", "audio", lambda utts, s: utts | "Embed" >> Embed(s.embed), runs=lambda s: s.embed.enabled,
         systemic=embed.SYSTEMIC_REASONS, section="embedding_teacher", summary=lambda s, sums: teacher_info(s.embed),
         info=_teacher),
    # Word-level SOT needs word times: conversations are made of aligned utterances.
    Step("simulate", "align", _simulate, stages=(PAIRING_STAGE, RENDER), section="simulate",
         summary=lambda s, sums: None if sums is None else simulate_summary(s.simulate.sot, sums),
         card=simulate_card_section, info=_simulation),
)
BY_NAME = {step.name: step for step in STEPS}


@dataclass(frozen=True)
class Planned:
    step: Step
    parent: Step | None  # the step it reads from in this run
    configs: tuple  # the dataset config modules that publish its records


def plan(settings: CurateSettings, configs: list) -> list[Planned]:
    """The steps this run builds, each after the one it reads from (otherwise in `STEPS` order),
    with the configs that publish from it."""

    def source(name: str | None) -> Step | None:  # `name`, or the nearest step before it that runs
        while name is not None and not BY_NAME[name].runs(settings):
            name = BY_NAME[name].parent
        return BY_NAME[name] if name is not None else None

    needed: set[str] = set()
    for config in configs:
        step = source(config.SOURCE)
        while step is not None:
            needed.add(step.name)
            step = source(step.parent)
    out: list[Planned] = []
    waiting = [step for step in STEPS if step.name in needed]
    while waiting:  # the first waiting step whose parent is placed (or that has none) goes next
        placed = {p.step.name for p in out}
        step = next(s for s in waiting if source(s.parent) is None or source(s.parent).name in placed)
        waiting.remove(step)
        out.append(Planned(step, source(step.parent), tuple(c for c in configs if source(c.SOURCE) is step)))
    return out


def built(settings: CurateSettings, configs: list) -> list[Step]:
    """The steps this run builds, in `STEPS` order (the order their reports are listed in)."""
    names = {p.step.name for p in plan(settings, configs)}
    return [step for step in STEPS if step.name in names]
