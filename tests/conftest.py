"""Shared fixtures: a small demo corpus built once per session, a helper that curates it, that corpus
curated with every config, and the trainer's hand-built dataset with the tiny configs trained on it."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# `datasets` caches a load by folder name and file times: a shared cache hands one test another test's
# (or an earlier session's) rows for a same-named folder. matplotlib would write under ~/.cache.
_CACHES = tempfile.mkdtemp(prefix="simulforge-tests-")
atexit.register(shutil.rmtree, _CACHES, ignore_errors=True)
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHES, "datasets")
os.environ["MPLCONFIGDIR"] = os.path.join(_CACHES, "matplotlib")

# A fraction of the demo set: every corpus, split and layout feature, built in seconds.
DEMO_SCALE = 0.12


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from simulforge.demo.corpora import build_demo_corpora

    root = tmp_path_factory.mktemp("demo") / "raw"
    build_demo_corpora(root, scale=DEMO_SCALE)
    return root


@pytest.fixture
def demo_copy(demo_root, tmp_path):
    """A private copy of the demo corpora that a test may damage."""
    dest = tmp_path / "raw"
    shutil.copytree(demo_root, dest)
    return dest


def curate(
    input_dir,
    out_dir,
    *,
    langs=("de", "es"),
    corpora=("mustc", "covost", "fleurs"),
    beam_args=(),
    work_dir=None,
    configs=("offline",),
    overrides=(),
    echo=lambda *_: None,
):
    """Curate in this process. Only `offline` by default: the stages behind the other configs
    have their own tests, and the full graph runs in the end-to-end tests."""
    from simulforge.pipeline import config
    from simulforge.pipeline.curate import run

    settings = config.load(
        overrides=[
            f"input={input_dir}",
            f"output={out_dir}",
            f"work_dir={work_dir or str(out_dir) + '.work'}",
            f"languages=[{','.join(langs)}]",
            f"corpora=[{','.join(corpora)}]",
            f"configs=[{','.join(configs)}]",
            f"align.truth={input_dir}/truth/word_times.jsonl",
            *([] if len(configs) > 1 else ["embed.enabled=false"]),
            *overrides,
        ]
    )
    return run(settings, list(beam_args), echo=echo)


ALL_CONFIGS = ("offline", "simulst", "simulmt", "conversations")


@pytest.fixture(scope="session")
def curated_demo(demo_root, tmp_path_factory):
    """The demo corpora curated in this process with all four configs, into a fresh folder: (out, stats).
    The same call as test_curate_e2e's, so the two could share one build."""
    out = tmp_path_factory.mktemp("curated_demo") / "out"
    return out, curate(demo_root, out, configs=ALL_CONFIGS)


# -- the trainer's fixtures: a hand-built dataset, and the tiny configs trained on it once -------------
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
# Shorter than the tiny configs' own schedules, on three utterances: enough to overfit them on a shared
# CPU, and for the evaluator's tests (which decode those utterances) to get real outputs.
TINY_STEPS = {"bilingual": [60], "separate": [60], "unified": [60], "jstar": [30, 80], "samu": [30, 60],
              "easist": [60, 80, 60]}
# A transducer starts out emitting only blanks: a higher rate makes JSTAR say something in fewer steps.
TINY_SETS = {"jstar": ["train.lr=0.005"]}
TINY_QUIET = ["train.progress=false", "train.ckpt_every=1000", "data.limit=3", "train.device=cpu"]


def train_tiny(name: str, data, out, extra=(), **kwargs):
    """Train configs/models/<name>_tiny.yaml on `data` into `out` on the TINY_STEPS schedule (and TINY_SETS)."""
    from simulforge.training import config as C
    from simulforge.training.recipes import run

    steps = [f"stages.{i}.steps={s}" for i, s in enumerate(TINY_STEPS[name])]
    cfg, _ = C.load(MODEL_CONFIGS / f"{name}_tiny.yaml", TINY_QUIET + TINY_SETS.get(name, []) + steps + list(extra))
    return run(cfg, str(data), out, echo=False, **kwargs)


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """test_training_data's hand-built dataset (all four configs, evenly timed words), built once."""
    from test_training_data import build_published

    return build_published(tmp_path_factory.mktemp("published"))


class TinyRuns:
    """Each tiny config trained once per session on `published`, on first use; shared by the trainer's
    and the evaluator's tests. `runs(name)` -> the stage summaries; `runs.root / name` is the run."""

    def __init__(self, data: str, root: Path):
        self.data, self.root, self.summaries = data, root, {}

    def __call__(self, name: str) -> dict:
        if name not in self.summaries:
            self.summaries[name] = train_tiny(name, self.data, self.root / name)
        return self.summaries[name]


@pytest.fixture(scope="session")
def tiny_runs(published, tmp_path_factory):
    return TinyRuns(published, tmp_path_factory.mktemp("tiny_runs"))
