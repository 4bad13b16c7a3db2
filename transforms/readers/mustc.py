"""MuST-C: `en-X/data/<split>/txt/<split>.{yaml,en,X}` and talk-long wavs in `<split>/wav/`.

Each YAML line is one segment (`- {duration: .., offset: .., speaker_id: .., wav: ..}`);
line i of `.en` and `.X` holds its text. Each en-X release ships its own copy of the talks,
so a segment's id is built from the talk and its offset, which agree across releases.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterator

from .. import files
from ..records import AudioRef, Reject, StageError, Utterance
from .common import STAGE, CorpusSettings, ReadTask, clean_text, lines, outside_root

CORPUS = "mustc"
TITLE = "MuST-C"  # as the dataset card names it
CITATION = """@inproceedings{di-gangi-etal-2019-must,
  title = {{M}u{ST}-{C}: a {M}ultilingual {S}peech {T}ranslation {C}orpus},
  author = {Di Gangi, Mattia A. and Cattoni, Roldano and Bentivogli, Luisa and Negri, Matteo and Turchi, Marco},
  booktitle = {Proceedings of the 2019 Conference of the North {A}merican Chapter of the Association for
               Computational Linguistics: Human Language Technologies, Volume 1 (Long and Short Papers)},
  year = {2019},
  pages = {2012--2017},
  address = {Minneapolis, Minnesota},
  publisher = {Association for Computational Linguistics},
  url = {https://aclanthology.org/N19-1202},
  doi = {10.18653/v1/N19-1202}
}"""
_FIELD = re.compile(r"(\w+):\s*([^,}]+)")


def plan(root: str, langs: list[str], settings: CorpusSettings) -> tuple[list[ReadTask], list[str]]:
    """Read tasks for every (language, split) present, and the languages with no release."""
    tasks, missing, splits = [], [], list(settings.splits)
    for lang in langs:
        data = files.join(root, f"en-{lang}", "data")
        if not files.exists(data):
            missing.append(lang)
            continue
        for split in splits:
            yaml_path = files.join(data, split, "txt", f"{split}.yaml")
            if files.exists(yaml_path):
                tasks.append(ReadTask(CORPUS, "pair", lang, split, yaml_path, root))
    return tasks, missing


def segment_id(wav: str, offset: float) -> str:
    return f"{CORPUS}/{posixpath.splitext(wav)[0]}_{round(offset * 1000)}"


def parse_entry(line: str) -> dict[str, str]:
    body = line.strip()
    if not (body.startswith("- {") and body.endswith("}")):
        raise StageError("malformed_entry", f"not a flow-style YAML list entry: {line[:80]!r}")
    entry = {k: v.strip() for k, v in _FIELD.findall(body)}
    for key in ("duration", "offset", "wav"):
        if key not in entry:
            raise StageError("malformed_entry", f"entry has no {key}: {line[:80]!r}")
    try:
        duration, offset = float(entry["duration"]), float(entry["offset"])
    except ValueError:
        raise StageError("malformed_entry", f"offset/duration not numbers: {line[:80]!r}") from None
    # A non-positive duration would read the talk from the offset to its end as one clip. An offset
    # past the end of the wav is found by the audio stage, the first to open the wav.
    if not (math.isfinite(duration) and math.isfinite(offset)) or duration <= 0 or offset < 0:
        raise StageError("bad_segment_time", f"offset {entry['offset']} s, duration {entry['duration']} s: "
                                          "a segment starts at 0 s or later and lasts more than 0 s")
    return entry


def read(task: ReadTask, settings: CorpusSettings, work_dir: str) -> Iterator[tuple[str, Utterance] | Reject]:
    """Join parts keyed by segment id (talk + offset), in talk and numeric-offset order."""
    split_name = settings.splits[task.split]
    txt = task.path.rsplit("/", 1)[0]
    rel = f"{CORPUS}/en-{task.lang}/data/{task.split}/txt/{task.split}"
    real = outside_root(task.path, task.root)
    if real:
        yield Reject(f"{rel}.yaml", STAGE, "unsafe_path", f"{rel}.yaml links to {real}, outside the corpus root "
                     f"{task.root}: none of its segments is read", f"{rel}.yaml")
        return
    entries = lines(task.path)
    texts, escapes = {}, {}
    for lang in ("en", task.lang):
        path = files.join(txt, f"{task.split}.{lang}")
        found = files.exists(path)
        escapes[lang] = outside_root(path, task.root) if found else None
        texts[lang] = lines(path) if found and not escapes[lang] else None

    def where(i: int) -> str:
        return f"{rel}.yaml:{i + 1}"

    problem = None
    for lang, got in texts.items():
        if escapes[lang]:
            problem = ("unsafe_path", f"{rel}.{lang} links to {escapes[lang]}, outside the corpus root {task.root}")
        elif got is None:
            problem = ("missing_text", f"{rel}.{lang} does not exist")
        elif len(got) != len(entries):
            problem = (
                "line_count_mismatch",
                f"{rel}.yaml has {len(entries)} entries but {rel}.{lang} has {len(got)} lines",
            )
    if problem:
        for i in range(len(entries)):
            yield Reject(f"{rel}.yaml#{i + 1}", STAGE, *problem, where(i))
        return

    parsed = []
    for i, line in enumerate(entries):
        try:
            if isinstance(line, StageError):
                raise line
            entry = parse_entry(line)
            for lang in ("en", task.lang):
                if isinstance(texts[lang][i], StageError):
                    bad = texts[lang][i]
                    raise StageError(bad.reason, f"{rel}.{lang}: {bad.detail}")
            parsed.append((entry["wav"], float(entry["offset"]), i, entry))
        except StageError as e:
            yield e.reject(f"{rel}.yaml#{i + 1}", STAGE, where(i))

    wav_dir = files.join(task.root, f"en-{task.lang}", "data", task.split, "wav")
    for wav, offset, i, entry in sorted(parsed, key=lambda p: (p[0], p[1])):
        uid = segment_id(wav, offset)
        try:
            wav_path = files.within(wav_dir, wav)
            if wav_path is None:
                raise StageError("unsafe_path", f"wav {wav!r} points outside {wav_dir}")
            real = outside_root(wav_path, task.root)
            if real:
                raise StageError("unsafe_path", f"wav {wav!r} links to {real}, outside the corpus root {task.root}")
            source, fixes = clean_text(texts["en"][i], f"{rel}.en line {i + 1}")
            target, target_fixes = clean_text(texts[task.lang][i], f"{rel}.{task.lang} line {i + 1}", task.lang)
        except StageError as e:
            yield e.reject(uid, STAGE, where(i))
            continue
        yield uid, Utterance(
            id=uid,
            corpus=CORPUS,
            split=split_name,
            audio=AudioRef(wav_path, offset, float(entry["duration"])),
            speaker=entry.get("speaker_id", posixpath.splitext(wav)[0]),
            source_lang="en",
            source_text=source,
            translations={task.lang: target},
            where=where(i),
            fixes=fixes + target_fixes,
        )
