"""File access through Beam's filesystems, so the same code reads local disks, gs://, s3://, hdfs://."""

from __future__ import annotations

import os
import posixpath
from typing import BinaryIO

from apache_beam.io.filesystems import FileSystems


def is_local(path: str) -> bool:
    return "://" not in path


def join(base: str, *parts: str) -> str:
    return os.path.join(base, *parts) if is_local(base) else FileSystems.join(base, *parts)


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else FileSystems.exists(path)


def open_read(path: str) -> BinaryIO:
    return open(path, "rb") if is_local(path) else FileSystems.open(path)


def open_write(path: str) -> BinaryIO:
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "wb")
    return FileSystems.create(path)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def within(root: str, relative: str) -> str | None:
    """`root/relative` if it stays inside `root`, else None (absolute paths, `..`, empty names)."""
    if not relative or relative.startswith(("/", "\\")) or "\\" in relative or "://" in relative:
        return None
    norm = posixpath.normpath(relative)
    if norm == "." or norm == ".." or norm.startswith("../"):
        return None
    return join(root, *norm.split("/"))


def rename(src: str, dst: str) -> None:
    if is_local(src):
        os.replace(src, dst)
    else:
        FileSystems.rename([src], [dst])
