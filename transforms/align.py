"""The align stage: word timings for every segmented utterance, and its chunks' end times.

Shape (docs/architecture.md §1, EASiST §3.1):

1. Training is corpus-level: per source language, a bounded sample of the utterances
   (`train_minutes`, chosen by a hash of the id, so the same utterances whatever the runner
   or the number of workers) trains the aligner once; the models reach every worker as a
   side input. Backends with pretrained models (MFA) only check their configuration here.
2. Alignment runs per record in parallel, in batches of the backend's size.
3. Per utterance, `finish` turns the word timings into `Timing(words, chunk_end_s)` per
   latency level, checks the chunk times (increasing, inside the clip, the last ending by
   the clip's end), keeps the aligner's confidence (per clip and per word, published in
   `simulst`; its distribution goes to stats.json and the card), writes the TextGrid and CTM
   side files when asked, and compares with the true word times when a truth file is given.
   Anything that fails is a Reject.

pipeline/summaries.py reads the stage's summed stats into the `align` section of stats.json.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import apache_beam as beam

from ..settings import ConfigError, check_fraction, load_stage
from . import files
from .aligners import Aligned, Backend, Clip, TrainReport, batch_size, make_backend
from .aligners.features import FeatureSettings
from .aligners.gmm import GmmSettings
from .aligners.gmm_train import MODEL_VERSION, Shard, ShardSummary, total
from .aligners.mfa import MfaSettings, frame_shift_s, missing_reason
from .audio import clip_bytes, decode_flac
from .objects import Objects, digest
from .records import Reject, StageError, Stat, Timing, Utterance
from .stage import STATS, run_stage
from .timing import (
    check_chunk_times,
    chunk_end_times,
    clamp_to_clip,
    ctm_text,
    spoken_words,
    textgrid_text,
)

STAGE = "align"
CACHED = "cached"  # models the cache held
KEYED = tuple[str, Any]  # (language, anything): what a training step's main output is, for Beam's type checks
# Reject reasons that mean the aligner, not the clip, failed (counted against max_reject_fraction):
# no model could be trained or found, or the backend is not installed.
SYSTEMIC_REASONS = frozenset({"no_model", "aligner_missing"})
ERROR_BUCKET_MS = 5  # width of the boundary-error histogram's buckets (for p50 / p90)
ERROR_BUCKETS = 200  # the last bucket holds every error of 995 ms and more
CONFIDENCE_BUCKETS = 100  # of the clips' alignment confidence, each 0.01 wide


@dataclass
class ForcedAlignSettings:
    backend: Literal["gmm", "mfa"]
    train_minutes: float  # per source language
    train_minutes_by_lang: dict[str, float]  # overrides of train_minutes
    voices: dict[str, str]  # source language -> espeak-ng voice for pronunciations (default: the code)
    block_samples: int  # streaming encoder block, in samples at the dataset rate
    side_outputs: str | None  # folder for one TextGrid and one CTM per clip; None: none written
    truth: str | None  # JSONL of true word times (the demo corpora's) to measure the error against
    features: FeatureSettings
    gmm: GmmSettings
    mfa: MfaSettings
    max_reject_fraction: float  # of the stage's input, for SYSTEMIC_REASONS, before the run fails
    cache_dir: str | None  # trained models as objects keyed by their sample and settings; None: none kept
    train_across_workers: bool  # a pass is a round over shards on all workers, not one element per language

    def validate(self, where: str) -> None:
        check_fraction(f"{where}.max_reject_fraction", self.max_reject_fraction)
        if self.block_samples < 1:
            raise ConfigError(f"{where}.block_samples: must be at least 1, got {self.block_samples}")
        if not self.train_minutes > 0 or not all(v > 0 for v in self.train_minutes_by_lang.values()):
            raise ConfigError(f"{where}.train_minutes: must be above 0 (and so every train_minutes_by_lang)")

    def train_budget_s(self, lang: str) -> float:
        return 60 * self.train_minutes_by_lang.get(lang, self.train_minutes)


def load_settings(overrides: dict[str, Any] | None = None) -> ForcedAlignSettings:
    """This stage's defaults (configs/stages/align.yaml) with `overrides` merged in, validated."""
    return load_stage(ForcedAlignSettings, STAGE, overrides)


# -- Pure functions ----------------------------------------------------------------------------


