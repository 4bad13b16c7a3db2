"""`simulforge` as a user runs it: the installed console script in a child process, started in a
fresh folder with a fresh HOME. Exit codes and messages, flags reaching the config and Beam, the
output loading with `datasets`, and a run writing nothing outside --output and --work-dir."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SIMULFORGE = Path(sys.executable).with_name("simulforge")
# What the test session sets for itself (caches under a temp folder, see conftest): a user has none.
SESSION_ONLY = ("HF_", "XDG_", "MPLCONFIGDIR", "PULSE_")
# A curate that costs seconds: one corpus, one language, one config, no embedding teacher.
SMALL = ["--corpora", "covost", "--langs", "de", "--set", "configs=[offline]", "--set", "embed.enabled=false"]


class User:
    """A working folder and a HOME of their own; `run` calls `simulforge ARGS` from there."""

    def __init__(self, root: Path):
        self.root, self.cwd, self.home = root, root / "cwd", root / "home"
        self.cwd.mkdir(parents=True)
        self.home.mkdir()

    def run(self, *args) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(SESSION_ONLY)}
        env.update(HOME=str(self.home), OMP_NUM_THREADS="1")
        return subprocess.run([str(SIMULFORGE), *map(str, args)], cwd=self.cwd, env=env,
                              capture_output=True, text=True, timeout=300)

    def left(self) -> list[str]:
        """What the commands left in the working folder and in HOME."""
        return sorted(str(p.relative_to(self.root)) for d in (self.cwd, self.home) for p in d.rglob("*"))


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` and a digest of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> None:
    """Exit 2 and a one-line message, the last on stderr, holding each fragment; no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"simulforge {command}".rstrip()), message
    for fragment in fragments:
        assert fragment in message, message


def assert_loads(out: Path) -> tuple[dict, object]:
    """The output's stats.json, and its offline config loaded by `datasets` with the rows it reports."""
    import datasets

    stats = json.loads((out / "stats.json").read_text())
    ds = datasets.load_dataset(str(out), "offline")
    rows = stats["published"]["offline"]["rows"]
    assert {split: ds[split].num_rows for split in ds} == rows and sum(rows.values()) > 0
    return stats, ds


def build_id(out: Path) -> str:
    return json.loads((out / ".simulforge-build").read_text())["build"]


@pytest.fixture(scope="module")
def first_build(demo_root, tmp_path_factory):
    """One curate with every kind of flag: (user, argv, output, work dir, the finished process).
    The --config file names languages and corpora that --langs and --corpora override, configs and
    an embed key that --set overrides, and a seed and a shard count that nothing else sets."""
    root = tmp_path_factory.mktemp("cli")
    user = User(root)
    config = root / "mine.yaml"
    config.write_text("seed: 7\nnum_shards: 2\nlanguages: [es]\ncorpora: [mustc]\nconfigs: [offline, simulmt]\n"
                      "embed: {enabled: true}\n")
    out, work = root / "out", root / "work"
    argv = ["curate", "--config", config, "--input", demo_root, "--output", out, "--work-dir", work, *SMALL,
            "--runner-profile", "direct", "--direct_num_workers=1", "--runner=FnApiRunner"]
    return user, argv, out, work, user.run(*argv)


def test_curate_takes_its_flags_a_config_file_and_beam_flags(first_build):
    user, _, out, work, proc = first_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"published build {build_id(out)} in {out}" in proc.stdout
    stats, ds = assert_loads(out)
    run = stats["run"]
    # --langs, --corpora and --set beat the file's keys; the file's beat configs/curate.yaml.
    assert (run["languages"], run["corpora"], run["seed"], run["configs"]) == (["de"], ["covost"], 7, ["offline"])
    assert {p.name.split("-")[3] for p in (out / "data" / "offline").glob("*.parquet")} == {"00002"}
    assert list(ds["train"].features["translation"]) == ["de"]
    assert {i.split("/")[0] for split in ds.values() for i in split["id"]} == {"covost"}
    assert "embedding" not in ds["train"].column_names
    # The profile's flags, then the command line's in their order; `--runner=` is Beam's, not a
    # prefix of --runner-profile.
    assert run["beam_args"] == ["--runner=FnApiRunner", "--direct_num_workers=1", "--runner=FnApiRunner"]
    assert user.left() == []  # nothing in the working folder or HOME (matplotlib's cache: the work dir)
    assert (work / "matplotlib").is_dir()


