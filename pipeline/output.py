"""The output folder: whose it is, one run at a time, and a swap that never leaves it unloadable.

A build folder carries `.simulforge-build`, listing every file the build wrote. `curate` refuses
a non-empty folder without it before doing any work, replaces a build only when asked
(`overwrite`), and never deletes a file the marker does not list.

A run holds `.simulforge.lock` for its whole length (an flock on local disks, so a lock left by a
killed run is seen to be stale) and writes into a staging folder of its own. Publishing is a swap
whose commit point is one atomic rename, the card's:

1. a journal names the staging folder and the old and new file lists;
2. the new shards move in beside the old ones. Shard names carry their build id
   (`<split>-NNNNN-of-MMMMM-<build>.parquet`) and the card's `data_files` name that id, so the old
   card still loads exactly the old shards;
3. README.md is replaced: from here on `datasets.load_dataset(out, config)` loads the new build;
4. stats, rejects, plots and the marker follow; the old build's files are deleted; the journal goes.

A run that finds a journal first finishes that swap (the card already names the new build) or
rolls it back (it does not), so a kill at any moment leaves the old or the new build loadable.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..settings import ConfigError
from ..transforms import files
from ..transforms.publish import parse_shard
from . import card

MARKER = ".simulforge-build"
LOCK = ".simulforge.lock"
JOURNAL = ".simulforge-swap.json"
STAGING = ".simulforge-staging-"
CARD = "README.md"
TMP = ".tmp-"  # a file being written, renamed over its target when whole
# Written last in a swap, in this order: the card first (the commit point), the marker last.
SIDE_FILES = ("stats.json", "rejected.jsonl")


class OutputError(ConfigError):
    """The output folder cannot be used for this run; nothing has been done yet."""


def _is_transient(name: str) -> bool:
    """Entries of a run in progress (or of a killed one), not of a build."""
    return name in (LOCK, JOURNAL) or name.startswith((STAGING, JOURNAL + TMP))


# -- Listing, moving and removing, on local disks and object stores ------------------------------


def walk(root: str) -> list[str]:
    """Relative paths of the files under `root`, sorted; [] if it does not exist."""
    if files.is_local(root):
        out = []
        for top, dirs, names in os.walk(root):
            dirs.sort()
            out += [os.path.relpath(os.path.join(top, n), root).replace(os.sep, "/") for n in names]
        return sorted(out)
    from apache_beam.io.filesystems import FileSystems

    base = root.rstrip("/") + "/"
    matched = FileSystems.match([base + "**"])[0].metadata_list
    return sorted(m.path[len(base):] for m in matched)


def _top_level(root: str) -> list[str]:
    if files.is_local(root):
        return sorted(os.listdir(root)) if os.path.isdir(root) else []
    return sorted({p.split("/", 1)[0] for p in walk(root)})


def _move(src: str, dst: str) -> None:
    if files.is_local(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    files.rename(src, dst)


def discard(path: str) -> None:
    """A file, or a folder with everything in it; nothing if absent."""
    if files.is_local(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    from apache_beam.io.filesystems import FileSystems

    found = [m.path for r in FileSystems.match([path.rstrip("/") + "/**", path]) for m in r.metadata_list]
    if found:
        FileSystems.delete(found)


def _prune_empty_dirs(root: str, relative: list[str]) -> None:
    """Remove the folders of `relative` paths that are left empty (local disks; stores have none)."""
    if not files.is_local(root):
        return
    for folder in sorted({posixpath.dirname(p) for p in relative if "/" in p}, key=len, reverse=True):
        while folder:
            try:
                os.rmdir(os.path.join(root, folder))
            except OSError:
                break
            folder = posixpath.dirname(folder)


def _write_json(path: str, data: dict) -> None:
    """Written whole or not at all: a temporary file renamed over the target."""
    tmp = f"{path}{TMP}{uuid.uuid4().hex[:8]}"
    with files.open_write(tmp) as f:
        f.write((json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        if files.is_local(tmp):
            f.flush()
            os.fsync(f.fileno())
    files.rename(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        data = json.loads(files.read_bytes(path))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- What is in the folder ---------------------------------------------------------------------


@dataclass
class Build:
    """A build in an output folder: its id and the files it wrote (relative paths)."""

    build: str
    files: list[str]


def write_marker(staging: str, build: str, written: list[str]) -> Build:
    """The marker of the build in `staging`, listing `written` and itself."""
    from .. import __version__

    listed = sorted({*written, MARKER})
    _write_json(files.join(staging, MARKER), {"format": 1, "simulforge": __version__, "build": build,
                                              "files": listed})
    return Build(build, listed)


def _card_build(output: str) -> str | None:
    """The build id the card in `output` names, or None."""
    try:
        head = card.front_matter(files.read_bytes(files.join(output, CARD)).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return (head.get("simulforge") or {}).get("build")


def current_build(output: str) -> Build | None:
    """The build `output` holds, from its marker; a folder written before markers existed is
    recognised by its card's simulforge block and stats.json's run block."""
    if not files.exists(output):
        return None
    data = _read_json(files.join(output, MARKER))
    if data and data.get("build") and isinstance(data.get("files"), list):
        return Build(data["build"], [str(p) for p in data["files"]])
    build = _card_build(output)
    stats = _read_json(files.join(output, "stats.json"))
    if not build or not stats or "run" not in stats:
        return None
    present = walk(output)
    legacy = [p for p in present if p in (CARD, *SIDE_FILES) or p.startswith("plots/")
              or (p.count("/") == 2 and parse_shard(p) is not None and p.startswith("data/"))]
    return Build(build, legacy)


def _describe(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_target(output: str, *, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a file, cannot be written, is someone else's
    folder, or is a build that `overwrite` does not allow us to replace."""
    if files.is_local(output):
        check_writable(output, "output")
    entries = [n for n in _top_level(output) if not _is_transient(n)]
    if not entries:
        return
    build = current_build(output)
    if build is None:
        raise OutputError(
            f"output: {output} is not empty and is not a simulforge build ({_describe(entries)}); "
            "choose an empty or new folder: simulforge replaces only folders it wrote")
    if not overwrite:
        raise OutputError(f"output: {output} already holds build {build.build}; pass --overwrite "
                          "(or --set overwrite=true) to replace it")


