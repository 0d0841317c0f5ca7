"""Filesystem plumbing shared by the candle store and the results store.

Both live under one store root that is a local path or any pyarrow filesystem URI
(``s3://bucket/prefix``); both publish files atomically so a killed writer never leaves a
partial file where readers look: :func:`write_atomic` replaces a file (hidden temp name, then
move), :func:`publish_new` creates a new immutable file without any rename on object stores.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs

from tradpal_ray.errors import StoreError
from tradpal_ray.log import redact

TEMP_PREFIX = ".tmp-"
"""Readers skip names starting with this (or any dot)."""


def absolute(uri_or_path: str | os.PathLike[str]) -> str:
    """``uri_or_path`` as the driver means it: URIs (``s3://...``) as they are, local paths
    absolute (``~`` expanded). Call on the driver: a relative path resolved later, inside a
    Ray worker or replica, would name a directory of that process's working directory."""
    location = os.fspath(uri_or_path)
    if "://" in location:
        return location
    return os.path.abspath(os.path.expanduser(location))


def open_filesystem(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and base path of a store root (path or URI)."""
    root = os.fspath(root)
    try:
        if "://" in root:
            fs, base = pafs.FileSystem.from_uri(root)
        else:
            fs, base = pafs.LocalFileSystem(), absolute(root)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StoreError(f"cannot open store {redact(root)!r}: {redact(str(exc))}") from exc
    return fs, base.rstrip("/")


def write_atomic(fs: pafs.FileSystem, path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Publish ``path`` all at once: ``write(stream)`` fills a hidden temp file that is then moved over it."""
    directory = path.rsplit("/", 1)[0]
    temp = f"{directory}/{TEMP_PREFIX}{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(temp) as out:
            write(out)
        fs.move(temp, path)
    except BaseException as exc:
        delete_quietly(fs, temp)
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write {path}: {exc}") from exc
        raise


def delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    """Delete ``path`` if it exists; a missing file is not an error."""
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass


def publish_new(fs: pafs.FileSystem, path: str, data: pa.Buffer) -> None:
    """Create the new, never replaced file ``path`` holding ``data``: all of it or nothing, durably.

    On a local disk: a hidden temp file, fsync, rename to ``path``, fsync of the directory, so
    the file survives a power cut once this returns. On an object store: one upload, which
    the store makes visible only when complete (a rename there would be a copy). ``path``
    must be unique (callers name files by write id), so nothing is ever overwritten.
    """
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            _publish_local(path, data)
        else:
            with fs.open_output_stream(path) as out:
                out.write(data)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc}") from exc


def _publish_local(path: str, data: pa.Buffer) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(temp, "xb") as out:
            out.write(memoryview(data))
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
