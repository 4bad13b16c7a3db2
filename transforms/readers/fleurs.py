"""FLEURS: per-locale folders (`en_us/`, `de_de/`, `es_419/`) of header-less 7-column TSVs.

Columns: id, file_name, raw_transcription, transcription, chars, num_samples, gender.
English recordings come from `en_us/audio/<split>.tar.gz` (members `<split>/<file_name>`),
extracted once into the work directory with every member checked to stay inside it.
Translations are the other locales' rows with the same sentence id; several recordings
may share one id, and each becomes its own clip with the same translations.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Iterator

from .. import files
from ..records import AudioRef, Reject, StageError, Stat, Translation, Utterance
from .common import STAGE, CorpusSettings, ReadTask, clean_text, outside_root, tsv_rows

CORPUS = "fleurs"
TITLE = "FLEURS"  # as the dataset card names it
CITATION = """@inproceedings{conneau2023fleurs,
  title = {{FLEURS}: Few-Shot Learning Evaluation of Universal Representations of Speech},
  author = {Conneau, Alexis and Ma, Min and Khanuja, Simran and Zhang, Yu and Axelrod, Vera and Dalmia, Siddharth
            and Riesa, Jason and Rivera, Clara and Bapna, Ankur},
  booktitle = {2022 IEEE Spoken Language Technology Workshop (SLT)},
  year = {2023},
  pages = {798--805},
  doi = {10.1109/SLT54892.2023.10023141},
  note = {arXiv:2205.12446}
}"""
SAMPLING_RATE = 16000  # FLEURS' num_samples column counts samples at this rate


def plan(root: str, langs: list[str], settings: CorpusSettings) -> tuple[list[ReadTask], list[str]]:
    """The English transcripts of every split, each language's translations, and the languages with none."""
    tasks, missing, splits, locales = [], [], list(settings.splits), settings.locales
    source = files.join(root, locales["en"])
    for split in splits:
        path = files.join(source, f"{split}.tsv")
        if files.exists(path):
            tasks.append(ReadTask(CORPUS, "source", "en", split, path, root))
    if not tasks:  # every clip is English: without them, each translation would be rejected
        raise FileNotFoundError(f"fleurs: no English transcripts in {source} (corpus.fleurs.locales.en): "
                                f"none of {', '.join(f'{s}.tsv' for s in splits)} is there")
    for lang in langs:
        folder = files.join(root, locales.get(lang, f"{lang}_?"))
        if lang not in locales or not files.exists(folder):
            missing.append(lang)
            continue
        for split in splits:
            path = files.join(folder, f"{split}.tsv")
            if files.exists(path):
                tasks.append(ReadTask(CORPUS, "translation", lang, split, path, root))
    return tasks, missing


def _rows(task: ReadTask, locale: str) -> Iterator[tuple[str, list[str]] | Reject]:
    name = f"{CORPUS}/{locale}/{task.split}.tsv"
    for n, fields in tsv_rows(task.path, header=False):
        if isinstance(fields, StageError):
            yield fields.reject(f"{name}#{n}", STAGE, f"{name}:{n}")
        elif len(fields) != 7:
            yield Reject(f"{name}#{n}", STAGE, "malformed_row", f"expected 7 fields, got {len(fields)}", f"{name}:{n}")
        else:
            yield f"{name}:{n}", fields


