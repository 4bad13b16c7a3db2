"""The segment stage: every multi-way utterance gets one `Segmentation` per latency level.

Two backends, one contract (docs/architecture.md §2): source chunks rebuild the source text, every
target language has as many chunks as the source, one source chunking is shared by all the
utterance's languages, and chunk counts never grow from the lowest to the highest latency.
An utterance leaves with every configured level or as a `Reject` with its reason.

- `align` (the default; needs no key): eflomal word alignments learnt from the corpus, cut
  where no link crosses (segment_align.py). Corpus-level work happens inside the composite:
  sentence pairs are grouped per language, aligned once, and joined back by id.
- `llm`: an OpenAI-compatible chat model, batched, cached and validated (transforms/segment_llm/).

Monotonicity is then measured on what was published (monotonicity.py): the pairs are
word-aligned again (a fresh eflomal run per language, or simalign) and the crossing counts
of the offline pair and of every level are emitted as stats (pipeline/summaries.py reads
them into the `segment` section of stats.json).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import apache_beam as beam

from ..settings import ConfigError, check_fraction, load_stage
from . import files, segment_llm
from .monotonicity import OFFLINE, crossing_stats, measurement_pairs, view_crossings
from .records import Reject, StageError, Stat, Utterance
from .segment_align import AlignSettings, align_corpus, read_parallel, segment_pair
from .segment_llm import LlmSegmenter, LlmSettings, Outcome
from .segment_llm.prompt import answer_identity, answer_key, load_prompt
from .stage import run_stage

STAGE = "segment"
# Every reject reason of this stage, and whether it means the service/model failed (systemic:
# counted against max_reject_fraction, the run fails above it) or the record is bad (data):
#   empty_source, no_translation, empty_translation  data: nothing to segment
#   no_monotone_split     data: the sentence pair has no monotone cut (align backend)
#   llm_unreachable       systemic: 429/5xx/timeouts/connection errors outlasted every retry
#   llm_request_failed    systemic: the server refused the request (bad key, unknown model, 4xx)
#   llm_invalid_answer    systemic: the model's answer broke the rules even after a repair re-ask;
#                         the text is fine (the align backend segments it), the model is not
SYSTEMIC_REASONS: frozenset[str] = frozenset({"llm_unreachable", "llm_request_failed", "llm_invalid_answer"})


@dataclass
class MonotonicitySettings:
    aligner: Literal["eflomal", "simalign", "none"]  # how published pairs are re-aligned to measure crossings
    simalign_model: str | None  # a local model directory, passed to simalign as model=<dir>

    def validate(self, where: str) -> None:
        if self.aligner == "simalign" and not self.simalign_model:
            raise ConfigError(f"{where}.simalign_model: aligner simalign needs a local model directory")


@dataclass
class SegmentSettings:
    backend: Literal["align", "llm"]
    levels: list[str]  # latency levels, lowest first
    align: AlignSettings
    llm: LlmSettings
    monotonicity: MonotonicitySettings
    max_reject_fraction: float  # of the stage's input, for SYSTEMIC_REASONS, before the run fails

    def validate(self, where: str) -> None:
        check_fraction(f"{where}.max_reject_fraction", self.max_reject_fraction)
        if not self.levels or len(set(self.levels)) != len(self.levels):
            raise ConfigError(f"{where}.levels: need at least one level and no repeats, got {self.levels}")
        missing = [level for level in self.levels if level not in self.align.levels]
        if self.backend == "align" and missing:
            raise ConfigError(f"{where}.align.levels: no merge rule for level(s) {', '.join(missing)}")


def load_settings(overrides: dict[str, Any] | None = None) -> SegmentSettings:
    """This stage's defaults (configs/stages/) with `overrides` merged in, validated."""
    return load_stage(SegmentSettings, STAGE, overrides)


def _refuse(utt: Utterance) -> Reject | None:
    """What no backend can segment."""
    if not utt.source_text.split():
        return Reject(utt.id, STAGE, "empty_source", "the source text is empty", utt.where)
    if not utt.translations:
        return Reject(
            utt.id, STAGE, "no_translation", "the utterance has no translation to segment", utt.where
        )
    empty = sorted(lang for lang, text in utt.translations.items() if not text.split())
    if empty:
        return Reject(utt.id, STAGE, "empty_translation", f"empty {', '.join(empty)} translation", utt.where)
    return None


def _audio_stat(utt: Utterance) -> Iterator[Stat]:
    seconds = utt.duration_s if utt.duration_s is not None else utt.audio.duration_s
    if seconds is not None:
        yield Stat(STAGE, "audio_s", seconds)


def _chunk_stats(utt: Utterance) -> Iterator[Stat]:
    for level, seg in utt.segmentations.items():
        yield Stat(STAGE, f"chunks/{level}", len(seg.source_chunks))


