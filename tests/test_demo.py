"""Tests for simulforge.demo: espeak word timings and the demo corpus layouts."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from simulforge.demo import espeak_engine
from simulforge.demo.espeak import EspeakError, synthesize, text_words


def _espeak_available() -> bool:
    try:
        espeak_engine.load_library()
    except EspeakError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(not _espeak_available(), reason="libespeak-ng1 is not installed"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
]

SR = 16000
SPLITS = {"train": "train", "dev": "dev", "test": "tst-COMMON"}
YAML_LINE = re.compile(
    r"^- \{duration: (\d+\.\d{6}), offset: (\d+\.\d{6}), rW: (\d+), uW: 0, "
    r"speaker_id: spk\.(\d+), wav: (ted_(\d+)\.wav)\}$"
)
CV_HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender",
             "accents", "locale", "segment"]
COVOST_HEADER = ["path", "sentence", "translation", "client_id", "split"]


def read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"))


def read_wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from simulforge.demo.corpora import build_demo_corpora

    root = tmp_path_factory.mktemp("demo")
    summary = build_demo_corpora(root, scale=0.1, seed=0)
    return root, summary


@pytest.fixture(scope="module")
def mustc(built):
    """{pair: {split_dir: [(duration, offset, rW, speaker, wav, en, x)]}}."""
    root, _ = built
    out = {}
    for x in ("de", "es"):
        out[x] = {}
        for split in SPLITS.values():
            txt = root / "mustc" / f"en-{x}" / "data" / split / "txt"
            lines = (txt / f"{split}.yaml").read_text("utf-8").splitlines()
            en = (txt / f"{split}.en").read_text("utf-8").splitlines()
            tr = (txt / f"{split}.{x}").read_text("utf-8").splitlines()
            assert len(lines) == len(en) == len(tr) > 0
            rows = []
            for line, e, t in zip(lines, en, tr, strict=True):
                m = YAML_LINE.match(line)
                assert m, line
                rows.append((float(m[1]), float(m[2]), int(m[3]), m[4], m[5], e, t))
                assert m[4] == m[6]  # one speaker per talk, named after it
                assert int(m[3]) == len(e.split())
            out[x][split] = rows
    return out


@pytest.fixture(scope="module")
def truth(built):
    root, _ = built
    lines = (root / "truth" / "word_times.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def fleurs_audio(built):
    """{file stem: samples} from the en_us tar archives, plus member names."""
    root, _ = built
    audio, members = {}, {}
    for split in SPLITS:
        with tarfile.open(root / "fleurs" / "en_us" / "audio" / f"{split}.tar.gz") as tar:
            members[split] = tar.getnames()
            for info in tar.getmembers():
                audio[Path(info.name).stem] = read_wav(tar.extractfile(info).read())
    return audio, members


# --------------------------------------------------------------------------- espeak


def test_text_words_strip_edges_keep_apostrophes():
    assert text_words("Well, it's the students' day. Isn't it?") == [
        "Well", "it's", "the", "students", "day", "Isn't", "it"]


def test_synthesize_is_deterministic_and_separates_merged_words():
    text = "In the end, most of the people stayed."  # "in the", "of the" are one unit in espeak
    a = synthesize(text, "en-gb+m3", rate=160, pitch=40)
    synthesize("Something else first.", "en-us")
    b = synthesize(text, "en-gb+m3", rate=160, pitch=40)
    assert a.sample_rate == SR and a.samples.dtype == np.float32
    assert np.array_equal(a.samples, b.samples) and a.words == b.words
    assert [w for w, _, _ in a.words] == text_words(text)
    faster = synthesize(text, "en-gb+m3", rate=260, pitch=40)
    assert faster.duration_s < 0.8 * a.duration_s


def test_bad_voice_and_missing_library(monkeypatch):
    with pytest.raises(EspeakError, match="no voice"):
        synthesize("Hello.", "xx-nowhere")
    with pytest.raises(EspeakError, match="variant"):
        synthesize("Hello.", "en-us+nosuchvariant")
    monkeypatch.setattr(espeak_engine, "_LIBRARY_NAMES", ("libespeak-ng-missing.so.9",))
    monkeypatch.setattr(espeak_engine.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(EspeakError, match="apt-get install libespeak-ng1"):
        espeak_engine.load_library()


def frame_rms(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """RMS of 5 ms frames covering [a, b) seconds."""
    a, b = max(int(a * SR), 0), int(b * SR)
    seg = x[a:b] if b > a else x[:0]
    n = len(seg) // 80
    return np.sqrt((seg[: n * 80].reshape(n, 80) ** 2).mean(axis=1)) if n else np.zeros(0)


def check_timing_against_energy(x: np.ndarray, words, silence: float, margin=0.003) -> int:
    """Asserts words sit on the sound and pauses on silence.

    Returns how many word edges next to silence (clip edges, pauses) it checked.

    ``margin`` leaves out the resampling filter's (or MP3 coder's) smear
    around each boundary when checking silence.
    """
    edges = 2
    dur = len(x) / SR
    # Before the first word and after the last one: silence.
    assert frame_rms(x, 0, words[0][1] - margin).max(initial=0) < silence
    assert frame_rms(x, words[-1][2] + margin, dur).max(initial=0) < silence
    for i, (w, s, e) in enumerate(words):
        # The word's own first and last 10 ms carry sound: no silent margin
        # inside the span at a pause boundary (its edges are where sound is).
        assert frame_rms(x, s, e).max() > 0.02, w
        prev_end = words[i - 1][2] if i else None
        if prev_end is None or s - prev_end > 0.001:
            assert frame_rms(x, s, s + 0.01).max() > 3 * silence, (w, "start")
        nxt = words[i + 1][1] if i + 1 < len(words) else None
        if nxt is None or nxt - e > 0.001:
            assert frame_rms(x, e - 0.01, e).max() > 3 * silence, (w, "end")
        if nxt is not None and nxt - e > 0.04:
            # A comma/sentence pause: (near) zero energy between the word's end
            # and the next word's start.
            assert frame_rms(x, e + margin, nxt - margin).max(initial=0) < silence, (w, e, nxt)
            edges += 2
    return edges


def test_word_times_match_signal_energy_direct():
    text = "Well, after the storm, three dogs and a cat walked in. Nobody noticed them."
    edges = 0
    for voice in ("en-us", "en-gb-scotland+m3", "en-gb-x-rp+f1"):
        syn = synthesize(text, voice, rate=170)
        edges += check_timing_against_energy(syn.samples, syn.words, silence=1e-4)
        # Spot check the semantics on numbers: "Well" ends where its sound
        # ends, before the comma pause; the next word starts at first sound.
        w0, w1 = syn.words[0], syn.words[1]
        assert w1[1] - w0[2] > 0.1
        loud = np.flatnonzero(np.abs(syn.samples) > 1e-3) / SR
        assert abs(loud[0] - w0[1]) < 0.003 and abs(loud[-1] - syn.words[-1][2]) < 0.015
        gap = loud[(loud > w0[2] - 0.05) & (loud < w1[1] + 0.05)]
        assert abs(gap[gap < (w0[2] + w1[1]) / 2].max() - w0[2]) < 0.003
        assert abs(gap[gap > (w0[2] + w1[1]) / 2].min() - w1[1]) < 0.003
    assert edges >= 3 * (2 + 2 * 3)  # clip edges and at least three pauses per voice


# --------------------------------------------------------------------------- layouts


def test_mustc_layout(built, mustc):
    root, summary = built
    assert sorted(p.name for p in (root / "mustc").iterdir()) == ["en-de", "en-es"]
    talks = {}
    for x in ("de", "es"):
        data = root / "mustc" / f"en-{x}" / "data"
        assert sorted(p.name for p in data.iterdir()) == sorted(SPLITS.values())
        for split, rows in mustc[x].items():
            wav_dir = data / split / "wav"
            assert sorted(p.name for p in (data / split / "txt").iterdir()) == sorted(
                f"{split}.{ext}" for ext in ("yaml", "en", x))
            wavs = sorted(p.name for p in wav_dir.iterdir())
            assert all(re.fullmatch(r"ted_\d+\.wav", n) for n in wavs)
            assert {r[4] for r in rows} <= set(wavs)
            for name in wavs:
                info = sf.info(str(wav_dir / name))
                assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
                segs = sorted((r[1], r[0]) for r in rows if r[4] == name)
                for (off, dur), nxt in zip(segs, segs[1:] + [(None, None)], strict=True):
                    assert off >= 0.3 - 1e-9 and dur > 0
                    assert off + dur + 0.3 <= info.frames / SR + 1e-9  # silence after
                    if nxt[0] is not None:
                        assert nxt[0] - (off + dur) >= 0.3 - 1e-9
                talks.setdefault(name, set()).add((x, split))
                # Each release has its own, identical copy of the talk.
                other = root / "mustc" / f"en-{'es' if x == 'de' else 'de'}" / "data" / split
                assert (wav_dir / name).read_bytes() == (other / "wav" / name).read_bytes()
    # Talk numbers are unique across splits.
    assert all(len({s for _, s in v}) == 1 for v in talks.values())
    sizes = {}
    for rows in list(mustc["de"].values()) + list(mustc["es"].values()):
        for r in rows:
            sizes.setdefault(r[4], set()).add(r[1])
    assert all(len(offsets) <= 8 for offsets in sizes.values())
    assert summary["mustc"]["talks"] == len(talks) and len(summary["mustc"]["speakers"]) >= 2


def test_mustc_releases_differ_by_a_few_segments(mustc):
    keys = {x: {(split, r[4], r[1]) for split, rows in mustc[x].items() for r in rows}
            for x in ("de", "es")}
    only_de, only_es = keys["de"] - keys["es"], keys["es"] - keys["de"]
    assert only_de or only_es
    assert only_de and only_es  # each release lacks different segments
    both = keys["de"] & keys["es"]
    assert len(only_de | only_es) <= 0.15 * len(both)
    # English text agrees where a segment is in both releases.
    en = {x: {(s, r[4], r[1]): r[5] for s, rows in mustc[x].items() for r in rows} for x in keys}
    assert all(en["de"][k] == en["es"][k] for k in both)


def test_covost_layout(built):
    root, summary = built
    cov = root / "covost"
    assert sorted(p.name for p in cov.iterdir()) == ["clips", "covost_v2.en_de.tsv", "validated.tsv"]
    validated = read_tsv(cov / "validated.tsv")
    table = read_tsv(cov / "covost_v2.en_de.tsv")
    assert validated[0] == CV_HEADER and table[0] == COVOST_HEADER
    assert all(len(r) == 10 for r in validated) and all(len(r) == 5 for r in table)
    clips = sorted(p.name for p in (cov / "clips").iterdir())
    assert all(re.fullmatch(r"common_voice_en_\d+\.mp3", n) for n in clips)
    assert sorted(r[1] for r in validated[1:]) == clips == sorted(r[0] for r in table[1:])
    by_path = {r[1]: r for r in validated[1:]}
    for path, sentence, translation, client_id, split in table[1:]:
        assert re.fullmatch(r"[0-9a-f]{64}", client_id) and by_path[path][0] == client_id
        assert by_path[path][2] == sentence and by_path[path][8] == "en" and translation
        assert split in ("train", "dev", "test")
    assert len({r[0] for r in validated[1:]}) >= 3
    assert {r[4] for r in table[1:]} == {"train", "dev", "test"}
    for name in clips[:4]:
        x, sr = sf.read(str(cov / "clips" / name), dtype="float32")
        assert sr == 48000 and x.ndim == 1 and np.abs(x).max() > 0.05
    assert summary["covost"]["clips"] == len(clips)


def test_fleurs_layout(built, fleurs_audio):
    root, summary = built
    audio, members = fleurs_audio
    fl = root / "fleurs"
    assert sorted(p.name for p in fl.iterdir()) == ["de_de", "en_us", "es_419"]
    assert sorted(p.name for p in (fl / "en_us" / "audio").iterdir()) == [
        f"{s}.tar.gz" for s in sorted(SPLITS)]
    ids = {}
    for lang in ("en_us", "de_de", "es_419"):
        for split in SPLITS:
            rows = read_tsv(fl / lang / f"{split}.tsv")
            assert rows and all(len(r) == 7 for r in rows)
            for sid, name, _raw, trans, chars, num, gender in rows:
                assert sid.isdigit() and re.fullmatch(r"\d+\.wav", name)
                assert trans == trans.lower() and not re.search(r"[.,?!¿¡;:]", trans)
                assert chars == " ".join(" ".join(w) + " |" for w in trans.split())
                assert gender in ("MALE", "FEMALE") and int(num) > 0
                if lang == "en_us":
                    assert f"{split}/{name}" in members[split]
                    assert len(audio[name[:-4]]) == int(num)
            ids[(lang, split)] = [int(r[0]) for r in rows]
    for split in SPLITS:
        assert sorted(members[split]) == sorted(
            f"{split}/{r[1]}" for r in read_tsv(fl / "en_us" / f"{split}.tsv"))
        en = set(ids[("en_us", split)])
        assert en == set(ids[("de_de", split)]) == set(ids[("es_419", split)])
    counts = {}
    for split in SPLITS:
        for sid in ids[("en_us", split)]:
            counts[sid] = counts.get(sid, 0) + 1
    several = sum(1 for n in counts.values() if n >= 2)
    assert several >= 2 and 0.15 <= several / len(counts) <= 0.45
    assert summary["fleurs"]["ids"] == len(counts)


# --------------------------------------------------------------------------- truth


def test_truth_ids_resolve_in_their_layout(built, mustc, truth, fleurs_audio):
    root, summary = built
    audio, _ = fleurs_audio
    seg = {}
    for x in ("de", "es"):
        for rows in mustc[x].values():
            for dur, off, _, _, wav, en, _ in rows:
                seg[f"mustc/{wav[:-4]}_{round(off * 1000)}"] = (dur, en)
    covost = {r[0][:-4]: r for r in read_tsv(root / "covost" / "covost_v2.en_de.tsv")[1:]}
    fleurs = {r[1][:-4]: r for s in SPLITS for r in read_tsv(root / "fleurs" / "en_us" / f"{s}.tsv")}
    ids = [t["id"] for t in truth]
    assert len(ids) == len(set(ids)) == summary["truth_clips"]
    for t in truth:
        corpus, stem = t["id"].split("/", 1)
        assert corpus == t["corpus"]
        if corpus == "mustc":
            dur, en = seg[t["id"]]
            assert abs(dur - t["duration_s"]) < 1e-6 and en == t["text"]
        elif corpus == "covost":
            assert covost[stem][1] == t["text"]
            assert (root / "covost" / "clips" / f"{stem}.mp3").is_file()
        else:
            assert fleurs[stem][2] == t["text"]
            assert abs(int(fleurs[stem][5]) / SR - t["duration_s"]) < 1e-6
        # Words are the text's words; times increase and stay inside the clip.
        assert [w for w, _, _ in t["words"]] == text_words(t["text"])
        prev = 0.0
        for _, s, e in t["words"]:
            assert prev - 1e-9 <= s < e <= t["duration_s"] + 1e-9
            prev = e
    # Every clip of every layout has a truth line.
    assert set(seg) == {i for i in ids if i.startswith("mustc/")}
    assert {f"covost/{k}" for k in covost} == {i for i in ids if i.startswith("covost/")}
    assert {f"fleurs/{k}" for k in fleurs} == {i for i in ids if i.startswith("fleurs/")}


def test_truth_times_match_signal_energy(built, mustc, truth, fleurs_audio):
    root, _ = built
    audio, _ = fleurs_audio
    talks = {}
    for x in ("de",):
        for split, rows in mustc[x].items():
            for r in rows:
                path = root / "mustc" / f"en-{x}" / "data" / split / "wav" / r[4]
                talks.setdefault(r[4][:-4], path)
    edges = 0
    for t in truth:
        corpus, stem = t["id"].split("/", 1)
        if corpus == "fleurs":
            x, silence = audio[stem], 1e-4
        elif corpus == "mustc":
            talk, off_ms = stem.rsplit("_", 1)
            if talk not in talks:
                continue
            y = read_wav(talks[talk].read_bytes())
            a = int(off_ms) * SR // 1000
            x, silence = y[a: a + round(t["duration_s"] * SR)], 1e-4
            # The talk is silent around the segment: the offset is right.
            assert np.abs(y[a - 4800: a]).max() < 1e-3
        else:
            x48, _ = sf.read(str(root / "covost" / "clips" / f"{stem}.mp3"), dtype="float32")
            assert abs(len(x48) / 48000 - t["duration_s"]) < 1e-6  # gapless decode
            # MP3 coding noise smears a little sound around the edges.
            edges += check_timing_against_energy(x48[::3], t["words"], 1e-3, margin=0.015)
            continue
        edges += check_timing_against_energy(x, t["words"], silence)
    assert edges >= 2 * len(truth)


def test_builds_are_deterministic(built, tmp_path):
    from simulforge.demo.corpora import build_demo_corpora

    root, _ = built
    again = tmp_path / "again"
    build_demo_corpora(again, scale=0.1, seed=0)
    assert tree_digest(again) == tree_digest(root)
    # Rebuilding in place replaces an earlier build; another seed differs.
    summary = build_demo_corpora(again, scale=0.1, seed=1)
    assert summary["seed"] == 1 and tree_digest(again) != tree_digest(root)
    assert "seed: 1" in (again / "README.txt").read_text()


def test_scale_selection_and_root_guard(tmp_path):
    from simulforge.demo.corpora import MIN_SENTENCES, _select, build_demo_corpora
    from simulforge.demo.script import load_sentences

    sentences = load_sentences()
    assert len(sentences) >= 12 and all(s.en and s.de and s.es for s in sentences)
    assert _select(sentences, 0.001) == (sentences[:MIN_SENTENCES], 1)
    assert _select(sentences, 2.7) == (sentences, 2)
    with pytest.raises(ValueError):
        _select(sentences, 0)
    (tmp_path / "mustc").mkdir()
    with pytest.raises(FileExistsError):
        build_demo_corpora(tmp_path, scale=0.01)


def test_rounds_use_fresh_ids_and_other_voices():
    from simulforge.demo.corpora import _plan
    from simulforge.demo.script import load_sentences

    plan = _plan(load_sentences()[:12], 3, seed=0)
    fleurs_ids = plan.planners["fleurs"].texts
    talks = [t.number for ts in plan.items["mustc"] for t in ts]
    clips = [c.number for cs in plan.items["covost"] for c in cs]
    names = [r.file_name for rs in plan.items["fleurs"] for r in rs]
    for ids in (talks, clips, names, list(fleurs_ids)):
        assert len(ids) == len(set(ids))
    assert len(fleurs_ids) == sum(len({r.sid for r in rs}) for rs in plan.items["fleurs"])
    settings = [{(s.voice, s.rate, s.pitch) for s in spk} for spk in plan.rounds]
    assert len(settings[0]) >= 6 and not settings[0] & settings[1] and not settings[1] & settings[2]
    assert len({s.name for spk in plan.rounds for s in spk}) == 3 * len(plan.rounds[0])


def test_later_rounds_speak_new_texts_of_one_split():
    from simulforge.demo.corpora import _assign_splits, _plan, _round_sentences
    from simulforge.demo.script import load_sentences

    base = load_sentences()
    split_of = {s.id: split for s, split in zip(base, _assign_splits(len(base), 0), strict=True)}
    seen: set[str] = set()
    for k in range(4):
        texts, splits = _round_sentences(base, list(split_of.values()), k, seed=0)
        assert not seen & {t.en for t in texts}, f"round {k} repeats an earlier text"
        seen |= {t.en for t in texts}
        for text, split in zip(texts, splits, strict=True):
            assert {split_of[part] for part in text.id.split("+")} == {split}
        # About as much speech per round: half as many texts, each of two sentences.
        words = sum(len(t.en.split()) for t in texts)
        assert 0.9 < words / sum(len(s.en.split()) for s in base) < 1.1
    plan = _plan(base[:24], 3, seed=0)
    per_round = [{c.sentence.en for c in cs} for cs in plan.items["covost"]]
    assert not per_round[1] & per_round[0] and not per_round[2] & (per_round[0] | per_round[1])