def extract_audio(archive: str, split: str, dest: str) -> Iterator[Reject | Stat]:
    """Extract regular-file members under `<split>/` into `dest`; anything else is refused.

    A file already extracted with the member's size and modification time is kept, so a re-run
    does not redo the work (and a changed archive is extracted again); nothing is written through
    a link that would leave `dest`.
    """
    name = archive.split("/fleurs/", 1)[-1]
    with files.open_read(archive) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        for member in tar:
            where = f"{CORPUS}/{name}:{member.name}"
            inside = posixpath.normpath(member.name).split("/", 1)  # "./train/x.wav" is "train/x.wav"
            target = files.within(dest, inside[1]) if len(inside) == 2 and inside[0] == split else None
            if member.isdir():
                continue
            if not member.isfile() or target is None:
                kind = "link" if (member.issym() or member.islnk()) else "member"
                yield Reject(where, STAGE, "unsafe_path", f"{kind} {member.name!r} would land outside {split}/", where)
                continue
            if files.is_local(target):
                real = outside_root(target, dest)
                if real:
                    yield Reject(where, STAGE, "unsafe_path", f"{target} links to {real}, outside {dest}", where)
                    continue
                if (os.path.exists(target) and os.path.getsize(target) == member.size
                        and int(os.path.getmtime(target)) == int(member.mtime)):
                    continue
            with tar.extractfile(member) as src, files.open_write(target) as out:
                out.write(src.read())
            if files.is_local(target):
                os.utime(target, (member.mtime, member.mtime))
            yield Stat(STAGE, "fleurs/extracted")


def _unsafe_file(task: ReadTask, path: str, name: str) -> Reject | None:
    """A reject for a corpus file that links out of the corpus root (nothing of it is read)."""
    real = outside_root(path, task.root)
    if real is None:
        return None
    return Reject(name, STAGE, "unsafe_path", f"{path} links to {real}, outside the corpus root {task.root}: "
                  "nothing of it is read", name)


def read(task: ReadTask, settings: CorpusSettings, work_dir: str) -> Iterator:
    """Source rows become clips keyed by sentence id; translation rows become `Translation`s."""
    split_name, locale = settings.splits[task.split], settings.locales[task.lang]
    unsafe = _unsafe_file(task, task.path, f"{CORPUS}/{locale}/{task.split}.tsv")
    if unsafe:
        yield unsafe
        return
    if task.kind == "translation":
        for item in _rows(task, locale):
            if isinstance(item, Reject):
                yield item
                continue
            where, fields = item
            try:
                text, fixes = clean_text(fields[2], "raw_transcription", task.lang)
            except StageError as e:
                yield e.reject(f"{CORPUS}/{locale}#{fields[0]}", STAGE, where)
                continue
            yield f"{CORPUS}:{fields[0]}", Translation(task.lang, text, where, tuple(fixes))
        return

    audio_dir = files.join(work_dir, CORPUS, locale, task.split)
    archive = files.join(task.root, locale, "audio", f"{task.split}.tar.gz")
    shipped = files.exists(archive)
    unsafe = _unsafe_file(task, archive, f"{CORPUS}/{locale}/audio/{task.split}.tar.gz") if shipped else None
    if unsafe:
        yield unsafe
    elif shipped:
        yield from extract_audio(archive, task.split, audio_dir)
    for item in _rows(task, locale):
        if isinstance(item, Reject):
            yield item
            continue
        where, (sid, file_name, raw, _, _, num_samples, _) = item
        uid = f"{CORPUS}/{file_name.rsplit('.', 1)[0]}"
        try:
            path = files.within(audio_dir, file_name)
            if path is None or "/" in file_name:
                raise StageError("unsafe_path", f"file_name {file_name!r} is not a plain file name")
            if unsafe:
                raise StageError("unsafe_path", f"its audio archive is not read: {unsafe.detail}")
            real = outside_root(path, audio_dir)
            if real:
                raise StageError("unsafe_path", f"the extracted {file_name} links to {real}, outside {audio_dir}")
            text, fixes = clean_text(raw, "raw_transcription")
            declared = int(num_samples) / SAMPLING_RATE if num_samples.isdigit() else None
        except StageError as e:
            yield e.reject(uid, STAGE, where)
            continue
        yield f"{CORPUS}:{sid}", Utterance(
            id=uid,
            corpus=CORPUS,
            split=split_name,
            audio=AudioRef(path, 0.0, declared, SAMPLING_RATE),
            speaker=uid,  # FLEURS names no speakers: each recording counts as its own
            source_lang="en",
            source_text=text,
            where=where,
            fixes=fixes,
        )
