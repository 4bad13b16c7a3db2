"""Input defects that published wrong rows or lost clips (issue 14, items 5-10): each one now gets a
specific reject, or a fix recorded in the row's `fixes`; every test curates a damaged demo copy."""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import unicodedata

import datasets
import numpy as np
import pytest
import soundfile as sf
from test_bad_input import DE, covost_rows, run

from conftest import curate
from simulforge.settings import ConfigError
from simulforge.transforms import align
from simulforge.transforms.aligners import Aligned
from simulforge.transforms.readers.common import clean_text
from simulforge.transforms.records import AudioRef, Reject, Segmentation, Stat, Utterance

ES = "mustc/en-es/data/train"
COVOST_TSV = "covost/covost_v2.en_de.tsv"


def offline(out):
    """The published `offline` rows of every split by id, audio left encoded. `datasets` caches a
    local folder by its name and card, not its shards: a private cache reads these shards."""
    splits = datasets.load_dataset(str(out), "offline", cache_dir=str(out) + ".hf-cache")
    return {r["id"]: r for ds in splits.values() for r in ds.cast_column("audio", datasets.Audio(decode=False))}


def samples(row):
    return sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")[0]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def set_time(line, key, value):
    return re.sub(rf"{key}: [^,}}]+", f"{key}: {value}", line)


# -- 5: speech that runs to the clip's last sample ------------------------------------------------


def _aligned(end, backend="gmm", extra_args=(), counted=None):
    """What the align stage makes of a 3.236 s clip whose aligner put the last word end at `end`:
    the aligned utterance or its reject (and into `counted`, the names of the stats it yields)."""
    settings = align.load_settings({"backend": backend, "mfa": {"extra_args": list(extra_args)}})
    text = "Well, the train was late."
    utt = Utterance("mustc/t_1", "mustc", "train", AudioRef("t.flac"), "spk", "en", text, {"de": "Der Zug."},
                    duration_s=3.236, fixes=["resampled 48000->16000"],
                    segmentations={"low": Segmentation("low", ["Well, the train", "was late."],
                                                       {"de": ["Der Zug", "."]})})
    words = [("Well", 0.1, 0.4), ("the", 0.4, 0.6), ("train", 0.6, 1.2), ("was", 1.3, 1.9), ("late", 2.0, end)]
    fn = align._Finish(settings)
    produced = list(fn((utt, align.Outcome(Aligned(words), 0.0)), None))
    if counted is not None:
        counted += [x.name for x in produced if isinstance(x, Stat)]
    [result] = [x for x in produced if isinstance(x, Utterance | Reject)]
    return result


def test_a_last_word_within_one_aligner_frame_of_the_end_is_clamped_and_recorded():
    counted = []
    utt = _aligned(3.2412, counted=counted)  # gmm: 10 ms frames
    assert isinstance(utt, Utterance), utt
    assert counted.count("word_times_clamped") == 1  # stats.json's fixes
    assert utt.timing.words[-1] == ("late", 2.0, 3.236) and utt.timing.chunk_end_s["low"] == [1.2, 3.236]
    assert utt.fixes == ["resampled 48000->16000", "last word end clamped 3.2412->3.236 s"]
    # MFA works on its own frame: 10 ms by default, 1 ms with --frame_shift 1.
    assert isinstance(_aligned(3.2412, "mfa"), Utterance)
    r = _aligned(3.2412, "mfa", ["--frame_shift", "1"])
    assert isinstance(r, Reject) and r.reason == "chunk_outside_clip", r


def test_a_word_more_than_a_frame_past_the_end_is_still_outside():
    counted = []
    r = _aligned(3.2461, counted=counted)
    assert isinstance(r, Reject) and "word_times_clamped" not in counted, r
    assert (r.reason, r.detail) == ("chunk_outside_clip", "chunk 1 ends at 3.246 s, outside the 3.236 s clip")


# -- 6: ids that read alike -----------------------------------------------------------------------


