"""The device: train and evaluate default to `auto` (the GPU when torch sees one) and record the device
they used; `make setup` installs the pinned torch's CPU build unless `TORCH=cuda` (checked with `make -n`:
no test downloads a wheel). There is no GPU here: torch.cuda.is_available is monkeypatched."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from simulforge.eval import run as eval_run  # noqa: E402
from simulforge.evaluate import main  # noqa: E402
from simulforge.training import loop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("gpu,expected", [(True, "cuda"), (False, "cpu")])
def test_auto_is_the_gpu_when_torch_sees_one(monkeypatch, gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert eval_run.resolve_device("auto") == expected
    assert loop.resolve_device("auto") == torch.device(expected)  # what training resolves train.device with
    assert eval_run.resolve_device("cpu") == "cpu"


def test_a_device_torch_cannot_use_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in [("cuda", "--device cuda: torch 2.13.0+cpu sees no GPU (`make setup TORCH=cuda`"),
                            ("cuda:1", "--device cuda:1: torch"), ("gpu", "--device gpu: not a torch device")]:
        assert main(["--run", str(tmp_path), "--data", str(tmp_path), "--device", device]) == 2
        assert message.replace("2.13.0+cpu", torch.__version__) in capsys.readouterr().err


def test_evaluate_defaults_to_auto_and_records_the_device(monkeypatch, tiny_runs, published, tmp_path):
    tiny_runs("bilingual")
    run = tiny_runs.root / "bilingual"
    assert yaml.safe_load((run / "run.yaml").read_text())["device"] == "cpu"  # the trainer records its device
    asked = []
    real_load_run = eval_run.load_run

    def load_run(run_dir, device):
        asked.append(device)
        if device != "cpu":  # there is no GPU to load onto: stop here, having seen what was asked
            raise FileNotFoundError(f"no {device} here")
        return real_load_run(run_dir, device)

    monkeypatch.setattr(eval_run, "load_run", load_run)
    common = ["--run", str(run), "--data", published, "--split", "train", "--limit", "1", "--k", "2"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main([*common, "--out", str(tmp_path / "gpu")]) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*common, "--out", str(tmp_path / "cpu")]) == 0
    assert asked == ["cuda", "cpu"]
    assert json.loads((tmp_path / "cpu" / "scores.json").read_text())["device"] == "cpu"


def test_training_on_auto_records_the_device_it_resolved(monkeypatch, published, tmp_path):
    from conftest import train_tiny

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train_tiny("bilingual", published, tmp_path / "run", extra=["train.device=auto", "stages.0.steps=1"])
    assert yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())["device"] == "cpu"


# -- make setup ---------------------------------------------------------------------------------------
def _make_n(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "-C", str(folder), "setup", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def checkout(tmp_path):
    """The files `make setup` reads, in a folder with no .venv yet."""
    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_make_setup_installs_the_pinned_torch_cpu_build_unless_torch_cuda(checkout):
    pin = re.search(r"^torch==\S+$", (ROOT / "requirements.lock").read_text(), re.M).group(0)
    cpu = _make_n(checkout)
    assert cpu.returncode == 0, cpu.stderr
    assert f"pip install -q --disable-pip-version-check --no-deps --index-url https://download.pytorch.org/whl/cpu {pin}\n" \
        in cpu.stdout
    assert "touch .venv/.installed\n" in cpu.stdout and "rm -f .venv/.installed-cuda\n" in cpu.stdout

    cuda = _make_n(checkout, "TORCH=cuda")
    assert cuda.returncode == 0, cuda.stderr
    torch_lines = [line for line in cuda.stdout.splitlines() if "pip install" in line and "torch==" in line]
    assert len(torch_lines) == 1 and torch_lines[0].split()[-1] == pin and "--index-url" not in torch_lines[0]
    assert "--no-deps" not in torch_lines[0]  # the CUDA build brings its nvidia-* wheels
    assert "download.pytorch.org" not in cuda.stdout  # PyPI's default Linux wheel is the CUDA build
    assert "touch .venv/.installed-cuda\n" in cuda.stdout and "rm -f .venv/.installed\n" in cuda.stdout
    # A switch removes the installed build first (pip keeps an installed torch of the pinned version).
    assert "pip uninstall -q -y torch" in cuda.stdout
    assert cuda.stdout.index("pip uninstall") < cuda.stdout.index(torch_lines[0])

    bad = _make_n(checkout, "TORCH=rocm")
    assert bad.returncode == 2 and "TORCH=rocm: give cpu (the default) or cuda" in bad.stderr


def test_a_cuda_setup_is_kept_by_later_targets(checkout):
    (checkout / ".venv").mkdir()
    stamp = checkout / ".venv" / ".installed-cuda"
    stamp.touch()
    later = (checkout / "requirements.lock").stat().st_mtime + 10
    os.utime(stamp, (later, later))
    assert "pip" not in _make_n(checkout).stdout  # `make test` after `make setup TORCH=cuda`: nothing reinstalled
    assert "download.pytorch.org/whl/cpu" in _make_n(checkout, "TORCH=cpu").stdout  # switching back is explicit
