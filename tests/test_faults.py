"""Faults a run meets, and what it must do about them: someone else's folder (refuse it, touch
nothing), two runs at once (the second stops), a kill at any moment (the old or the new build
loads, and the next run mends the folder), a stage that fails as a whole or loses a record (exit
non-zero, the previous build untouched, the failed run's stats kept)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest

from conftest import curate
from fake_openai import FakeOpenAI, error
from simulforge.pipeline import output, steps
from simulforge.pipeline.curate import RunError
from simulforge.settings import ConfigError
from simulforge.transforms import files

NOTES = "NOTES.md"  # a file of the user's in a build folder: never deleted


@dataclass
class Built:
    path: Path
    ids: dict[str, list[str]]  # the offline rows' ids per split, as `datasets` loads them
    build: output.Build


def loaded(out: Path) -> dict[str, list[str]]:
    ds = datasets.load_dataset(str(out), "offline")
    return {split: sorted(ds[split]["id"]) for split in ds}


def built(out: Path) -> Built:
    return Built(out, loaded(out), output.current_build(str(out)))


def tree(root: Path) -> dict[str, bytes]:
    """Every file's bytes; stats.json without run.wall_s, the one thing two runs of a config differ in."""
    found = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    if "stats.json" in found:
        stats = json.loads(found["stats.json"])
        stats["run"].pop("wall_s")
        found["stats.json"] = json.dumps(stats, sort_keys=True).encode()
    return found


@pytest.fixture(scope="module")
def builds(demo_root, tmp_path_factory):
    """Two different builds of `offline` (MuST-C and CoVoST 2 for German): (old, new)."""
    root = tmp_path_factory.mktemp("builds")
    old, new = root / "old", root / "new"
    curate(demo_root, old, corpora=("mustc",), langs=("de",))
    curate(demo_root, new, corpora=("covost",), langs=("de",))
    (old / NOTES).write_text("the user's notes")
    return built(old), built(new)


def settings_args(demo_root, out, corpora, *more):
    """`simulforge curate` arguments for an offline build of `corpora` into `out`."""
    return ["--input", demo_root, "--output", out, "--work-dir", f"{out}.work", "--langs", "de",
            "--corpora", ",".join(corpora), "--set", "configs=[offline]", "--set", "embed.enabled=false",
            *more]


# -- Whose folder it is ---------------------------------------------------------------------


def test_a_folder_that_is_not_a_build_is_refused_and_left_as_it_was(demo_root, tmp_path):
    out = tmp_path / "thesis"
    (out / "data").mkdir(parents=True)
    (out / "data" / "results.csv").write_text("a,b\n")
    (out / "README.md").write_text("# my thesis\n")
    before = tree(out)
    for overwrite in (False, True):  # --overwrite is for simulforge builds only
        with pytest.raises(ConfigError, match=r"is not empty and is not a simulforge build \(README.md, data\)"):
            curate(demo_root, out, corpora=("covost",), langs=("de",), overrides=[f"overwrite={overwrite}"])
        assert tree(out) == before and sorted(os.listdir(out)) == ["README.md", "data"]
    assert not Path(f"{out}.work").exists()  # refused before any work


def test_a_build_is_replaced_only_when_asked_and_the_users_files_stay(builds, demo_root, tmp_path):
    old, new = builds
    out = tmp_path / "out"
    shutil.copytree(old.path, out)
    with pytest.raises(ConfigError, match=f"already holds build {old.build.build}; pass --overwrite"):
        curate(demo_root, out, corpora=("covost",), langs=("de",))
    assert loaded(out) == old.ids
    curate(demo_root, out, corpora=("covost",), langs=("de",), overrides=["overwrite=true"])
    assert loaded(out) == new.ids and (out / NOTES).read_text() == "the user's notes"
    assert tree(out) == {**tree(new.path), NOTES: b"the user's notes"}


