"""What every corpus reader shares: read tasks, strict per-line decoding, TSV rows, text
normalisation, and the check that a file lies inside its corpus."""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import files
from ..records import StageError

STAGE = "read"


@dataclass
class CorpusSettings:
    """A corpus's block of configs/curate.yaml (`corpus.<name>`)."""

    path: str | None  # None: <input>/<corpus name>
    splits: dict[str, str]  # the corpus's split names -> the dataset's (train / validation / test)
    license: str  # SPDX-style id, stated in the dataset card
    locales: dict[str, str] = field(default_factory=dict)  # language -> folder, for corpora that need it


@dataclass(frozen=True)
class ReadTask:
    """One file (or file set) a reader turns into join parts; planned by the driver."""

    corpus: str
    kind: str  # what the file holds: "source", "translation", or "pair" (source with one translation)
    lang: str  # target language code ("de"), or the source language for kind="source"
    split: str  # the corpus's own split name ("tst-COMMON", "dev", ...)
    path: str
    root: str  # corpus root: nothing a record points to may lie outside it


def lines(path: str) -> list[str | StageError]:
    """The file's lines, each decoded on its own so one bad line does not cost the whole file."""
    out: list[str | StageError] = []
    for i, raw in enumerate(files.read_bytes(path).split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            out.append(StageError("non_utf8", f"line {i} is not UTF-8 ({e.reason} at byte {e.start})"))
    if out and out[-1] == "":
        out.pop()  # the newline that ends the last line
    return out


def tsv_fields(line: str) -> list[str]:
    """Fields of one TSV line as Common Voice, CoVoST and FLEURS write them: no quoting, `\\` escapes."""
    return next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"), [])


# Invisible characters a corpus ships by accident (a BOM at the top of a file, text pasted from the
# web): they change nothing a listener hears but split tokens and break string equality (joins,
# deduplication, the aligner's words). Dropped from every text.
ZERO_WIDTH = frozenset("\u200b\u2060\ufeff")  # zero-width space, word joiner, zero-width no-break space
# The zero-width non-joiner and joiner spell words in Persian and Urdu, the Brahmic scripts (Hindi,
# Bengali, Malayalam, Sinhala...) and emoji sequences. The English source has no use for them; a
# translation keeps one between two such characters, and drops one next to Latin, Greek or Cyrillic
# (where it only steers ligatures) or to a space or punctuation.
JOINERS = frozenset("\u200c\u200d")
_NO_JOINERS = ("LATIN", "GREEK", "CYRILLIC")


def _joins(before: str, after: str) -> bool:
    """Whether a ZWNJ/ZWJ between these characters is part of the spelling."""
    def joinable(ch: str) -> bool:  # a letter, mark or emoji-like symbol of a script that uses joiners
        kind = unicodedata.category(ch)
        return (kind[0] in "LM" or kind == "So") and not unicodedata.name(ch, "").startswith(_NO_JOINERS)

    return bool(before) and bool(after) and joinable(before) and joinable(after)


def _drop_invisible(text: str, translation: bool) -> tuple[str, int]:
    """`text` without its zero-width characters (joiners kept where they spell, in translations)."""
    kept = []
    for i, ch in enumerate(text):
        if ch in ZERO_WIDTH or (ch in JOINERS and not (
                translation and _joins(kept[-1] if kept else "", text[i + 1 : i + 2]))):
            continue
        kept.append(ch)
    return "".join(kept), len(text) - len(kept)


def clean_text(text: str, what: str, lang: str | None = None) -> tuple[str, list[str]]:
    """The text as published, and what was changed in it (for the record's `fixes`).

    Zero-width characters go, then the text is composed to Unicode NFC (so the same sentence
    from two releases, one NFC and one NFD, is one string), then whitespace is collapsed (not
    recorded: every corpus has stray spaces). `lang` is a translation's language, None for the
    (English) source. A text with no letter or digit in any script has no spoken word: a bad line.
    """
    name = "source text" if lang is None else f"translation {lang}"
    fixes = []
    text, dropped = _drop_invisible(text, translation=lang is not None)
    if dropped:
        fixes.append(f"removed {dropped} zero-width character{'s' if dropped > 1 else ''} from {name}")
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
        fixes.append(f"{name} normalised to NFC")
    text = " ".join(text.split())
    if not text:
        raise StageError("empty_text", f"{what} is empty or whitespace only")
    if not any(ch.isalnum() for ch in text):
        raise StageError("empty_text", f"{what} has no letter or digit, so no spoken word: {text[:80]!r}")
    return text, fixes


def outside_root(path: str, root: str) -> str | None:
    """Where `path` really points if that is outside `root` once symbolic links are resolved, else
    None (a remote path has no links): a link must not lead a reader out of its corpus."""
    if not files.is_local(path):
        return None
    real, base = os.path.realpath(path), os.path.realpath(root)
    return None if os.path.commonpath([real, base]) == base else real


def tsv_rows(path: str, header: bool) -> Iterator[tuple[int, list[str] | StageError]]:
    """(line number, fields or StageError) for each data row."""
    rows = lines(path)
    for i, line in enumerate(rows[1:] if header else rows, 2 if header else 1):
        yield i, line if isinstance(line, StageError) else tsv_fields(line)
