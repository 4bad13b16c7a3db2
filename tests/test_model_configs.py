"""The realistic model configs (configs/models/*.yaml without `_tiny`) are only trained on a big
machine, so here each goes through every check the trainer makes before it reads data, with no
weights: the loader, the model section, each stage's task and options, the model built at its full
size on the meta device (no memory, no weights), and its `trainable` and `init.into` names.
The pretrained backbones they name are built from their published shapes (a `config.json` only).
A broken config is refused naming the key."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch

from simulforge.training import config as C
from simulforge.training import recipes
from simulforge.training.tokenizer import train_sentencepiece

transformers = pytest.importorskip("transformers")

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
REALISTIC = sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.endswith("_tiny"))
# What the tokenizer is trained on here: only the ids of its special tokens matter to the model config.
TEXTS = ["We moved to a small town near the coast last year.",
         "Wir sind letztes Jahr in eine kleine Stadt an der Küste gezogen.",
         "El año pasado nos mudamos a un pueblo pequeño cerca de la costa."]


def test_the_realistic_configs_are_found():
    assert set(REALISTIC) >= {"bilingual", "separate", "unified", "jstar", "samu", "easist"}


# The published shapes of the backbones the realistic configs name (their config.json, less what does not
# change the parameters' shapes); a folder the test does not know fails the test.
BACKBONES = {
    "wav2vec2-base-960h": lambda: transformers.Wav2Vec2Config(vocab_size=32),
    "wav2vec2-xls-r-300m": lambda: transformers.Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
    "wav2vec2-large-lv60": lambda: transformers.Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
    "mbart-large-50": lambda: transformers.MBartConfig(
        vocab_size=250054, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
        decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, scale_embedding=True),
}


def _shapes_only(cfg: C.RunConfig, folder: Path, monkeypatch) -> None:
    """Point the config's backbone folders at ones holding only their config.json, and build from it."""
    def sections(node):
        if isinstance(node, dict):
            if node.get("kind") in ("hf", "mbart") and node.get("path"):
                yield node
            for value in node.values():
                yield from sections(value)
    for node in sections(cfg.model):
        name = Path(node["path"]).name
        assert name in BACKBONES, f"{node['path']}: add the backbone's published shape to BACKBONES"
        node["path"] = str(folder / name)
        BACKBONES[name]().save_pretrained(node["path"])

    def from_config(cls, path, **_):
        config = transformers.AutoConfig.from_pretrained(path)
        return cls.from_config(config) if cls is transformers.AutoModel else cls(config)
    for cls in (transformers.AutoModel, transformers.MBartForConditionalGeneration):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(from_config))


def _checked(cfg: C.RunConfig):
    """The family, model config and tasks, checked as `recipes.run` checks them before it opens the data."""
    family = recipes.family_of(cfg.family)
    model_cfg = recipes.build_model_config(family, cfg.model)
    for stage in cfg.stages:
        assert stage.task in family.tasks, (stage.name, stage.task)
        assert stage.steps or stage.epochs, f"stages.{stage.name}: no steps or epochs"
    return family, model_cfg, recipes.make_tasks(family, cfg, model_cfg)


@pytest.mark.parametrize("name", REALISTIC)
def test_a_realistic_config_loads_validates_and_builds_without_weights(name, tmp_path, monkeypatch):
    cfg, _ = C.load(CONFIGS / f"{name}.yaml")
    family, model_cfg, tasks = _checked(cfg)

    # The weights it names are not here: the trainer's first check says which, before any work.
    if "/models/" in (CONFIGS / f"{name}.yaml").read_text().split("stages:")[0] or \
            any(stage.init for stage in cfg.stages):
        with pytest.raises(C.ConfigError, match=r"/models/\S+ (does|do) not exist"):
            recipes.check_paths(cfg, family, model_cfg)
    else:
        recipes.check_paths(cfg, family, model_cfg)

    if cfg.tokenizer.kind == "hf":  # the tokenizer and the LM are the local LM folder's
        assert cfg.model["lm"]["path"] == cfg.tokenizer.path
        model_cfg.encoder.validate("model.encoder")
        with pytest.raises(FileNotFoundError, match=f"model.lm.path: local LM folder {cfg.tokenizer.path} "):
            model_cfg.validate()
        return
    _shapes_only(cfg, tmp_path, monkeypatch)
    family, model_cfg, tasks = _checked(cfg)
    specials = recipes.specials(family, model_cfg, tasks)
    tok = train_sentencepiece(TEXTS, specials, cfg.tokenizer.vocab_size, cfg.tokenizer.model_type,
                              cfg.tokenizer.max_sentences)
    family.finalize(model_cfg, tok)
    with torch.device("meta"):  # the model's own checks run in its constructor
        model = recipes.make_model(family, model_cfg)
    names = [n for n, _ in model.named_parameters()]
    assert sum(p.numel() for p in model.parameters()) > 10_000_000  # realistic: not a tiny model
    for stage in cfg.stages:
        for pattern in stage.trainable or []:
            assert any(fnmatch.fnmatchcase(n, pattern) for n in names), f"stages.{stage.name}.trainable {pattern}"
        if stage.init is not None:
            assert any(n.startswith(stage.init.into) for n in names), f"stages.{stage.name}.init.into"


@pytest.mark.parametrize("override, message", [
    ("schedule=fast", "config: unknown key(s) schedule"),
    ("data.n_mel=80", "data: unknown key(s) n_mel"),
    ("train.lr=fast", "train.lr: expected float, got 'fast'"),
    ("stages.0.stepz=5", "stages[0]: unknown key(s) stepz"),
    ("stages.0.init={path: w.pt, strict: maybe}", "stages[0].init.strict: expected bool, got 'maybe'"),
    ("model.encoder.d_modle=512", "model.encoder: unknown key(s) d_modle"),
    ("model.encoder.n_layers=deep", "model.encoder.n_layers: expected int, got 'deep'"),
    ("stages.0.options.wait=5", "stages.st.options: unknown key(s) wait"),
    ("family=transformer", "family: unknown model family 'transformer'"),
])
def test_a_broken_config_is_refused_naming_the_key(override, message):
    with pytest.raises(C.ConfigError) as refused:
        _checked(C.load(CONFIGS / "bilingual.yaml", [override])[0])
    assert message in str(refused.value)
