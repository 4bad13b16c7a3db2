"""The curate stages as plain function calls, timed one by one (CPU seconds); prints JSON.

    python -m bench.stage_loop DEMO_ROOT WORK_DIR
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

from simulforge.pipeline import config
from simulforge.pipeline.curate import plan, run
from simulforge.transforms import audio, multiway, publish, readers, segment
from simulforge.transforms.embed import embed_batch, load_teacher
from simulforge.transforms.records import Reject, Stat, Utterance


def kept(items):
    return [x for x in items if not isinstance(x, (Reject, Stat))]


def main(root: str, work: str) -> dict:
    s = config.load(overrides=[f"input={root}", f"work_dir={work}"])
    s.work_dir = os.path.abspath(s.work_dir)
    tasks, _ = plan(s, lambda *_: None)
    cpu: dict[str, float] = {}

    def cpu_now() -> float:
        t = os.times()  # children too: eflomal and espeak run as subprocesses
        return t.user + t.system + t.children_user + t.children_system

    def timed(name, fn):
        start = cpu_now()
        result = fn()
        cpu[name] = cpu_now() - start
        return result

    parts = timed("read", lambda: [p for t in tasks for p in kept(readers.read_task(t, s.corpus[t.corpus], s.work_dir))])

    def join():
        groups = defaultdict(list)
        for key, part in parts:
            groups[key].append(part)
        return [u for key, ps in sorted(groups.items()) for u in kept(multiway.merge(
            key, [p for p in ps if isinstance(p, Utterance)], [p for p in ps if not isinstance(p, Utterance)],
            s.languages))]

    utts = timed("join", join)
    clips = os.path.join(s.work_dir, "clips")
    utts = timed("audio", lambda: [u for x in utts for u in kept(audio.attach_audio(x, s.sampling_rate, clips))])
    schema = publish.offline_features(s.languages, s.sampling_rate).arrow_schema
    timed("publish", lambda: publish.write_shard(os.path.join(work, "offline.parquet"), schema,
                                                 (publish.offline_row(u, s.languages) for u in utts)))
    teacher = load_teacher(s.embed)
    batch = s.embed.batch_size
    timed("embed", lambda: [u for i in range(0, len(utts), batch) for u in kept(embed_batch(utts[i:i + batch], teacher))])

    def segment_align():
        by_lang = defaultdict(list)
        for u in utts:
            for lang, entry in segment.sentence_pairs(u):
                by_lang[lang].append(entry)
        links = defaultdict(list)
        for lang, entries in by_lang.items():
            for uid, found in segment.align_language((lang, entries), s.segment.align):
                links[uid].append(found)
        return [x for u in utts for pair in segment.attach_links((u.id, {"utt": [u], "links": links[u.id]}))
                for x in kept(segment.segment_with_links(pair, s.segment))]

    timed("segment", segment_align)
    audio_s = sum(u.duration_s for u in utts)
    offline = sum(cpu[k] for k in ("read", "join", "audio", "publish"))
    # The same offline path through Beam's in-process runner, in this warm process.
    beam_settings = config.load(overrides=[f"input={root}", f"work_dir={work}", f"output={work}/beam_out",
                                           "configs=[offline]", "embed.enabled=false"])
    start = cpu_now()
    run(beam_settings, [], echo=lambda *_: None)
    beam_cpu = cpu_now() - start
    return {
        "offline_beam_cpu_s": round(beam_cpu, 3),
        "beam_overhead": round(beam_cpu / offline - 1, 3),
        "utterances": len(utts),
        "audio_s": round(audio_s, 1),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "offline_cpu_s": round(offline, 3),
        "audio_s_per_cpu_s": {k: round(audio_s / v, 1) if v else None for k, v in cpu.items()},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