def test_curate_says_where_everything_is_and_ships_its_resolved_settings(first_build):
    """The closing lines name the build, its parts and the next commands; curate.yaml beside stats.json
    loads back as a --config with the build's config hash, and the build's file list holds it."""
    import yaml

    from simulforge.pipeline import config

    user, _, out, work, proc = first_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats, build = json.loads((out / "stats.json").read_text()), build_id(out)
    rejected = sum(e["rejected_total"] for e in stats["stages"].values())
    lines = proc.stdout.splitlines()
    closing = lines[lines.index(next(line for line in lines if line.startswith(f"build {build} in {out}: "))):]
    assert [line.split()[0] for line in closing[1:6]] == ["card", "rejects", "stats", "settings", "log"]
    assert f"{out}/README.md" in closing[1] and f"{out}/rejected.jsonl ({rejected} rejected record" in closing[2]
    (log,) = (work / "logs").glob("curate-*.log")
    assert closing[5].split()[-1] == str(log)
    assert closing[6] == "next:" and closing[7].strip().startswith(f"simulforge publish {out} --repo-id ORG/NAME")
    assert closing[8].strip().startswith(f"simulforge train --config configs/models/bilingual_tiny.yaml --data {out}")

    assert "curate.yaml" in json.loads((out / ".simulforge-build").read_text())["files"]
    assert not {"output", "overwrite", "work_dir"} & set(yaml.safe_load((out / "curate.yaml").read_text()))
    shipped = config.load(str(out / "curate.yaml"), [f"work_dir={work}"])  # where to write is the command's
    assert shipped.fingerprint() == stats["run"]["config_hash"]
    assert (shipped.languages, shipped.seed, shipped.num_shards) == (["de"], 7, 2)
    assert shipped.beam_args == ["--direct_num_workers=1", "--runner=FnApiRunner"]  # after the profile's


def test_a_default_curate_logs_little_and_keeps_the_full_log_in_the_work_dir(first_build):
    """Library INFO records (Beam's) stay off the console but are in the log file, with the lines the
    run printed; stderr holds the progress line(s) and nothing from INFO."""
    _, _, out, work, proc = first_build
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if not line.startswith("progress ")] == [], proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("progress ") and "done: read, join, audio" in proc.stderr
    (log,) = (work / "logs").glob("curate-*.log")
    text = log.read_text()
    assert re.search(r"^\S+ \S+ INFO apache_beam\.", text, re.M), text[:3000]
    assert f"INFO simulforge.echo: published build {build_id(out)} in {out}" in text


