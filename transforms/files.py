"""File access through Beam's filesystems, so the same code reads local disks, gs://, s3://, hdfs://."""

from __future__ import annotations

import os
import posixpath
import threading
import types
from typing import Any, BinaryIO

from apache_beam.io.filesystems import FileSystems


def is_local(path: str) -> bool:
    return "://" not in path


def join(base: str, *parts: str) -> str:
    return os.path.join(base, *parts) if is_local(base) else FileSystems.join(base, *parts)


def exists(path: str) -> bool:
    """A file or a folder. An object store has no folders: one exists while an object lies under it."""
    if is_local(path):
        return os.path.exists(path)
    if FileSystems.exists(path):
        return True
    found = FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list
    return bool(found)


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


def _s3_writes_empty_objects() -> None:
    """Beam 2.77's S3 writer completes a multipart upload with no part for a 0-byte file, which S3 refuses
    (MalformedXML), so every empty file (an empty rejects file, a shard Beam pads with) fails the run.
    One empty part is valid (the last part may be of any size). Loaded on workers by --beam_plugins."""
    try:
        from apache_beam.io.aws.s3io import S3Uploader
    except ImportError:  # no boto3: no s3:// paths
        return
    finish = S3Uploader.finish
    if getattr(finish, "writes_empty", False):
        return

    def finish_with_a_part(self):
        if not self.parts and not self.buffer:
            self._write_to_s3(b"")
        finish(self)

    finish_with_a_part.writes_empty = True
    S3Uploader.finish = finish_with_a_part


def _s3_clients_shared() -> None:
    """Beam 2.77 makes a new boto3 session and client for every S3 call (an open, an exists), about
    0.1 CPU s each, which made a bucket run cost ~12x a local one. A boto3 client is thread-safe, so
    one per set of connection options serves every call of a process."""
    try:
        import boto3
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:  # no boto3: no s3:// paths
        return
    if getattr(boto3_client.boto3, "shared_clients", None) is not None:
        return
    clients: dict[tuple, Any] = {}
    lock = threading.Lock()

    class SharedSessions:
        """What boto3_client.Client calls as `boto3.session.Session()`: its `client` is shared."""

        def client(self, **kwargs):
            key = tuple(sorted(kwargs.items()))
            with lock:
                if key not in clients:
                    clients[key] = boto3.session.Session().client(**kwargs)
                return clients[key]

    class Boto3:  # the module as boto3_client sees it
        session = types.SimpleNamespace(Session=SharedSessions)
        shared_clients = clients

    boto3_client.boto3 = Boto3


_s3_writes_empty_objects()
_s3_clients_shared()


def upload_tree(local: str, dest: str, last: str | None = None) -> None:
    """Copy the files under the local folder `local` to `dest` (any filesystem); `last` (a relative
    path) is written after all the others, so that its presence says the copy is whole."""
    names = sorted(os.path.relpath(os.path.join(top, n), local).replace(os.sep, "/")
                   for top, _, found in os.walk(local) for n in found)
    for name in sorted(names, key=lambda n: n == last):
        with open(os.path.join(local, name), "rb") as src, open_write(join(dest, *name.split("/"))) as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
