"""eflomal, seeded: the corpus alignment, hence every chunk, repeats without the alignment cache, down to
the bytes of the published shards of two builds with fresh work dirs."""

from __future__ import annotations

import hashlib

import pytest
from test_segment_align import SETTINGS, corpus

from conftest import curate
from simulforge.pipeline import card
from simulforge.transforms import segment_align
from simulforge.transforms.segment_align import SEED_FILE, URANDOM, align_corpus, eflomal_binary, eflomal_seed


def test_corpus_alignment_repeats_without_a_cache(monkeypatch):
    # Threads allowed by the environment: the samplers still run one after another, as the seed needs.
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    pairs = corpus()
    first = align_corpus(pairs, SETTINGS.align.eflomal)
    assert sum(map(len, first)) > 2 * len(pairs)  # real alignments, not empty ones
    for _ in range(3):
        assert align_corpus(pairs, SETTINGS.align.eflomal) == first


def test_the_seed_comes_from_what_eflomal_is_given():
    settings = SETTINGS.align.eflomal
    seed = eflomal_seed(["a b"], ["x y"], settings)
    assert len(seed) == 8 and any(seed) and seed == eflomal_seed(["a b"], ["x y"], settings)
    assert seed != eflomal_seed(["a b"], ["x z"], settings)
    assert seed != eflomal_seed(["a b"], ["x y"], settings.__class__(**{**vars(settings), "n_samplers": 2}))


def test_the_seeded_binary_is_eflomals_with_one_path_renamed():
    with open(eflomal_binary(), "rb") as f:
        original = f.read()
    seeded = segment_align.seeded_binary(eflomal_binary())
    at = original.index(URANDOM)
    assert len(seeded) == len(original) and seeded[at:at + len(URANDOM)] == SEED_FILE.encode() + b"\0"
    assert seeded[:at] == original[:at] and seeded[at + len(URANDOM):] == original[at + len(URANDOM):]


def test_eflomal_without_its_seed_file_is_an_error(monkeypatch):
    """Where the seed file cannot be read, eflomal would seed itself from the clock: refused."""
    real = segment_align.seeded_binary(eflomal_binary())
    monkeypatch.setattr(segment_align, "seeded_binary", lambda path: real.replace(b"eflomal.seed\0", b"missing.seed\0"))
    with pytest.raises(RuntimeError, match="can not open /dev/urandom, using time"):
        align_corpus(corpus()[:8], SETTINGS.align.eflomal)


def _shards(out) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.glob("data/*/*.parquet"))}


def test_two_builds_with_fresh_work_dirs_publish_the_same_shards(demo_root, tmp_path):
    configs = ("offline", "simulst", "simulmt")
    builds = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        stats = curate(demo_root, out, configs=configs, work_dir=str(tmp_path / f"work{n}"),
                       overrides=["embed.enabled=false"])
        head = card.front_matter((out / "README.md").read_text())
        builds.append((head["simulforge"]["build"], _shards(out), stats["segment"]["crossing_rate"]))
    (build1, shards1, crossing1), (build2, shards2, crossing2) = builds
    assert {p.split("/")[1] for p in shards1} == set(configs)
    assert shards1 == shards2 and build1 == build2  # names carry the build id: same names, same bytes
    assert crossing1 == crossing2
