"""The curate graph as plain function calls, timed stage by stage, and the same work through Beam.

    python -m bench.stage_loop DEMO_ROOT WORK_DIR

The loop calls the stage functions in the graph's order (read, join, audio, embed, segment,
the monotonicity measurement, aligner training and alignment, publishing) with no runner, and
records each stage's CPU seconds (children included: eflomal and espeak-ng are subprocesses).
Then `curate` runs the same configs through Beam's in-process runner in this warm process,
once for the offline path (embed off) and once for offline + simulst + simulmt: the Beam
overhead is each run's CPU (less the dataset card's) against the loop's for the same stages.
A small untimed loop first pays the one-time costs (imports, compiled kernels) so neither side
is charged for them.
Prints JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

from simulforge.pipeline import card, config
from simulforge.pipeline.curate import plan, run
from simulforge.transforms import audio, multiway, publish, readers, segment, simulmt, simulst_rows
from simulforge.transforms.align import Outcome, TrainingSample, finish, to_clip, training_entry
from simulforge.transforms.aligners import AlignFailure, batch_size, make_backend
from simulforge.transforms.embed import embed_batch, load_teacher
from simulforge.transforms.monotonicity import measurement_pairs
from simulforge.transforms.records import Reject, Stat, Utterance

OFFLINE_STAGES = ("read", "join", "audio", "publish/offline")


def kept(items):
    return [x for x in items if not isinstance(x, (Reject, Stat))]


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def settings(root: str, work: str, *overrides: str):
    s = config.load(overrides=[f"input={root}", f"work_dir={work}", f"output={work}/out", *overrides])
    s.work_dir = os.path.abspath(s.work_dir)
    return s


def by_key(pairs):
    groups = defaultdict(list)
    for key, value in pairs:
        groups[key].append(value)
    return sorted(groups.items())


def loop(s, work: str, limit: int | None = None) -> tuple[dict[str, float], float, int]:
    """CPU seconds per stage of the whole graph in a plain loop; audio seconds; utterances."""
    cpu: dict[str, float] = {}

    def timed(name, fn):
        start = cpu_now()
        result = fn()
        cpu[name] = cpu_now() - start
        return result

    def write(config, schema, rows):
        timed(f"publish/{config}", lambda: publish.write_shard(os.path.join(work, f"{config}.parquet"), schema, rows))

    tasks, _ = plan(s, lambda *_: None)
    parts = timed("read", lambda: [p for t in tasks for p in kept(readers.read_task(t, s.corpus[t.corpus], s.work_dir))])
    utts = timed("join", lambda: [u for key, ps in by_key(parts) for u in kept(multiway.merge(
        key, [p for p in ps if isinstance(p, Utterance)], [p for p in ps if not isinstance(p, Utterance)],
        s.languages))])[:limit]
    clips = os.path.join(s.work_dir, "clips")
    utts = timed("audio", lambda: [u for x in utts for u in kept(audio.attach_audio(x, s.sampling_rate, clips))])
    teacher, n = load_teacher(s.embed), s.embed.batch_size
    utts = timed("embed", lambda: [u for i in range(0, len(utts), n) for u in kept(embed_batch(utts[i:i + n], teacher))])
    langs = s.languages
    write("offline", publish.offline_features(langs, s.sampling_rate, teacher.dim).arrow_schema,
          (publish.offline_row(u, langs) for u in utts))

    def segment_all():
        links = defaultdict(list)
        for lang, entries in by_key(p for u in utts for p in segment.sentence_pairs(u)):
            for uid, found in segment.align_language((lang, entries), s.segment.align):
                links[uid].append(found)
        return [x for u in utts for pair in segment.attach_links((u.id, {"utt": [u], "links": links[u.id]}))
                for x in kept(segment.segment_with_links(pair, s.segment))]

    def measure(segmented):
        rates = defaultdict(list)
        for group in by_key(p for u in segmented for p in measurement_pairs(u)):
            for x in kept(segment.measure_language(group, s.segment.align)):
                rates[x[0]].append(x[1])
        return [x for u in segmented for x in segment.attach_crossing((u.id, {"utt": [u], "rates": rates[u.id]}))]

    segmented = timed("segment", segment_all)
    segmented = timed("monotonicity", lambda: measure(segmented))
    write("simulmt", simulmt.simulmt_features(langs).arrow_schema,
          (r for u in segmented for r in simulmt.simulmt_rows(u, langs)))

    backend = make_backend(s.align)

    def train():
        models = {}
        for lang, entries in by_key(e for u in segmented for e in training_entry(u, s.align)):
            try:
                models[lang] = backend.train(lang, [to_clip(e.utt) for e in TrainingSample._trim(entries)])[0]
            except AlignFailure as e:
                models[lang] = e
        return models

    def align_all(models):
        out, size = [], batch_size(s.align)
        for i in range(0, len(segmented), size):
            for lang, batch in by_key((u.source_lang, u) for u in segmented[i:i + size]):
                if not isinstance(models.get(lang, AlignFailure), AlignFailure):
                    results = backend.align(models[lang], [to_clip(u) for u in batch])
                    out += [x for u, r in zip(batch, results, strict=True)
                            for x in kept(finish((u, Outcome(r, 0.0)), None, None))]
        return out

    models = timed("align/train", train)
    aligned = timed("align", lambda: align_all(models))
    backend.close()
    levels, block = s.segment.levels, s.align.block_samples
    write("simulst", simulst_rows.simulst_features(langs, levels, s.sampling_rate, teacher.dim).arrow_schema,
          (simulst_rows.row(u, langs, levels, block_samples=block, sampling_rate=s.sampling_rate,
                            monotonicity={lv: seg.crossing for lv, seg in u.segmentations.items()}) for u in aligned))
    return cpu, sum(u.duration_s for u in utts), len(utts)


def beam_cpu(root: str, work: str, *overrides: str) -> tuple[float, float]:
    """CPU of a curate run, and of the dataset card in it (plots drawn with matplotlib): the card
    is curate's own work, not the runner's, so the overhead leaves it out."""
    spent, write = [], card.write

    def timed_write(*args, **kwargs):
        start = cpu_now()
        write(*args, **kwargs)
        spent.append(cpu_now() - start)

    card.write = timed_write
    try:
        start = cpu_now()
        run(settings(root, work, *overrides), [], echo=lambda *_: None)
        return cpu_now() - start, sum(spent)
    finally:
        card.write = write


def main(root: str, work: str) -> dict:
    loop(settings(root, f"{work}/warm"), f"{work}/warm", limit=40)
    cpu, audio_s, utterances = loop(settings(root, f"{work}/loop"), f"{work}/loop")
    offline = sum(cpu[k] for k in OFFLINE_STAGES)
    total = sum(cpu.values())
    beam_offline, card_offline = beam_cpu(root, f"{work}/beam_offline", "configs=[offline]", "embed.enabled=false")
    beam_full, card_full = beam_cpu(root, f"{work}/beam_full", "configs=[offline,simulst,simulmt]")
    return {
        "utterances": utterances,
        "audio_s": round(audio_s, 1),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "audio_s_per_cpu_s": {k: round(audio_s / v, 1) if v else None for k, v in cpu.items()},
        "loop_cpu_s": {"offline": round(offline, 3), "full": round(total, 3)},
        "beam_cpu_s": {"offline": round(beam_offline, 3), "full": round(beam_full, 3)},
        "card_cpu_s": {"offline": round(card_offline, 3), "full": round(card_full, 3)},
        "beam_overhead": {"offline": round((beam_offline - card_offline) / offline - 1, 3),
                          "full": round((beam_full - card_full) / total - 1, 3)},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