def test_quiet_and_verbose(first_build, demo_root, tmp_path):
    user, _, _, work, first = first_build
    assert first.returncode == 0, first.stderr[-3000:]
    common = ["curate", "--input", demo_root, "--work-dir", work, *SMALL]
    quiet = user.run(*common, "--output", tmp_path / "q", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert_loads(tmp_path / "q")
    verbose = user.run("-v", *common, "--output", tmp_path / "v")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert re.search(r"^INFO apache_beam\.", verbose.stderr, re.M), verbose.stderr
    assert f"published build {build_id(tmp_path / 'v')}" in verbose.stdout


def test_print_config_prints_the_merged_settings_and_does_nothing_else(first_build, tmp_path):
    """The same flags as the first build with --print-config: the settings that build recorded."""
    import yaml

    from simulforge.pipeline import config

    user, argv, out, _, first = first_build
    assert first.returncode == 0, first.stderr[-3000:]
    where = tmp_path / "elsewhere"
    argv = [where if a == out else a for a in argv]
    printed = user.run(*argv, "--print-config")
    assert printed.returncode == 0 and printed.stderr == "", printed.stderr
    data = yaml.safe_load(printed.stdout)
    assert (data["languages"], data["seed"], data["output"]) == (["de"], 7, str(where))
    (where.parent / "printed.yaml").write_text(printed.stdout)
    stats = json.loads((out / "stats.json").read_text())
    assert config.load(str(where.parent / "printed.yaml")).fingerprint() == stats["run"]["config_hash"]
    assert not where.exists() and user.left() == []


def test_evaluate_data_writes_beside_the_dataset_which_publish_still_takes(first_build, tmp_path):
    """`evaluate data OUT` used to write OUT/eval, after which `publish` refused OUT for stray files."""
    out, first = first_build[2], first_build[4]
    assert first.returncode == 0, first.stderr[-3000:]
    user, before = User(tmp_path), tree(out)  # `datasets` caches under this user's HOME
    evaluated = user.run("evaluate", "data", out)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (Path(f"{out}-eval") / "quality" / "quality.json").is_file() and tree(out) == before
    assert_refused(user.run("evaluate", "data", out, "--out", out / "eval"), "evaluate data",
                   f"--out {out / 'eval'} is inside the dataset folder {out}")
    assert tree(out) == before
    checked = user.run("publish", out, "--repo-id", "org/name", "--dry-run")
    assert checked.returncode == 0 and "dry run: nothing uploaded" in checked.stdout, checked.stderr[-3000:]


def test_a_second_run_into_a_build_needs_overwrite(first_build, demo_root):
    user, argv, out, work, first = first_build
    assert first.returncode == 0, first.stderr[-3000:]
    old, before = build_id(out), tree(out)
    again = user.run(*argv)
    assert_refused(again, "curate", f"{out} already holds build {old}; pass --overwrite")
    assert tree(out) == before

    replaced = user.run("curate", "--input", demo_root, "--output", out, "--work-dir", work, "--overwrite",
                        "--corpora", "covost,mustc", "--langs", "de,es",
                        "--set", "configs=[offline]", "--set", "embed.enabled=false")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    stats, ds = assert_loads(out)
    assert (stats["run"]["corpora"], stats["run"]["languages"], stats["run"]["seed"]) == (
        ["covost", "mustc"], ["de", "es"], 0)
    assert {i.split("/")[0] for split in ds.values() for i in split["id"]} == {"covost", "mustc"}
    new = build_id(out)
    assert new != old and not [p for p in tree(out) if old in p]
    assert f"published build {new} in {out}" in replaced.stdout
    assert user.left() == []


def test_export_lhotse_writes_manifests_of_the_curated_output(first_build, tmp_path):
    from lhotse import load_manifest

    out, first = first_build[2], first_build[4]
    assert first.returncode == 0, first.stderr[-3000:]
    user, manifests = User(tmp_path), tmp_path / "lhotse"
    proc = user.run("export", "lhotse", out, manifests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "stats.json").read_text())["published"]["offline"]["rows"]
    for split, n in rows.items():
        recordings = load_manifest(manifests / f"simulforge_offline_recordings_{split}.jsonl.gz")
        supervisions = load_manifest(manifests / f"simulforge_offline_supervisions_{split}.jsonl.gz")
        assert len(recordings) == len(supervisions) == n
        assert f"{split}: {n} recordings and supervisions" in proc.stdout
    assert len(list((manifests / "audio").rglob("*.flac"))) == sum(rows.values())
    assert recordings[0].load_audio().shape[0] == 1
    # Importing lhotse makes ~/.lhotse/tools, and datasets leaves a lock in its cache even when it
    # streams: those, and nothing else.
    known = ("home/.lhotse", "home/.cache/huggingface")
    assert [p for p in user.left() if p != "home/.cache" and not p.startswith(known)] == []


def test_demo_data_writes_the_three_corpus_layouts(tmp_path):
    user, root = User(tmp_path), tmp_path / "raw"
    proc = user.run("demo-data", root, "--scale", "0.05")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()  # a short summary, not the whole dict
    assert lines[0].startswith(f"demo corpora written to {root} in ") and lines[0].endswith("(scale 0.05, seed 0):")
    assert lines[-1] == f"next: simulforge curate --input {root} --output out" and len(lines) == 6
    shown = {m[1]: int(m[2]) for m in (re.match(r"  (\w+)\s+(\d+) clips", line) for line in lines[1:5]) if m}
    again = user.run("demo-data", root, "--scale", "0.05", "--json")  # the same corpora, every number
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert (summary["scale"], summary["seed"]) == (0.05, 0)
    assert shown == {**{n: summary[n]["clips"] for n in ("mustc", "covost", "fleurs")}, "truth": summary["truth_clips"]}
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "covost", "fleurs", "mustc", "truth"]
    mustc, covost, fleurs = (summary[name]["clips"] for name in ("mustc", "covost", "fleurs"))
    assert len(list(root.glob("mustc/en-de/data/*/wav/*.wav"))) == summary["mustc"]["talks"] > 0
    assert len(list(root.glob("covost/clips/*.mp3"))) == covost > 0
    tars = list(root.glob("fleurs/en_us/audio/*.tar.gz"))
    assert sum(len(tarfile.open(t).getnames()) for t in tars) == fleurs > 0
    truth = (root / "truth" / "word_times.jsonl").read_text().splitlines()
    assert len(truth) == summary["truth_clips"] == mustc + covost + fleurs
    assert user.left() == []  # espeak's sound-server probe leaves no ~/.config/pulse