def test_ids_that_read_alike_keep_their_own_audio_and_name(demo_copy, tmp_path):
    covost = demo_copy / "covost"
    rows = covost_rows(demo_copy)
    sources = [r.split("\t") for r in rows[1:] if r.endswith("\ttrain")][:4]
    # "9 9" and "9_9" once shared a cache file; "sub/x" and "sub_x" a published file name.
    names = ["common_voice_en_9 9.mp3", "common_voice_en_9_9.mp3", "sub/x.mp3", "sub_x.mp3"]
    (covost / "clips" / "sub").mkdir()
    validated = (covost / "validated.tsv").read_text(encoding="utf-8").splitlines()
    for name, (clip, sentence, translation, client, split) in zip(names, sources, strict=True):
        shutil.copy(covost / "clips" / clip, covost / "clips" / name)
        rows.append("\t".join([name, sentence, translation, client, split]))
        validated.append("\t".join([client, name, sentence, "2", "0", "", "", "", "en", ""]))
    write_lines(covost / "covost_v2.en_de.tsv", rows)
    write_lines(covost / "validated.tsv", validated)
    _, found = run(demo_copy, tmp_path, corpora=("covost",), langs=("de",))
    assert found == []
    published = offline(tmp_path / "out")
    copies = [published["covost/" + name.rsplit(".", 1)[0]] for name in names]
    for copy, source in zip(copies, sources, strict=True):
        original = published["covost/" + source[0].rsplit(".", 1)[0]]
        assert np.array_equal(samples(copy), samples(original)), copy["id"]
    assert len({c["audio"]["path"] for c in copies}) == 4, [c["audio"]["path"] for c in copies]


# -- 7: segment times ---------------------------------------------------------------------------


def test_bad_segment_times_are_rejected_not_published_as_the_rest_of_the_talk(demo_copy, tmp_path):
    yaml = demo_copy / DE / "txt" / "train.yaml"
    lines = yaml.read_text().splitlines()
    lines[0] = set_time(lines[0], "duration", "-1.5")
    lines[1] = set_time(lines[1], "duration", "0")
    lines[2] = set_time(lines[2], "offset", "-0.5")
    lines[3] = set_time(lines[3], "offset", "9999.0")
    write_lines(yaml, lines)
    _, found = run(demo_copy, tmp_path, corpora=("mustc",), langs=("de",))
    bad = {r["where"].rsplit(":", 1)[1]: r for r in found if r["reason"] == "bad_segment_time"}
    assert sorted(bad) == ["1", "2", "3", "4"], found
    assert [bad[n]["stage"] for n in "1234"] == ["read", "read", "read", "audio"]
    assert "duration -1.5 s" in bad["1"]["detail"] and "starts at 9999.000 s, past the end of" in bad["4"]["detail"]
    declared = {}  # segment id -> declared duration
    for line in lines:
        wav, offset, duration = (re.search(rf"{key}: ([^,}}]+)", line)[1].strip()
                                 for key in ("wav", "offset", "duration"))
        declared[f"mustc/{wav.rsplit('.', 1)[0]}_{round(float(offset) * 1000)}"] = float(duration)
    published = offline(tmp_path / "out")
    assert not set(list(declared)[:4]) & set(published)
    assert all(abs(published[i]["duration"] - d) < 0.01 for i, d in list(declared.items())[4:])


# -- 8: text that cannot be the clip's speech, clips too long ----------------------------------------


def test_text_that_cannot_be_spoken_in_the_clip(demo_copy, tmp_path):
    rows = covost_rows(demo_copy)
    fields = [r.split("\t") for r in rows]
    fields[1][1] = " ".join(["word"] * 2000)  # 2,000 words on a clip of a few seconds
    fields[2][1] = "... — !"  # punctuation only: nothing to say
    fields[3][2] = "¡…?"  # nor to translate
    fields[4][1] = "x" * 400  # one 400-letter token
    write_lines(demo_copy / COVOST_TSV, ["\t".join(f) for f in fields])
    _, found = run(demo_copy, tmp_path, corpora=("covost",), langs=("de",))
    by_line = {int(r["where"].rsplit(":", 1)[1]): r for r in found}
    assert {n: (r["stage"], r["reason"]) for n, r in by_line.items()} == {
        2: ("audio", "implausible_length"), 3: ("read", "empty_text"), 4: ("read", "empty_text"),
        5: ("audio", "implausible_length")}
    assert re.search(r"2000 words in \d\.\d{3} s is \d+\.\d\d per second, outside the 0\.1-10", by_line[2]["detail"])
    assert "400 letters/digits in" in by_line[5]["detail"] and "0-50" in by_line[5]["detail"]
    assert "no letter or digit" in by_line[3]["detail"] and "'¡…?'" in by_line[4]["detail"]