def segment_with_links(
    element: tuple[Utterance, dict[str, set[tuple[int, int]]]], settings: SegmentSettings
) -> Iterator[Any]:
    """Alignment backend, one utterance: its symmetrised word links per language are given."""
    utt, links = element
    yield from _audio_stat(utt)
    refused = _refuse(utt)
    if refused:
        yield refused
        return
    try:
        segs = segment_pair(
            utt.source_text,
            utt.translations,
            {lang: links.get(lang, set()) for lang in utt.translations},
            settings.levels,
            settings.align.levels,
            settings.align.reject_unsplit_over_words,
        )
    except StageError as e:
        yield e.reject(utt.id, STAGE, utt.where)
        return
    out = utt.replace(segmentations=segs)
    yield from _chunk_stats(out)
    yield out


def by_answer_key(utt: Utterance, identity: dict[str, Any]) -> tuple[str, Utterance]:
    """(the cache key of its answer, utt): copies of one text meet in one group, so a run asks for
    them once however the runner spreads them over workers. Refused ones stay apart."""
    return (answer_key(identity, utt) if _refuse(utt) is None else f"refused/{utt.id}"), utt


def finish_llm(element: tuple[Utterance, Outcome | None]) -> Iterator[Any]:
    """LLM backend, one utterance: its answer (or why there is none) is given."""
    utt, outcome = element
    yield from _audio_stat(utt)
    if outcome is None:  # _AskLlm asks only for what _refuse lets through
        yield _refuse(utt)
        return
    for name, value in (
        ("llm/requests", outcome.requests),
        ("llm/repair_requests", outcome.repair_requests),
        ("llm/retries", outcome.retries),
        ("llm/cache_hits", float(outcome.cache_hit)),
        ("tokens/prompt", outcome.prompt_tokens),
        ("tokens/completion", outcome.completion_tokens),
    ):
        if value:
            yield Stat(STAGE, name, value)
    if outcome.segmentations is None:
        yield Reject(utt.id, STAGE, outcome.reason, outcome.detail, utt.where)
        return
    out = utt.replace(segmentations=outcome.segmentations)
    yield from _chunk_stats(out)
    yield out


def sentence_pairs(utt: Utterance) -> Iterator[tuple[str, tuple[str, str, str]]]:
    """(lang, (id, source, translation)) for the corpus-level aligner."""
    if utt.source_text.split():
        for lang, text in utt.translations.items():
            if text.split():
                yield lang, (utt.id, utt.source_text, text)


def align_language(group: tuple[str, Any], settings: AlignSettings) -> Iterator[tuple[str, tuple]]:
    """Align one language's whole corpus; (id, (lang, source, translation, links)) per pair."""
    lang, entries = group
    entries = sorted(entries)  # a grouping's order is the runner's: sort so the cache key is stable
    extra = read_parallel(settings.extra_parallel[lang]) if lang in settings.extra_parallel else []
    links = align_corpus([(s, t) for _, s, t in entries], settings.eflomal, extra, settings.cache_dir)
    for (uid, source, text), found in zip(entries, links, strict=True):
        yield uid, (lang, source, text, tuple(sorted(found)))


def attach_links(joined: tuple[str, dict[str, list]]) -> Iterator[tuple[Utterance, dict[str, set]]]:
    """Each utterance with the links computed for its own texts (ids may repeat upstream)."""
    _, grouped = joined
    for utt in grouped["utt"]:
        yield (
            utt,
            {
                lang: set(links)
                for lang, source, text, links in grouped["links"]
                if source == utt.source_text and utt.translations.get(lang) == text
            },
        )


def measure_language(group: tuple[str, Any], settings: AlignSettings) -> Iterator[Any]:
    """Re-align one language's published pairs: their crossing counts as stats, and each
    level's rate per utterance as (id, (lang, level, rate))."""
    lang, entries = group
    entries = sorted(entries)  # a grouping's order is the runner's: sort so the cache key is stable
    cache = settings.cache_dir and files.join(settings.cache_dir, "measure")  # a second, independent alignment
    links = align_corpus([(s, t) for _, s, t, _ in entries], settings.eflomal, cache_dir=cache)
    totals: dict[str, float] = defaultdict(float)  # the language's sums: a few stats, not several per pair
    for (uid, _, _, views), found in zip(entries, links, strict=True):
        measured = view_crossings(found, views)
        for stat in crossing_stats(STAGE, lang, measured):
            totals[stat.name] += stat.value
        for name, c in measured:
            if name != OFFLINE:
                yield uid, (lang, name, c.rate)
    yield from (Stat(STAGE, name, value) for name, value in totals.items())


def attach_crossing(joined: tuple[str, dict[str, list]]) -> Iterator[Utterance]:
    """The utterance with each level's measured crossing rate per language."""
    _, grouped = joined
    for utt in grouped["utt"]:
        segs = {level: dataclasses.replace(seg, crossing=dict(seg.crossing))
                for level, seg in utt.segmentations.items()}
        for lang, level, rate in grouped["rates"]:
            segs[level].crossing[lang] = round(rate, 6)
        yield utt.replace(segmentations=segs)


