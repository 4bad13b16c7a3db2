"""Readers on the generated demo corpora, plus the details each corpus's layout demands."""

from __future__ import annotations

import json
import os

from simulforge.pipeline.config import load
from simulforge.transforms.readers import plan, read_task
from simulforge.transforms.readers.common import tsv_fields
from simulforge.transforms.records import Reject, Stat, Translation, Utterance


def _read_all(root, corpus, langs=("de", "es")):
    settings = load().corpus[corpus]
    tasks, missing = plan(corpus, str(root / corpus), settings, list(langs))
    items = [x for t in tasks for x in read_task(t, settings, str(root / "work")) if not isinstance(x, Stat)]
    return tasks, missing, items


def _truth(root):
    with open(root / "truth" / "word_times.jsonl", encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, f)}


def test_mustc_segments_have_stable_ids_and_numeric_order(demo_root):
    tasks, missing, items = _read_all(demo_root, "mustc")
    assert not missing and {t.lang for t in tasks} == {"de", "es"}
    parts = [x for x in items if not isinstance(x, Reject)]
    assert parts and not [x for x in items if isinstance(x, Reject)]
    truth = _truth(demo_root)
    for key, utt in parts:
        assert key == utt.id and utt.id in truth
        assert utt.source_text == truth[utt.id]["text"]
        assert abs(utt.audio.duration_s - truth[utt.id]["duration_s"]) < 0.01
        assert utt.split in ("train", "validation", "test")
    # Within each release and talk, segments come out in numeric offset order.
    for task in tasks:
        offsets = {}
        for _, u in parts:
            if u.where.startswith(f"mustc/en-{task.lang}/data/{task.split}/"):
                offsets.setdefault(u.audio.path, []).append(u.audio.offset_s)
        assert all(v == sorted(v) for v in offsets.values())


def test_covost_reads_only_german_and_says_spanish_is_missing(demo_root):
    tasks, missing, items = _read_all(demo_root, "covost")
    assert missing == ["es"] and [t.lang for t in tasks] == ["de"]
    parts = [x for x in items if not isinstance(x, Reject)]
    assert parts and all(u.audio.path.endswith(".mp3") and set(u.translations) == {"de"} for _, u in parts)


def test_covost_fields_keep_quotes_and_unescape_backslashes():
    assert tsv_fields('a.mp3\t"Hello," she said.\tx') == ["a.mp3", '"Hello," she said.', "x"]
    assert tsv_fields("a.mp3\tone\\\ttab\tx") == ["a.mp3", "one\ttab", "x"]


def test_fleurs_extracts_audio_and_keys_recordings_by_sentence_id(demo_root):
    tasks, missing, items = _read_all(demo_root, "fleurs")
    assert not missing
    clips = [(k, x) for k, x in (i for i in items if not isinstance(i, Reject)) if isinstance(x, Utterance)]
    texts = [(k, x) for k, x in (i for i in items if not isinstance(i, Reject)) if isinstance(x, Translation)]
    keys = [k for k, _ in clips]
    assert any(keys.count(k) > 1 for k in keys), "some sentence ids have several recordings"
    assert {t.lang for _, t in texts} == {"de", "es"}
    assert all(
        os.path.exists(u.audio.path) and u.audio.path.startswith(str(demo_root / "work")) for _, u in clips
    )
