"""Crossing rate: how much of a translation runs against the order the source is read in.

A word alignment is a set of links (i, j): source word i is translated by target word j.
Two links are *comparable* when they differ on both sides (i1 != i2 and j1 != j2); they are
*discordant* when the target emits them in the opposite order to the source. The crossing
rate is discordant / comparable, the normalised Kendall-tau distance between the two orders.

Offline, the source is read word by word, so every reordering counts. A chunked pair is read
one chunk at a time: the words of one source chunk arrive together, so reordering inside a
chunk costs no anticipation and only pairs whose source words lie in different chunks can be
discordant. Both rates share the same denominator (the comparable pairs of the sentence),
so the chunked rate is directly comparable to the offline one and never exceeds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .records import Stat, Utterance

Link = tuple[int, int]


@dataclass(frozen=True)
class Crossings:
    """Counts that sum across sentences; `rate` is their ratio."""

    discordant: int
    pairs: int

    @property
    def rate(self) -> float:
        return self.discordant / self.pairs if self.pairs else 0.0


def crossings(links: Iterable[Link], source_position: Sequence[int] | None = None) -> Crossings:
    """Discordant and comparable link pairs.

    `source_position[i]` is the reading step at which source word i arrives: the word index
    offline (the default), the chunk index for a chunked pair.
    """
    links = sorted(set(links))
    pos = (lambda i: i) if source_position is None else source_position.__getitem__
    discordant = pairs = 0
    for a, (i1, j1) in enumerate(links):
        for i2, j2 in links[a + 1 :]:
            if i1 == i2 or j1 == j2:
                continue
            pairs += 1
            if (pos(i1) - pos(i2)) * (j1 - j2) < 0:
                discordant += 1
    return Crossings(discordant, pairs)


def chunk_of_word(chunk_word_counts: Sequence[int]) -> list[int]:
    """Chunk index of every word, from the number of words in each chunk."""
    return [c for c, n in enumerate(chunk_word_counts) for _ in range(n)]


def chunked_crossings(links: Iterable[Link], source_chunks: Sequence[str]) -> Crossings:
    """Crossings of a chunked pair: the source arrives chunk by chunk."""
    return crossings(links, chunk_of_word([len(c.split()) for c in source_chunks]))


# -- measuring segmented utterances ------------------------------------------------------------

OFFLINE = "offline"


def measurement_pairs(
    utt: Utterance,
) -> Iterator[tuple[str, tuple[str, str, str, list[tuple[str, list[int] | None]]]]]:
    """(lang, (id, source, target, views)) to word-align, one per distinct target text.

    A view is (name, source words per chunk): "offline" with None (read word by word) or a
    latency level. Levels whose chunks join to the reference (always, for the alignment
    backend) share the reference's alignment.
    """
    for lang, reference in utt.translations.items():
        views: dict[str, list[tuple[str, list[int] | None]]] = {
            " ".join(reference.split()): [(OFFLINE, None)]
        }
        for level, seg in utt.segmentations.items():
            if lang in seg.target_chunks:
                target = " ".join(seg.target_chunks[lang])
                views.setdefault(target, []).append((level, [len(c.split()) for c in seg.source_chunks]))
        for target, named in views.items():
            yield lang, (utt.id, utt.source_text, target, named)


def view_crossings(
    links: Iterable[Link], views: list[tuple[str, list[int] | None]]
) -> list[tuple[str, Crossings]]:
    """`crossings` of one aligned pair under each of its views, from one pass over its link pairs.

    The views share the comparable pairs, and as chunks keep the source order, a chunked view's
    discordant pairs are the offline ones whose source words lie in different chunks.
    """
    links = sorted(set(links))
    pairs = 0
    discordant = []  # source words (i1 < i2) of each pair translated in the opposite order
    for a, (i1, j1) in enumerate(links):
        for i2, j2 in links[a + 1 :]:
            if i1 != i2 and j1 != j2:
                pairs += 1
                if j1 > j2:
                    discordant.append((i1, i2))
    measured = []
    for name, chunk_words in views:
        if chunk_words is None:
            n = len(discordant)
        else:
            chunk = chunk_of_word(chunk_words)
            n = sum(chunk[i1] != chunk[i2] for i1, i2 in discordant)
        measured.append((name, Crossings(n, pairs)))
    return measured


def crossing_stats(stage: str, lang: str, measured: Iterable[tuple[str, Crossings]]) -> Iterator[Stat]:
    """Summable crossing counts of one aligned pair, from its `view_crossings`."""
    for name, c in measured:
        yield Stat(stage, f"crossing/{name}/{lang}/discordant", c.discordant)
        yield Stat(stage, f"crossing/{name}/{lang}/pairs", c.pairs)
