"""CoVoST 2: a Common Voice release (`clips/*.mp3`, `validated.tsv`) plus `covost_v2.en_X.tsv`.

The CoVoST TSV (path, sentence, translation, client_id, split) names each clip's translation
and split; `validated.tsv` confirms the clip is a validated Common Voice clip. Both are read
with no quoting and backslash escapes, as the corpus's own loader does.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import files
from ..records import AudioRef, Reject, StageError, Utterance
from .common import STAGE, CorpusSettings, ReadTask, clean_text, outside_root, tsv_rows

CORPUS = "covost"
TITLE = "CoVoST 2"  # as the dataset card names it
CITATION = """@inproceedings{wang21s_interspeech,
  title = {{CoVoST} 2 and Massively Multilingual Speech Translation},
  author = {Wang, Changhan and Wu, Anne and Gu, Jiatao and Pino, Juan},
  booktitle = {Proc. Interspeech 2021},
  year = {2021},
  pages = {2247--2251},
  doi = {10.21437/Interspeech.2021-2027},
  note = {arXiv:2007.10310}
}"""
COLUMNS = ("path", "sentence", "translation", "client_id", "split")


def plan(root: str, langs: list[str], settings: CorpusSettings) -> tuple[list[ReadTask], list[str]]:
    """One task per language's TSV (it holds every split), and the languages with none."""
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
    if isinstance(header, StageError) or "path" not in header or "client_id" not in header:
        raise ValueError(f"{path}: the header must name path and client_id columns")
    p, c = header.index("path"), header.index("client_id")
    return {
        fields[p]: fields[c]
        for _, fields in rows
        if not isinstance(fields, StageError) and len(fields) > max(p, c)
    }


def read(task: ReadTask, settings: CorpusSettings, work_dir: str) -> Iterator[tuple[str, Utterance] | Reject]:
    """Join parts keyed by clip id, one per TSV row in a requested split."""
    split_names = settings.splits
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
    if isinstance(header, StageError) or tuple(header[: len(COLUMNS)]) != COLUMNS:
        raise ValueError(f"{task.path}: expected the header {' '.join(COLUMNS)}, got {header!r}")
    for n, fields in rows:
        where, uid = f"{name}:{n}", f"{name}#{n}"
        try:
            if isinstance(fields, StageError):
                raise fields
            if len(fields) != len(COLUMNS):
                raise StageError("malformed_row", f"expected {len(COLUMNS)} fields, got {len(fields)}")
            row = dict(zip(COLUMNS, fields, strict=True))
            clip = row["path"]
            uid = f"{CORPUS}/{clip.rsplit('.', 1)[0]}"
            if row["split"] not in split_names:
                raise StageError("unknown_split", f"split {row['split']!r} is not one of {sorted(split_names)}")
            path = files.within(files.join(task.root, "clips"), clip)
            if path is None:
                raise StageError("unsafe_path", f"clip path {clip!r} points outside clips/")
            real = outside_root(path, task.root)
            if real:
                raise StageError("unsafe_path", f"clip {clip!r} links to {real}, outside the corpus root {task.root}")
            if clip not in validated:
                raise StageError("not_validated", f"{clip} is not listed in validated.tsv")
            source, fixes = clean_text(row["sentence"], "sentence")
            target, target_fixes = clean_text(row["translation"], "translation", task.lang)
        except StageError as e:
            yield e.reject(uid, STAGE, where)
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
