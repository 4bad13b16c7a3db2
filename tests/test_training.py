"""The trainer end to end on a tiny published dataset: every family's tiny config overfits a
handful of utterances, a stopped run resumes exactly, and bad inputs stop it before training."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from test_training_data import build_published  # noqa: E402  (the fixture dataset builder)

from conftest import MODEL_CONFIGS as CONFIGS  # noqa: E402
from conftest import TINY_STEPS, train_tiny  # noqa: E402
from simulforge import evaluate  # noqa: E402
from simulforge.train import main  # noqa: E402
from simulforge.training.recipes import load_run  # noqa: E402

# The family and model each tiny config must build (decoder_mode for the wait-k family).
BUILDS = {"bilingual": ("waitk", "WaitkST", "single"), "separate": ("waitk", "WaitkST", "separate"),
          "unified": ("waitk", "WaitkST", "unified"), "jstar": ("jstar", "Jstar", None),
          "samu": ("samu", "Samu", None), "easist": ("easist", "Easist", None)}


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


_run = train_tiny


@pytest.mark.parametrize("name", list(TINY_STEPS))
def test_each_tiny_config_overfits_a_handful_of_utterances(name, tiny_runs):
    summaries, run_dir = tiny_runs(name), tiny_runs.root / name
    stages = [s["name"] for s in yaml.safe_load((CONFIGS / f"{name}_tiny.yaml").read_text())["stages"]]
    assert list(summaries) == stages
    for stage, s in summaries.items():
        assert s["final_loss"] < s["first_loss"], (stage, s)
    last = summaries[stages[-1]]
    assert last["final_loss"] < 0.3 * last["first_loss"], summaries
    losses = [e["loss"] for e in _events(run_dir) if "loss" in e and e.get("stage") == stages[-1]]
    assert losses[-1] < losses[0]
    model, tok, info = load_run(run_dir)
    family, model_class, decoder_mode = BUILDS[name]
    assert info["family"] == family and type(model).__name__ == model_class, (info["family"], type(model))
    if decoder_mode is not None:
        assert model.cfg.decoder_mode == decoder_mode
    assert tok.vocab_size > 10 and (run_dir / "tokenizer.model").is_file()


def test_a_stopped_run_resumes_exactly(published, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ["stages.0.steps=8", "train.log_every=1", "model.encoder.dropout=0.1", "model.decoder.dropout=0.1"]
    _run("unified", published, straight, extra)
    assert "stopped_at" in _run("unified", published, resumed, extra, stop_after=3)["st"]
    assert (resumed / "st" / "checkpoint.pt").is_file() and not (resumed / "st" / "done.json").exists()
    _run("unified", published, resumed, extra)

    def losses(d):
        return {e["step"]: e["loss"] for e in _events(d) if "loss" in e and "step" in e and "event" not in e}

    assert losses(straight) == losses(resumed) and len(losses(straight)) == 8
    a = torch.load(straight / "model.pt")
    b = torch.load(resumed / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    events = [e.get("event") for e in _events(resumed)]
    assert "resumed" in events


def test_a_finished_stage_is_not_trained_again(published, tmp_path):
    _run("samu", published, tmp_path / "r", ["stages.0.steps=3", "stages.1.steps=3"])
    before = (tmp_path / "r" / "log.jsonl").read_text()
    _run("samu", published, tmp_path / "r", ["stages.0.steps=3", "stages.1.steps=3"])
    after = (tmp_path / "r" / "log.jsonl").read_text()
    assert after == before


def test_the_command_line_trains_and_reports(published, tmp_path, capsys):
    code = main(["--config", str(CONFIGS / "bilingual_tiny.yaml"), "--data", published, "--out", str(tmp_path / "cli"),
                 "--quiet", "--set", "stages.0.steps=4", "--set", "data.limit=2", "--set", "data.valid_split=validation",
                 "--set", "train.eval_every=2"])
    assert code == 0
    assert "st: steps=4" in capsys.readouterr().out
    assert (tmp_path / "cli" / "model.pt").is_file()
    valid = [e for e in _events(tmp_path / "cli") if "valid_loss" in e]  # every 2 steps, and at the end
    assert [e.get("step", e.get("steps")) for e in valid] == [2, 4] and all(e["valid_loss"] > 0 for e in valid)


def test_the_audio_settings_are_the_data_s_unless_the_config_sets_them(tiny_runs, tmp_path, capsys):
    # jstar_tiny leaves model.channels and data.sampling_rate null: the fixture's 2-mic 16 kHz conversations.
    tiny_runs("jstar")
    info = yaml.safe_load((tiny_runs.root / "jstar" / "run.yaml").read_text())
    assert (info["model"]["channels"], info["data"]["sampling_rate"]) == (2, 16000)
    # Audio published at 8 kHz trains at 8 kHz, or is resampled to a rate the config sets.
    (tmp_path / "at8k").mkdir()
    data = build_published(tmp_path / "at8k", rate=8000, drop_configs=("simulst", "simulmt"))
    for out, extra, rate in [("native", [], 8000), ("resampled", ["data.sampling_rate=16000"], 16000)]:
        summary = _run("bilingual", data, tmp_path / out, ["stages.0.steps=2", *extra])["st"]
        assert yaml.safe_load((tmp_path / out / "run.yaml").read_text())["data"]["sampling_rate"] == rate
        assert math.isfinite(summary["final_loss"])
    # Evaluation decodes at the run's rate, here the data's 8 kHz: each clip lasts what the data says. A run
    # that read no audio records no rate (null): it decodes at the evaluated data's.
    durations = datasets.load_dataset(data, "offline", split="train[:2]").select_columns(["duration"])["duration"]
    run_yaml = tmp_path / "native" / "run.yaml"
    info = yaml.safe_load(run_yaml.read_text())
    for recorded in (8000, None):
        info["data"]["sampling_rate"] = recorded
        run_yaml.write_text(yaml.safe_dump(info, sort_keys=False))
        out = tmp_path / f"eval_{recorded}"
        assert evaluate.main(["--run", str(tmp_path / "native"), "--data", data, "--split", "train", "--limit", "2",
                              "--policy", "offline", "--max-len", "20", "--out", str(out)]) == 0
        assert json.loads((out / "scores.json").read_text())["sampling_rate"] == 8000
        log = (out / "offline" / "de" / "instances.log").read_text().splitlines()
        lengths = [json.loads(line)["source_length"] for line in log]
        assert lengths == pytest.approx([1000 * d for d in durations], abs=1)
    # A channel count the config gives must be the audio's.
    out = tmp_path / "run"
    _fails(["--config", str(CONFIGS / "jstar_tiny.yaml"), "--data", tiny_runs.data, "--out", str(out),
            "--set", "model.channels=7"], capsys, "stages.joint.options: the audio of dataset config "
           "'conversations' split 'train' has 2 channel(s) but model.channels is 7 (leave it null to take the "
           "dataset's)", out)


# -- bad input: a clear error before training starts ----------------------------------------------
def _fails(args: list[str], capsys, match: str, out: Path) -> None:
    assert main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert not list(out.glob("*/checkpoint.pt")) and not list(out.glob("*/done.json"))


def test_a_missing_dataset_config_is_named(tmp_path, capsys):
    (tmp_path / "nosimulst").mkdir()
    data = build_published(tmp_path / "nosimulst", drop_configs=("simulst",))
    out = tmp_path / "run"
    _fails(["--config", str(CONFIGS / "easist_tiny.yaml"), "--data", data, "--out", str(out)], capsys,
           "has no config 'simulst'; it has: offline, simulmt, conversations", out)


def test_a_missing_column_is_named(tmp_path, capsys):
    (tmp_path / "noemb").mkdir()
    data = build_published(tmp_path / "noemb", embedding=False)
    out = tmp_path / "run"
    _fails(["--config", str(CONFIGS / "samu_tiny.yaml"), "--data", data, "--out", str(out)], capsys,
           "stages.distill: the dataset lacks column(s) embedding", out)
    _fails(["--config", str(CONFIGS / "separate_tiny.yaml"), "--data", data, "--out", str(out),
            "--set", "model.languages=[de, fr]", "--set", "stages.0.options.languages=[de, fr]"], capsys,
           "lacks column(s) translation.fr", out)


def test_a_vocabulary_without_the_special_tokens_is_refused(published, tmp_path, capsys):
    from simulforge.training.tokenizer import train_sentencepiece

    plain = train_sentencepiece(["the cat sleeps", "die Katze schläft", "el gato duerme"] * 5, [], 40, "unigram", 100)
    path = tmp_path / "plain.model"
    plain.save(path)
    out = tmp_path / "run"
    _fails(["--config", str(CONFIGS / "easist_tiny.yaml"), "--data", published, "--out", str(out),
            "--set", f"tokenizer.path={path}"], capsys, "lacks the special token(s) this model needs: <|end-of-read|>",
           out)


def test_missing_local_weights_are_refused(published, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(["--config", str(CONFIGS / "easist_tiny.yaml"), "--data", published, "--out", str(out),
            "--set", "model.lm={path: /nonexistent/llama, config: null, dtype: bfloat16, gradient_checkpointing: false}"],
           capsys, "model.lm.path: local LM folder /nonexistent/llama does not exist", out)
    _fails(["--config", str(CONFIGS / "samu_tiny.yaml"), "--data", published, "--out", str(out),
            "--set", "stages.0.init={path: /nonexistent/encoder.pt, into: st.encoder.}"], capsys,
           "stages.distill.init.path: local weights /nonexistent/encoder.pt do not exist", out)
    _fails(["--config", str(tmp_path / "absent.yaml"), "--data", published, "--out", str(out)], capsys,
           "does not exist", out)
    shutil.rmtree(out, ignore_errors=True)


def test_unknown_keys_and_bad_options_are_refused(published, tmp_path, capsys):
    out = tmp_path / "run"
    _fails(["--config", str(CONFIGS / "unified_tiny.yaml"), "--data", published, "--out", str(out),
            "--set", "train.learning_rate=1"], capsys, "unknown key(s) learning_rate", out)
    _fails(["--config", str(CONFIGS / "unified_tiny.yaml"), "--data", published, "--out", str(out),
            "--set", "stages.0.options.waitk={de: 0, es: 2}"], capsys, "k must be >= 1", out)
    _fails(["--config", str(CONFIGS / "jstar_tiny.yaml"), "--data", published, "--out", str(out),
            "--set", "stages.1.task=sft"], capsys, "jstar has tasks mt, joint", out)
