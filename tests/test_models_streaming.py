"""Streaming inference equals offline computation for every family (tiny random models, no data).

What the evaluator relies on: an encoder fed block by block (never re-encoding its prefix) gives
the offline block-causal output; a decoder stepping with its KV cache gives the teacher-forced
logits under the wait-k mask; a transducer streamed block by block emits what offline greedy
decoding emits; EASiST's policy read off the streamed LM cache equals the teacher-forced one.
The families' agents (eval/agent.py) are driven here block by block, without the evaluator's driver.
"""

from __future__ import annotations

import pytest
import torch

from simulforge.eval import policies as P
from simulforge.eval.agent import TRANSCRIPT, Agent, DecodeOptions
from simulforge.models import registry
from simulforge.models.decoder import DecoderConfig
from simulforge.models.encoder import EncoderConfig, StreamingEncoder
from simulforge.models.jstar import Jstar, JstarConfig, SlowEncoderConfig
from simulforge.models.transducer import TransducerHeadConfig
from simulforge.models.waitk import WaitkConfig, WaitkST, waitk_mask

ENC = dict(d_model=32, n_heads=2, n_layers=2, d_ff=64, dropout=0.0)


@pytest.mark.parametrize("left_blocks", [None, 1])
def test_encoder_stream_equals_offline_block_causal_encoding(left_blocks):
    torch.manual_seed(0)
    enc = StreamingEncoder(EncoderConfig(block_frames=16, left_blocks=left_blocks, **ENC)).eval()
    feats, lengths = torch.randn(2, 70, 80), torch.tensor([70, 45])
    offline, out_lengths = enc(feats, lengths)
    assert out_lengths.tolist() == [18, 12]
    for b in range(2):
        streamed = enc.stream(feats[b:b + 1, : int(lengths[b])])
        assert torch.allclose(streamed[0], offline[b, : out_lengths[b]], atol=1e-5)
    state = enc.init_state()
    _, state = enc.forward_block(feats[:1, :16], state)
    _, state = enc.forward_block(feats[:1, 16:32], state)
    cached = state.transformer.kv[0][0].shape[2]
    assert cached == (8 if left_blocks is None else 4) and state.transformer.offset == 8