def test_a_clip_longer_than_the_maximum_is_too_long(demo_copy, tmp_path):
    yaml = demo_copy / DE / "txt" / "train.yaml"
    lines = yaml.read_text().splitlines()
    talk = demo_copy / DE / "wav" / re.search(r"wav: ([^,}]+)", lines[0])[1].strip()
    audio, rate = sf.read(talk, dtype="int16")
    sf.write(talk, np.concatenate([audio, np.zeros(70 * rate, np.int16)]), rate, subtype="PCM_16")
    lines[0] = set_time(lines[0], "duration", "65.0")
    write_lines(yaml, lines)
    _, found = run(demo_copy, tmp_path, corpora=("mustc",), langs=("de",))
    [r] = found
    assert (r["stage"], r["reason"]) == ("audio", "too_long") and r["where"].endswith("train.yaml:1")
    assert r["detail"] == "the clip lasts 65.000 s, more than the 60 s allowed (audio.max_duration_s)"


def test_audio_settings_are_checked_before_any_work():
    from simulforge.pipeline.config import load

    assert load().audio.max_duration_s == 60
    with pytest.raises(ConfigError, match=r"audio.words_per_second: expected \[min, max\]"):
        load(overrides=["audio.words_per_second=[5, 4]"])


# -- 9: Unicode ------------------------------------------------------------------------------------


def _shared_segment(root):
    """Line numbers (0-based) of one train segment in both the en-de and the en-es release."""
    entries = [[re.sub(r"rW: \d+, uW: \d+, ", "", e) for e in (root / rel / "txt" / "train.yaml").read_text()
                .splitlines()] for rel in (DE, ES)]
    shared = next(e for e in entries[0] if e in entries[1])
    return entries[0].index(shared), entries[1].index(shared), re.search(r"wav: ted_(\d+)", shared)[1]


def test_texts_are_composed_to_nfc_and_lose_zero_width_characters(demo_copy, tmp_path):
    i_de, i_es, talk = _shared_segment(demo_copy)
    en_de, en_es = demo_copy / DE / "txt" / "train.en", demo_copy / ES / "txt" / "train.en"
    de, es = demo_copy / DE / "txt" / "train.de", demo_copy / ES / "txt" / "train.es"
    texts = {p: p.read_text(encoding="utf-8").splitlines() for p in (en_de, en_es, de, es)}
    sentence = "Café, déjà vu: " + texts[en_de][i_de]
    texts[en_de][i_de] = unicodedata.normalize("NFC", sentence)  # one release NFC...
    texts[en_es][i_es] = unicodedata.normalize("NFD", sentence)  # ...the other NFD
    texts[de][i_de] = "\ufeff" + texts[de][i_de].replace(" ", " \u200b", 1)
    texts[es][i_es] = texts[es][i_es].replace(" ", "\u200c ", 1)  # a joiner next to Latin letters is noise
    for path, lines in texts.items():
        write_lines(path, lines)
    fleurs = demo_copy / "fleurs" / "de_de" / "train.tsv"
    rows = [r.split("\t") for r in fleurs.read_text(encoding="utf-8").splitlines()]
    rows[0][2] = rows[0][2].replace(" ", "\u2060 ", 1)
    write_lines(fleurs, ["\t".join(r) for r in rows])

    stats, found = run(demo_copy, tmp_path, corpora=("mustc", "fleurs"), langs=("de", "es"))
    assert found == []  # no join_conflict between the releases
    # Counted per record read: the en-de and en-es lines (one part each) and the FLEURS de row.
    assert stats["fixes"] == {"fixed_text": 3}
    published = offline(tmp_path / "out")
    [row] = [r for r in published.values() if r["source_text"].startswith("Café") and f"ted_{talk}_" in r["id"]]
    assert row["source_text"] == unicodedata.normalize("NFC", sentence)
    assert row["translation"]["de"] == de.read_text(encoding="utf-8").splitlines()[i_de][1:].replace("\u200b", "")
    assert "\u200c" not in row["translation"]["es"] and row["translation"]["es"]
    assert set(row["fixes"]) == {"removed 2 zero-width characters from translation de", "source text normalised to NFC",
                                 "removed 1 zero-width character from translation es"}
    sentence_id = rows[0][0]
    en = [r.split("\t") for r in (demo_copy / "fleurs" / "en_us" / "train.tsv").read_text().splitlines()]
    clips = ["fleurs/" + r[1].rsplit(".", 1)[0] for r in en if r[0] == sentence_id]
    assert clips and all(published[c]["fixes"] == ["removed 1 zero-width character from translation de"]
                         for c in clips)
    assert all("\u2060" not in published[c]["translation"]["de"] for c in clips)


