"""What every corpus reader shares: read tasks, strict per-line decoding, TSV rows."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass

from .. import files

STAGE = "read"


@dataclass(frozen=True)
class ReadTask:
    """One file (or file set) a reader turns into join parts; planned by the driver."""

    corpus: str
    kind: str  # what the file holds: "source", "translation", or "pair" (source with one translation)
    lang: str  # target language code ("de"), or the source language for kind="source"
    split: str  # the corpus's own split name ("tst-COMMON", "dev", ...)
    path: str
    root: str  # corpus root: nothing a record points to may lie outside it


class BadLine(Exception):
    """A line that cannot be used, with its reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def lines(path: str) -> list[str | BadLine]:
    """The file's lines, each decoded on its own so one bad line does not cost the whole file."""
    out: list[str | BadLine] = []
    for i, raw in enumerate(files.read_bytes(path).split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            out.append(BadLine("non_utf8", f"line {i} is not UTF-8 ({e.reason} at byte {e.start})"))
    if out and out[-1] == "":
        out.pop()  # the newline that ends the last line
    return out


def tsv_fields(line: str) -> list[str]:
    """Fields of one TSV line as Common Voice, CoVoST and FLEURS write them: no quoting, `\\` escapes."""
    return next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"), [])


def clean_text(text: str, what: str) -> str:
    """Whitespace-normalised text; empty text is a bad line."""
    text = " ".join(text.split())
    if not text:
        raise BadLine("empty_text", f"{what} is empty or whitespace only")
    return text


def tsv_rows(path: str, header: bool) -> Iterator[tuple[int, list[str] | BadLine]]:
    """(line number, fields or BadLine) for each data row."""
    rows = lines(path)
    for i, line in enumerate(rows[1:] if header else rows, 2 if header else 1):
        yield i, line if isinstance(line, BadLine) else tsv_fields(line)
