import random

from simulforge.transforms.monotonicity import (
    OFFLINE,
    chunk_of_word,
    chunked_crossings,
    crossing_stats,
    crossings,
    measurement_pairs,
    view_crossings,
)
from simulforge.transforms.records import AudioRef, Segmentation, Utterance


def test_monotone_alignment_has_no_crossing():
    c = crossings([(0, 0), (1, 1), (2, 2)])
    assert (c.discordant, c.pairs, c.rate) == (0, 3, 0.0)


def test_reversed_alignment_crosses_everywhere():
    c = crossings([(0, 2), (1, 1), (2, 0)])
    assert (c.discordant, c.pairs, c.rate) == (3, 3, 1.0)


def test_links_sharing_a_word_are_not_comparable():
    # (0,0)-(0,1) share source word 0, (0,1)-(1,1) share target word 1: only (0,0)-(1,1) counts
    assert crossings([(0, 0), (0, 1), (1, 1)]) == crossings([(0, 0), (1, 1)])
    assert crossings([]).rate == 0.0


def test_reordering_inside_a_chunk_costs_nothing():
    # "I have seen it" -> "ich habe es gesehen": seen/it swap inside the chunk "seen it"
    links = [(0, 0), (1, 1), (2, 3), (3, 2)]
    assert crossings(links).discordant == 1
    assert chunked_crossings(links, ["I have", "seen it"]).discordant == 0
    assert chunked_crossings(links, ["I have seen", "it"]).discordant == 1
    assert chunk_of_word([2, 1, 3]) == [0, 0, 1, 2, 2, 2]


def test_chunked_rate_never_exceeds_offline():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(2, 9)
        links = {(rng.randrange(n), rng.randrange(n)) for _ in range(n)}
        sizes, left = [], n
        while left:
            sizes.append(rng.randint(1, left))
            left -= sizes[-1]
        offline, chunked = crossings(links), crossings(links, chunk_of_word(sizes))
        assert chunked.pairs == offline.pairs and chunked.discordant <= offline.discordant


def _utt(segmentations):
    return Utterance(
        id="u1",
        corpus="t",
        split="train",
        audio=AudioRef("x.wav"),
        speaker="s",
        source_lang="en",
        source_text="I have seen it",
        translations={"de": "ich habe es gesehen"},
        segmentations=segmentations,
    )


def test_levels_that_keep_the_reference_share_its_alignment():
    segs = {
        "low": Segmentation("low", ["I have", "seen it"], {"de": ["ich habe", "es gesehen"]}),
        "high": Segmentation("high", ["I have seen it"], {"de": ["ich habe es gesehen"]}),
    }
    pairs = list(measurement_pairs(_utt(segs)))
    assert pairs == [
        (
            "de",
            (
                "u1",
                "I have seen it",
                "ich habe es gesehen",
                [(OFFLINE, None), ("low", [2, 2]), ("high", [4])],
            ),
        )
    ]


def test_a_rewritten_translation_is_aligned_on_its_own():
    segs = {"low": Segmentation("low", ["I have", "seen it"], {"de": ["ich habe", "gesehen es"]})}
    targets = [entry[2] for _, entry in measurement_pairs(_utt(segs))]
    assert targets == ["ich habe es gesehen", "ich habe gesehen es"]


def test_view_crossings_count_each_view_as_crossings_does():
    rng = random.Random(11)
    for _ in range(200):
        n = rng.randint(1, 9)
        links = {(rng.randrange(n), rng.randrange(n)) for _ in range(n)}
        views = [(OFFLINE, None)]
        for level in ("low", "high"):
            sizes, left = [], n
            while left:
                sizes.append(rng.randint(1, left))
                left -= sizes[-1]
            views.append((level, sizes))
        expected = [
            (name, crossings(links, None if sizes is None else chunk_of_word(sizes))) for name, sizes in views
        ]
        assert view_crossings(links, views) == expected


def test_crossing_stats_names():
    links = [(0, 0), (1, 1), (2, 3), (3, 2)]
    stats = list(crossing_stats("segment", "de", view_crossings(links, [(OFFLINE, None), ("low", [2, 2])])))
    assert {(s.name, s.value) for s in stats} == {
        ("crossing/offline/de/discordant", 1),
        ("crossing/offline/de/pairs", 6),
        ("crossing/low/de/discordant", 0),
        ("crossing/low/de/pairs", 6),
    }
