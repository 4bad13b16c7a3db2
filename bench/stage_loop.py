"""The curate graph as plain function calls, timed stage by stage, and the same work through Beam.

    python -m bench.stage_loop DEMO_ROOT WORK_DIR

The loop walks the graph's own step list (pipeline/steps.py: which steps run, in which order,
which dataset configs publish from which) and runs each step's stage functions with no runner,
recording each stage's CPU seconds (children included: eflomal and espeak-ng are subprocesses);
`LOOPS` says how one step runs without Beam. Then `curate` runs the same configs through Beam's
in-process runner in this warm process, once for the offline path (embed off) and once for
offline + simulst + simulmt: the Beam overhead is each run's CPU (less the dataset card's)
against the loop's for the same stages. A small untimed loop first pays the one-time costs
(imports, compiled kernels) so neither side is charged for them.
Prints JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from functools import partial

from simulforge.pipeline import card, config, dataset_configs, steps
from simulforge.pipeline.curate import plan, run
from simulforge.transforms import audio, files, multiway, pairing, publish, readers, rooms, segment, simulate
from simulforge.transforms.align import Outcome, TrainingSample, finish, to_clip, training_entry
from simulforge.transforms.aligners import batch_size, make_backend
from simulforge.transforms.embed import embed_batch, load_teacher
from simulforge.transforms.monotonicity import measurement_pairs
from simulforge.transforms.records import Reject, StageError, Stat, Utterance

OFFLINE_STAGES = ("read", "join", "audio", "publish/offline")
CONFIGS = "configs=[offline,simulst,simulmt]"  # what both sides build: simulation has its own benchmark


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


# -- Each step without a runner: (its input records, settings, timed) -> its output records --------


def _read(tasks, s, timed):
    return timed("read", lambda: [p for t in tasks for p in kept(readers.read_task(t, s.corpus[t.corpus], s.work_dir))])


def _join(parts, s, timed):
    return timed("join", lambda: [u for key, ps in by_key(parts) for u in kept(multiway.merge(
        key, [p for p in ps if isinstance(p, Utterance)], [p for p in ps if not isinstance(p, Utterance)],
        s.languages))])


def _audio(utts, s, timed):
    clips = files.join(s.work_dir, "clips")
    return timed("audio", lambda: [u for x in utts for u in kept(audio.attach_audio(x, s.sampling_rate, clips, s.audio))])


def _embed(utts, s, timed):
    teacher, n = load_teacher(s.embed), s.embed.batch_size
    return timed("embed", lambda: [u for i in range(0, len(utts), n) for u in kept(embed_batch(utts[i:i + n], teacher))])


def _segment(utts, s, timed):
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
    return timed("monotonicity", lambda: measure(segmented))


def _align(segmented, s, timed):
    backend = make_backend(s.align)

    def train():
        models = {}
        for lang, entries in by_key(e for u in segmented for e in training_entry(u, s.align)):
            try:
                models[lang] = backend.train(lang, [to_clip(e.utt) for e in TrainingSample._trim(entries)])[0]
            except StageError as e:
                models[lang] = e
        return models

    def align_all(models):
        out, size = [], batch_size(s.align)
        for i in range(0, len(segmented), size):
            for lang, batch in by_key((u.source_lang, u) for u in segmented[i:i + size]):
                if not isinstance(models.get(lang, StageError), StageError):
                    results = backend.align(models[lang], [to_clip(u) for u in batch])
                    out += [x for u, r in zip(batch, results, strict=True)
                            for x in kept(finish((u, Outcome(r, 0.0)), None, None))]
        return out

    models = timed("align/train", train)
    try:
        return timed("align", lambda: align_all(models))
    finally:
        backend.close()


def _simulate(utts, s, timed):
    sizes = {split: len(members) for split, members in by_key((u.split, u) for u in utts)}
    groups = by_key(pairing.group_key(u, sizes, s.simulate.pairing.group_size) for u in utts)
    plans = timed(pairing.PAIRING_STAGE, lambda: [p for (split, group), members in groups for p in kept(
        pairing.plan_conversations(split, group, members, s.simulate))])
    render = partial(simulate.render_conversation, settings=s.simulate, room_specs=simulate.room_pool(s.simulate),
                     audio_dir=files.join(s.work_dir, "conversations"))
    cache = rooms.RirCache(s.simulate.room.rir_cache_size)
    return timed(simulate.STAGE, lambda: [c for p in plans for c in kept(render(p, cache))])


LOOPS = {"read": _read, "join": _join, "audio": _audio, "embed": _embed, "segment": _segment, "align": _align,
         "simulate": _simulate}


def loop(s, work: str, limit: int | None = None) -> tuple[dict[str, float], float, int]:
    """CPU seconds per stage of the whole graph in a plain loop; audio seconds; utterances."""
    cpu: dict[str, float] = {}

    def timed(name, fn):
        start = cpu_now()
        result = fn()
        cpu[name] = cpu_now() - start
        return result

    tasks, _ = plan(s, lambda *_: None)
    records = {}
    for item in steps.plan(s, dataset_configs.enabled(s)):
        step = item.step
        got = LOOPS[step.name](tasks if item.parent is None else records[item.parent.name], s, timed)
        records[step.name] = got[:limit] if step.name == "join" else got
        for c in item.configs:
            rows = (r for x in records[step.name] for r in c.rows(x, s))
            timed(f"publish/{c.NAME}", partial(publish.write_shard, os.path.join(work, f"{c.NAME}.parquet"),
                                               c.features(s).arrow_schema, rows))
    utts = records.get("embed", records["audio"])
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
    loop(settings(root, f"{work}/warm", CONFIGS), f"{work}/warm", limit=40)
    cpu, audio_s, utterances = loop(settings(root, f"{work}/loop", CONFIGS), f"{work}/loop")
    offline = sum(cpu[k] for k in OFFLINE_STAGES)
    total = sum(cpu.values())
    beam_offline, card_offline = beam_cpu(root, f"{work}/beam_offline", "configs=[offline]", "embed.enabled=false")
    beam_full, card_full = beam_cpu(root, f"{work}/beam_full", CONFIGS)
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
