"""What a `simulforge` command prints: its own lines on the console, other libraries' only from
WARNING, and all of it at INFO in a curate run's log file under its work dir.

Verbosity: -q shows warnings and errors only; the default adds simulforge's INFO lines; -v adds
every library's INFO lines (what a run printed before this module existed); -vv adds simulforge's
DEBUG. A logger that a caller turned to DEBUG by name (or a parent of it: `openai` for
`openai._base_client`) is shown whatever the verbosity.

`echo` prints a line of the command's own narrative on stdout and keeps it in the log file. While
a live progress display is on the terminal, console records and echoed lines clear it, print, and
redraw it (`pause_while_printing`).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2
OURS = "simulforge"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Beam warns at import that optional GCP client libraries are absent; they are optional here.
ABSENT = ("apitools not found", "No module named google.cloud.bigquery_storage_v1")
# Warnings Beam gives every run of a profile, about nothing this project uses (kept in the log file):
# direct-mp's workers have no staging folder for registered schemas or logical types.
HARMLESS = ("No semi_persistent_directory found",)

_pause: Callable[[], contextlib.AbstractContextManager] | None = None
_verbosity = NORMAL
_file: str | None = None  # the log file `to_file` is writing


def _ours(name: str) -> bool:
    return name == OURS or name.startswith(OURS + ".")


class _ConsoleFilter(logging.Filter):
    def __init__(self, verbosity: int):
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "echoed", False) or any(text in record.getMessage() for text in ABSENT + HARMLESS):
            return False
        if self.verbosity <= QUIET:
            threshold = logging.WARNING
        elif _ours(record.name):
            threshold = logging.DEBUG if self.verbosity >= DEBUG else logging.INFO
        else:
            threshold = logging.INFO if self.verbosity >= VERBOSE else logging.WARNING
        if record.levelno >= threshold:
            return True
        asked = _asked_level(record.name)  # the logger, or a parent of it, turned to DEBUG by name
        return logging.NOTSET < asked < logging.INFO and record.levelno >= asked


def _asked_level(name: str) -> int:
    """The level set on the logger `name` or its nearest parent below the root (NOTSET: none)."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None and logger is not logging.root:
        if logger.level:
            return logger.level
        logger = logger.parent
    return logging.NOTSET


class _Console(logging.StreamHandler):
    """stderr as it is at each record (a test's capture replaces it), below any live display."""

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        with paused():
            super().emit(record)


class _Short(logging.Formatter):
    """simulforge's INFO lines bare; everything else with its level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        if _ours(record.name) and record.levelno == logging.INFO:
            return record.getMessage()
        return f"{record.levelname} {record.name}: {super().format(record)}"


class _Pending(logging.handlers.MemoryHandler):
    """Records from before the log file is opened (it is opened once the run's checks pass, so a
    refused run leaves nothing in the work dir)."""

    def __init__(self):
        super().__init__(capacity=100_000, flushLevel=logging.CRITICAL + 1, target=None, flushOnClose=False)

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.buffer) < self.capacity:  # a run that never opens its file keeps no more than this
            super().emit(record)


def setup(verbosity: int = NORMAL, keep: bool = False) -> None:
    """Console logging for a `simulforge` command (replacing console handlers already on the root
    logger, so that nothing prints twice); `keep`: records are also kept for a log file (`to_file`)."""
    global _verbosity
    _verbosity = verbosity
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Console | _Pending) or (
                type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout)):
            root.removeHandler(handler)
    console = _Console()
    console.setFormatter(_Short("%(message)s"))
    console.addFilter(_ConsoleFilter(verbosity))
    root.addHandler(console)
    if keep:
        root.addHandler(_Pending())
    root.setLevel(logging.INFO)
    logging.getLogger(OURS).setLevel(logging.DEBUG if verbosity >= DEBUG else logging.INFO)
    logging.captureWarnings(True)


def quiet() -> bool:
    return _verbosity <= QUIET


@contextlib.contextmanager
def to_file(path: str | None) -> Iterator[str | None]:
    """Every record at INFO and above (and the echoed lines) into `path` while the block runs,
    starting with those kept since `setup`; None: no file. A remote `path` (a bucket work dir) is
    written to a local temporary file, uploaded when the block ends."""
    if path is None:
        yield None
        return
    remote = "://" in path  # as transforms.files.is_local, without importing Beam before `setup` filters its warnings
    if remote:
        fd, local = tempfile.mkstemp(prefix="simulforge-", suffix=".log")
        os.close(fd)
    else:
        local = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(local, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    handler.addFilter(lambda record: not any(text in record.getMessage() for text in ABSENT))
    root = logging.getLogger()
    for pending in [h for h in root.handlers if isinstance(h, _Pending)]:
        pending.setTarget(handler)
        pending.flush()
        root.removeHandler(pending)
    root.addHandler(handler)
    global _file
    _file = local
    try:
        yield path
    finally:
        _file = None
        root.removeHandler(handler)
        handler.close()
        if remote:
            _upload(local, path)


def _upload(local: str, path: str) -> None:
    from ..transforms import files

    try:
        with open(local, "rb") as src, files.open_write(path) as out:
            out.write(src.read())
    except Exception as e:  # noqa: BLE001 (the run's outcome stands; its log is what is lost)
        logging.getLogger(OURS).warning("the log could not be copied to %s (%s); it stays in %s", path, e, local)
        return
    os.remove(local)


@contextlib.contextmanager
def raw_stderr_to_file() -> Iterator[None]:
    """While the block runs, what is written straight to this process's stderr (file descriptor 2) goes
    to the log file: Beam's worker subprocesses (`direct-mp`) inherit it and log every start-up step
    there. sys.stderr, and so the console log and the progress display, stays on the terminal. Not
    with -v, without a log file, or when stderr is no file descriptor (a test's capture)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if _file is None or _verbosity >= VERBOSE or fd != 2:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    console = open(os.dup(saved), "w", buffering=1, encoding=sys.stderr.encoding,
                   errors=sys.stderr.errors or "backslashreplace")
    target = os.open(_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    previous, sys.stderr = sys.stderr, console
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        console.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = previous
        console.close()


_echo_log = logging.getLogger("simulforge.echo")


def echo(text: str = "") -> None:
    """A line of the command's own output: on stdout (not with -q), and in the log file."""
    _echo_log.info(text, extra={"echoed": True})
    if not quiet():
        with paused():
            print(text, flush=True)


def pause_while_printing(pause: Callable[[], contextlib.AbstractContextManager] | None) -> None:
    """Register the live display's `paused` (None: no display)."""
    global _pause
    _pause = pause


def paused() -> contextlib.AbstractContextManager:
    return _pause() if _pause is not None else contextlib.nullcontext()