def check_writable(path: str, what: str) -> None:
    """A local folder we will write into is a folder, or can be made one, and we may write there.
    Nothing is created: the nearest existing folder is asked."""
    if not files.is_local(path):
        return
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{what}: {path} is a file, not a folder")
    parent = os.path.abspath(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"{what}: cannot create {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: {path} cannot be written (no write permission on {parent})")


# -- One run at a time ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """`.simulforge.lock` in the output folder, held for the whole run.

    On a local disk it is an flock, released by the kernel when its holder dies, so a lock file
    left by a killed run is recognised as stale and taken over (and reported). On an object store
    there is no flock: a lock object left by a run that is not alive on this host is reported and
    must be removed by hand, since a run on another machine may still hold it."""

    def __init__(self, output: str, echo: Callable[[str], None] = print):
        self.output, self.echo = output, echo
        self.path = files.join(output, LOCK)
        self._fd: int | None = None
        self.created_output = False

    def __enter__(self) -> Lock:
        try:
            if files.is_local(self.output):
                self.created_output = not os.path.exists(self.output)
                os.makedirs(self.output, exist_ok=True)
                self._lock_local()
            else:
                self._lock_remote()
        except OSError as e:  # e.g. a read-only file system, which permissions do not show
            raise OutputError(f"output: {self.output} cannot be written ({e.strerror or e})") from None
        return self

    def _info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _holder(self, info: dict | None) -> str:
        if not info:
            return "another run"
        return f"a run (pid {info.get('pid')} on {info.get('host')}, started {info.get('started')})"

    def _lock_local(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise OutputError(f"output: {self.output} is being written by {self._holder(_read_json(self.path))}; "
                                  "wait for it to finish or choose another output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its last holder removed while we waited for it
                break
            os.close(fd)
        previous = os.read(fd, 4096)
        if previous.strip():
            try:
                stale = json.loads(previous)
            except ValueError:
                stale = None
            self.echo(f"found a stale lock left by {self._holder(stale)}, which is no longer running; taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._info()).encode(), 0)
        self._fd = fd

    def _lock_remote(self) -> None:
        info = _read_json(self.path) if files.exists(self.path) else None
        if info is not None or files.exists(self.path):
            mine = info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
            if not (mine and not _alive(info["pid"])):
                raise OutputError(f"output: {self.output} is locked by {self._holder(info)}; if that run is no "
                                  f"longer running, delete {self.path}")
            self.echo(f"found a stale lock left by {self._holder(info)}, which is no longer running; taking it over")
        _write_json(self.path, self._info())

    def __exit__(self, *exc) -> None:
        discard(self.path)  # removed before it is released, so no one locks a file about to vanish
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.created_output and files.is_local(self.output):
            try:
                os.rmdir(self.output)  # a run that failed before publishing leaves no empty folder behind
            except OSError:
                pass


# -- Staging and the swap ----------------------------------------------------------------------


def new_staging(output: str) -> str:
    return files.join(output, f"{STAGING}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")


def recover(output: str, echo: Callable[[str], None] = print) -> None:
    """Under the lock, before a run: finish or roll back a swap a killed run left half done, and
    remove the staging folders of runs that died."""
    journal = _read_json(files.join(output, JOURNAL)) if files.exists(files.join(output, JOURNAL)) else None
    if journal is not None:
        staging = files.join(output, journal["staging"])
        if _card_build(output) == journal["build"]:
            echo(f"finishing the swap to build {journal['build']} that an interrupted run left half done")
            _finish(output, staging, journal)
        else:
            echo(f"rolling back the swap to build {journal['build']} that an interrupted run left half done")
            old = set(journal["old"])
            moved = [p for p in journal["new"] if p.startswith("data/") and p not in old]
            for p in moved:
                discard(files.join(output, p))
            _prune_empty_dirs(output, moved)
            discard(files.join(output, JOURNAL))
    for name in _top_level(output):
        if name.startswith((STAGING, JOURNAL + TMP)):
            echo(f"removing {name}, left by a run that did not finish")
            discard(files.join(output, name))


def promote(staging: str, output: str, build: Build, echo: Callable[[str], None] = print) -> None:
    """Swap the build in `staging` (whose marker is `build`) into `output`; see the module doc."""
    old = current_build(output)
    journal = {"staging": staging.rstrip("/").rsplit("/", 1)[-1], "build": build.build,
               "old": old.files if old else [], "new": build.files}
    _write_json(files.join(output, JOURNAL), journal)
    for p in build.files:  # the shards, beside the old build's; the old card does not name them
        if p.startswith("data/"):
            _move(files.join(staging, p), files.join(output, p))
    _move(files.join(staging, CARD), files.join(output, CARD))  # the commit point
    _finish(output, staging, journal)
    echo(f"published build {build.build} in {output}")


def _finish(output: str, staging: str, journal: dict) -> None:
    """Everything after the commit point; safe to run again after a kill at any step."""
    for p in journal["new"]:
        if p == MARKER:
            continue
        src = files.join(staging, p)
        if files.exists(src):
            _move(src, files.join(output, p))
    new = set(journal["new"])
    gone = [p for p in journal["old"] if p not in new and p != MARKER]
    for p in gone:
        discard(files.join(output, p))
    _prune_empty_dirs(output, gone)
    src = files.join(staging, MARKER)
    if files.exists(src):
        _move(src, files.join(output, MARKER))
    discard(staging)
    discard(files.join(output, JOURNAL))