def to_clip(utt: Utterance) -> Clip:
    """The utterance's normalised clip and spoken words; StageError when the clip is gone."""
    try:
        samples, rate = decode_flac(clip_bytes(utt))
    except (OSError, RuntimeError) as e:  # soundfile's errors are RuntimeErrors
        raise StageError("unreadable_audio", f"{utt.audio.path}: {e}") from None
    return Clip(utt.id, samples, rate, spoken_words(utt.source_text), utt.speaker)


def analysis_frame_s(s: ForcedAlignSettings) -> float:
    """The backend's frame step: its word times fall on this grid (see timing.clamp_to_clip)."""
    return frame_shift_s(s.mfa) if s.backend == "mfa" else s.features.frame_shift_ms / 1000


def timing_of(utt: Utterance, words: list[tuple[str, float, float]], aligned: Aligned | None = None) -> Timing:
    """The utterance's Timing: its words and, per latency level, its chunks' end times (checked),
    with the aligner's confidence when it gives one."""
    if " ".join(spoken_words(utt.source_text)) != " ".join(w for w, _, _ in words):
        raise StageError("aligner_words_differ", "the aligner's words are not the source text's")
    ends = {}
    for level, seg in utt.segmentations.items():
        if seg.source_chunks and " ".join(seg.source_chunks).split() != utt.source_text.split():
            raise StageError("chunks_do_not_match_text", f"the {level} chunks do not rebuild the source text")
        ends[level] = chunk_end_times(words, seg.source_chunks)
        check_chunk_times(ends[level], utt.duration_s)
    confidence, word_confidence = (aligned.confidence, aligned.word_confidence) if aligned else (None, None)
    if word_confidence is not None and len(word_confidence) != len(words):
        raise StageError("aligner_words_differ", f"{len(word_confidence)} word confidences for {len(words)} words")
    return Timing(words=list(words), chunk_end_s=ends, confidence=confidence, word_confidence=word_confidence)


def boundary_errors_ms(words: list[tuple[str, float, float]], truth: list) -> list[float] | None:
    """|start - true start| and |end - true end| of every word, in ms; None if the words differ."""
    if [w.lower() for w, _, _ in words] != [t[0].lower() for t in truth]:
        return None
    return [1000 * abs(a - b) for (_, s, e), (_, ts, te) in zip(words, truth, strict=True) for a, b in ((s, ts), (e, te))]