def _stream(agent: Agent, feats: torch.Tensor) -> dict[str, tuple[list[int], list[int]]]:
    """The agent protocol, block by block: a write after every read, then finish.
    -> {target: (tokens, blocks read when each was written)}."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    block, state = agent.block_frames, agent.init_state()
    n_blocks = -(-feats.shape[1] // block)

    def emit_after(read: int):
        def emit(target: str, token: int) -> None:
            tokens, delays = out.setdefault(target, ([], []))
            tokens.append(token)
            delays.append(read)
        return emit

    for read in range(1, n_blocks + 1):
        state = agent.read(state, feats[:, (read - 1) * block:read * block])
        state = agent.write(state, emit_after(read))
    agent.finish(state, emit_after(n_blocks))
    return out


def _offline(agent: Agent, feats: torch.Tensor) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    agent.offline(feats, lambda target, token: out.setdefault(target, []).append(token))
    return out


def _waitk(mode: str) -> WaitkST:
    torch.manual_seed(0)
    cfg = WaitkConfig(encoder=EncoderConfig(block_frames=16, **ENC),
                      decoder=DecoderConfig(vocab_size=20, d_model=32, n_heads=2, n_layers=2, d_ff=64, dropout=0.0),
                      languages=["de", "es"], decoder_mode=mode, lang_token_ids={"de": 4, "es": 5})
    return WaitkST(cfg).eval()


@pytest.mark.parametrize("mode", ["separate", "unified"])
def test_wait_k_decoding_step_by_step_equals_teacher_forcing_under_the_mask(mode):
    model, k, block = _waitk(mode), 2, 16
    feats = torch.randn(1, 75, 80)
    memory, memory_lengths = model.encoder(feats, torch.tensor([75]))
    n_blocks = -(-75 // block)
    inputs = torch.tensor([[model.start_token("es"), 7, 9, 11, 13, 8, 6]])
    reference = model.decoder_for("es")(inputs, memory, waitk_mask(inputs.shape[1], memory_lengths,
                                                                   model.cfg.encoder.block_len, k))
    state, read, streamed = model.init_state(["es"]), 0, []
    for u in range(inputs.shape[1]):
        while read < min(n_blocks, k + u):
            state = model.read(feats[:, read * block:(read + 1) * block], state)
            read += 1
        logits, state = model.write("es", inputs[:, u], state)
        streamed.append(logits)
    assert torch.allclose(torch.stack(streamed, 1), reference, atol=1e-4)


def _greedy_under_the_waitk_mask(model: WaitkST, feats, lang: str, k: int, max_len: int) -> list[int]:
    """Greedy decoding by teacher forcing over the whole encoded input, token i seeing k + i blocks."""
    memory, memory_lengths = model.encoder(feats, torch.tensor([feats.shape[1]]))
    tokens = [model.start_token(lang)]
    while len(tokens) <= max_len:
        inputs = torch.tensor([tokens])
        mask = waitk_mask(len(tokens), memory_lengths, model.cfg.encoder.block_len, k)
        token = int(model.decoder_for(lang)(inputs, memory, mask)[0, -1].argmax())
        if token == model.cfg.eos_id:
            break
        tokens.append(token)
    return tokens[1:]


@torch.no_grad()
def test_joint_simultaneous_decoding_keeps_each_languages_lag():
    model = _waitk("unified")
    # Wider weights than the default init, whose tiny model writes one token throughout: here what a
    # token is depends on how much was read, so a language decoded at another's lag writes other tokens.
    generator = torch.Generator().manual_seed(3)
    for p in model.parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=generator))
    feats = torch.randn(1, 100, 80, generator=generator)  # 7 blocks of 16 frames
    n_blocks, lags = 7, {"de": 2, "es": 4}
    waitk, options = registry.get("waitk"), DecodeOptions(max_len=12)
    out = _stream(waitk.agent(model, list(lags), {lang: P.WaitK(k) for lang, k in lags.items()}, options), feats)
    for lang, k in lags.items():
        tokens, delays = out[lang]
        assert tokens == _greedy_under_the_waitk_mask(model, feats, lang, k, max_len=12), lang
        assert len(tokens) > n_blocks - k and delays == [min(n_blocks, k + i) for i in range(len(tokens))], lang
    # ...which they do here: each language at the other's lag.
    assert out["de"][0] != _greedy_under_the_waitk_mask(model, feats, "de", lags["es"], max_len=12)
    assert out["es"][0] != _greedy_under_the_waitk_mask(model, feats, "es", lags["de"], max_len=12)
    # Offline decoding is wait-k with k past the end of the input.
    offline = _offline(waitk.agent(model, list(lags), P.Offline(), options), feats)
    for lang in lags:
        assert offline[lang] == _greedy_under_the_waitk_mask(model, feats, lang, n_blocks, max_len=12)


@pytest.mark.parametrize(("end_frames", "topology"), [(0, "standard"), (6, "modified")])
def test_jstar_streaming_greedy_equals_offline_greedy(end_frames, topology):
    torch.manual_seed(0)
    cfg = JstarConfig(fast=EncoderConfig(block_frames=16, **ENC),
                      slow=SlowEncoderConfig(d_model=32, n_heads=2, n_layers=1, d_ff=64, block_len=8, dropout=0.0),
                      asr=TransducerHeadConfig(32, 1, 32), st=TransducerHeadConfig(32, 1, 32), channels=2,
                      front_end="learned", vocab_size=30, end_frames=end_frames, topology=topology)
    model = Jstar(cfg).eval()
    feats = torch.randn(1, 90, 160)
    streamed = _stream(registry.get("jstar").agent(model, ["de"], P.Transducer(), DecodeOptions()), feats)
    assert tuple(streamed.get(t, ([], []))[0] for t in (TRANSCRIPT, "de")) == model.decode_offline(feats)
    select = Jstar(JstarConfig(**{**cfg.__dict__, "front_end": "select", "channel": 1})).eval()
    assert select.front(feats).shape == (1, 90, 80)
    loss, metrics = model(feats.repeat(2, 1, 1), torch.tensor([90, 60]), torch.tensor([[3, 4, 5], [6, 7, 0]]),
                          torch.tensor([3, 2]), torch.tensor([[8, 9], [10, 0]]), torch.tensor([2, 1]))
    assert torch.isfinite(loss) and set(metrics) == {"loss/asr", "loss/st"}
    # with emission windows (the joint task's times of each token, in seconds of input)
    times = torch.tensor([[0.1, 0.1, 0.5], [0.2, 0.6, 0.0]]), torch.tensor([[0.3, 0.8], [0.6, 0.0]])
    restricted, _ = model(feats.repeat(2, 1, 1), torch.tensor([90, 60]), torch.tensor([[3, 4, 5], [6, 7, 0]]),
                          torch.tensor([3, 2]), torch.tensor([[8, 9], [10, 0]]), torch.tensor([2, 1]), *times, 0.08)
    assert torch.isfinite(restricted) and restricted > loss  # fewer alignments, less probability


def test_easist_adapter_and_policy_stream_like_the_teacher_forced_model():
    from simulforge.models.easist import Easist, EasistConfig
    from simulforge.models.easist_tasks import Layout, Speech, Text
    from simulforge.models.lm import LMConfig

    torch.manual_seed(0)
    lm = LMConfig(config=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512))
    model = Easist(EasistConfig(encoder=EncoderConfig(block_frames=32, **ENC), lm=lm, adapter_dim=32, vocab_size=40,
                                eor_id=4, eow_id=5)).eval()
    feats = torch.randn(1, 100, 80)  # 25 encoder frames: blocks of 8, 8, 8, 1
    enc, enc_lengths = model.encoder(feats, torch.tensor([100]))
    blocks, counts = model.adapter(enc, enc_lengths)
    assert counts.tolist() == [[2, 2, 2, 1]]
    assert torch.allclose(model.adapter.forward_block(enc[:, 24:25]), blocks[0, 3, :1], atol=1e-5)

    state = model.start([6, 7])
    p_stream = []
    for i in range(4):
        p, state = model.read(feats[:, i * 32:(i + 1) * 32], state)
        p_stream.append(p)
    layout = Layout("simulst", [Text([6, 7], [False, False], [-100, -100]), Speech(0, 4, [0, 0, 0, 1])], utterance=0)
    emb, _, policy = model._assemble(layout, blocks, counts)
    hidden, _ = model._hidden(emb[None])
    p_forced = model._policy(hidden[0, policy != -100]).softmax(-1)[:, 1]
    assert torch.allclose(torch.tensor(p_stream), p_forced, atol=1e-4)

    easist = registry.get("easist")
    options = DecodeOptions(max_tokens_per_write=2, prompts={"de": [6, 7]})
    tokens, delays = _stream(easist.agent(model, ["de"], P.PolicyHead(0.0), options), feats).get("de", ([], []))
    assert len(tokens) == len(delays) and len(tokens) <= 8
    offline = DecodeOptions(max_len=3, prompts={"de": [6, 7]})
    assert len(_offline(easist.agent(model, ["de"], P.Offline(), offline), feats).get("de", [])) <= 3
    losses, _ = model([layout, Layout("mt", [Text([6, 8, 4, 9, 5], [False, False, False, True, True], [-100] * 5)])],
                      feats, torch.tensor([100]))
    assert set(losses) == {"ce/mt", "policy"}
