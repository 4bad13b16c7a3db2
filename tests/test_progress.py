"""Live progress of a curate run: the events a stage's workers write (transforms/progress.py), the
launcher's sums, totals, rates and ETAs (pipeline/progress.py), and the display on every local runner
profile, checked against the run's own stats.json."""

from __future__ import annotations

import io
import re

import pytest

from simulforge.pipeline import progress as P
from simulforge.transforms import progress as W
from simulforge.transforms.records import AudioRef, Conversation, Reject, Stat, Utterance


def _utt(uid: str, duration: float | None) -> Utterance:
    return Utterance(uid, "covost", "train", AudioRef("a.wav"), "spk", "en", "hello", duration_s=duration)


def _conversation(uid: str) -> Conversation:
    return Conversation(uid, "train", 2, 16000, {}, [], "", {})


def test_a_stage_s_counts_leave_the_worker_as_events_the_launcher_reads(tmp_path, monkeypatch):
    monkeypatch.setenv(W.ENV, str(tmp_path))
    audio = W.Recorder("audio")
    items = [_utt("a", 2.0), Reject("b", "audio", "too_long", "61 s"), Stat("audio", "audio_s", 9.0),
             _utt("c", 1.5), Stat("audio", "in", 3)]
    assert list(audio.watch(iter(items), taken=3)) == items  # passed through untouched
    render = W.Recorder("simulate/render")  # conversations carry no duration: the stage's own audio_s counts
    list(render.watch(iter([_conversation("x"), Stat("simulate/render", "audio_s", 12.5)]), taken=1))
    audio.flush()
    render.flush()
    render.flush()  # nothing new: no event
    audio.start()  # a bundle starts and ends: said even with nothing counted
    audio.finish()
    files = P.EventFiles(str(tmp_path))
    events = files.read()
    assert [(e["stage"], e["in"], e["out"], e["rejected"], e["audio_s"]) for e in events[:2]] == [
        ("audio", 3, 2, 1, 3.5), ("simulate/render", 1, 1, 0, 12.5)]
    assert all(e["t0"] <= e["t"] for e in events[:2])
    assert [{k: v for k, v in e.items() if k != "t"} for e in events[2:]] == [
        {"stage": "audio", "started": 1}, {"stage": "audio", "ended": 1}]
    # A line being written is read once it is whole.
    (path,) = tmp_path.iterdir()
    with open(path, "a") as f:
        f.write('{"stage": "audio", "in": 1, "out": 1, "rejected": 0, ')
    assert files.read() == []
    with open(path, "a") as f:
        f.write('"audio_s": 1.0, "t0": 1.0, "t": 2.0}\n')
    assert [e["in"] for e in files.read()] == [1]


def test_without_a_folder_named_a_worker_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(W.ENV, raising=False)
    recorder = W.Recorder("audio")
    assert list(recorder.watch(iter([_utt("a", 1.0)]), taken=1)) and recorder.sink is None
    recorder.flush()


PARENTS = {"read": None, "join": "read", "audio": "join", "embed": "audio", "publish/offline": "embed"}


def _event(stage, n_in, n_out, t0, t, rejected=0, audio_s=0.0):
    return {"stage": stage, "in": n_in, "out": n_out, "rejected": rejected, "audio_s": audio_s, "t0": t0, "t": t}