def test_demo_data_refusals(tmp_path):
    user = User(tmp_path)
    afile, foreign = tmp_path / "afile", tmp_path / "theirs"
    afile.write_text("mine")
    (foreign / "mustc").mkdir(parents=True)
    (foreign / "mustc" / "notes.txt").write_text("not a demo build")
    theirs = tree(foreign)
    assert_refused(user.run("demo-data", tmp_path / "raw", "--scale", "0"), "demo-data",
                   "argument --scale: expected a number more than 0, got '0'")
    assert_refused(user.run("demo-data", afile, "--scale", "0.05"), "demo-data", f"{afile} is a file, not a folder")
    assert_refused(user.run("demo-data", foreign, "--scale", "0.05"), "demo-data",
                   f"{foreign} holds mustc not written by simulforge")
    assert afile.read_text() == "mine" and tree(foreign) == theirs
    assert not (tmp_path / "raw").exists() and user.left() == []


def _file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def _foreign(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("someone's notes")
    return path


def _bad_yaml(path: Path) -> Path:
    path.write_text("seed: 3\nlanguages: [de\n")
    return path


# Refused before any work: (argv, with OUT, CONFIG, NOWHERE standing for the test's paths; how the
# output folder is prepared; the message's fragments).
REFUSALS = {
    "unknown-key": (["--set", "embed.batchsize=8"], None, ["curate.embed: unknown key(s) batchsize; known: enabled"]),
    "no-langs": (["--langs", ""], None, ["curate.languages: give at least one target language"]),
    "output-is-a-file": ([], _file, ["output: OUT is a file, not a folder"]),
    "foreign-folder": ([], _foreign, ["output: OUT is not empty and is not a simulforge build (notes.txt, sub)"]),
    "missing-config": (["--config", "CONFIG"], None, ["--config CONFIG: No such file or directory"]),
    "bad-yaml-config": (["--config", "CONFIG"], None, ["--config CONFIG: not valid YAML", "line 3"]),
    "bad-yaml-set": (["--set", "seed=["], None, ["--set seed=[: not valid YAML"]),
    "missing-input": (["--input", "NOWHERE"], None, ["covost: corpus folder NOWHERE/covost does not exist"]),
    "unknown-profile": (["--runner-profile", "yarn"], None, ["runner profile 'yarn': known profiles are direct, "]),
    "beam-runner-flag": (["--runner=PortableRunner"], None, ["PortableRunner needs --job_endpoint"]),
    "misspelled-beam-flag": (["--direct_num_worker=2"], None,
                             ["unknown Beam flag: --direct_num_worker=2 (did you mean --direct_num_workers?)"]),
    "unknown-beam-flags": (["--foo_bar=1", "--flink_mastr", "h"], None,
                           ["unknown Beam flags: --foo_bar=1 (no Beam option has this name); "
                            "--flink_mastr (did you mean --flink_master?)"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_curate_refuses_before_any_work(case, demo_root, tmp_path):
    args, prepare, fragments = REFUSALS[case]
    user, out, work = User(tmp_path / "user"), tmp_path / "out", tmp_path / "work"
    config = _bad_yaml(tmp_path / "bad.yaml") if case == "bad-yaml-config" else tmp_path / "missing.yaml"
    if prepare:
        prepare(out)
    before = tree(out) if out.is_dir() else out.read_bytes() if out.exists() else None
    fill = {"OUT": str(out), "CONFIG": str(config), "NOWHERE": str(tmp_path / "nowhere")}
    args = [fill.get(a, a) for a in args]
    proc = user.run("curate", "--input", demo_root, "--output", out, "--work-dir", work, *SMALL, *args)
    for name, path in fill.items():
        fragments = [f.replace(name, path) for f in fragments]
    assert_refused(proc, "curate", *fragments)
    assert "Errno" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr  # the message alone: no log noise
    after = tree(out) if out.is_dir() else out.read_bytes() if out.exists() else None
    assert after == before and not work.exists() and user.left() == []


def test_usage_errors_and_help(tmp_path):
    user = User(tmp_path)
    assert_refused(user.run(), "", "the following arguments are required: command")
    assert_refused(user.run("export", "csv", tmp_path / "ds", tmp_path / "x"), "export",
                   "the one format is lhotse: simulforge export lhotse DATASET DIR")
    assert_refused(user.run("export"), "export", "the one format is lhotse")
    assert_refused(user.run("export", "lhotse", tmp_path / "nowhere", tmp_path / "x"), "export lhotse",
                   f"{tmp_path / 'nowhere'}: no such dataset folder")
    helped = user.run("export", "lhotse", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: simulforge export lhotse"), helped
    helped = user.run("curate", "--help")
    assert helped.returncode == 0 and "--runner-profile" in helped.stdout and "--runner=PortableRunner" in helped.stdout
    helped = user.run("export", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: simulforge export lhotse DATASET DIR"), helped
    version = user.run("--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"simulforge {__import__('simulforge').__version__}")
    assert not (tmp_path / "x").exists() and user.left() == []
