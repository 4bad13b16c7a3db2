"""The trainer end to end on a tiny published dataset: every family's tiny config overfits a
handful of utterances, a stopped run resumes exactly, and bad inputs stop it before training."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_training_data import build_published  # noqa: E402  (the fixture dataset builder)

from simulforge.train import main  # noqa: E402
from simulforge.training import config as C  # noqa: E402
from simulforge.training.recipes import load_run, run  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
QUIET = ["train.progress=false", "train.ckpt_every=1000", "data.limit=3"]
# Shorter than the tiny configs' own schedules: enough to overfit three utterances on a shared CPU.
STEPS = {"bilingual": [60], "separate": [60], "unified": [60], "jstar": [30, 60], "samu": [30, 60],
         "easist": [60, 80, 60]}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return build_published(tmp_path_factory.mktemp("published"))


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _run(name: str, data: str, out: Path, extra=(), **kwargs):
    steps = [f"stages.{i}.steps={s}" for i, s in enumerate(STEPS[name])]
    cfg, _ = C.load(CONFIGS / f"{name}_tiny.yaml", QUIET + steps + list(extra))
    return run(cfg, data, out, echo=False, **kwargs)


@pytest.mark.parametrize("name", list(STEPS))
def test_each_tiny_config_overfits_a_handful_of_utterances(name, published, tmp_path):
    summaries = _run(name, published, tmp_path / name)
    for stage, s in summaries.items():
        assert s["final_loss"] < s["first_loss"], (stage, s)
    last = summaries[list(summaries)[-1]]
    assert last["final_loss"] < 0.3 * last["first_loss"], summaries
    losses = [e["loss"] for e in _events(tmp_path / name) if "loss" in e and e.get("stage") == list(summaries)[-1]]
    assert losses[-1] < losses[0]
    model, tok, info = load_run(tmp_path / name)
    assert info["family"] in {"waitk", "jstar", "samu", "easist"} and tok.vocab_size > 10
    assert (tmp_path / name / "tokenizer.model").is_file()


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