@pytest.mark.parametrize("where", ["output", "work_dir"])
def test_a_path_that_is_a_file_is_refused_before_any_work(where, demo_root, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    (out if where == "output" else work).write_text("a file")
    with pytest.raises(ConfigError, match=f"{where}: .* is a file, not a folder"):
        curate(demo_root, out, work_dir=str(work), corpora=("covost",), langs=("de",))
    assert os.listdir(tmp_path) == [{"output": "out", "work_dir": "work"}[where]]


# -- A swap cut short at every step ---------------------------------------------------------


class Cut(Exception):
    """Stands for a kill: the run stops before its next file operation."""


def _cut_after(monkeypatch, budget: list[int]):
    """Every rename and delete of the swap spends one of `budget`; with none left, the run stops."""
    rename, discard = files.rename, output.discard

    def spend(op):
        def wrapped(*args):
            if budget[0] == 0:
                raise Cut
            budget[0] -= 1
            return op(*args)

        return wrapped

    monkeypatch.setattr(files, "rename", spend(rename))
    monkeypatch.setattr(output, "discard", spend(discard))


def test_a_swap_cut_at_any_step_leaves_a_build_that_loads_and_the_next_run_mends_it(builds, tmp_path, monkeypatch):
    """Kill the swap before each of its file operations in turn: at that instant the folder loads
    as exactly the old build or exactly the new one (never a mix, never an error), and `recover`
    (what the next run does first, under the lock) leaves exactly one whole build: the new one
    when the card had been replaced, the old one otherwise."""
    old, new = builds
    seen = {"old": 0, "new": 0}
    k = 0
    while True:
        out = tmp_path / f"cut{k}"
        shutil.copytree(old.path, out)
        staging = output.new_staging(str(out))
        shutil.copytree(new.path, staging)  # the new build as a run leaves it in its staging folder
        with monkeypatch.context() as m:
            _cut_after(m, [k])
            try:
                output.promote(staging, str(out), new.build, echo=lambda *_: None)
            except Cut:
                pass
            else:  # the swap finished within k operations: every step has been cut
                break
        now = loaded(out)
        assert now in (old.ids, new.ids), k
        committed = now == new.ids
        seen["new" if committed else "old"] += 1
        said = []
        output.recover(str(out), echo=said.append)
        assert said and ("finishing" in said[0]) == committed, (k, said)
        expected = {**tree(new.path), NOTES: b"the user's notes"} if committed else tree(old.path)
        assert tree(out) == expected, k
        assert sorted(os.listdir(out)) == sorted({*os.listdir(new.path), NOTES} if committed else os.listdir(old.path))
        assert loaded(out) == (new.ids if committed else old.ids)
        k += 1
    assert tree(out) == {**tree(new.path), NOTES: b"the user's notes"}
    assert k > 6 and seen["old"] and seen["new"], (k, seen)  # both sides of the commit point were cut


# -- Two runs at once, and a run killed mid-way -----------------------------------------------


def _wait_for(predicate, proc, what, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.02)


def test_a_second_run_stops_and_a_killed_run_leaves_the_old_build_for_the_next_to_replace(
        builds, demo_root, tmp_path, monkeypatch):
    """`simulforge curate` in a child process: while it runs, a second run into the same folder
    stops at once naming it; killed (SIGKILL) once it is writing its staging folder, it leaves
    the old build loadable, a stale lock and its staging folder; the next run reports the lock,
    removes the staging folder and publishes, writing nothing outside its output and work dir."""
    old, new = builds
    out = tmp_path / "out"
    shutil.copytree(old.path, out)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulforge.cli", "curate",
         *map(str, settings_args(demo_root, out, ["covost"], "--overwrite"))],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / output.LOCK
        _wait_for(lambda: lock.exists() and lock.read_text().strip(), proc, "lock")
        with pytest.raises(ConfigError, match=rf"is being written by a run \(pid {proc.pid} on "):
            curate(demo_root, out, corpora=("covost",), langs=("de",), overrides=["overwrite=true"])

        def staging_written():
            return any(p.is_file() for s in out.glob(output.STAGING + "*") for p in s.rglob("*"))

        _wait_for(staging_written, proc, "a file in the staging folder")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert loaded(out) == old.ids
    left = sorted(p.name for p in out.iterdir())
    assert output.LOCK in left and any(n.startswith(output.STAGING) for n in left), left

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    said = []
    curate(demo_root, out, corpora=("covost",), langs=("de",), overrides=["overwrite=true"], echo=said.append)
    assert any(f"found a stale lock left by a run (pid {proc.pid} on" in s for s in said), said
    assert any(s.startswith("removing " + output.STAGING) for s in said), said
    assert loaded(out) == new.ids
    assert tree(out) == {**tree(new.path), NOTES: b"the user's notes"}
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []


