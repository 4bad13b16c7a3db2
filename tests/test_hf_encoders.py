"""Pretrained `transformers` speech encoders (models/hf_encoder.py) as the wait-k and SAMU backbone.

No network: tiny random Wav2Vec2 / HuBERT / Whisper models are built from their configs and saved into a tmp
folder, then loaded from it the way a config's `encoder: {kind: hf, path: ...}` loads them.
(a) in `full` mode the wrapped encoder gives the `transformers` model's output; (b) in `block_causal`
mode streaming block by block gives the offline block-causal output, and no frame reads audio of a
later block; (c) every family that takes the backbone trains a few steps on it, and the evaluator's
driver feeds it raw samples; (d) EASiST's adapter cuts the backbone's frames at its block boundaries,
so its streamed LM input is the teacher-forced one.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from simulforge.eval.driver import Decoder, _Frames  # noqa: E402
from simulforge.eval.policies import Offline, WaitK  # noqa: E402
from simulforge.models import registry  # noqa: E402
from simulforge.models.decoder import DecoderConfig  # noqa: E402
from simulforge.models.encoder import EncoderConfig, make_encoder  # noqa: E402
from simulforge.models.hf_encoder import FRAME_SAMPLES  # noqa: E402
from simulforge.models.samu import Samu, SamuConfig  # noqa: E402
from simulforge.models.waitk import WaitkConfig, WaitkST, waitk_mask  # noqa: E402
from simulforge.training.config import ConfigError  # noqa: E402
from simulforge.training.data import input_kind, wave_frames  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
            layerdrop=0.0)
BACKBONES = {  # base models (GroupNorm, post-norm) and large / XLS-R ones (LayerNorm, pre-norm)
    "wav2vec2-base": (Wav2Vec2Config, Wav2Vec2Model, dict(feat_extract_norm="group", do_stable_layer_norm=False)),
    "xlsr": (Wav2Vec2Config, Wav2Vec2Model, dict(feat_extract_norm="layer", do_stable_layer_norm=True)),
    "hubert-base": (HubertConfig, HubertModel, dict(feat_extract_norm="group", do_stable_layer_norm=False)),
    "hubert-large": (HubertConfig, HubertModel, dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                                                     conv_pos_batch_norm=True)),
    "whisper": (WhisperConfig, WhisperModel, dict(d_model=32, encoder_layers=2, encoder_attention_heads=2,
                                                  encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2,
                                                  decoder_ffn_dim=64, num_mel_bins=80, vocab_size=60, pad_token_id=1,
                                                  bos_token_id=0, eos_token_id=2, decoder_start_token_id=0,
                                                  max_target_positions=32, dropout=0.0)),
}


@pytest.fixture(scope="module")
def backbone_dirs(tmp_path_factory):
    root, dirs = tmp_path_factory.mktemp("hf"), {}
    for name, (config_cls, model_cls, extra) in BACKBONES.items():
        torch.manual_seed(len(dirs))
        model = model_cls(config_cls(**extra) if name == "whisper" else config_cls(**TINY, **extra))
        with torch.no_grad():  # a random BatchNorm would be the identity: give it statistics
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.running_mean.normal_(0, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        model.save_pretrained(root / name)
        if name == "whisper":
            WhisperFeatureExtractor(feature_size=80).save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


def _encoder(path: str, streaming: str = "block_causal", block_ms: int = 80):
    return make_encoder(EncoderConfig(kind="hf", path=path, streaming=streaming, block_ms=block_ms)).eval()


def _wave(*lengths_ms: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random wave frames (B, T, 160) zero-padded, and lengths in 10 ms frames: 300 ms of noise, then a
    hiss 10^5 times quieter (Whisper's log-mel floor, 8 decades under the peak, cuts into it)."""
    g = torch.Generator().manual_seed(seed)
    envelope = [torch.where(torch.arange(ms * 16) < 4800, 1.0, 1e-5) for ms in lengths_ms]
    frames = [wave_frames(torch.randn(1, ms * 16, generator=g) * e, 16000)[0] for ms, e in zip(lengths_ms, envelope,
                                                                                             strict=True)]
    return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), torch.tensor([f.shape[0] for f in frames])


