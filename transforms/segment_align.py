"""Word-alignment segmenter: monotone chunks cut from the reference translation itself.

1. eflomal aligns a language's whole corpus at once (it learns from the corpus's own
   distinct sentence pairs, plus any extra parallel text), in both directions; the two
   directions are symmetrised with grow-diag-final-and and projected from tokens to words.
   Its sampler is seeded from the corpus and the settings, so the links are reproducible.
2. A cut between source words is *monotone* when no link crosses it; the target cut that
   goes with it is the first target word not linked to the left part. Cuts must be monotone
   for every target language, so where one language forces a merge, all take the coarser
   chunking. Each chunk keeps at least one link per language, so no chunk is left without
   its translation. The result is the minimal monotone units.
3. Latency levels merge units, each level coarsening the one below it (so chunk counts never
   grow from low to high latency): a chunk closes once it has `min_words` and either reaches
   `max_words` or ends a clause; `max_chunks` then keeps the cuts nearest an even split.

Target chunks are spans of the reference translation: nothing is invented.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

from ..settings import ConfigError
from .objects import Objects, digest
from .records import Segmentation, StageError

Link = tuple[int, int]
# Bump when alignment_tokens, grow_diag_final_and or the seeding change what links come out: the
# kept alignments are keyed by it.
ALIGNMENT_CODE = 1

_WORD_PIECE = re.compile(r"\w+")
_CLAUSE_END = re.compile(r"[,;:.!?…]$|^[-–—]+$")
_CLOSERS = "\"'»«“”‘’)]}"


@dataclass
class LevelRule:
    """How coarse one latency level's chunks are, in source words."""

    min_words: int  # no chunk shorter (a short tail merges into the chunk before it)
    max_words: int | None  # close a chunk once it is this long; None: only at clause ends
    clause_breaks: bool  # close a chunk of min_words or more where a clause ends (, ; : . ! ? dash)
    max_chunks: int | None  # at most this many chunks, cut as evenly as the units allow

    def validate(self, where: str) -> None:
        if self.min_words < 1:
            raise ConfigError(f"{where}.min_words: must be at least 1, got {self.min_words}")
        if self.max_words is not None and self.max_words < self.min_words:
            raise ConfigError(f"{where}.max_words: {self.max_words} is below min_words {self.min_words}")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise ConfigError(f"{where}.max_chunks: must be at least 1, got {self.max_chunks}")


