"""Each kind of bad input gets a specific reject (or a clear error), the run goes on, counts add up."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from conftest import curate
from simulforge.settings import ConfigError

DE = "mustc/en-de/data/train"


def rejects(out):
    with open(out / "rejected.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def run(root, tmp_path, **kw):
    out = tmp_path / "out"
    stats = curate(root, out, **kw)
    assert stats["balanced"], stats["stages"]
    found = rejects(out)
    assert len(found) == sum(e["rejected_total"] for e in stats["stages"].values())
    return stats, found


def reasons(found, stage=None):
    return {r["reason"] for r in found if stage is None or r["stage"] == stage}


def covost_rows(root):
    with open(root / "covost" / "covost_v2.en_de.tsv", encoding="utf-8") as f:
        return f.read().splitlines()


def test_clean_demo_has_no_rejects(demo_copy, tmp_path):
    _, found = run(demo_copy, tmp_path)
    assert found == []


def test_missing_clip(demo_copy, tmp_path):
    clip = covost_rows(demo_copy)[1].split("\t")[0]
    (demo_copy / "covost" / "clips" / clip).unlink()
    _, found = run(demo_copy, tmp_path, corpora=("covost",), langs=("de",))
    [r] = found
    assert (r["reason"], r["stage"]) == ("missing_audio", "audio") and clip in r["detail"]


def test_unreadable_and_truncated_audio(demo_copy, tmp_path):
    clip = covost_rows(demo_copy)[1].split("\t")[0]
    (demo_copy / "covost" / "clips" / clip).write_bytes(b"\x00garbage" * 10)
    talk = sorted((demo_copy / DE / "wav").iterdir())[0]
    data = talk.read_bytes()
    talk.write_bytes(data[: len(data) // 2])  # the header still promises the whole talk
    _, found = run(demo_copy, tmp_path, corpora=("covost", "mustc"), langs=("de",))
    got = {r["reason"] for r in found}
    assert {"unreadable_audio", "truncated_audio"} <= got
    truncated = [r for r in found if r["reason"] == "truncated_audio"]
    assert all(talk.name in r["detail"] and " ends at " in r["detail"] for r in truncated)


def test_yaml_and_text_line_counts_disagree(demo_copy, tmp_path):
    de = demo_copy / DE / "txt" / "train.de"
    lines = de.read_text(encoding="utf-8").splitlines()
    de.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    stats, found = run(demo_copy, tmp_path, corpora=("mustc",), langs=("de", "es"))
    mismatch = [r for r in found if r["reason"] == "line_count_mismatch"]
    assert len(mismatch) == len(lines) and f"has {len(lines) - 1} lines" in mismatch[0]["detail"]
    assert stats["published"]["offline"]["rows"]["train"] > 0  # en-es still carries those segments


def test_empty_text_and_non_utf8(demo_copy, tmp_path):
    en = demo_copy / DE / "txt" / "train.en"
    raw = en.read_bytes().split(b"\n")
    raw[0] = b"   \t "
    raw[1] = b"caf\xe9 au lait"
    en.write_bytes(b"\n".join(raw))
    _, found = run(demo_copy, tmp_path, corpora=("mustc",), langs=("de",))
    by_reason = {r["reason"]: r for r in found}
    assert by_reason["empty_text"]["where"].endswith("train.yaml:1")
    assert (
        by_reason["non_utf8"]["where"].endswith("train.yaml:2")
        and "not UTF-8" in by_reason["non_utf8"]["detail"]
    )


def test_paths_that_escape_the_corpus(demo_copy, tmp_path):
    yaml = demo_copy / DE / "txt" / "train.yaml"
    lines = yaml.read_text().splitlines()
    lines[0] = lines[0].rsplit("wav: ", 1)[0] + "wav: ../../../../../../etc/passwd}"
    yaml.write_text("\n".join(lines) + "\n")
    rows = covost_rows(demo_copy)
    rows[1] = "../../validated.tsv\t" + rows[1].split("\t", 1)[1]
    (demo_copy / "covost" / "covost_v2.en_de.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    archive = demo_copy / "fleurs" / "en_us" / "audio" / "train.tar.gz"
    with tarfile.open(archive, "r:gz") as t:
        members = [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
    with tarfile.open(archive, "w:gz") as t:
        for m, data in members:
            t.addfile(m, io.BytesIO(data) if data is not None else None)
        evil = tarfile.TarInfo("../../escaped.wav")
        evil.size = 4
        t.addfile(evil, io.BytesIO(b"RIFF"))
        link = tarfile.TarInfo("train/link.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    _, found = run(demo_copy, tmp_path, langs=("de",))
    unsafe = [r for r in found if r["reason"] == "unsafe_path"]
    assert len(unsafe) == 4, unsafe
    assert not (tmp_path / "escaped.wav").exists() and not list(tmp_path.rglob("escaped.wav"))


def test_wrong_rate_and_stereo_are_fixed_and_recorded(demo_copy, tmp_path):
    archive = demo_copy / "fleurs" / "en_us" / "audio" / "train.tar.gz"
    with tarfile.open(archive, "r:gz") as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
    name, data = members[0]
    mono, rate = sf.read(io.BytesIO(data), dtype="float32")
    stereo = np.stack([mono, mono], axis=1)
    from scipy.signal import resample_poly

    stereo = resample_poly(stereo, 441, 160, axis=0)
    buf = io.BytesIO()
    sf.write(buf, stereo, 44100, format="WAV")
    with tarfile.open(archive, "w:gz") as t:
        for m, d in members:
            if m.name == name.name:
                d = buf.getvalue()
                m.size = len(d)
            t.addfile(m, io.BytesIO(d))
    out = tmp_path / "out"
    curate(demo_copy, out, corpora=("fleurs",), langs=("de",))
    import datasets

    ds = datasets.load_dataset(str(out), "offline", split="train")
    fixed = [r for r in ds if r["fixes"]]
    assert len(fixed) == 1 and fixed[0]["fixes"] == ["downmixed 2->1", "resampled 44100->16000"]


def test_duplicate_ids(demo_copy, tmp_path):
    rows = covost_rows(demo_copy)
    (demo_copy / "covost" / "covost_v2.en_de.tsv").write_text(
        "\n".join([*rows, rows[1]]) + "\n", encoding="utf-8"
    )
    _, found = run(demo_copy, tmp_path, corpora=("covost",), langs=("de",))
    [r] = found
    assert r["reason"] == "duplicate_id" and r["where"].endswith(f":{len(rows) + 1}")


def test_language_no_corpus_has_is_a_clear_error(demo_copy, tmp_path):
    with pytest.raises(ConfigError, match="no corpus has English→fr"):
        curate(demo_copy, tmp_path / "out", langs=("de", "fr"))


def test_covost_has_no_spanish_and_says_so_once(demo_copy, tmp_path):
    said = []
    curate(demo_copy, tmp_path / "out", corpora=("covost", "mustc"), langs=("de", "es"), echo=said.append)
    assert [s for s in said if "English→es" in s] == [
        "covost: no English→es in this corpus; curating it for the other languages"
    ]


def test_config_errors_name_the_key(tmp_path):
    from simulforge.pipeline.config import load

    with pytest.raises(ConfigError, match=r"curate.corpora: unknown corpus 'librispeech'"):
        load(overrides=["corpora=[librispeech]"])
    with pytest.raises(ConfigError, match=r"curate.num_shards: expected int"):
        load(overrides=["num_shards=many"])