# -- Beam --------------------------------------------------------------------------------------


class _AskLlm(beam.DoFn):
    """Segments a batch of utterances with the LLM; yields (utterance, Outcome or None)."""

    def __init__(self, settings: SegmentSettings):
        self.settings = settings

    def setup(self):
        self.segmenter = LlmSegmenter(self.settings.llm, self.settings.levels)

    def process(self, groups: list[tuple[str, Any]]):
        """A batch of (answer key, utterances with those texts) groups."""
        batch = [u for _, utts in groups for u in utts]
        asked = [u for u in batch if _refuse(u) is None]
        answers = dict(zip(map(id, asked), self.segmenter.segment(asked), strict=True))
        for u in batch:
            yield u, answers.get(id(u))

    def teardown(self):
        self.segmenter.close()


class _SimalignCrossings(beam.DoFn):
    """Crossing counts from simalign (a local multilingual encoder), one pair at a time."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir

    def setup(self):
        from simalign import SentenceAligner

        self.aligner = SentenceAligner(model=self.model_dir, token_type="bpe", matching_methods="m")

    def process(self, entry):
        lang, (_, source, target, views) = entry
        links = self.aligner.get_word_aligns(source.split(), target.split())["mwmf"]
        yield from crossing_stats(STAGE, lang, view_crossings(links, views))


class Segment(beam.PTransform):
    """PCollection[Utterance] -> (segmented utterances, Reject, Stat).

    Configuration problems (no key, unreachable server, missing files or packages) raise
    ConfigError here, while the pipeline is built, before any work starts.
    """

    def __init__(self, settings: SegmentSettings, label: str | None = None):
        super().__init__(label)
        self.settings = settings
        _check_ready(settings)
        if settings.backend == "llm":
            self.identity = answer_identity(settings.llm, load_prompt(settings.llm.prompt, settings.levels),
                                            settings.levels)

    def expand(self, utts):
        s = self.settings
        if s.backend == "llm":
            size = s.llm.batch_size * s.llm.concurrency
            answered = (
                utts
                | "ByAnswerKey" >> beam.Map(by_answer_key, self.identity)
                | "SameTexts" >> beam.GroupByKey()
                | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
                | "AskLlm" >> beam.ParDo(_AskLlm(s))
            )
            out, rejects, stats = run_stage(answered, STAGE, finish_llm)
        else:
            aligned = (
                utts
                | "SentencePairs" >> beam.FlatMap(sentence_pairs)
                | "ByLanguage" >> beam.GroupByKey()
                | "Eflomal" >> beam.FlatMap(align_language, s.align)
            )
            keyed = utts | "ById" >> beam.Map(lambda u: (u.id, u))
            joined = (
                {"utt": keyed, "links": aligned}
                | "Join" >> beam.CoGroupByKey()
                | "AttachLinks" >> beam.FlatMap(attach_links)
            )
            out, rejects, stats = run_stage(joined, STAGE, functools.partial(segment_with_links, settings=s))
        if s.monotonicity.aligner == "none":
            return out, rejects, stats
        pairs = out | "MeasurementPairs" >> beam.FlatMap(measurement_pairs)
        if s.monotonicity.aligner == "simalign":
            crossing = pairs | "Simalign" >> beam.ParDo(_SimalignCrossings(s.monotonicity.simalign_model))
        else:
            measured = (
                pairs
                | "MeasureByLanguage" >> beam.GroupByKey()
                | "MeasureEflomal" >> beam.FlatMap(measure_language, s.align)
            )
            crossing = measured | "CrossingStats" >> beam.Filter(lambda x: isinstance(x, Stat))
            rates = measured | "CrossingRates" >> beam.Filter(lambda x: not isinstance(x, Stat))
            out = (
                {"utt": out | "MeasuredById" >> beam.Map(lambda u: (u.id, u)), "rates": rates}
                | "JoinRates" >> beam.CoGroupByKey()
                | "AttachRates" >> beam.FlatMap(attach_crossing)
            )
        return out, rejects, (stats, crossing) | "AllStats" >> beam.Flatten()


def _check_ready(s: SegmentSettings) -> None:
    from apache_beam.io.filesystems import FileSystems

    if s.backend == "llm":
        segment_llm.check_ready(s.llm, s.levels)
    for lang, path in s.align.extra_parallel.items():
        if not FileSystems.exists(path):
            raise ConfigError(f"segment.align.extra_parallel.{lang}: no file at {path}")
    if s.monotonicity.aligner == "simalign":
        if importlib.util.find_spec("simalign") is None:
            raise ConfigError(
                "segment.monotonicity.aligner: simalign is not installed (pip install simalign)"
            )
        if not Path(s.monotonicity.simalign_model).is_dir():
            raise ConfigError(
                f"segment.monotonicity.simalign_model: no model directory at {s.monotonicity.simalign_model}"
            )