@dataclass
class EflomalSettings:
    """Passed to `eflomal.Aligner`; see eflomal's documentation."""

    model: int  # 1 IBM1, 2 HMM, 3 HMM + fertility
    n_samplers: int
    rel_iterations: float
    max_iterations: int | None  # cap on the last model's iterations; None: eflomal's count
    null_prior: float

    def validate(self, where: str) -> None:
        if self.model not in (1, 2, 3):
            raise ConfigError(f"{where}.model: must be 1, 2 or 3, got {self.model}")
        if self.max_iterations is not None and self.max_iterations < 2:
            raise ConfigError(f"{where}.max_iterations: must be at least 2, got {self.max_iterations}")

    def iterations(self, n_sentences: int) -> tuple[int, int, int]:
        """Iterations of models 1, 2 and 3: eflomal's own counts, the last one capped.

        eflomal runs rel_iterations * 5000 / sqrt(sentences) iterations of the last model (a
        quarter as many of the others), so a small corpus gets many: 354 for 200 sentences. On
        the demo corpus 100 give links that agree with those of 354 as closely as two runs of
        354 agree with each other, in a third of the time. Large corpora keep eflomal's count.
        """
        n = max(2, round(self.rel_iterations * 5000 / math.sqrt(n_sentences)))
        if self.max_iterations is not None:
            n = min(n, self.max_iterations)
        quarter = max(1, n // 4)
        return {1: (n, 0, 0), 2: (max(2, quarter), n, 0), 3: (max(2, quarter), quarter, n)}[self.model]


@dataclass
class AlignSettings:
    levels: dict[str, LevelRule]  # granularity of each latency level
    eflomal: EflomalSettings
    extra_parallel: dict[str, str]  # lang -> TSV of extra "source<TAB>target" lines to learn from
    reject_unsplit_over_words: int  # a longer sentence that stays one unit is rejected
    cache_dir: str | None  # where corpus alignments are kept for re-runs; None: not kept


# -- alignment ---------------------------------------------------------------------------------


def alignment_tokens(text: str) -> tuple[list[str], list[int]]:
    """Lowercased word pieces to align, and the whitespace word each comes from.

    Punctuation is left out: it aligns noisily and chunk cuts fall between words anyway.
    """
    tokens, word_of = [], []
    for w, word in enumerate(text.split()):
        for piece in _WORD_PIECE.findall(word.lower()):
            tokens.append(piece)
            word_of.append(w)
    return tokens, word_of


def grow_diag_final_and(fwd: set[Link], rev: set[Link]) -> set[Link]:
    """Symmetrise two directional alignments (Koehn et al.'s grow-diag-final-and)."""
    union = fwd | rev
    links = fwd & rev
    src_done = {i for i, _ in links}
    tgt_done = {j for _, j in links}

    def add(p: Link) -> None:
        links.add(p)
        src_done.add(p[0])
        tgt_done.add(p[1])

    grown = True
    while grown:
        grown = False
        for i, j in sorted(links):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    p = (i + di, j + dj)
                    if p in union and p not in links and (p[0] not in src_done or p[1] not in tgt_done):
                        add(p)
                        grown = True
    for direction in (fwd, rev):
        for i, j in sorted(direction):
            if i not in src_done and j not in tgt_done:
                add((i, j))
    return links


def _read_links(path: str) -> list[set[Link]]:
    with open(path, encoding="utf-8") as f:
        return [{tuple(map(int, p.split("-"))) for p in line.split()} for line in f]


def align_corpus(
    pairs: Sequence[tuple[str, str]],
    settings: EflomalSettings,
    extra: Sequence[tuple[str, str]] = (),
    cache_dir: str | None = None,
) -> list[set[Link]]:
    """Symmetrised word-level links for every (source, target) pair, learnt from all of them.

    `extra` pairs only add training text. Pairs with nothing to align on one side get no links.
    A pair that repeats (one sentence recorded by several speakers) is aligned once and every
    copy gets its links: copies add eflomal time but no evidence, only weight on the links
    sampled for them.
    The links are a function of the pairs, `extra` and the settings (see `_run_eflomal`), so a
    fresh run gets the same links as the last; with a `cache_dir` they are kept (keyed by the
    same) and a re-run skips eflomal.
    """
    distinct = list(dict.fromkeys(pairs))
    found = dict(zip(distinct, _align_distinct(distinct, settings, extra, cache_dir), strict=True))
    return [set(found[p]) for p in pairs]


def _align_distinct(
    pairs: list[tuple[str, str]],
    settings: EflomalSettings,
    extra: Sequence[tuple[str, str]],
    cache_dir: str | None,
) -> list[set[Link]]:
    if cache_dir is None:
        return _align_corpus(pairs, settings, extra)
    store, key = Objects(cache_dir), alignment_key(pairs, settings, extra)
    kept = store.get_json(key)
    if isinstance(kept, list) and len(kept) == len(pairs):
        return [{tuple(link) for link in found} for found in kept]
    result = _align_corpus(pairs, settings, extra)
    store.put_json(key, [sorted(found) for found in result])
    return result


def alignment_key(pairs: Sequence[tuple[str, str]], settings: EflomalSettings,
                  extra: Sequence[tuple[str, str]]) -> str:
    """Everything the links depend on: the pairs, the extra text, the settings, the eflomal release
    (its binary samples) and how this module tokenises and symmetrises (ALIGNMENT_CODE)."""
    return digest({"pairs": [list(p) for p in pairs], "extra": [list(p) for p in extra],
                   "settings": dataclasses.asdict(settings), "eflomal": metadata.version("eflomal"),
                   "code": ALIGNMENT_CODE})


def _align_corpus(
    pairs: Sequence[tuple[str, str]], settings: EflomalSettings, extra: Sequence[tuple[str, str]]
) -> list[set[Link]]:
    tokenised = [(alignment_tokens(s), alignment_tokens(t)) for s, t in pairs]
    usable = [k for k, ((s, _), (t, _)) in enumerate(tokenised) if s and t]
    extra_lines = [
        (" ".join(s), " ".join(t))
        for s, t in ((alignment_tokens(a)[0], alignment_tokens(b)[0]) for a, b in extra)
        if s and t
    ]
    result: list[set[Link]] = [set() for _ in pairs]
    if not usable:
        return result
    src_lines = [" ".join(tokenised[k][0][0]) for k in usable] + [s for s, _ in extra_lines]
    tgt_lines = [" ".join(tokenised[k][1][0]) for k in usable] + [t for _, t in extra_lines]
    fwd, rev = _run_eflomal(src_lines, tgt_lines, settings)
    for n, k in enumerate(usable):
        (_, src_word), (_, tgt_word) = tokenised[k]
        token_links = grow_diag_final_and(fwd[n], rev[n])
        result[k] = {(src_word[i], tgt_word[j]) for i, j in token_links}
    return result


# -- eflomal, seeded ----------------------------------------------------------------------------
#
# eflomal's binary seeds its sampler from 8 bytes of /dev/urandom and has no seed option. We run a
# copy of it whose path string "/dev/urandom" is renamed to SEED_FILE (the same length), a file in
# its working folder holding a seed made from the corpus and the settings. Its OpenMP threads split
# that seed among the samplers in the order they ask, so the samplers run one after another
# (OMP_NUM_THREADS "<n>,1": the two directions may still run side by side, each from its own seed).
# Same corpus, settings and binary, same links.

URANDOM = b"/dev/urandom\0"
SEED_FILE = "eflomal.seed"  # as long as "/dev/urandom", so the patched binary keeps every offset


def eflomal_binary() -> str:
    """The eflomal executable the installed package runs."""
    import shutil

    import eflomal

    path = os.path.join(os.path.dirname(eflomal.__file__), "bin", "eflomal")
    found = path if os.path.isfile(path) else shutil.which("eflomal")
    if not found:
        raise RuntimeError(f"the eflomal binary is neither at {path} nor on PATH: reinstall eflomal")
    return found


@functools.lru_cache(maxsize=1)
def seeded_binary(path: str) -> bytes:
    """The bytes of eflomal's binary at `path`, reading its seed from SEED_FILE instead of /dev/urandom."""
    with open(path, "rb") as f:
        data = f.read()
    if data.count(URANDOM) != 1:
        raise RuntimeError(f"{path}: expected the string /dev/urandom once in eflomal's binary, found it "
                           f"{data.count(URANDOM)} times; this eflomal build cannot be seeded")
    return data.replace(URANDOM, SEED_FILE.encode() + b"\0")


def eflomal_seed(src_lines: Sequence[str], tgt_lines: Sequence[str], settings: EflomalSettings) -> bytes:
    """The sampler's 8-byte state: a hash of what eflomal is given (never 0, which xorshift cannot leave)."""
    h = hashlib.sha256(json.dumps([list(src_lines), list(tgt_lines), dataclasses.asdict(settings)]).encode())
    seed = h.digest()[:8]
    return seed if any(seed) else b"\x01" + seed[1:]


def _omp_threads() -> str:
    """Threads per level: the environment's for the two directions, one for the samplers within each."""
    outer = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return f"{outer if outer.isdigit() and int(outer) > 0 else 2},1"


def _run_eflomal(src_lines: list[str], tgt_lines: list[str], settings: EflomalSettings
                 ) -> tuple[list[set[Link]], list[set[Link]]]:
    """Forward and reverse token links of every line pair, from one seeded eflomal run."""
    import eflomal

    n_iters = settings.iterations(len(src_lines))
    with tempfile.TemporaryDirectory(prefix="simulforge-eflomal-") as tmp:
        binary, src, tgt, fwd, rev = (os.path.join(tmp, n) for n in ("eflomal", "src", "tgt", "fwd", "rev"))
        with open(binary, "wb") as f:
            f.write(seeded_binary(eflomal_binary()))
        os.chmod(binary, 0o700)
        with open(os.path.join(tmp, SEED_FILE), "wb") as f:
            f.write(eflomal_seed(src_lines, tgt_lines, settings))
        with open(src, "wb") as s, open(tgt, "wb") as t:  # eflomal's own input format, as its Aligner writes it
            eflomal.Aligner().prepare_files(src_lines, s, tgt_lines, t, None, None)
        args = [binary, "-m", str(settings.model), "-s", src, "-t", tgt, "-n", str(settings.n_samplers),
                "-N", str(settings.null_prior), "-f", fwd, "-r", rev, "-q"]
        for model, n in enumerate(n_iters[:settings.model], 1):
            args += [f"-{model}", str(n)]
        try:
            done = subprocess.run(args, cwd=tmp, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": _omp_threads()})
        except PermissionError:
            raise RuntimeError(f"cannot run eflomal from {tmp}: is the temporary folder mounted noexec? "
                               "Point TMPDIR at a folder that allows programs") from None
        if done.returncode != 0 or "/dev/urandom" in done.stderr:
            raise RuntimeError(f"eflomal failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        return _read_links(fwd), _read_links(rev)


def read_parallel(path: str) -> list[tuple[str, str]]:
    """Extra training pairs: one "source<TAB>target" line each, on any Beam filesystem."""
    from apache_beam.io.filesystems import FileSystems

    pairs = []
    with FileSystems.open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{n}: expected source<TAB>target, got {len(fields)} field(s)")
            pairs.append((fields[0], fields[1]))
    return pairs


# -- monotone units ----------------------------------------------------------------------------


def _left_max_right_min(n_src: int, links: set[Link]) -> tuple[list[int], list[float]]:
    """For every cut b (0..n_src): the last target word linked left of b, the first linked right of it."""
    by_src: list[list[int]] = [[] for _ in range(n_src)]
    for i, j in links:
        by_src[i].append(j)
    left_max = [-1] * (n_src + 1)
    for b in range(1, n_src + 1):
        left_max[b] = max([left_max[b - 1], *by_src[b - 1]])
    right_min: list[float] = [float("inf")] * (n_src + 1)
    for b in range(n_src - 1, -1, -1):
        right_min[b] = min([right_min[b + 1], *by_src[b]])
    return left_max, right_min


def monotone_cuts(n_src: int, links_by_lang: dict[str, set[Link]]) -> list[int]:
    """Source cuts (word counts before each cut) that no link of any language crosses.

    Every resulting chunk holds at least one link in every language.
    """
    bounds = {lang: _left_max_right_min(n_src, links) for lang, links in links_by_lang.items()}
    linked = {lang: {i for i, _ in links} for lang, links in links_by_lang.items()}

    def covered(start: int, end: int) -> bool:
        return all(any(start <= i < end for i in src) for src in linked.values())

    cuts: list[int] = []
    start = 0
    for b in range(1, n_src):
        if all(lm[b] < rm[b] for lm, rm in bounds.values()) and covered(start, b):
            cuts.append(b)
            start = b
    while cuts and not covered(cuts[-1], n_src):
        cuts.pop()
    return cuts


def target_cuts(n_src: int, links: set[Link], cuts: Sequence[int], target_words: Sequence[str]) -> list[int]:
    """The target cut that goes with each monotone source cut.

    Unlinked target words between two chunks may fall on either side. They close the left
    chunk up to the last one that ends a clause ("... in die Stadt kam, | wurden ..."); the
    rest open the right chunk (mostly articles and particles that lead into what follows).
    """
    left_max, right_min = _left_max_right_min(n_src, links)
    out = []
    for b in cuts:
        lo, hi = left_max[b] + 1, int(right_min[b])
        out.append(max((c for c in range(lo + 1, hi + 1) if _ends_clause(target_words[c - 1])), default=lo))
    return out


# -- latency levels ----------------------------------------------------------------------------


def _ends_clause(word: str) -> bool:
    return bool(_CLAUSE_END.search(word.rstrip(_CLOSERS) or word))


def _even_cuts(cuts: Sequence[int], n_words: int, k: int) -> list[int]:
    """The k - 1 cuts nearest to an even k-way split."""
    chosen: list[int] = []
    for part in range(1, k):
        later = [c for c in cuts if not chosen or c > chosen[-1]]
        if not later:
            break
        chosen.append(min(later, key=lambda c: abs(c - part * n_words / k)))
    return chosen


def merge_cuts(words: Sequence[str], cuts: Sequence[int], rule: LevelRule) -> list[int]:
    """The subset of `cuts` that gives this level's chunks."""
    n = len(words)
    kept: list[int] = []
    start = 0
    for b in cuts:
        size = b - start
        clause_end = rule.clause_breaks and _ends_clause(words[b - 1])
        if size >= rule.min_words and (clause_end or (rule.max_words is not None and size >= rule.max_words)):
            kept.append(b)
            start = b
        elif clause_end and kept and not _ends_clause(words[kept[-1] - 1]):
            # a clause ends too soon after the last cut: move that cut here, so the short
            # piece joins the chunk before it instead of carrying the clause end inside
            # the next chunk (where coarser levels could no longer cut at it)
            kept[-1] = b
            start = b
    if kept and n - kept[-1] < rule.min_words:
        kept.pop()
    if rule.max_chunks is not None and len(kept) + 1 > rule.max_chunks:
        kept = _even_cuts(kept, n, rule.max_chunks)
    return kept


def _spans(words: Sequence[str], cuts: Sequence[int]) -> list[str]:
    edges = [0, *cuts, len(words)]
    return [" ".join(words[a:b]) for a, b in zip(edges, edges[1:], strict=False)]


def segment_pair(
    source: str,
    translations: dict[str, str],
    links_by_lang: dict[str, set[Link]],
    levels: Sequence[str],
    rules: dict[str, LevelRule],
    reject_unsplit_over_words: int,
) -> dict[str, Segmentation]:
    """One `Segmentation` per level, from low to high latency, sharing the source cuts.

    Raises StageError `no_monotone_split` for a long sentence that no monotone cut can split.
    """
    words = source.split()
    target_words = {lang: text.split() for lang, text in translations.items()}
    units = monotone_cuts(len(words), links_by_lang)
    if not units and len(words) > reject_unsplit_over_words:
        counts = ", ".join(f"{lang}: {len(links_by_lang[lang])} links" for lang in sorted(links_by_lang))
        raise StageError(
            "no_monotone_split",
            f"{len(words)} source words but no cut keeps every alignment monotone ({counts}); "
            f"sentences over {reject_unsplit_over_words} words need at least one"
        )
    out: dict[str, Segmentation] = {}
    cuts = units
    for level in levels:
        cuts = merge_cuts(words, cuts, rules[level])
        out[level] = Segmentation(
            level=level,
            source_chunks=_spans(words, cuts),
            target_chunks={
                lang: _spans(
                    target_words[lang], target_cuts(len(words), links_by_lang[lang], cuts, target_words[lang])
                )
                for lang in translations
            },
        )
    return out
