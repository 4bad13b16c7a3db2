"""CoVoST 2: a Common Voice release (`clips/*.mp3`, `validated.tsv`) plus `covost_v2.en_X.tsv`.

The CoVoST TSV (path, sentence, translation, client_id, split) names each clip's translation
and split; `validated.tsv` confirms the clip is a validated Common Voice clip. Both are read
with no quoting and backslash escapes, as the corpus's own loader does.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import files
from ..records import AudioRef, Reject, Utterance
from .common import STAGE, BadLine, ReadTask, clean_text, outside_root, tsv_rows

CORPUS = "covost"
COLUMNS = ("path", "sentence", "translation", "client_id", "split")


def plan(root: str, langs: list[str], splits: list[str]) -> tuple[list[ReadTask], list[str]]:
    tasks, missing = [], []
    for lang in langs:
        path = files.join(root, f"covost_v2.en_{lang}.tsv")
        if files.exists(path):
            tasks.append(ReadTask(CORPUS, "pair", lang, "*", path, root))
        else:
            missing.append(lang)
    return tasks, missing


def validated_clips(root: str) -> dict[str, str]:
    """Clip file name -> client id, from the Common Voice `validated.tsv`."""
    path = files.join(root, "validated.tsv")
    if not files.exists(path):
        raise FileNotFoundError(f"CoVoST needs the Common Voice release beside it: {path} is missing")
    rows = tsv_rows(path, header=False)
    _, header = next(rows, (0, []))
    if isinstance(header, BadLine) or "path" not in header or "client_id" not in header:
        raise ValueError(f"{path}: the header must name path and client_id columns")
    p, c = header.index("path"), header.index("client_id")
    return {
        fields[p]: fields[c]
        for _, fields in rows
        if not isinstance(fields, BadLine) and len(fields) > max(p, c)
    }


def read(task: ReadTask, split_names: dict[str, str]) -> Iterator[tuple[str, Utterance] | Reject]:
    """Join parts keyed by clip id, one per TSV row in a requested split."""
    name = f"{CORPUS}/covost_v2.en_{task.lang}.tsv"
    for path in (task.path, files.join(task.root, "validated.tsv")):
        real = outside_root(path, task.root) if files.exists(path) else None
        if real:
            yield Reject(name, STAGE, "unsafe_path", f"{path} links to {real}, outside the corpus root "
                         f"{task.root}: none of the rows of {name} is read", name)
            return
    validated = validated_clips(task.root)
    rows = tsv_rows(task.path, header=False)
    _, header = next(rows, (0, []))
    if isinstance(header, BadLine) or tuple(header[: len(COLUMNS)]) != COLUMNS:
        raise ValueError(f"{task.path}: expected the header {' '.join(COLUMNS)}, got {header!r}")
    for n, fields in rows:
        where, uid = f"{name}:{n}", f"{name}#{n}"
        try:
            if isinstance(fields, BadLine):
                raise fields
            if len(fields) != len(COLUMNS):
                raise BadLine("malformed_row", f"expected {len(COLUMNS)} fields, got {len(fields)}")
            row = dict(zip(COLUMNS, fields, strict=True))
            clip = row["path"]
            uid = f"{CORPUS}/{clip.rsplit('.', 1)[0]}"
            if row["split"] not in split_names:
                raise BadLine("unknown_split", f"split {row['split']!r} is not one of {sorted(split_names)}")
            path = files.within(files.join(task.root, "clips"), clip)
            if path is None:
                raise BadLine("unsafe_path", f"clip path {clip!r} points outside clips/")
            real = outside_root(path, task.root)
            if real:
                raise BadLine("unsafe_path", f"clip {clip!r} links to {real}, outside the corpus root {task.root}")
            if clip not in validated:
                raise BadLine("not_validated", f"{clip} is not listed in validated.tsv")
            source, fixes = clean_text(row["sentence"], "sentence")
            target, target_fixes = clean_text(row["translation"], "translation", task.lang)
        except BadLine as e:
            yield Reject(uid, STAGE, e.reason, e.detail, where)
            continue
        yield uid, Utterance(
            id=uid,
            corpus=CORPUS,
            split=split_names[row["split"]],
            audio=AudioRef(path),
            speaker=row["client_id"] or validated[clip],
            source_lang="en",
            source_text=source,
            translations={task.lang: target},
            where=where,
            fixes=fixes + target_fixes,
        )
