"""Shared fixtures: a small demo corpus built once per session, and a helper that curates it."""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

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