def test_joiners_stay_where_they_spell_a_word():
    assert clean_text("می\u200cخواهم", "fa line 1", "fa") == ("می\u200cخواهم", [])  # Persian: ZWNJ spells
    assert clean_text("क्\u200dष", "hi line 1", "hi") == ("क्\u200dष", [])  # Devanagari: ZWJ spells
    assert clean_text("Auf\u200clage", "de line 1", "de") == ("Auflage", ["removed 1 zero-width character "
                                                                          "from translation de"])
    assert clean_text("ok\u200d", "en line 1")[0] == "ok"  # the English source has no use for them


# -- 10: links out of the corpus ------------------------------------------------------------------


def test_links_out_of_the_corpus_are_refused(demo_copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()

    def link_out(path):
        """Move a corpus file out of the corpus, leaving a link to it in its place."""
        target = outside / f"{len(list(outside.iterdir()))}-{path.name}"
        shutil.move(path, target)
        path.symlink_to(target)

    clip = covost_rows(demo_copy)[1].split("\t")[0]
    link_out(demo_copy / "covost" / "clips" / clip)
    yaml = (demo_copy / DE / "txt" / "train.yaml").read_text().splitlines()
    talk = re.search(r"wav: ([^,}]+)", yaml[0])[1].strip()
    link_out(demo_copy / DE / "wav" / talk)
    link_out(demo_copy / "mustc" / "en-de" / "data" / "dev" / "txt" / "dev.de")
    link_out(demo_copy / "fleurs" / "de_de" / "dev.tsv")
    link_out(demo_copy / "fleurs" / "en_us" / "audio" / "test.tar.gz")
    # A link that stays inside the corpus is fine: en-es's copy of a talk is en-de's.
    es_yaml = (demo_copy / ES / "txt" / "train.yaml").read_text().splitlines()
    es_talk = next(w for w in (re.search(r"wav: ([^,}]+)", e)[1].strip() for e in es_yaml)
                   if w != talk and (demo_copy / DE / "wav" / w).exists())
    (demo_copy / ES / "wav" / es_talk).unlink()
    (demo_copy / ES / "wav" / es_talk).symlink_to(f"../../../../en-de/data/train/wav/{es_talk}")

    _, found = run(demo_copy, tmp_path, langs=("de", "es"))
    unsafe = [r for r in found if r["reason"] == "unsafe_path"]
    # The FLEURS test translations lose their English clips with the archive.
    lost = [r for r in found if r["reason"] == "no_source_clip"]
    assert len(unsafe) + len(lost) == len(found) and all("/test.tsv:" in r["where"] for r in lost)
    assert all(f"links to {os.path.realpath(outside)}/" in r["detail"] for r in unsafe), unsafe

    def ids(where):
        return [r["id"] for r in unsafe if where(r)]

    assert ids(lambda r: r["id"].startswith("covost/")) == ["covost/" + clip.rsplit(".", 1)[0]]
    assert len(ids(lambda r: f"wav {talk!r}" in r["detail"])) == sum(f"wav: {talk}" in e for e in yaml)
    dev_entries = (demo_copy / "mustc" / "en-de" / "data" / "dev" / "txt" / "dev.yaml").read_text().splitlines()
    assert len(ids(lambda r: "dev.de links to" in r["detail"])) == len(dev_entries)
    assert ids(lambda r: r["id"] == "fleurs/de_de/dev.tsv") == ["fleurs/de_de/dev.tsv"]
    test_rows = (demo_copy / "fleurs" / "en_us" / "test.tsv").read_text().splitlines()
    assert len(ids(lambda r: "audio archive" in r["detail"])) == len(test_rows)
    assert ids(lambda r: r["id"] == "fleurs/en_us/audio/test.tar.gz") == ["fleurs/en_us/audio/test.tar.gz"]
    published = offline(tmp_path / "out")
    assert not {r["id"] for r in unsafe if not r["id"].startswith("mustc/")} & set(published)
    # The linked talk's segments come from en-es alone.
    stem = talk.rsplit(".", 1)[0]
    from_talk = [r for r in published.values() if r["id"].startswith(f"mustc/{stem}_")]
    assert from_talk and all(r["translation"]["de"] is None and r["translation"]["es"] for r in from_talk)
    es_ids = [r for r in published.values() if f"/{es_talk.rsplit('.', 1)[0]}_" in r["id"]]
    assert es_ids and all(r["translation"]["es"] for r in es_ids)


def test_fleurs_extraction_follows_a_changed_archive_and_writes_through_no_link(demo_copy, tmp_path):
    work = tmp_path / "work"
    first = tmp_path / "first"
    curate(demo_copy, first, corpora=("fleurs",), langs=("de",), work_dir=work)
    archive = demo_copy / "fleurs" / "en_us" / "audio" / "train.tar.gz"
    with tarfile.open(archive, "r:gz") as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
    (changed, data), (linked, _) = members[0], members[1]
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    buf = io.BytesIO()
    negated = np.clip(-audio.astype(np.int32), -32768, 32767).astype(np.int16)
    sf.write(buf, negated, rate, format="WAV", subtype="PCM_16")  # same size, other samples
    assert len(buf.getvalue()) == changed.size
    members[0] = (changed, buf.getvalue())
    changed.mtime += 3600
    with tarfile.open(archive, "w:gz") as t:
        for m, d in members:
            t.addfile(m, io.BytesIO(d))
    victim = tmp_path / "victim.wav"
    victim.write_bytes(b"not yours")
    extracted = work / "fleurs" / "en_us" / "train" / linked.name.split("/", 1)[1]
    extracted.unlink()
    extracted.symlink_to(victim)

    _, found = run(demo_copy, tmp_path / "second", corpora=("fleurs",), langs=("de",), work_dir=work)
    assert victim.read_bytes() == b"not yours"
    linked_id = "fleurs/" + linked.name.split("/", 1)[1].rsplit(".", 1)[0]
    refused = {(r["reason"], r["id"]) for r in found if r["reason"] != "no_source_clip"}  # when it was the only
    assert refused == {("unsafe_path", f"fleurs/en_us/audio/train.tar.gz:{linked.name}"),  # recording of its text
                       ("unsafe_path", linked_id)}
    before, after = offline(first), offline(tmp_path / "second" / "out")
    changed_id = "fleurs/" + changed.name.split("/", 1)[1].rsplit(".", 1)[0]
    assert np.allclose(samples(after[changed_id]), -samples(before[changed_id]), atol=1e-4)
    assert linked_id in before and linked_id not in after


def test_a_transcript_or_table_that_links_out_is_not_read(demo_copy, tmp_path):
    from simulforge.pipeline.config import load
    from simulforge.transforms.readers import plan, read_task

    (tmp_path / "outside").mkdir()
    for rel in ("covost/covost_v2.en_de.tsv", f"{DE}/txt/train.yaml"):
        target = tmp_path / "outside" / rel.replace("/", "_")
        shutil.move(demo_copy / rel, target)
        (demo_copy / rel).symlink_to(target)
    for corpus, name in (("covost", "covost/covost_v2.en_de.tsv"), ("mustc", f"{DE}/txt/train.yaml")):
        settings = load().corpus[corpus]
        tasks, _ = plan(corpus, str(demo_copy / corpus), settings, ["de"])
        [task] = [t for t in tasks if t.path.endswith(name.rsplit("/", 1)[1])]
        found = list(read_task(task, settings, str(tmp_path / "work")))
        rejects = [(r.id, r.reason) for r in found if isinstance(r, Reject)]
        assert len(found) == 1 and rejects == [(name, "unsafe_path")], f"{len(found)} items read from {name}"
        assert f"links to {os.path.realpath(tmp_path)}/outside/" in found[0].detail