# -- A run that could not do its job ---------------------------------------------------------


def test_a_service_that_fails_every_request_fails_the_run_and_keeps_the_old_build(builds, demo_root, tmp_path,
                                                                                  monkeypatch):
    """An LLM server answering 429 to every request: each utterance becomes an `llm_unreachable`
    reject, which is the stage failing, not the data: the run exits non-zero and publishes
    nothing; its stats and rejects are kept for a look."""
    from test_segment_llm import KEY, llm_overrides

    old, _ = builds
    out, work = tmp_path / "out", tmp_path / "work"
    shutil.copytree(old.path, out)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI() as fake:
        fake.always = error(429, "slow down", {"Retry-After": "0"})
        with pytest.raises(RunError, match=r"segment: rejected all (\d+) of its input \(llm_unreachable \1\)"):
            curate(demo_root, out, work_dir=str(work), corpora=("covost",), langs=("de",),
                   configs=("offline", "simulmt"),
                   overrides=llm_overrides(fake, "segment.llm.max_retries=0", "overwrite=true"))
        assert fake.chat_requests
    assert loaded(out) == old.ids and tree(out) == tree(old.path)
    assert sorted(os.listdir(out)) == sorted(os.listdir(old.path))
    (kept,) = (work / "failed-runs").iterdir()
    stats = json.loads((kept / "stats.json").read_text())
    assert stats["stages"]["segment"]["rejected"] == {"llm_unreachable": stats["stages"]["segment"]["in"]}
    reasons = {json.loads(line)["reason"] for line in (kept / "rejected.jsonl").read_text().splitlines()}
    assert reasons == {"llm_unreachable"}


def test_a_stage_that_loses_a_record_fails_the_run_and_keeps_the_old_build(builds, demo_root, tmp_path,
                                                                         monkeypatch):
    """A stage that neither passes on nor rejects one record (a bug) unbalances its counts:
    nothing is published."""
    old, new = builds
    out, work = tmp_path / "out", tmp_path / "work"
    shutil.copytree(old.path, out)
    attach_audio, lost = steps.attach_audio, new.ids["train"][0]

    def loses_the_first(utt, *args):  # pickled with the graph: it may hold only plain values
        return iter(()) if utt.id == lost else attach_audio(utt, *args)

    monkeypatch.setattr(steps, "attach_audio", loses_the_first)
    with pytest.raises(RunError, match=r"counts do not add up in stage\(s\) audio"):
        curate(demo_root, out, work_dir=str(work), corpora=("covost",), langs=("de",), overrides=["overwrite=true"])
    assert loaded(out) == old.ids and tree(out) == tree(old.path)
    assert sorted(os.listdir(out)) == sorted(os.listdir(old.path))
    (kept,) = (work / "failed-runs").iterdir()
    audio = json.loads((kept / "stats.json").read_text())["stages"]["audio"]
    assert audio["in"] == audio["out"] + audio["rejected_total"] + 1


def test_a_stage_that_crashes_leaves_the_old_build_and_no_staging(builds, demo_root, tmp_path, monkeypatch):
    old, _ = builds
    out = tmp_path / "out"
    shutil.copytree(old.path, out)

    def crashes(utt, *args):
        raise MemoryError("a worker ran out of memory")

    monkeypatch.setattr(steps, "attach_audio", crashes)
    with pytest.raises(Exception, match="a worker ran out of memory"):
        curate(demo_root, out, corpora=("covost",), langs=("de",), overrides=["overwrite=true"])
    assert loaded(out) == old.ids and tree(out) == tree(old.path)
    assert sorted(os.listdir(out)) == sorted(os.listdir(old.path))
