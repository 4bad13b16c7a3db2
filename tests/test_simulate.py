"""The simulate stage: pairing, timelines, rendering, determinism, the Beam graph and the published rows."""

import atexit
import hashlib
import io
import json
import random
import shutil
import tempfile
from itertools import pairwise
from pathlib import Path

import apache_beam as beam
import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from apache_beam.options.pipeline_options import PipelineOptions
from pyannote.core import Annotation, Segment, Timeline
from pyannote.database.util import load_rttm
from pyannote.metrics.diarization import DiarizationErrorRate

from simulforge.pipeline.dataset_configs import conversations as conversations_config
from simulforge.settings import ConfigError
from simulforge.transforms import pairing, rooms, simulate, sot
from simulforge.transforms.records import (
    AudioRef,
    Conversation,
    Reject,
    Segmentation,
    Stat,
    Timing,
    Utterance,
)
from simulforge.transforms.stage import tally

FS = 16000
FAST = {  # small, dry rooms: RIRs in a fraction of a second
    "room": {"pool_size": 2, "length_m": [3.0, 4.0], "width_m": [3.0, 4.0], "rt60_s": [0.15, 0.25]},
    "partner": {"distance_m": [1.0, 2.0]},
}


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """A voiced harmonic tone with a gliding pitch, a syllable-rate envelope and breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    f0 = rng.uniform(100, 220) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / FS
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    x = (voiced + 0.3 * rng.standard_normal(len(t))) * envelope
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _flac(samples: np.ndarray, fs: int = FS) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, fs, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


# Clips live in files, as the audio stage leaves them, named by their bytes.
CLIPS = Path(tempfile.mkdtemp(prefix="simulforge-simulate-"))
atexit.register(shutil.rmtree, CLIPS, ignore_errors=True)


def _audio_of(conversation: Conversation) -> bytes:
    return Path(conversation.audio.path).read_bytes()


def _with_clip(utt: Utterance, data: bytes) -> Utterance:
    path = CLIPS / f"{hashlib.sha256(data).hexdigest()}.flac"
    path.write_bytes(data)
    return utt.replace(audio=AudioRef(str(path)))


def _aligned(utt: Utterance) -> Utterance:
    """The utterance as the align stage leaves it: its words spread evenly over the clip, and one
    latency level (the default `simulate.sot.latency_level`) of two chunks."""
    words = utt.source_text.split()
    step = utt.duration_s / len(words)
    timed = [(w, round(i * step, 3), round((i + 0.9) * step, 3)) for i, w in enumerate(words)]
    level = simulate.load_settings().sot.latency_level
    seg = Segmentation(level, [" ".join(words[:2]), " ".join(words[2:])],
                       {lang: [" ".join(t.split()[:-1]), t.split()[-1]] for lang, t in utt.translations.items()})
    return utt.replace(segmentations={level: seg}, timing=Timing(timed, {level: [timed[1][2], timed[-1][2]]}))


def _utterances(
    count: int, speakers: int, seconds=(1.0, 3.0), split="train", silent=False
) -> list[Utterance]:
    rng = np.random.default_rng(count * 1000 + speakers)
    out = []
    for i in range(count):
        length = rng.uniform(*seconds)
        audio = np.zeros(int(length * FS), np.float32) if silent else _speech_like(length, i)
        utt = Utterance(
            id=f"fixture/{split}_{i:04d}",
            corpus="fixture",
            split=split,
            audio=AudioRef(f"{i}.wav"),
            speaker=f"spk{i % speakers}",
            source_lang="en",
            source_text=f"source words {i}",
            translations={"de": f"deutsche Worte {i}", "es": f"palabras {i}"},
            duration_s=len(audio) / FS,
        )
        out.append(_aligned(_with_clip(utt, _flac(audio))))
    return out


def _plans(utterances, settings, split="train", group=0):
    return [
        p
        for p in pairing.plan_conversations(split, group, utterances, settings)
        if isinstance(p, pairing.ConversationPlan)
    ]


def _pair(split, group, utterances, settings) -> list:
    """What the pairing stage yields for one group, counted as `run_stage` counts it."""
    return list(tally(pairing.PAIRING_STAGE, pairing.plan_conversations(split, group, utterances, settings),
                      len(utterances), pairing.ConversationPlan.utterance_ids))


def _render(plan, settings, cache=None):
    items = list(
        simulate.render_conversation(
            plan, cache or rooms.RirCache(4), settings=settings, room_specs=simulate.room_pool(settings),
            audio_dir=str(CLIPS / "conversations"),
        )
    )
    conversations = [c for c in items if isinstance(c, Conversation)]
    return (conversations[0] if conversations else None), items


def test_conversations_pair_two_speakers_within_the_limits():
    settings = simulate.load_settings(FAST)
    utterances = _utterances(60, speakers=6, seconds=(1.0, 9.0))
    plans = _plans(utterances, settings)
    used = [t.utterance.id for p in plans for t in p.turns]
    assert len(used) == len(set(used)) and len(used) >= 50  # each utterance once, few left over
    lo, hi = settings.pairing.turns
    for plan in plans:
        speakers = {
            role: {t.utterance.speaker for t in plan.turns if t.role == role}
            for role in (sot.SELF, sot.OTHER)
        }
        assert len(speakers[sot.SELF]) == len(speakers[sot.OTHER]) == 1
        assert speakers[sot.SELF] != speakers[sot.OTHER]
        assert lo <= len(plan.turns) <= hi
        assert plan.duration_ms() <= settings.pairing.max_length_s * 1000
        assert plan.id.startswith("train/conv-") and 0 <= plan.room_index < settings.room.pool_size
        assert settings.mix.snr_db[0] <= plan.snr_db <= settings.mix.snr_db[1]
        for role in (sot.SELF, sot.OTHER):  # nobody talks over themselves
            own = [t for t in plan.turns if t.role == role]
            assert all(a.start_ms + a.duration_ms <= b.start_ms for a, b in pairwise(own))


def test_plans_depend_on_the_data_only():
    settings = simulate.load_settings(FAST)
    utterances = _utterances(30, speakers=4)
    shuffled = random.Random(3).sample(utterances, len(utterances))

    def summary(plans):
        return [
            (p.id, p.room_index, p.snr_db, [(t.role, t.utterance.id, t.start_ms) for t in p.turns])
            for p in plans
        ]

    assert summary(_plans(utterances, settings)) == summary(_plans(shuffled, settings))
    assert summary(_plans(utterances, settings)) != summary(
        _plans(utterances, simulate.load_settings({**FAST, "seed": 5}))
    )


@pytest.mark.parametrize("target", [0.1, 0.2])
def test_overlap_ratio_lands_on_its_target_over_many_conversations(target):
    settings = simulate.load_settings({"turn_taking": {"target_overlap_ratio": target}})
    rng = np.random.default_rng(11)
    ratios = []
    for _ in range(400):
        durations = [int(d) for d in rng.integers(1000, 8000, rng.integers(2, 9))]
        while sum(durations) > settings.pairing.max_length_s * 1000:  # as pairing guarantees
            durations.pop()
        starts = pairing.draw_timeline(durations, rng, settings.turn_taking, settings.pairing.max_length_s)
        ends = [s + d for s, d in zip(starts, durations, strict=True)]
        overlap = sum(max(0, e - s) for e, s in zip(ends[:-1], starts[1:], strict=True))
        ratios.append(overlap / max(ends))
    assert np.mean(ratios) == pytest.approx(target, abs=0.01)


def test_no_overlap_without_overlap_probability():
    settings = simulate.load_settings(
        {"turn_taking": {"overlap_probability": 0.0, "target_overlap_ratio": None}}
    )
    utterances = _utterances(20, speakers=3)
    plans = _plans(utterances, settings)
    # Pairing still happens: nearly every utterance is in a conversation of two or more turns.
    assert len({t.utterance.id for p in plans for t in p.turns}) >= len(utterances) - 2
    for plan in plans:
        segments = plan.segments()
        assert len(segments) == len(plan.turns) >= 2 and {t.role for t in plan.turns} == {sot.SELF, sot.OTHER}
        # Each turn starts after the one before it has ended: a pause, never an overlap.
        assert all(a.start_ms + a.duration_ms <= b.start_ms for a, b in pairwise(plan.turns)), plan.id
        assert sot.overlap_s(segments) == 0.0


def _balance(items) -> tuple[float, float, list[Reject]]:
    """(in, out, rejects) of the pairing stage: every utterance comes out or is rejected."""
    count = {
        name: sum(s.value for s in items if isinstance(s, Stat) and s.name == name) for name in ("in", "out")
    }
    return count["in"], count["out"], [r for r in items if isinstance(r, Reject)]


def test_too_few_speakers_rejects_each_utterance_with_its_reason():
    utterances = _utterances(6, speakers=1)
    items = _pair("test", 0, utterances, simulate.load_settings(FAST))
    taken, out, rejects = _balance(items)
    assert (taken, out) == (6, 0) and not any(isinstance(p, pairing.ConversationPlan) for p in items)
    assert {r.reason for r in rejects} == {"too_few_speakers"} and {r.id for r in rejects} == {
        u.id for u in utterances
    }
    assert "1 speaker(s)" in rejects[0].detail and rejects[0].stage == pairing.PAIRING_STAGE


def test_unusable_utterances_are_rejected_and_every_utterance_is_accounted_for():
    settings = simulate.load_settings(FAST)
    good = _utterances(9, speakers=2)
    bad = [
        good[0].replace(id="x/no_audio", duration_s=None),
        _with_clip(good[0].replace(id="x/rate"), _flac(_speech_like(1.0, 1), fs=8000)),
        _with_clip(good[0].replace(id="x/stereo"), _flac(np.zeros((FS, 2), np.float32))),
        _with_clip(good[0].replace(id="x/long"), _flac(np.zeros(FS * 20, np.float32))),
        _with_clip(good[0].replace(id="x/garbage"), b"not a flac file"),
    ]
    items = _pair("train", 0, good + bad, settings)
    taken, out, rejects = _balance(items)
    assert taken == len(good + bad) == out + len(rejects)
    by_id = {r.id: r.reason for r in rejects}
    assert [by_id[u.id] for u in bad] == [
        "no_audio",
        "sampling_rate",
        "not_mono",
        "too_long",
        "undecodable_audio",
    ]
    assert set(by_id.values()) - {"unpaired"} == {
        "no_audio",
        "sampling_rate",
        "not_mono",
        "too_long",
        "undecodable_audio",
    }
    placed = {t.utterance.id for p in items if isinstance(p, pairing.ConversationPlan) for t in p.turns}
    assert len(placed) == out and not placed & set(by_id)



def test_a_pairing_that_loses_an_utterance_does_not_balance():
    """The grouped stage counts the members in and the members its outputs carry out, so an
    utterance that is neither in a conversation nor rejected shows: in > out + rejected."""
    settings = simulate.load_settings(FAST)
    utterances = _utterances(12, speakers=3)
    first = _plans(utterances, settings)[0]
    lossy = (x for x in pairing.plan_conversations("train", 0, utterances, settings)
             if not (isinstance(x, pairing.ConversationPlan) and x.id == first.id))
    taken, out, rejects = _balance(list(tally(pairing.PAIRING_STAGE, lossy, len(utterances),
                                              pairing.ConversationPlan.utterance_ids)))
    assert taken == len(utterances) == out + len(rejects) + len(first.turns)
    assert _balance(_pair("train", 0, utterances, settings))[1] == out + len(first.turns)  # what the stage lost


def test_a_speaker_left_with_utterances_gets_them_rejected_as_unpaired():
    """One utterance of spk0, six of spk1: the first conversation takes spk0's only one, then spk1
    has nobody to talk to, and what it has left comes out as `unpaired`."""
    settings = simulate.load_settings({**FAST, "pairing": {"passes": 1, "turns": [2, 4]}})
    lonely = _utterances(7, speakers=7)[:1]  # spk0
    talker = [u.replace(id=f"fixture/talker_{i}", speaker="spk1", where=f"talker.tsv:{i + 1}")
              for i, u in enumerate(_utterances(6, speakers=1))]
    items = _pair("train", 3, lonely + talker, settings)
    taken, out, rejects = _balance(items)
    plans = [p for p in items if isinstance(p, pairing.ConversationPlan)]
    placed = {t.utterance.id for p in plans for t in p.turns}
    assert len(plans) == 1 and lonely[0].id in placed and 2 <= len(placed) <= 3
    assert taken == 7 == out + len(rejects) and out == len(placed)
    assert {r.id for r in rejects} == {u.id for u in talker} - placed
    by_id = {u.id: u for u in talker}
    for r in rejects:
        assert (r.stage, r.reason, r.where) == (pairing.PAIRING_STAGE, "unpaired", by_id[r.id].where)
        assert r.detail == ("speaker spk1 had utterances left when no other speaker in split 'train' "
                            "group 3 did")


def test_utterances_without_word_times_are_left_out_with_their_reason():
    """Conversations are made of aligned utterances: one without word times (or without the latency
    level its translations are ordered by) is rejected, and the others are still paired."""
    settings = simulate.load_settings(FAST)
    good = _utterances(8, speakers=2)
    unaligned = good[0].replace(id="x/unaligned", timing=None, where="a.tsv:3")
    unlevelled = good[1].replace(id="x/no_level", segmentations={})
    items = _pair("train", 0, [*good, unaligned, unlevelled], settings)
    taken, out, rejects = _balance(items)
    assert taken == 10 == out + len(rejects)
    by_id = {r.id: r for r in rejects}
    assert (by_id["x/unaligned"].reason, by_id["x/unaligned"].where) == ("not_aligned", "a.tsv:3")
    assert "align stage" in by_id["x/unaligned"].detail
    assert by_id["x/no_level"].reason == "no_latency_level" and "'medium'" in by_id["x/no_level"].detail
    placed = {t.utterance.id for p in items if isinstance(p, pairing.ConversationPlan) for t in p.turns}
    assert len(placed) >= 7 and not placed & {"x/unaligned", "x/no_level"}
    # Utterance order needs no latency level, but word times all the same (the row publishes them).
    by_utterance = simulate.load_settings({**FAST, "sot": {"mode": "utterance"}})
    _, _, rejects = _balance(_pair("train", 0, [*good, unaligned, unlevelled], by_utterance))
    assert {r.id: r.reason for r in rejects if r.reason != "unpaired"} == {"x/unaligned": "not_aligned"}


def test_utterance_mode_keeps_utterance_level_sot():
    settings = simulate.load_settings({**FAST, "sot": {"mode": "utterance"}})
    word = simulate.load_settings(FAST)
    tokens = settings.labels.tokens()
    # A conversation whose turns overlap enough for word order to differ from utterance order.
    plan = next(p for p in _plans(_utterances(12, speakers=2), settings)
                if sot.labels(p.timed_turns(), tokens, word.sot).reordered)
    conversation, _ = _render(plan, settings)
    segments = plan.segments()
    assert conversation.sot_text == sot.sot_text(segments, tokens)
    assert conversation.sot_translations == sot.sot_translations(segments, tokens)
    for lang, chunks in conversation.translation_chunks.items():  # whole turns, timed as the turns are
        assert chunks == [{"text": s["translations"][lang], "speaker": s["speaker"], "start_s": s["start_s"],
                           "end_s": s["end_s"]} for s in segments if s["translations"][lang]]
    assert set(conversation.translation_chunks) == set(conversation.sot_translations)
    by_word = _render(plan, word)[0]
    assert conversation.words == by_word.words  # the same word times in either mode
    assert conversation.sot_text != by_word.sot_text


def test_simulation_reads_aligned_utterances():
    """simulate's parent is align: `conversations` alone (with offline) still runs segment and align;
    a latency level the segment stage does not make is refused when the graph is built."""
    from simulforge.pipeline import config, dataset_configs, steps

    settings = config.load(overrides=["configs=[offline,conversations]"])
    planned = steps.plan(settings, dataset_configs.enabled(settings))
    order = [p.step.name for p in planned]
    assert order.index("segment") < order.index("align") < order.index("simulate")
    assert next(p for p in planned if p.step.name == "simulate").parent.name == "align"
    bad = config.load(overrides=["configs=[offline,conversations]", "simulate.sot.latency_level=fastest"])
    with pytest.raises(ConfigError, match=r"simulate.sot.latency_level: 'fastest' is not one of segment.levels"):
        steps.BY_NAME["simulate"].build(None, bad)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"sot": {"mode": "token"}}, "mode"),
        ({"pairing": {"turns": [1, 4]}}, "turns"),
        ({"turn_taking": {"overlap_probability": 1.5}}, "overlap_probability"),
        ({"turn_taking": {"target_overlap_ratio": 0.8}}, "target_overlap_ratio"),
        ({"turn_taking": {"max_overlap_fraction": 0.9}}, "two"),
        ({"turn_taking": {"pause": {"shape": 0.0, "scale_s": 1.0}}}, "positive"),
        ({"sampling_rate": 22050}, "multiple of 1000"),
        ({"pairing": {"max_length_s": 40, "shuffle": True}}, "unknown key"),
    ],
)
def test_bad_pairing_settings_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        simulate.load_settings(overrides)


def test_rendered_conversation_audio_labels_and_levels():
    settings = simulate.load_settings({**FAST, "mix": {"snr_db": [40.0, 40.0]}})
    plan = _plans(_utterances(12, speakers=2, seconds=(2.0, 3.0)), settings)[0]
    conversation, items = _render(plan, settings)
    audio, fs = sf.read(conversation.audio.path, dtype="float32")
    assert fs == FS and audio.shape == (plan.duration_ms() * FS // 1000, 7) and conversation.channels == 7
    assert conversation.segments == plan.segments()
    labels = sot.labels(plan.timed_turns(), settings.labels.tokens(), settings.sot)
    assert settings.sot.mode == "word" and conversation.sot_text == labels.sot_text
    assert conversation.sot_translations == labels.sot_translations and set(labels.sot_translations) == {"de", "es"}
    assert conversation.words == labels.words and len(conversation.words) == sum(
        len(t.utterance.source_text.split()) for t in plan.turns)
    sot_stats = {s.name: s.value for s in items if isinstance(s, Stat) and s.stage == simulate.SOT_STATS}
    assert sot_stats["conversations"] == 1 and sot_stats["words"] == len(conversation.words)
    assert sot_stats["wait_ms/word"] == 0 and sot_stats["wait_ms/utterance"] == sum(labels.waits_ms["utterance"])
    room = conversation.room
    assert (
        json.loads(json.dumps(room)) == room and room["snr_db"] == 40.0 and len(room["mic_positions_m"]) == 7
    )
    assert np.abs(audio).max() <= settings.mix.peak_limit + 1e-4

    # SELF is louder than OTHER at the array: compare the stretches where only one of them talks.
    only = {}
    for role in (sot.SELF, sot.OTHER):
        mask = np.zeros(len(audio), bool)
        for s in conversation.segments:
            mask[int(s["start_s"] * FS) : int(s["end_s"] * FS)] |= s["speaker"] == role
        only[role] = mask
    self_only, other_only = only[sot.SELF] & ~only[sot.OTHER], only[sot.OTHER] & ~only[sot.SELF]
    assert 10 * np.log10(np.mean(audio[self_only] ** 2) / np.mean(audio[other_only] ** 2)) > 10.0
    assert any(isinstance(s, Stat) and s.name == "rir_cache/miss" for s in items)


def test_a_conversation_record_points_at_its_audio_instead_of_carrying_it():
    """Publish groups a split's conversations into one shard: with the audio inside the records, a
    group at demo x8 was gigabytes, and Beam's in-process runner dropped 49 of 835 conversations on
    the way (the run failed its count check). The record holds the FLAC's path; the FLAC is an object
    named by its bytes, so a retried or repeated render writes the same file."""
    import pickle

    settings = simulate.load_settings(FAST)
    conversation, _ = _render(_plans(_utterances(10, speakers=3), settings)[0], settings)
    audio = _audio_of(conversation)
    assert len(pickle.dumps(conversation)) < len(audio) / 10
    assert Path(conversation.audio.path).name == f"{hashlib.sha256(audio).hexdigest()}.flac"
    assert conversation.audio.sampling_rate == FS and conversation.audio.duration_s == pytest.approx(
        sf.info(conversation.audio.path).duration)


def test_two_runs_with_one_seed_give_identical_bytes():
    settings = simulate.load_settings(FAST)
    plans = _plans(_utterances(10, speakers=3), settings)[:3]
    shared = rooms.RirCache(4)
    first = [_audio_of(_render(p, settings, shared)[0]) for p in plans]
    again = [_audio_of(_render(p, settings, rooms.RirCache(0))[0]) for p in plans]  # recomputed RIRs, fresh run
    assert first == again
    other_seed = simulate.load_settings({**FAST, "seed": 99})
    assert _audio_of(_render(_plans(_utterances(10, speakers=3), other_seed)[0], other_seed)[0]) not in first


def test_beamformer_adds_steered_channels():
    settings = simulate.load_settings(
        {
            **FAST,
            "array": {"glasses_mics": 6},
            "beamformer": {"method": "mvdr", "steer_at": ["self", "other"]},
        }
    )
    conversation, _ = _render(_plans(_utterances(6, speakers=2), settings)[0], settings)
    assert conversation.channels == 8
    assert conversation.room["channel_names"][-2:] == ["beam_self", "beam_other"]
    assert sf.info(conversation.audio.path).channels == 8


def test_undecodable_and_silent_audio_are_rejected_per_conversation():
    settings = simulate.load_settings(FAST)
    plan = _plans(_utterances(6, speakers=2), settings)[0]
    broken = plan.turns[1].utterance
    # The header survives, the frames do not.
    plan.turns[1].utterance = _with_clip(broken, Path(broken.audio.path).read_bytes()[:200])
    conversation, items = _render(plan, settings)
    assert conversation is None and [r.reason for r in items if isinstance(r, Reject)] == [
        "undecodable_audio"
    ]
    silent = _plans(_utterances(6, speakers=2, silent=True), settings)[0]
    conversation, items = _render(silent, settings)
    assert conversation is None and [r.reason for r in items if isinstance(r, Reject)] == ["silent_audio"]


def test_rows_load_with_datasets_and_decode_to_channels_by_samples(tmp_path):
    settings = simulate.load_settings(FAST)
    plans = _plans(_utterances(8, speakers=2), settings)[:2]
    conversations = [_render(p, settings)[0] for p in plans]
    languages = ["de", "es", "fr"]  # fr: requested, but no conversation has it
    features = conversations_config.conversation_features(languages, FS)
    rows = [conversations_config.row(c, languages) for c in conversations]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), path)

    loaded = datasets.load_dataset("parquet", data_files={"train": str(path)}, split="train")
    assert loaded.features == features
    first = loaded[0]
    samples = first["audio"].get_all_samples()
    assert tuple(samples.data.shape) == (7, round(rows[0]["duration"] * FS)) and samples.sample_rate == FS
    assert first["sot_text"] == conversations[0].sot_text
    assert first["sot_translation"] == {**conversations[0].sot_translations, "fr": None}
    assert first["segments"][0]["speaker"] in (sot.SELF, sot.OTHER)
    assert first["words"] == conversations[0].words and first["words"]
    assert first["room"]["dims_m"] == conversations[0].room["dims_m"]
    rttm = tmp_path / "first.rttm"
    rttm.write_text(first["rttm"])
    truth = Annotation(uri=plans[0].id)
    for k, turn in enumerate(plans[0].turns):
        truth[Segment(turn.start_ms / 1000, (turn.start_ms + turn.duration_ms) / 1000), k] = turn.role
    uem = Timeline([truth.get_timeline().extent()])
    der = DiarizationErrorRate(collar=0.0, skip_overlap=False)(truth, load_rttm(rttm)[plans[0].id], uem=uem)
    assert der == pytest.approx(0.0, abs=1e-9)
    # Each published word lies inside a turn of its speaker, and the SOT tokens say who spoke it.
    for w in first["words"]:
        assert any(t.role == w["speaker"] and t.start_ms <= 1000 * w["start_s"] <= 1000 * w["end_s"]
                   <= t.start_ms + t.duration_ms for t in plans[0].turns), w
    pieces = sot.split_sot(first["sot_text"], settings.labels.tokens())
    assert [role for role, text in pieces for _ in text.split()] == [w["speaker"] for w in first["words"]]


def _digester():
    def digest(conversation: Conversation) -> str:
        labels = [conversation.sot_text, conversation.sot_translations, conversation.words]
        with open(conversation.audio.path, "rb") as f:
            return hashlib.sha256(f.read() + json.dumps(labels, sort_keys=True).encode()).hexdigest()

    return digest


# The audio and the labels of a conversation; a closure, which Beam's workers get by value (they cannot
# import this test module).
_digest = _digester()


def _run_beam(utterances, settings, out_dir, options):
    """{conversation id: sha256 of its FLAC}, the reject reasons and the summed stats of one Beam run."""
    with beam.Pipeline(options=PipelineOptions(options)) as pipeline:
        conversations, rejects, stats = (
            pipeline | beam.Create(utterances) | beam.Reshuffle() | simulate.Simulate(settings, str(out_dir / "audio"))
        )
        (
            conversations
            | beam.Map(lambda c: json.dumps([c.id, _digest(c)]))
            | beam.io.WriteToText(str(out_dir / "digests"))
        )
        (
            rejects
            | "RejectJson" >> beam.Map(lambda r: json.dumps([r.stage, r.reason]))
            | "WriteRejects" >> beam.io.WriteToText(str(out_dir / "rejects"))
        )
        (
            stats
            | "StatJson" >> beam.Map(lambda s: json.dumps([s.stage, s.name, s.value]))
            | "WriteStats" >> beam.io.WriteToText(str(out_dir / "stats"))
        )

    def lines(prefix):
        return [json.loads(line) for f in out_dir.glob(f"{prefix}*") for line in f.read_text().splitlines()]

    sums = {}
    for stage, name, value in lines("stats"):
        sums[stage, name] = sums.get((stage, name), 0) + value
    return dict(lines("digests")), sorted(map(tuple, lines("rejects"))), sums


@pytest.mark.slow
def test_multi_process_runner_gives_the_in_process_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = simulate.load_settings({**FAST, "pairing": {"group_size": 8}})
    utterances = _utterances(16, speakers=3, seconds=(0.8, 1.5)) + _utterances(4, speakers=1, split="test")
    in_process = _run_beam(utterances, settings, tmp_path / "a", [])
    multi = _run_beam(
        utterances,
        settings,
        tmp_path / "b",
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    assert in_process[:2] == multi[:2]  # stats differ where they should: each worker has its own RIR cache
    digests, rejects, sums = in_process
    assert rejects.count((pairing.PAIRING_STAGE, "too_few_speakers")) == 4  # the test split has one speaker
    for stage in (pairing.PAIRING_STAGE, simulate.STAGE):  # each stage balances: in == out + rejected
        assert sums[stage, "in"] == sums.get((stage, "out"), 0) + sum(1 for s, _ in rejects if s == stage)
    assert sums[simulate.STAGE, "rir_cache/miss"] + sums.get((simulate.STAGE, "rir_cache/hit"), 0) == len(
        digests
    )
    assert sums[pairing.PAIRING_STAGE, "in"] == len(utterances)
    groups = {}
    for utt in utterances:
        key, _ = pairing.group_key(utt, {"train": 16, "test": 4}, settings.pairing.group_size)
        groups.setdefault(key, []).append(utt)
    plans = [p for (split, group), members in groups.items() for p in _plans(members, settings, split, group)]
    assert len(plans) >= 3 and sums[simulate.STAGE, "in"] == len(plans)
    assert digests == {p.id: _digest(_render(p, settings)[0]) for p in plans}


def test_disabled_stage_produces_nothing():
    """With `simulate.enabled` false the run neither builds the stage nor publishes `conversations`."""
    from simulforge.pipeline import config, dataset_configs, steps

    settings = config.load(overrides=["simulate.enabled=false"])
    configs = dataset_configs.enabled(settings)
    assert "conversations" in settings.configs and conversations_config not in configs
    assert "simulate" not in {planned.step.name for planned in steps.plan(settings, configs)}
    assert steps.plan(config.load(), dataset_configs.enabled(config.load()))[-1].step.name == "simulate"
