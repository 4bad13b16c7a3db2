"""The transducer's beam search (models/transducer.py): it sums each label sequence's probability over
its emission times, so it finds what greedy search cannot; it streams, handing out only the prefix
every hypothesis shares, and JSTAR streamed block by block ends with exactly its offline output."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_models_streaming import ENC, _stream

from simulforge.eval import policies as P
from simulforge.eval.agent import TRANSCRIPT, DecodeOptions
from simulforge.models import registry
from simulforge.models.encoder import EncoderConfig
from simulforge.models.jstar import Jstar, JstarConfig, SlowEncoderConfig
from simulforge.models.transducer import TransducerHead, TransducerHeadConfig, shared_prefix


def _head(seed: int, vocab: int = 3, d: int = 8) -> TransducerHead:
    torch.manual_seed(seed)
    return TransducerHead(TransducerHeadConfig(d, 1, d), d, vocab, blank=0).eval()


def _exact(head: TransducerHead, frames: torch.Tensor) -> dict[tuple[int, ...], float]:
    """log P of every label sequence: each path (blank or one symbol per frame) scored by the head, summed."""
    vocab, totals = head.joiner.out.out_features, {}
    for path in itertools.product(range(vocab), repeat=frames.shape[1]):
        state, score, tokens = head.init_state(), 0.0, []
        for t, symbol in enumerate(path):
            logp = head.joiner(frames[:, t:t + 1, None], state.pred[:, None])[0, 0, 0].log_softmax(-1)
            score += logp[symbol].item()
            if symbol != head.blank:
                tokens.append(symbol)
                pred, lstm = head.predictor(torch.tensor([[symbol]]), state.lstm)
                state = type(state)(pred, lstm, tokens)
        key = tuple(tokens)
        totals[key] = math.log(math.exp(totals[key]) + math.exp(score)) if key in totals else score
    return totals


@torch.no_grad()
def test_a_beam_wide_enough_scores_every_sequence_by_its_summed_alignments():
    head, frames = _head(0), torch.randn(1, 4, 8)
    exact = _exact(head, frames)
    state = head.beam_search(frames, head.init_beam(), beam=3 ** 4)  # every path kept: none pruned
    found = {h.tokens: h.score for h in state.hyps}
    assert found.keys() == exact.keys()
    for tokens, score in exact.items():
        assert abs(found[tokens] - score) < 1e-5, tokens
    assert state.hyps[0].tokens == max(exact, key=exact.get)


@torch.no_grad()
def test_beam_search_emits_a_symbol_whose_mass_is_spread_over_frames_where_greedy_emits_nothing():
    head = _head(1)
    with torch.no_grad():  # every frame, whatever the history: blank 0.6, symbol 1 0.4, symbol 2 ~0
        head.joiner.out.weight.zero_()
        head.joiner.out.bias.copy_(torch.tensor([0.6, 0.4, 1e-9]).log())
    frames = torch.randn(1, 2, 8)
    assert head.greedy(frames, head.init_state(), max_symbols=5)[0] == []
    # P([]) = 0.36, P([1]) = 2 x 0.4 x 0.6 = 0.48 (either frame), P([1, 1]) = 0.16
    tokens, state = head.search(frames, head.start(4), beam=4, max_symbols=5)
    assert tokens == []  # not yet agreed by the whole beam
    rest, _ = head.finish(state)
    assert rest == [1]
    assert abs(state.hyps[0].score - math.log(0.48)) < 1e-6


@torch.no_grad()
def test_streaming_hands_out_only_the_shared_prefix_and_ends_with_the_best():
    head, frames = _head(2, vocab=6, d=16), torch.randn(1, 40, 16) * 3
    whole = head.beam_search(frames, head.init_beam(), beam=3)
    state, out, early = head.start(3), [], []
    for t in range(frames.shape[1]):
        tokens, state = head.search(frames[:, t:t + 1], state, beam=3, max_symbols=5)
        out += tokens
        assert tuple(out) == shared_prefix([h.tokens for h in state.hyps])
        early = list(out)
    rest, _ = head.finish(state)
    assert out + rest == list(whole.hyps[0].tokens)
    assert early and rest  # both parts used: some tokens were certain early, some only at the end
    assert shared_prefix([(1, 2, 3), (1, 2), (1, 4)]) == (1,) and shared_prefix([(5,)]) == (5,)


@torch.no_grad()
@pytest.mark.parametrize("end_frames", [0, 6])
def test_jstar_streamed_with_a_beam_ends_with_its_offline_output(end_frames):
    torch.manual_seed(0)
    cfg = JstarConfig(fast=EncoderConfig(block_frames=16, **ENC),
                      slow=SlowEncoderConfig(d_model=32, n_heads=2, n_layers=1, d_ff=64, block_len=8, dropout=0.0),
                      asr=TransducerHeadConfig(32, 1, 32), st=TransducerHeadConfig(32, 1, 32), channels=2,
                      front_end="learned", vocab_size=30, beam=4, end_frames=end_frames)
    model = Jstar(cfg).eval()
    feats = torch.randn(1, 90, 160)
    streamed = _stream(registry.get("jstar").agent(model, ["de"], P.Transducer(), DecodeOptions()), feats)
    offline = model.decode_offline(feats)
    assert tuple(streamed.get(t, ([], []))[0] for t in (TRANSCRIPT, "de")) == offline
    assert all(offline)
    greedy = Jstar(JstarConfig(**{**cfg.__dict__, "beam": 1})).eval()
    greedy.load_state_dict(model.state_dict())
    assert greedy.decode_offline(feats) != offline  # the beam is what decoded here
