"""The multi-way join as a pure function: merging releases, conflicts, duplicates, coverage."""

from __future__ import annotations

from simulforge.transforms.multiway import merge
from simulforge.transforms.records import AudioRef, Reject, Stat, Translation, Utterance


def clip(uid="mustc/ted_1_1000", lang="de", text="Hello there.", where="mustc/en-de/x.yaml:1", dur=2.0, **kw):
    return Utterance(
        id=uid,
        corpus=uid.split("/")[0],
        split="train",
        audio=AudioRef("t.wav", 1.0, dur),
        speaker="spk.1",
        source_lang="en",
        source_text=text,
        translations={lang: f"{text} ({lang})"} if lang else {},
        where=where,
        **kw,
    )


def run(key, clips, translations=(), langs=("de", "es")):
    out = list(merge(key, clips, list(translations), list(langs)))
    utts = [x for x in out if isinstance(x, Utterance)]
    rejects = [x for x in out if isinstance(x, Reject)]
    merged = sum(x.value for x in out if isinstance(x, Stat) and x.name == "parts_merged")
    assert merged + len(rejects) == len(clips) + len(translations), "parts in = merged + rejected"
    return utts, rejects


def test_releases_of_one_segment_become_one_multiway_utterance():
    utts, rejects = run("k", [clip(), clip(lang="es", where="mustc/en-es/x.yaml:4")])
    assert not rejects and len(utts) == 1
    assert utts[0].translations == {"de": "Hello there. (de)", "es": "Hello there. (es)"}


def test_a_release_with_other_english_text_is_rejected_not_merged():
    utts, rejects = run("k", [clip(), clip(lang="es", text="Hello their.", where="mustc/en-es/x.yaml:4")])
    assert list(utts[0].translations) == ["de"]
    assert [r.reason for r in rejects] == ["join_conflict"] and "English text differs" in rejects[0].detail


def test_duplicate_within_one_release_is_rejected():
    utts, rejects = run("k", [clip(), clip(where="mustc/en-de/x.yaml:9")])
    assert len(utts) == 1 and [r.reason for r in rejects] == ["duplicate_id"]


def test_shared_translations_reach_every_recording_of_a_sentence():
    a = clip("fleurs/1", lang=None, where="fleurs/en_us/train.tsv:1")
    b = clip("fleurs/2", lang=None, where="fleurs/en_us/train.tsv:2")
    utts, rejects = run("fleurs:7", [a, b], [Translation("de", "Hallo.", "fleurs/de_de/train.tsv:3")])
    assert not rejects and [u.translations for u in utts] == [{"de": "Hallo."}] * 2


def test_unrequested_languages_are_dropped_and_clips_without_any_are_rejected():
    utts, rejects = run("k", [clip(lang="fr")], langs=("de",))
    assert not utts and [r.reason for r in rejects] == ["no_requested_translation"]


def test_translation_without_recording_is_rejected():
    utts, rejects = run("fleurs:9", [], [Translation("de", "Hallo.", "fleurs/de_de/dev.tsv:1")])
    assert not utts and [r.reason for r in rejects] == ["no_source_clip"]