def _reference(name: str, path: str, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The `transformers` model's output, fed as its feature extractor feeds it."""
    reference = BACKBONES[name][1].from_pretrained(path, local_files_only=True).eval()
    wave = feats.reshape(len(feats), -1)
    if name == "whisper":  # log-mel of each clip padded to 30 s
        clips = [w[: int(n) * FRAME_SAMPLES].numpy() for w, n in zip(wave, lengths, strict=True)]
        mel = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)(
            clips, sampling_rate=16000, return_tensors="pt").input_features
        return reference.encoder(mel).last_hidden_state
    mask = (torch.arange(wave.shape[1])[None] < lengths[:, None] * FRAME_SAMPLES).long()
    return reference(wave, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("name", list(BACKBONES))
def test_full_context_mode_equals_the_transformers_model(backbone_dirs, name):
    enc = _encoder(backbone_dirs[name], streaming="full")
    feats, lengths = _wave(1230, 870)
    with torch.no_grad():
        out, out_lengths = enc(feats, lengths)
        want = _reference(name, backbone_dirs[name], feats, lengths)
    # wav2vec2: (n - 400) // 320 + 1 frames of 20 ms; Whisper: one per two 10 ms mel frames
    assert out_lengths.tolist() == ([62, 44] if name == "whisper" else [61, 43])
    for b, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(out[b, :n], want[b, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_block_causal_stream_equals_block_causal_offline(backbone_dirs, name):
    enc = _encoder(backbone_dirs[name], block_ms=80)
    feats, lengths = _wave(1230, 870, seed=1)
    with torch.no_grad():
        offline, out_lengths = enc(feats, lengths)
        for b, n in enumerate(out_lengths.tolist()):
            streamed = enc.stream(feats[b:b + 1, : int(lengths[b])])
            assert streamed.shape[1] == n
            torch.testing.assert_close(streamed[0], offline[b, :n], atol=1e-5, rtol=1e-4)
        # Nothing of a later block is read: changing the audio after block 3 leaves blocks 0-3 alone.
        changed = feats[:1].clone()
        changed[:, 4 * 8:] = torch.randn_like(changed[:, 4 * 8:])
        early = enc.frames_after(4)
        assert early == 15  # the first block gives 3 frames (a frame needs 25 ms), the others 4
        again, _ = enc(changed, lengths[:1])
        torch.testing.assert_close(again[0, :early], offline[0, :early], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(again[0, early:out_lengths[0]], offline[0, early:out_lengths[0]])
        # ... whereas the full-context model reads ahead: its early frames change.
        full = _encoder(backbone_dirs[name], streaming="full")
        before, _ = full(feats[:1], lengths[:1])
        after, _ = full(changed, lengths[:1])
        assert not torch.allclose(before[0, :early], after[0, :early], atol=1e-5)


def test_an_asr_fine_tuned_folder_loads_as_its_encoder(tmp_path):
    """The wait-k realistic configs name an ASR-fine-tuned wav2vec 2.0 (a Wav2Vec2ForCTC folder): its
    encoder's weights load, the CTC head is left out."""
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(3)
    asr = Wav2Vec2ForCTC(Wav2Vec2Config(**TINY, vocab_size=12, feat_extract_norm="group")).eval()
    asr.save_pretrained(tmp_path / "asr")
    enc = _encoder(str(tmp_path / "asr"), streaming="full")
    own = asr.wav2vec2.state_dict()
    assert set(enc.hf.state_dict()) == set(own)
    for name, tensor in enc.hf.state_dict().items():
        torch.testing.assert_close(tensor, own[name], msg=name)
    feats, lengths = _wave(900)
    with torch.no_grad():
        out, _ = enc(feats, lengths)
        want = asr.wav2vec2(feats.reshape(1, -1)).last_hidden_state
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)


def test_bad_settings_are_refused(backbone_dirs, tmp_path):
    path = backbone_dirs["wav2vec2-base"]
    with pytest.raises(ValueError, match="block_ms 20: must be a multiple of 20 ms and at least 25.0 ms"):
        _encoder(path, block_ms=20)
    with pytest.raises(ValueError, match="encoder.block_ms must be a positive multiple of 10, got 25"):
        _encoder(path, block_ms=25)
    with pytest.raises(ValueError, match="full cannot stream"):
        _encoder(path, streaming="full").init_state()
    with pytest.raises(ValueError, match="width 80"):
        _encoder(path)(torch.zeros(1, 50, 80), torch.tensor([50]))
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ValueError, match="a 'bert' model; the hf encoder takes wav2vec2, hubert, whisper"):
        _encoder(str(tmp_path / "bert"))
    missing = WaitkConfig(encoder=EncoderConfig(kind="hf", path=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="model.encoder.path: the local model folder .*missing does not exist"):
        registry.get("waitk").check_paths(missing)
    with pytest.raises(ConfigError, match="model.st.encoder.path: the local model folder .*missing does not exist"):
        registry.get("samu").check_paths(SamuConfig(st=missing))
    from simulforge.models.easist import EasistConfig

    with pytest.raises(ConfigError, match="model.encoder.path: the local model folder .*missing does not exist"):
        registry.get("easist").check_paths(EasistConfig(encoder=missing.encoder))


def _waitk_config(path: str, mode: str, langs: list[str]) -> WaitkConfig:
    return WaitkConfig(encoder=EncoderConfig(kind="hf", path=path, block_ms=80),
                       decoder=DecoderConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=1, d_ff=64, dropout=0.0),
                       languages=langs, decoder_mode=mode, pad_id=0, bos_id=2, eos_id=3,
                       lang_token_ids={lang: 4 + i for i, lang in enumerate(langs)} if mode == "unified" else {})


def _targets(langs: list[str]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {lang: torch.randint(5, 40, (2, 6), generator=g) for lang in langs}


def _train(model: torch.nn.Module, loss_fn, steps: int = 4, backbone: bool = True) -> list[float]:
    """`steps` Adam steps -> the losses; with `backbone`, the pretrained encoder's weights must change."""
    hf_before = {k: v.clone() for k, v in model.state_dict().items() if ".hf.encoder.layers.0." in k or ".hf.layers.0." in k}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert hf_before and any(not torch.equal(v, model.state_dict()[k]) for k, v in hf_before.items()) == backbone
    return losses


@pytest.mark.parametrize(("mode", "langs", "name"), [("single", ["de"], "wav2vec2-base"),
                                                     ("separate", ["de", "es"], "xlsr"),
                                                     ("unified", ["de", "es"], "whisper")])
def test_waitk_family_trains_on_the_backbone(backbone_dirs, mode, langs, name):
    torch.manual_seed(0)
    model = WaitkST(_waitk_config(backbone_dirs[name], mode, langs))
    assert model.cfg.encoder.d_model == 32 and input_kind(model) == "wave"
    feats, lengths = _wave(900, 640)
    targets = _targets(langs)
    losses = _train(model, lambda: model(feats, lengths, targets, dict.fromkeys(langs, 2))[0])
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["hubert-base", "whisper"])
def test_samu_trains_on_the_backbone(backbone_dirs, name):
    torch.manual_seed(0)
    model = Samu(SamuConfig(st=_waitk_config(backbone_dirs[name], "single", ["de"]), embedding_dim=24))
    feats, lengths = _wave(900, 640)
    target, targets = torch.randn(2, 24), _targets(["de"])
    losses = _train(model, lambda: model.distill_loss(feats, lengths, target)[0]
                    + model(feats, lengths, targets, {"de": 2})[0])
    assert losses[-1] < losses[0]


def test_waitk_mask_follows_the_encoder_blocks(backbone_dirs):
    """Training's wait-k mask lets token u see what streaming has encoded after k + u blocks."""
    enc = _encoder(backbone_dirs["xlsr"])
    feats, lengths = _wave(1000)
    with torch.no_grad():
        streamed = [enc.frames_after(0)]
        state = enc.init_state()
        for start in range(0, feats.shape[1], enc.cfg.block_frames):
            out, state = enc.forward_block(feats[:, start:start + enc.cfg.block_frames], state)
            streamed.append(streamed[-1] + out.shape[1])
    mask = waitk_mask(4, enc.output_lengths(lengths), enc.frames_after, k=2)
    assert mask[0].sum(1).tolist() == streamed[2:6] == [7, 11, 15, 19]


def test_the_driver_feeds_raw_samples_and_streams_as_offline(backbone_dirs):
    """Wait-k with k past the clip's end writes only after the last block: the same tokens as offline
    decoding, so the driver's streamed wave frames equal the whole clip's."""
    torch.manual_seed(3)
    model = WaitkST(_waitk_config(backbone_dirs["wav2vec2-base"], "single", ["de"])).eval()
    clip = torch.randn(1, 16000 * 83 // 100 + 70)  # 834.4 ms: the last 10 ms frame is partial
    decoder = Decoder(model, "waitk", ["de"], sampling_rate=16000, segment_ms=30, max_len=6)
    offline = decoder.decode(clip, Offline()).streams["de"].tokens
    streamed = decoder.decode(clip, WaitK(k=50)).streams["de"].tokens
    assert offline and streamed == offline
    # The frames the driver hands over as the samples arrive are the training data's frames.
    frames, pieces = _Frames(clip, 16000, 80, kind="wave"), []
    for received in range(480, clip.shape[1] + 480, 480):
        received = min(received, clip.shape[1])
        available = frames.complete(received, finished=received == clip.shape[1])
        if available > frames.computed:
            pieces.append(frames.take(available))
    assert torch.equal(torch.cat(pieces, dim=1), wave_frames(clip, 16000))


def test_the_training_data_gives_a_wave_encoder_raw_sample_frames(backbone_dirs, tmp_path):
    """`add_features(kind="wave")` decodes the audio through `datasets` into 10 ms frames of samples that the
    wave encoder takes; a log-mel dataset is refused by it by name."""
    import datasets
    import numpy as np

    from simulforge.training import data as D
    from simulforge.transforms.simulate import _flac

    noise = np.random.default_rng(0).standard_normal((1, 16000 * 6 // 10 + 37)).astype(np.float32) * 0.1
    ds = datasets.Dataset.from_dict({"id": ["a"], "audio": [{"bytes": _flac(noise, 16000)}]})
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=16000))
    samples = ds[0]["audio"].get_all_samples().data
    wave = D.add_features(ds, 16000, 80, mono=True, kind="wave")
    assert wave.features["features"].shape == (None, 160) and wave[0]["n_frames"] == 61
    feats = wave.with_format("torch")[0]["features"]  # as the trainer reads it
    assert torch.equal(feats, wave_frames(samples, 16000)[0])
    assert torch.equal(feats.flatten()[: samples.shape[1]], samples[0]) and not feats.flatten()[samples.shape[1]:].any()
    enc = _encoder(backbone_dirs["hubert-base"])
    enc.norm.set_stats(*D.feature_stats(wave))  # what the trainer does: one mean/std over all the samples
    padded = torch.cat([samples[0], torch.zeros(61 * 160 - samples.shape[1])])
    torch.testing.assert_close((enc.norm.mean, enc.norm.std), (padded.mean(), padded.std(correction=0)))
    whisper = _encoder(backbone_dirs["whisper"])
    whisper.norm.set_stats(*D.feature_stats(wave))  # Whisper's extractor does not normalise: samples as recorded
    assert (float(whisper.norm.mean), float(whisper.norm.std)) == (0.0, 1.0)
    out, lengths = enc(*D.pad_features([feats]))
    assert lengths.tolist() == [30] and out.shape == (1, 30, 32)  # (61 * 160 - 400) // 320 + 1
    with pytest.raises(ValueError, match="width 80"):
        enc(*D.pad_features([D.add_features(ds, 16000, 80, mono=True).with_format("torch")[0]["features"]]))
    with pytest.raises(ConfigError, match="encoder input 'mfcc': expected one of logmel, wave"):
        D.add_features(ds, 16000, 80, mono=True, kind="mfcc")


def test_train_and_evaluate_run_a_wave_backbone_from_a_config(backbone_dirs, published, tmp_path):
    """`simulforge train` on the bilingual tiny config with `model.encoder` set to a local HuBERT folder:
    the trainer feeds it sample frames (the width-80 log-mel it would refuse), and `evaluate` streams
    the run through the same encoder."""
    from conftest import train_tiny
    from simulforge.evaluate import main as evaluate

    encoder = f"model.encoder={{kind: hf, path: {backbone_dirs['hubert-base']}, block_ms: 80}}"
    summary = train_tiny("bilingual", published, tmp_path / "run", extra=[encoder, "stages.0.steps=3"])
    assert summary and (tmp_path / "run" / "model.pt").exists()
    assert evaluate(["--run", str(tmp_path / "run"), "--data", str(published), "--split", "train", "--limit", "1",
                     "--out", str(tmp_path / "eval")]) == 0
    assert any((tmp_path / "eval").rglob("scores.json"))


# -- EASiST -----------------------------------------------------------------------------------------
SOURCE, TARGET = ["When I", "was a student", "I took the train."], ["Als ich", "Student war,", "nahm ich den Zug."]


@pytest.fixture(scope="module")
def easist_tok():
    from simulforge.models.easist_tasks import END_OF_READ, END_OF_WRITE
    from simulforge.training.tokenizer import train_sentencepiece

    corpus = [" ".join(SOURCE), " ".join(TARGET), "Ich fahre mit dem Zug.", "Der Student war in der Stadt."] * 20
    return train_sentencepiece(corpus, [END_OF_READ, END_OF_WRITE, "<2de>"], 80, "unigram", 1000)


def _easist(path: str, tok, block_ms: int = 80):
    """EASiST on a pretrained backbone and the tiny Llama its tests build."""
    from simulforge.models.easist import Easist, EasistConfig
    from simulforge.models.lm import LMConfig

    lm = LMConfig(config=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512))
    cfg = EasistConfig(encoder=EncoderConfig(kind="hf", path=path, block_ms=block_ms), lm=lm, adapter_dim=32)
    registry.get("easist").finalize(cfg, tok)
    torch.manual_seed(0)
    return Easist(cfg)


def _easist_task(cls, model, tok):
    task = cls({"languages": ["de"]}, model.cfg, "stages.x.options")
    task.tok, task.rate = tok, 16000
    return task


def test_easist_trains_its_stages_on_the_backbone(backbone_dirs, easist_tok):
    """Stage I (text only: the backbone untouched) and stage III (SimulST with policy labels and offline ST
    on wave frames: the backbone trains) lower their losses; the tasks count the backbone's blocks."""
    from simulforge.models.easist_tasks import EasistSftTask, EasistSimulMtTask, Speech
    from simulforge.pipeline.dataset_configs.simulmt import interleave, offline_text

    model = _easist(backbone_dirs["hubert-base"], easist_tok, block_ms=60)  # 6 frames: not a multiple of 4
    assert model.cfg.encoder.d_model == 32 and input_kind(model) == "wave"
    mt = _easist_task(EasistSimulMtTask, model, easist_tok)
    rows = [{"latency": "low", "text": {"de": interleave(SOURCE, TARGET)},
             "offline": {"de": offline_text(" ".join(SOURCE), " ".join(TARGET))}}]
    batch = mt.collate(rows, ["de"])
    losses = _train(model, lambda: mt.loss(model, batch)[0], backbone=False)
    assert losses[-1] < losses[0]

    feats, lengths = _wave(1830, 1000)  # 1.83 s: 31 blocks of 60 ms, the last one 30 ms
    sft = _easist_task(EasistSftTask, model, easist_tok)
    rows = [{"features": feats[i, :n], "duration": n / 100, "translation": {"de": " ".join(TARGET)},
             "latency": {"low": {"target_chunks": {"de": TARGET}, "chunk_end_s": [0.4, 0.7, n / 100]}}}
            for i, n in enumerate(lengths.tolist())]
    batch = sft.collate(rows, ["de", "de"])
    speech = [[seg for seg in layout.segments if isinstance(seg, Speech)] for layout in batch["layouts"]]
    assert [layout.task for layout in batch["layouts"]] == ["simulst", "st"] * 2
    assert [s[-1].stop for s in speech] == [31, 31, 17, 17]  # ceil(n / 6) blocks of each clip
    losses = _train(model, lambda: sft.loss(model, batch)[0])
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_easist_streams_the_backbone_as_teacher_forcing_and_offline_decoding(backbone_dirs, easist_tok):
    """The adapter cuts the frames where the backbone's blocks end (3 frames in the first block, 4 after):
    p(write) read block by block off the LM's cache is the teacher-forced one, and the evaluator's driver,
    writing only at the end, writes what offline decoding writes."""
    from simulforge.eval.policies import PolicyHead
    from simulforge.models.easist_tasks import Layout, Speech, Text

    model = _easist(backbone_dirs["wav2vec2-base"], easist_tok).eval()
    feats, lengths = _wave(1030)  # 13 blocks, the last one 70 ms
    with torch.no_grad():
        enc, enc_lengths = model.encoder(feats, lengths)
        blocks, counts = model.adapter(enc, enc_lengths, 13)
        assert enc_lengths.tolist() == [51] and counts.tolist() == [[1] * 13]
        prompt = [easist_tok.piece_id("<2de>")]
        state, p_stream = model.start(prompt), []
        for i in range(13):
            p, state = model.read(feats[:, i * 8:(i + 1) * 8], state)
            p_stream.append(p)
        layout = Layout("simulst", [Text(prompt, [False], [-100]), Speech(0, 13, [0] * 13)], utterance=0)
        emb, _, policy = model._assemble(layout, blocks, counts)
        hidden, _ = model._hidden(emb[None])
        p_forced = model._policy(hidden[0, policy != -100]).softmax(-1)[:, 1]
        torch.testing.assert_close(torch.tensor(p_stream), p_forced, atol=1e-4, rtol=1e-4)
        offline_state = model.read_all(feats, model.start(prompt))
        torch.testing.assert_close(offline_state.hidden, state.hidden, atol=1e-4, rtol=1e-4)

    decoder = Decoder(model, "easist", ["de"], sampling_rate=16000, max_len=6, prompts={"de": prompt})
    clip = feats.reshape(1, -1)[:, : int(lengths[0]) * FRAME_SAMPLES]
    offline = decoder.decode(clip, Offline()).streams["de"].tokens
    assert offline and decoder.decode(clip, WaitK(k=50)).streams["de"].tokens == offline
    assert decoder.decode(clip, PolicyHead(0.0)).streams["de"].tokens  # writes as it reads


@pytest.mark.parametrize("name", ["xlsr", "whisper"])
def test_adapters_after_each_pretrained_layer_start_as_the_identity_and_stream(backbone_dirs, name):
    """`adapter_dim` puts a bottleneck adapter after every pretrained layer (SAMU fine-tunes them alone):
    untrained they change nothing; trained, block-causal streaming still equals offline."""
    plain = _encoder(backbone_dirs[name])
    enc = make_encoder(EncoderConfig(kind="hf", path=backbone_dirs[name], block_ms=80, adapter_dim=8)).eval()
    names = [n for n, _ in enc.named_parameters() if "adapter" in n]
    assert len({n.split(".")[1] for n in names}) == len(enc.adapters) > 0
    feats, lengths = _wave(1230, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(enc(feats, lengths)[0], plain(feats, lengths)[0])
        for adapter in enc.adapters:
            adapter.up.weight.normal_(0, 0.5)
        offline, n = enc(feats, lengths)
        assert not torch.allclose(offline, plain(feats, lengths)[0], atol=1e-3)
        torch.testing.assert_close(enc.stream(feats)[0], offline[0, : int(n[0])], atol=1e-5, rtol=1e-4)