def test_totals_come_from_the_parent_stage_and_the_eta_from_the_recent_rate():
    p = P.Progress(PARENTS, read_total=4)
    assert [r["stage"] for r in p.rows(0)] == ["read", "join", "audio", "embed"]  # publish sinks send nothing
    assert {r["state"] for r in p.rows(0)} == {"waiting"}
    p.add(_event("read", 3, 30, 100, 101))
    read, join, audio, _ = p.rows(101)
    assert (read["in"], read["total"], read["final"], read["state"]) == (3, 4, True, "running")
    assert (join["total"], join["final"]) == (None, False)  # key groups: how many, no one knows
    p.add(_event("read", 1, 10, 101, 102))
    p.add({"stage": "join", "started": 1, "t": 102})
    p.add(_event("join", 12, 20, 102, 103, audio_s=7200.0))
    p.add({"stage": "join", "ended": 1, "t": 103})  # read is done and join's one bundle ended: join is done
    p.add(_event("audio", 8, 8, 102, 104))
    read, join, audio, embed = p.rows(104)
    assert read["state"] == join["state"] == "done" and join["audio_h"] == 2.0
    assert (audio["total"], audio["final"], audio["state"]) == (20, True, "running")
    # 8 records in the 2 s since audio's first record: 4/s, 12 to go: 3 s.
    assert audio["rate"] == pytest.approx(4.0) and audio["eta_s"] == pytest.approx(3.0)
    assert (embed["total"], embed["final"], embed["eta_s"]) == (8, False, None)  # more may come: no ETA
    table = P.table(p.rows(104), elapsed=65)
    assert table[0] == "curate 1:05 elapsed, 2/4 stages done"
    assert re.search(r"join\s+12\s+20\s+0\s+2\.00 h\s+done$", table[3]), table[3]
    assert re.search(r"audio\s+8/20\s+8\s+0\s+4\.0/s\s+0:03$", table[4]), table[4]
    assert re.search(r"embed\s+0/8\+\s+0\s+0\s+waiting$", table[5]), table[5]
    assert P.line(p.rows(104), 65) == ("progress 1:05 | done: read, join | audio 8/20 in 8 out 4.0/s ETA 0:03 "
                                       "| waiting: embed")
    # Events older than the window no longer count towards the rate; none: the stage is stalled.
    stalled = p.rows(104 + P.WINDOW_S + 1)[2]
    assert stalled["rate"] == 0.0 and stalled["eta_s"] is None and stalled["state"] == "running"
    p.add({"stage": "join", "started": 1, "t": 140})  # a bundle more (a split's rest): running again
    assert p.rows(140)[1]["state"] == "running" and p.rows(140)[2]["final"] is False
    p.finished = True  # the pipeline ended: whatever arrived, every stage is done
    assert {r["state"] for r in p.rows(200)} == {"done"}


def _tables(text: str) -> list[list[str]]:
    """The successive live tables written to a stream (each redraw moves the cursor back up first)."""
    return [chunk.splitlines() for chunk in re.split(r"\x1b\[\d+F\x1b\[J", text) if chunk.strip()]


ROW = re.compile(r"^  (\S+)\s+(\d+)(?:/(\d+)\+?)?\s+(\d+)\s+(\d+)")


def _counts(table: list[str]) -> dict[str, tuple[int, int, int]]:
    return {m[1]: (int(m[2]), int(m[4]), int(m[5])) for m in map(ROW.match, table[2:]) if m}


@pytest.mark.parametrize("profile", ["direct", "direct-mp", "portable-embed"])
def test_every_local_runner_shows_each_stage_live_and_ends_at_the_run_s_counts(profile, demo_root, tmp_path):
    """A curate on each local profile with the live display in a stream: tables drawn while the
    pipeline runs already hold counts (the events arrive live, from in-process, subprocess and
    LOOPBACK workers alike), counts only grow, and the last table is stats.json's."""
    from simulforge.pipeline import config
    from simulforge.pipeline.curate import run

    out = tmp_path / "out"
    settings = config.load(overrides=[
        f"input={demo_root}", f"output={out}", f"work_dir={tmp_path / 'work'}", "languages=[de]",
        "corpora=[covost,mustc]", "configs=[offline]", "embed.enabled=false", f"runner={profile}",
        "progress.display=live", "progress.refresh_s=0.05"])
    stream = io.StringIO()
    stats = run(settings, [], echo=lambda *_: None, progress_stream=stream)
    tables = _tables(stream.getvalue())
    final = _counts(tables[-1])
    expected = {s: (e.get("files", e["in"]), e.get("utterances", e["out"]), e["rejected_total"])
                for s, e in stats["stages"].items() if not s.startswith("publish/")}
    groups = final["join"][0]  # join counts the key groups it took: at most the parts read
    assert 0 < groups <= expected["join"][0] and final == {**expected, "join": (groups, *expected["join"][1:])}
    assert tables[-1][0].endswith(f"{len(expected)}/{len(expected)} stages done")
    earlier = [_counts(t) for t in tables[:-1]]
    assert any(sum(c[0] for c in counts.values()) > 0 for counts in earlier), "no counts before the run ended"
    for before, after in zip(earlier, [*earlier[1:], final], strict=True):
        assert all(after[s][k] >= before[s][k] for s in before for k in range(3)), (before, after)
    assert not (tmp_path / "work" / "progress").exists() or not any((tmp_path / "work" / "progress").iterdir())