def error_stats(errors: list[float]) -> Iterator[Stat]:
    yield Stat(STAGE, "error/clips")
    yield Stat(STAGE, "error/boundaries", len(errors))
    yield Stat(STAGE, "error/sum_ms", sum(errors))
    buckets: dict[int, int] = {}
    for e in errors:
        k = min(int(e // ERROR_BUCKET_MS), ERROR_BUCKETS - 1)
        buckets[k] = buckets.get(k, 0) + 1
    for k, n in buckets.items():
        yield Stat(STAGE, f"error/bucket/{k:03d}", n)


def confidence_stats(confidence: float) -> Iterator[Stat]:
    """The clip's confidence into a histogram of CONFIDENCE_BUCKETS equal buckets over [0, 1]."""
    yield Stat(STAGE, "confidence/clips")
    yield Stat(STAGE, "confidence/sum", confidence)
    # The nudge keeps a confidence on a bucket's edge (0.58 * 100 = 57.99999...) in the bucket it starts.
    bucket = min(int(confidence * CONFIDENCE_BUCKETS + 1e-6), CONFIDENCE_BUCKETS - 1)
    yield Stat(STAGE, f"confidence/bucket/{bucket:03d}")


def side_files(utt: Utterance, timing: Timing) -> dict[str, str]:
    """Relative path -> text of the clip's TextGrid and CTM."""
    chunks = {level: (seg.source_chunks, timing.chunk_end_s[level]) for level, seg in utt.segmentations.items()}
    return {
        f"{utt.id}.TextGrid": textgrid_text(timing.words, utt.duration_s, chunks),
        f"{utt.id}.ctm": ctm_text(utt.id, timing.words),
    }


@dataclass
class Outcome:
    """What the aligner made of one utterance, and the CPU seconds it took."""

    result: Aligned | StageError
    cpu_s: float


def finish(element: tuple[Utterance, Outcome], truth: dict[str, list] | None,
           side_dir: str | None, frame_s: float = 0.0) -> Iterator[Utterance | Reject | Stat]:
    """Stage function: the aligned utterance with its Timing, or a Reject. Word times within
    `frame_s` (the aligner's frame) past the clip's end are clamped to it, and that is recorded."""
    utt, outcome = element
    yield Stat(STAGE, "audio_s", utt.duration_s or 0.0)
    yield Stat(STAGE, "aligner/cpu_s", outcome.cpu_s)
    if isinstance(outcome.result, StageError):
        yield outcome.result.reject(utt.id, STAGE, utt.where)
        return
    yield Stat(STAGE, "aligner/audio_s", utt.duration_s)
    if outcome.result.retried:
        yield Stat(STAGE, "aligner/retried")
    words, fixes = clamp_to_clip(outcome.result.words, utt.duration_s, frame_s)
    try:
        timing = timing_of(utt, words, outcome.result)
    except StageError as e:
        yield e.reject(utt.id, STAGE, utt.where)
        return
    yield Stat(STAGE, "words", len(timing.words))
    if timing.confidence is not None:
        yield from confidence_stats(timing.confidence)
    if fixes:
        yield Stat(STAGE, "word_times_clamped")
    if truth is not None and utt.id in truth:
        errors = boundary_errors_ms(timing.words, truth[utt.id])
        if errors is None:
            yield Stat(STAGE, "error/unmatched_clips")
        else:
            yield from error_stats(errors)
    if side_dir:
        for relative, text in side_files(utt, timing).items():
            path = files.within(side_dir, relative)
            if path is not None:
                with files.open_write(path) as f:
                    f.write(text.encode("utf-8"))
    yield utt.replace(timing=timing, fixes=[*utt.fixes, *fixes])


def read_truth(path: str) -> dict[str, list]:
    """id -> [[word, start, end], ...] from the demo corpora's truth/word_times.jsonl."""
    lines = files.read_bytes(path).decode("utf-8").splitlines()
    return {obj["id"]: obj["words"] for obj in map(json.loads, filter(str.strip, lines))}


def cpu_seconds() -> float:
    """CPU time of this thread and of the child processes it waited for (MFA)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.thread_time() + children.ru_utime + children.ru_stime


# -- Beam --------------------------------------------------------------------------------------


def sample_priority(utt_id: str) -> int:
    """A stable pseudo-random rank: the training sample is the lowest ranks that fit the budget."""
    return int.from_bytes(hashlib.sha1(utt_id.encode("utf-8")).digest()[:8], "big")


@dataclass
class SampleEntry:
    """An utterance in a language's training sample (its audio stays where the record points)."""

    priority: int
    duration_s: float
    budget_s: float  # of the utterance's language
    utt: Utterance


class TrainingSample(beam.CombineFn):
    """Per language, the lowest-priority entries whose audio fits the budget (at least one).

    Dropping only from the high end keeps the result the same however the runner splits and
    merges the input, and whenever the trimming happens: an accumulator is trimmed every
    TRIM_EVERY additions (sorting on each one cost ~0.1 ms per utterance), so it holds at most
    the sample plus that many entries.
    """

    TRIM_EVERY = 256

    def create_accumulator(self):
        return []

    def add_input(self, acc, entry):
        acc.append(entry)
        return self._trim(acc) if len(acc) % self.TRIM_EVERY == 0 else acc

    def merge_accumulators(self, accs):
        return self._trim([e for acc in accs for e in acc])

    def extract_output(self, acc):
        return self._trim(acc)

    @staticmethod
    def _trim(entries: list[SampleEntry]) -> list[SampleEntry]:
        entries.sort(key=lambda e: (e.priority, e.utt.id))
        total = sum(e.duration_s for e in entries)
        while len(entries) > 1 and total > entries[0].budget_s:
            total -= entries.pop().duration_s
        return entries


def training_entry(utt: Utterance, settings: ForcedAlignSettings) -> Iterator[tuple[str, SampleEntry]]:
    """(source language, sample entry) for an utterance that can be trained on."""
    if spoken_words(utt.source_text):
        yield utt.source_lang, SampleEntry(sample_priority(utt.id), utt.duration_s or 0.0,
                                           settings.train_budget_s(utt.source_lang), utt)


class _Train(beam.DoFn):
    """(lang, (cache key, sample)) -> (lang, model or StageError), and training stats, in one piece
    (the model goes to the cache)."""

    def __init__(self, settings: ForcedAlignSettings):
        self.settings = settings

    def process(self, element):
        lang, (key, entries) = element
        clips = []
        for e in entries:
            try:
                clips.append(to_clip(e.utt))
            except StageError as failure:
                yield beam.pvalue.TaggedOutput(STATS, Stat(STAGE, f"train/skipped/{failure.reason}"))
        backend = make_backend(self.settings)
        started = cpu_seconds()
        try:
            model, report = backend.train(lang, clips)
        except StageError as e:
            yield lang, e
            return
        finally:
            backend.close()
        if key:
            model_objects(self.settings).put(key, pickle.dumps(model))
        spent = cpu_seconds() - started
        yield from _report_stats(report, spent)
        yield beam.pvalue.TaggedOutput(STATS, Stat(STAGE, "train/serial_cpu_s", spent))
        yield lang, model


def _report_stats(report: TrainReport, cpu_s: float) -> Iterator[beam.pvalue.TaggedOutput]:
    for name, value in (("train/cpu_s", cpu_s), ("train/audio_s", report.audio_s), ("train/clips", report.clips),
                        *((f"train/skipped/{reason}", n) for reason, n in report.skipped.items())):
        yield beam.pvalue.TaggedOutput(STATS, Stat(STAGE, name, value))


# -- Training spread over the workers (a `sharded` backend: aligners/gmm_train.py) ------------------


def model_key(lang: str, entries: list[SampleEntry], s: ForcedAlignSettings) -> str:
    """What names a trained model in the cache: the training sample (each clip's id, words and audio
    bytes) and every setting training reads."""
    clips = [[e.utt.id, e.utt.source_text, hashlib.sha256(clip_bytes(e.utt)).hexdigest()] for e in entries]
    return digest({"version": MODEL_VERSION, "lang": lang, "backend": s.backend,
                           "voice": s.voices.get(lang, lang), "features": asdict(s.features),
                           "settings": asdict(getattr(s, s.backend)), "sample": clips})


class _BackendFn(beam.DoFn):
    """A DoFn with the backend on its worker, and the CPU seconds it spends training counted (taken
    before the main output is yielded: the runner may run the next fused steps inside that yield)."""

    def __init__(self, settings: ForcedAlignSettings):
        self.settings = settings

    def setup(self):
        self.backend = make_backend(self.settings)

    def teardown(self):
        self.backend.close()

    serial = False  # runs once per language per round, not per shard

    def shard(self, ref: ShardRef) -> Shard:
        return LOADED_SHARDS.get(shard_objects(self.settings), ref.key)

    def timed(self, started: float) -> Iterator[beam.pvalue.TaggedOutput]:
        spent = cpu_seconds() - started
        yield beam.pvalue.TaggedOutput(STATS, Stat(STAGE, "train/cpu_s", spent))
        if self.serial:
            yield beam.pvalue.TaggedOutput(STATS, Stat(STAGE, "train/serial_cpu_s", spent))


class _Cached(_BackendFn):
    """(lang, sample) -> the model the cache holds for it (tagged CACHED), or (lang, (key, sample)) to train."""

    serial = True

    def process(self, element):
        lang, entries = element
        started = cpu_seconds()
        key = model_key(lang, entries, self.settings) if self.settings.cache_dir else None
        found = key and model_objects(self.settings).get(key)
        if found:
            yield beam.pvalue.TaggedOutput(STATS, Stat(STAGE, "train/cached"))
            yield beam.pvalue.TaggedOutput(CACHED, (lang, pickle.loads(found)))
        else:
            yield from self.timed(started)  # a cached model costs no training
            yield lang, (key, entries)


def shard_tasks(element, backend: Backend) -> Iterator[tuple[str, tuple]]:
    """(lang, (key, sample)) -> (lang, (shard index, held, [(utterance, copied)], key)) per shard."""
    lang, (key, entries) = element
    for index, (held, members) in enumerate(backend.shard_plan(len(entries))):
        yield lang, (index, held, [(entries[i].utt, copied) for i, copied in members], key)


def model_objects(s: ForcedAlignSettings) -> Objects:
    """Where trained models lie, each keyed by `model_key`: `cache_dir`, any Beam filesystem."""
    return Objects(s.cache_dir, ".pkl")


def shard_objects(s: ForcedAlignSettings) -> Objects:
    """Where the prepared training shards lie between rounds: `cache_dir`/shards, any Beam filesystem."""
    return Objects(files.join(s.cache_dir, "shards"), ".shard")


def shard_key(model: str, index: int) -> str:
    """A prepared shard's object key: its sample and settings (the model's key) and its place in the plan."""
    return digest({"model": model, "shard": index})


@dataclass
class ShardRef:
    """A prepared training shard as the rounds pass it: where its features lie, not the features."""

    index: int  # shards are summed in this order
    held: bool
    key: str  # of its object (shard_objects); "" when it failed
    model_key: str  # of the model it trains
    report: TrainReport
    summary: ShardSummary | None = None  # what `begin` needs of it
    error: StageError | None = None  # why it could not be prepared


class LoadedShards:
    """The prepared shards a worker process has read, by object key: each is read once and serves every
    round on that worker. The oldest go past `limit_bytes` (of their stored size)."""

    def __init__(self, limit_bytes: int = 256 << 20):
        self.limit, self.size, self.lock = limit_bytes, 0, threading.Lock()
        self.shards: dict[str, tuple[Shard, int]] = {}
        self.reads = 0  # objects read, in this process

    def get(self, objects: Objects, key: str) -> Shard:
        with self.lock:
            found = self.shards.get(key)
        if found is not None:
            return found[0]
        data = objects.get(key)
        if data is None:  # written by Prepare before any round ran: the cache folder was changed under the run
            raise FileNotFoundError(f"the prepared training shard {objects.path(key)} is gone")
        shard = pickle.loads(data)
        with self.lock:
            self.reads += 1
            if key not in self.shards:
                self.shards[key] = (shard, len(data))
                self.size += len(data)
                while self.size > self.limit and len(self.shards) > 1:
                    self.size -= self.shards.pop(next(iter(self.shards)))[1]
        return shard


# One per worker process: every round runs its own DoFns, and a worker reads a shard once for all of them.
LOADED_SHARDS = LoadedShards()


class _Prepare(_BackendFn):
    """A shard's task -> (lang, ShardRef): the prepared shard (features, degraded copies) is written once
    under `cache_dir`, keyed by what produced it, and the rounds pass only its key."""

    def process(self, element):
        lang, (index, held, members, key) = element
        started, ready, report = cpu_seconds(), [], TrainReport()
        for utt, copied in members:
            try:
                ready.append((to_clip(utt), copied))
            except StageError as e:
                report.skipped[e.reason] = report.skipped.get(e.reason, 0) + 1
        try:
            shard, part = self.backend.prepare(lang, index, held, ready)
            ref = ShardRef(index, held, shard_key(key, index), key, report.plus(part), shard.summary())
            shard_objects(self.settings).put(ref.key, pickle.dumps(shard, protocol=pickle.HIGHEST_PROTOCOL))
        except StageError as e:
            ref = ShardRef(index, held, "", key, report, error=e)
        yield from self.timed(started)
        yield lang, ref


class _Begin(_BackendFn):
    """(lang, every prepared shard) -> (lang, TrainState before pass 0), with the sample's report."""

    serial = True

    def process(self, element):
        lang, refs = element
        refs = sorted(refs, key=lambda ref: ref.index)
        report = TrainReport()
        for ref in refs:
            report = report.plus(ref.report)
        yield from _report_stats(report, 0.0)
        failed = next((ref.error for ref in refs if ref.error), None)
        started = cpu_seconds()
        try:
            if failed:
                raise failed
            state = self.backend.begin(lang, [ref.summary for ref in refs], report.skipped)
        except StageError as e:
            state = self.backend.failed_state(lang, e)
        yield from self.timed(started)
        yield lang, state


class _Accumulate(_BackendFn):
    """(lang, a training shard's ShardRef) -> (lang, (index, its statistics of this pass)); None once
    training has failed, so the sum still sees every shard."""

    def process(self, element, states):
        lang, ref = element
        if ref.error is None and ref.held:
            return
        state = states[lang]
        started = cpu_seconds()
        failed = state.error is not None or ref.error is not None
        stats = None if failed else self.backend.accumulate(state, self.shard(ref))
        yield from self.timed(started)
        yield lang, (ref.index, stats)


class SumStats(beam.CombineFn):
    """The shards' statistics of a pass, summed in shard order whatever the order they arrive in
    (float sums depend on it): the model is the same whatever the workers."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, indexed):
        acc.append(indexed)
        return acc

    def merge_accumulators(self, accs):
        return [x for acc in accs for x in acc]

    def extract_output(self, acc):
        found = [stats for _, stats in sorted(acc, key=lambda x: x[0])]
        return None if any(x is None for x in found) else total(found)


class _Estimate(_BackendFn):
    """(lang, summed statistics) -> (lang, the state after the pass)."""

    serial = True

    def process(self, element, states):
        lang, stats = element
        state = states[lang]
        started = cpu_seconds()
        state = state if stats is None else self.backend.estimate(state, stats)
        yield from self.timed(started)
        yield lang, state


class _Score(_BackendFn):
    """(lang, ShardRef) -> (lang, (index, gaps of its clips, of their words, model key)) under the final
    model; empty for a shard that is not scored, so every language reaches `_FinishTraining`."""

    def process(self, element, states):
        lang, ref = element
        state = states[lang]
        started = cpu_seconds()
        scored = ref.error is None and state.error is None and ref.held == state.has_holdout
        gaps, words = self.backend.score(state, self.shard(ref)) if scored else ([], [])
        yield from self.timed(started)
        yield lang, (ref.index, gaps, words, ref.model_key)


class _FinishTraining(_BackendFn):
    """(lang, every shard's scores) -> (lang, model or StageError); a model goes to the cache."""

    serial = True

    def process(self, element, states):
        lang, scores = element
        state, started = states[lang], cpu_seconds()
        scores = sorted(scores, key=lambda x: x[0])
        if state.failed:
            yield beam.pvalue.TaggedOutput(STATS, Stat(STAGE, "train/skipped/alignment_failed", state.failed))
        try:
            model = self.backend.finish(state, [g for _, gaps, _, _ in scores for g in gaps],
                                        [w for _, _, words, _ in scores for w in words])
            key = scores[0][3]
            if key:
                model_objects(self.settings).put(key, pickle.dumps(model))
        except StageError as e:
            model = e
        yield from self.timed(started)
        yield lang, model


class Train(beam.PTransform):
    """(lang, training sample) -> ((lang, model or StageError), training stats).

    With `train_across_workers` and a `cache_dir`, a `sharded` backend trains as rounds over the
    shards of each sample: the shards are prepared (features, degraded copies) in parallel and
    written once under `cache_dir`, then every pass aligns each shard (read once per worker
    process, by key) with the previous model, passed as a side input, and sums the shards'
    statistics into the next model; the graph holds one such round per pass. Otherwise one
    element per language trains (the same model: the same shards, summed in the same order).
    A model the cache holds for the same sample and settings is read instead."""

    def __init__(self, settings: ForcedAlignSettings, label: str | None = None):
        super().__init__(label)
        self.settings = settings

    def expand(self, samples):
        s = self.settings
        backend = make_backend(s)
        keyed = samples | "Cached" >> beam.ParDo(_Cached(s)).with_outputs(STATS, CACHED, main="train")
        if not (backend.sharded and s.train_across_workers and s.cache_dir):  # rounds share shards through it
            trained = keyed.train | "Train" >> beam.ParDo(_Train(s)).with_outputs(STATS, main="models")
            models = (keyed[CACHED], trained.models) | "Models" >> beam.Flatten()
            return models, (keyed[STATS], trained[STATS]) | "TrainStats" >> beam.Flatten()
        prepared = (keyed.train | "Shards" >> beam.FlatMap(shard_tasks, backend)
                    | "Prepare" >> beam.ParDo(_Prepare(s)).with_output_types(KEYED).with_outputs(STATS, main="shards"))
        begun = (prepared.shards | "Gather" >> beam.GroupByKey()
                 | "Begin" >> beam.ParDo(_Begin(s)).with_outputs(STATS, main="state"))
        state, stats = begun.state, [keyed[STATS], prepared[STATS], begun[STATS]]
        for step in range(backend.passes):
            acc = (prepared.shards | f"Accumulate{step}" >> beam.ParDo(_Accumulate(s), beam.pvalue.AsDict(state))
                   .with_output_types(KEYED).with_outputs(STATS, main="sums"))
            est = (acc.sums | f"Sum{step}" >> beam.CombinePerKey(SumStats())
                   | f"Estimate{step}" >> beam.ParDo(_Estimate(s), beam.pvalue.AsDict(state))
                   .with_outputs(STATS, main="state"))
            state = est.state
            stats += [acc[STATS], est[STATS]]
        scored = (prepared.shards | "Score" >> beam.ParDo(_Score(s), beam.pvalue.AsDict(state))
                  .with_output_types(KEYED).with_outputs(STATS, main="scores"))
        done = (scored.scores | "GatherScores" >> beam.GroupByKey()
                | "FinishTraining" >> beam.ParDo(_FinishTraining(s), beam.pvalue.AsDict(state)).with_outputs(STATS, main="models"))
        models = (keyed[CACHED], done.models) | "Models" >> beam.Flatten()
        return models, (*stats, scored[STATS], done[STATS]) | "TrainStats" >> beam.Flatten()


class _AlignBatch(beam.DoFn):
    """A batch of utterances -> (utterance, Outcome) each, with the models as a side input."""

    def __init__(self, settings: ForcedAlignSettings):
        self.settings = settings

    def setup(self):
        self.backend = make_backend(self.settings)

    def process(self, batch: list[Utterance], models: dict[str, Any]):
        by_lang: dict[str, list[Utterance]] = {}
        for utt in batch:
            if utt.source_lang not in models:
                yield utt, Outcome(StageError("no_model", f"no {utt.source_lang} model was trained"), 0.0)
            elif isinstance(models[utt.source_lang], StageError):
                yield utt, Outcome(models[utt.source_lang], 0.0)
            else:
                by_lang.setdefault(utt.source_lang, []).append(utt)
        for lang, utts in by_lang.items():
            ready = []
            for utt in utts:
                try:
                    ready.append((utt, to_clip(utt)))
                except StageError as e:
                    yield utt, Outcome(e, 0.0)
            if not ready:
                continue
            started = cpu_seconds()
            results = self.backend.align(models[lang], [clip for _, clip in ready])
            spent = cpu_seconds() - started
            # The batch's CPU time, shared out by audio duration.
            total = sum(clip.duration_s for _, clip in ready)
            for (utt, clip), result in zip(ready, results, strict=True):
                yield utt, Outcome(result, spent * clip.duration_s / total if total else 0.0)

    def teardown(self):
        self.backend.close()


class _Finish:
    """The per-record stage function with its per-worker state (the truth file, once)."""

    def __init__(self, settings: ForcedAlignSettings):
        self.truth_path, self.side_dir = settings.truth, settings.side_outputs
        self.frame_s = analysis_frame_s(settings)

    def setup(self) -> dict[str, list] | None:
        return read_truth(self.truth_path) if self.truth_path else None

    def __call__(self, element, truth):
        return finish(element, truth, self.side_dir, self.frame_s)


class Align(beam.PTransform):
    """PCollection[Utterance] -> (aligned utterances, Reject, Stat).

    A backend that cannot run here (no `mfa` command) raises ConfigError while the pipeline
    is built, before any work starts.
    """

    def __init__(self, settings: ForcedAlignSettings, label: str | None = None):
        super().__init__(label)
        self.settings = settings
        check_ready(settings)

    def expand(self, utts):
        s = self.settings
        models, train_stats = (
            utts
            | "TrainEntries" >> beam.FlatMap(training_entry, s)
            | "TrainSample" >> beam.CombinePerKey(TrainingSample())
            | "Train" >> Train(s)
        )
        aligned = (
            utts
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size(s))
            | "Aligner" >> beam.ParDo(_AlignBatch(s), beam.pvalue.AsDict(models))
        )
        fn = _Finish(s)
        out, rejects, stats = run_stage(aligned, STAGE, fn, setup=fn.setup)
        return out, rejects, (stats, train_stats) | "AlignStats" >> beam.Flatten()


def check_ready(s: ForcedAlignSettings) -> None:
    if s.backend == "mfa":
        reason = missing_reason(s.mfa.command)
        if reason:
            raise ConfigError(f"align.backend: mfa: {reason}")
    if s.truth and not files.exists(s.truth):
        raise ConfigError(f"align.truth: no file at {s.truth}")
