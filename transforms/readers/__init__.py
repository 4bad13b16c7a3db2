"""One reader per corpus, each a short module from the publisher's layout to join parts.

`plan` lists the files to read (on the driver); `read_task` turns one file into
`(join key, Utterance | Translation)` parts and `Reject`s (on the workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import files
from ..records import Stat
from . import covost, fleurs, mustc
from .common import STAGE, ReadTask

__all__ = ["CORPORA", "STAGE", "CorpusSettings", "ReadTask", "plan", "read_task"]

CORPORA = {"mustc": mustc, "covost": covost, "fleurs": fleurs}


@dataclass
class CorpusSettings:
    path: str | None  # None: <input>/<corpus name>
    splits: dict[str, str]  # the corpus's split names -> the dataset's (train / validation / test)
    license: str  # SPDX-style id, stated in the dataset card
    locales: dict[str, str] = field(default_factory=dict)  # language -> folder, for corpora that need it


def plan(name: str, root: str, settings: CorpusSettings, langs: list[str]) -> tuple[list[ReadTask], list[str]]:
    """Read tasks for corpus `name` under `root`, and the requested languages it does not have."""
    if not files.exists(root):
        raise FileNotFoundError(f"{name}: corpus folder {root} does not exist")
    module = CORPORA[name]
    if name == "fleurs":
        return module.plan(root, langs, list(settings.splits), settings.locales)
    return module.plan(root, langs, list(settings.splits))


def read_task(task: ReadTask, settings: CorpusSettings, work_dir: str) -> Iterator:
    """The records of one file of a corpus, and a `fixed_text` count per record whose text was mended."""
    for item in _records(task, settings, work_dir):
        if isinstance(item, tuple) and item[1].fixes:  # a (join key, record) part
            yield Stat(STAGE, "fixed_text")
        yield item


def _records(task: ReadTask, settings: CorpusSettings, work_dir: str) -> Iterator:
    if task.corpus == "mustc":
        return mustc.read(task, settings.splits[task.split])
    if task.corpus == "covost":
        return covost.read(task, settings.splits)
    locale = settings.locales[task.lang]
    return fleurs.read(task, settings.splits[task.split], locale, work_dir)
