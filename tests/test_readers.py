"""Readers on the generated demo corpora, plus the details each corpus's layout demands."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import soundfile as sf

from simulforge.demo import corpora
from simulforge.pipeline.config import load
from simulforge.settings import ConfigError
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


def _spoken(root, corpus):
    """What the demo generator wrote for `corpus`: its truth (clip id -> text, duration, speaker), and
    per English sentence the parallel row and the dataset split of that sentence (one for every corpus)."""
    truth = {k: v for k, v in _truth(root).items() if v["corpus"] == corpus}
    meta = dict(line.split(": ", 1) for line in (root / "README.txt").read_text().splitlines() if ": " in line)
    assert meta["rounds"] == "1"  # one round: every text is a sentence of sentences.tsv
    sentences = corpora.load_sentences()[: int(meta["sentences"])]
    split_names = load().corpus[corpus].splits
    splits = corpora._assign_splits(len(sentences), int(meta["seed"]))
    return truth, {s.en: (s, split_names[split]) for s, split in zip(sentences, splits, strict=True)}


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
    assert not [x for x in items if isinstance(x, Reject)]
    truth, sentences = _spoken(demo_root, "covost")
    clips = dict(items)
    # Every clip the generator wrote, once, keyed by its id, with its text, translation and split.
    assert len(items) == len(clips) == len(truth) and set(clips) == set(truth)
    for uid, utt in clips.items():
        sentence, split = sentences[truth[uid]["text"]]
        assert (utt.id, utt.corpus, utt.source_text, utt.translations, utt.split) == (
            uid, "covost", sentence.en, {"de": sentence.de}, split)
        assert utt.audio.path == str(demo_root / "covost" / "clips" / f"{uid[len('covost/'):]}.mp3")
    # One Common Voice client id per demo speaker, and no two speakers share one.
    speakers = {(truth[uid]["speaker"], utt.speaker) for uid, utt in clips.items()}
    assert len(speakers) == len({a for a, _ in speakers}) == len({b for _, b in speakers}) > 1


def test_covost_fields_keep_quotes_and_unescape_backslashes():
    assert tsv_fields('a.mp3\t"Hello," she said.\tx') == ["a.mp3", '"Hello," she said.', "x"]
    assert tsv_fields("a.mp3\tone\\\ttab\tx") == ["a.mp3", "one\ttab", "x"]


def test_fleurs_extracts_audio_and_keys_recordings_by_sentence_id(demo_root):
    tasks, missing, items = _read_all(demo_root, "fleurs")
    assert not missing and not [x for x in items if isinstance(x, Reject)]
    truth, sentences = _spoken(demo_root, "fleurs")
    clips = [(k, x) for k, x in items if isinstance(x, Utterance)]
    texts = [(k, x) for k, x in items if isinstance(x, Translation)]
    assert len(clips) + len(texts) == len(items)
    # Every recording the generator wrote, once, with its text, split and duration, extracted whole.
    by_id = {u.id: (k, u) for k, u in clips}
    split_dirs = {name: folder for folder, name in load().corpus["fleurs"].splits.items()}
    assert len(by_id) == len(clips) == len(truth) and set(by_id) == set(truth)
    for uid, (_, utt) in by_id.items():
        sentence, split = sentences[truth[uid]["text"]]
        assert (utt.corpus, utt.source_text, utt.split, utt.speaker) == ("fleurs", sentence.en, split, uid)
        assert utt.audio.duration_s == truth[uid]["duration_s"]
        path = utt.audio.path
        assert path == str(demo_root / "work" / "fleurs" / "en_us" / split_dirs[split] / f"{uid[len('fleurs/'):]}.wav")
        assert sf.info(path).frames == round(truth[uid]["duration_s"] * 16000)
    # A key is a sentence id: recordings of one sentence share it, other sentences have their own.
    text_of_key = {k: {u.source_text for kk, u in clips if kk == k} for k, _ in clips}
    assert all(len(t) == 1 for t in text_of_key.values())
    assert len(text_of_key) == len({t["text"] for t in truth.values()})
    assert Counter(k for k, _ in clips).most_common(1)[0][1] > 1, "some sentence ids have several recordings"
    # Each translation row joins its sentence's recordings and carries that sentence's translation.
    for lang, locale in (("de", "de_de"), ("es", "es_419")):
        rows = [(k, t) for k, t in texts if t.lang == lang]
        assert len(rows) == sum(_lines(demo_root / "fleurs" / locale / f"{s}.tsv") for s in ("train", "dev", "test"))
        for key, t in rows:
            [text] = text_of_key[key]
            assert t.text == getattr(sentences[text][0], lang), (key, lang)
        assert {k for k, _ in rows} == set(text_of_key)


def _lines(path):
    return len(path.read_text(encoding="utf-8").splitlines())


# -- where the corpora are: corpus.<name>.path and FLEURS locales --------------------------------


def _offline_rows(out):
    import datasets

    ds = datasets.load_dataset(str(out), "offline")
    return [row for split in ds for row in ds[split].remove_columns(["audio"])]


def test_a_corpus_moved_out_of_the_input_folder_is_read_from_its_path(demo_root, tmp_path):
    from conftest import curate

    elsewhere = tmp_path / "elsewhere" / "MUSTC_v1.0"
    shutil.copytree(demo_root / "mustc", elsewhere)
    empty = tmp_path / "input"  # the input folder holds no mustc/
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"mustc: corpus folder {empty}/mustc does not exist"):
        curate(empty, tmp_path / "refused", corpora=("mustc",))

    curate(empty, tmp_path / "out", corpora=("mustc",), overrides=[f"corpus.mustc.path={elsewhere}"])
    truth = {k: v for k, v in _truth(demo_root).items() if v["corpus"] == "mustc"}
    rows = _offline_rows(tmp_path / "out")
    assert sorted(r["id"] for r in rows) == sorted(truth)
    assert all(r["source_text"] == truth[r["id"]]["text"] for r in rows)


def test_fleurs_reads_the_locale_folders_of_the_requested_languages_only(demo_root, tmp_path):
    """German under a locale folder of another name, set in `locales`; Spanish not asked for, and
    its folder unreadable: the run reads en_us and de_at, and nothing of es_419."""
    from conftest import curate

    root = tmp_path / "FLEURS"
    shutil.copytree(demo_root / "fleurs", root)
    (root / "de_de").rename(root / "de_at")
    for tsv in (root / "es_419").glob("*.tsv"):
        tsv.write_bytes(b"\xff\xfe not a FLEURS row\n")
    overrides = [f"corpus.fleurs.path={root}", "corpus.fleurs.locales.de=de_at"]

    settings = load(overrides=overrides)
    tasks, missing = plan("fleurs", str(root), settings.corpus["fleurs"], ["de"])
    assert not missing
    assert sorted(t.path for t in tasks) == sorted(
        str(root / locale / f"{split}.tsv") for locale in ("en_us", "de_at") for split in ("train", "dev", "test"))

    stats = curate(tmp_path / "input", tmp_path / "out", langs=("de",), corpora=("fleurs",), overrides=overrides)
    read = sum(_lines(root / locale / f"{split}.tsv") for locale in ("en_us", "de_at") for split in ("train", "dev", "test"))
    assert stats["stages"]["read"]["in"] == read and stats["stages"]["read"]["rejected_total"] == 0
    assert (tmp_path / "out" / "rejected.jsonl").read_text() == ""
    truth, sentences = _spoken(demo_root, "fleurs")
    rows = _offline_rows(tmp_path / "out")
    assert sorted(r["id"] for r in rows) == sorted(truth)
    for row in rows:
        assert row["translation"] == {"de": sentences[row["source_text"]][0].de}


@pytest.mark.parametrize("langs, overrides, error, message", [
    # The English folder is where every FLEURS clip comes from: without it there is nothing to read.
    (["de"], ["corpus.fleurs.locales.en=en_xx"], FileNotFoundError,
     "fleurs: no English transcripts in {root}/en_xx (corpus.fleurs.locales.en): none of train.tsv, dev.tsv, test.tsv"),
    # A language whose locale folder is not there, or that `locales` does not name, is one FLEURS lacks.
    (["de"], ["corpus.fleurs.locales.de=de_xx"], ConfigError, "languages: no corpus has English→de (looked in fleurs)"),
    (["sv"], [], ConfigError, "languages: no corpus has English→sv (looked in fleurs)"),
])
def test_an_unknown_fleurs_locale_is_a_clear_error(demo_root, langs, overrides, error, message):
    from simulforge.pipeline.curate import plan as plan_run

    root = demo_root / "fleurs"
    settings = load(overrides=[f"input={demo_root}", "corpora=[fleurs]", f"languages=[{','.join(langs)}]", *overrides])
    said = []
    with pytest.raises(error) as refused:
        plan_run(settings, said.append)
    assert message.format(root=root) in str(refused.value)
    if error is ConfigError:
        assert said == [f"fleurs: no English→{langs[0]} in this corpus; curating it for the other languages"]
