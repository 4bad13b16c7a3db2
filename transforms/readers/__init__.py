"""One reader per corpus, each a short module from the publisher's layout to join parts.

A reader module has `CORPUS` (its name in configs and record ids), `TITLE` and `CITATION` (for
the dataset card), `plan(root, langs, settings)` listing the files to read (on the driver) and
`read(task, settings, work_dir)` turning one file into `(join key, Utterance | Translation)`
parts and `Reject`s (on the workers); `settings` is its `corpus.<name>` block.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import files
from ..records import Stat
from . import covost, fleurs, mustc
from .common import STAGE, CorpusSettings, ReadTask

__all__ = ["CORPORA", "STAGE", "CorpusSettings", "ReadTask", "plan", "read_task"]

CORPORA = {reader.CORPUS: reader for reader in (mustc, covost, fleurs)}


def plan(name: str, root: str, settings: CorpusSettings, langs: list[str]) -> tuple[list[ReadTask], list[str]]:
    """Read tasks for corpus `name` under `root`, and the requested languages it does not have."""
    if not files.exists(root):
        raise FileNotFoundError(f"{name}: corpus folder {root} does not exist")
    return CORPORA[name].plan(root, langs, settings)


def read_task(task: ReadTask, settings: CorpusSettings, work_dir: str) -> Iterator:
    """The records of one file of a corpus, and a `fixed_text` count per record whose text was mended."""
    for item in CORPORA[task.corpus].read(task, settings, work_dir):
        if isinstance(item, tuple) and item[1].fixes:  # a (join key, record) part
            yield Stat(STAGE, "fixed_text")
        yield item
