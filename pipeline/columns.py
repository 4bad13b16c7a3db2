"""The card's column tables: every column of a config with its type, unit and meaning.

Types come from the config's `datasets.Features`, so they cannot disagree with the shards. Unit
and meaning come from the config module's `COLUMNS`, written next to its features: a mapping
from a column path to `(unit, meaning)`. Paths name nested fields with dots and the fields of a
list of structs with `[]` (`words[].start`); `<lang>` stands for the field of each target
language and `<level>` for that of each latency level, so one entry documents them all. A
column that has no entry is listed by `undocumented`, which the tests run on every config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import datasets

WILDCARDS = ("<lang>", "<level>")
Docs = Mapping[str, tuple[str, str]]  # path -> (unit, meaning)


def type_name(feature) -> str:
    """A column's type in words a reader of the card meets in `datasets` and pyarrow."""
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, datasets.Audio):
        return f"audio, {feature.sampling_rate} Hz" if feature.sampling_rate else "audio"
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        length = getattr(feature, "length", -1)
        return f"list[{type_name(feature.feature)}{f', {length}' if length and length > 0 else ''}]"
    if isinstance(feature, dict):
        return "struct"
    return type(feature).__name__


def _child(path: str, name: str, docs: Docs) -> str:
    """The documented path of field `name` under `path`: its own, or the wildcard the docs use there."""
    own = f"{path}.{name}" if path else name
    if own in docs:
        return own
    for wildcard in WILDCARDS:
        general = f"{path}.{wildcard}"
        if any(key == general or key.startswith(general + ".") or key.startswith(general + "[]")
               for key in docs):
            return general
    return own


def walk(fields: Mapping, docs: Docs, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, type) of every column and nested field, in schema order; the fields that one
    wildcard entry documents appear once."""
    seen = set()
    for name, sub in fields.items():
        child = _child(path, name, docs)
        if child in seen:
            continue
        seen.add(child)
        yield child, type_name(sub)
        if isinstance(sub, dict):
            yield from walk(sub, docs, child)
        elif isinstance(sub, (datasets.List, datasets.LargeList)) and isinstance(sub.feature, dict):
            yield from walk(sub.feature, docs, child + "[]")


def columns(features: datasets.Features, docs: Docs) -> list[tuple[str, str]]:
    """(path, type) of every column of `features` and its nested fields."""
    return list(walk(features, docs))


def undocumented(features: datasets.Features, docs: Docs) -> list[str]:
    """The paths of `features` that `docs` does not explain."""
    return [path for path, _ in columns(features, docs) if path not in docs]


def table(features: datasets.Features, docs: Docs) -> list[str]:
    """The markdown table of a config's columns."""
    lines = ["| column | type | unit | meaning |", "|---|---|---|---|"]
    for path, kind in columns(features, docs):
        unit, meaning = docs.get(path, ("", "(not documented)"))
        meaning = meaning.replace("|", "\\|")  # a table cell ends at a bare |, even inside `code`
        lines.append(f"| `{path}` | {kind} | {unit or '—'} | {meaning} |")
    return lines
