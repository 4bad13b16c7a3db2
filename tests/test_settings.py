"""The one reader of `--set KEY=VALUE`, shared by curate, train and evaluate, and the defaults the
curation config resolves when it loads."""

import pytest

from conftest import MODEL_CONFIGS
from simulforge.pipeline import config
from simulforge.settings import ConfigError, override
from simulforge.training import config as training_config


def test_a_set_item_lands_where_its_key_points_and_leaves_the_input_alone():
    data = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "stages": [{"steps": 10}, {"steps": 20}]}
    out = override(data, "a.c={d: 5}")  # a mapping merges into the one it lands on
    assert out["a"] == {"b": 1, "c": {"d": 5, "e": 3}}
    assert override(data, "stages.1.steps=5")["stages"] == [{"steps": 10}, {"steps": 5}]
    assert override(data, "new.key=[x, 2]")["new"] == {"key": ["x", 2]}  # values are YAML
    assert override(data, "a.b=")["a"]["b"] is None
    assert override(data, "a.b=[1, 2]")["a"]["b"] == [1, 2]  # a scalar is replaced
    assert data == {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "stages": [{"steps": 10}, {"steps": 20}]}


@pytest.mark.parametrize("item, message", [
    ("seed", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("seed=[", "--set seed=[: not valid YAML"),
    ("stages.2.steps=1", "'2' is not an item of a list of 2"),
    ("stages.x=1", "'x' is not an item of a list of 2"),
])
def test_a_set_item_that_cannot_apply_is_named(item, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        override({"stages": [{}, {}]}, item)


def test_curate_and_train_read_set_items_the_same_way(tmp_path):
    curate = config.load(overrides=["segment.levels=[low, high]", "corpus.mustc={path: /elsewhere}"])
    assert curate.segment.levels == ["low", "high"]
    assert curate.corpus["mustc"].path == "/elsewhere" and curate.corpus["mustc"].splits  # merged, not replaced
    cfg, _ = training_config.load(MODEL_CONFIGS / "jstar_tiny.yaml", ["stages.1.steps=7", "train.lr=0.5"])
    assert cfg.stages[1].steps == 7 and cfg.train.lr == 0.5


def test_no_input_means_the_demo_corpora_in_the_work_dir_resolved_at_load(tmp_path):
    settings = config.load(overrides=[f"work_dir={tmp_path}/work"])
    assert settings.input == f"{tmp_path}/work/demo" == settings.demo_root()
    assert settings.align.truth == f"{tmp_path}/work/demo/truth/word_times.jsonl"
    given = config.load(overrides=[f"work_dir={tmp_path}/work", f"input={tmp_path}/corpora"])
    assert given.input == f"{tmp_path}/corpora" and given.align.truth is None
