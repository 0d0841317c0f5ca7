"""Cheap "data versions" of the runs in a store, so cache keys change when a run lands.

A scan lists ``runs/`` and stats each ``manifest.json`` (one directory listing plus one
stat per run). A run's stamp is its manifest's mtime and size; for a run whose manifest
says ``running`` it also covers its chunk files (count and newest mtime), so partial
leaderboards refresh while a sweep writes. Finished runs cost one stat per scan. The
global stamp hashes every run's stamp: it keys the queries that span runs.
"""

from __future__ import annotations

import hashlib
import os

import orjson
import pyarrow.fs as pafs

from tradpal_ray.errors import TradpalError
from tradpal_ray.runs import RunStore
from tradpal_ray.storage import open_filesystem


def digest(data: bytes) -> str:
    """A short, stable hex digest (cache-key material)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class RunVersions:
    """Scans a store's runs into ``(global stamp, {run_id: stamp})``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._fs, base = open_filesystem(root)
        self._runs_dir = f"{base}/runs"
        self._results = RunStore(root)
        self._status: dict[str, tuple[int, str]] = {}
        """run_id -> (manifest mtime_ns, status) of the last manifest read."""

    def scan(self) -> tuple[str, dict[str, str]]:
        """The current stamps; raises StoreError/OSError if the store cannot be listed."""
        listing = self._fs.get_file_info(pafs.FileSelector(self._runs_dir, allow_not_found=True))
        runs = sorted(info.base_name for info in listing if info.type == pafs.FileType.Directory)
        infos = self._fs.get_file_info([f"{self._runs_dir}/{run}/manifest.json" for run in runs])
        stamps: dict[str, str] = {}
        for run, info in zip(runs, infos):
            if info.type != pafs.FileType.File:
                continue
            mtime = info.mtime_ns or 0
            stamp = f"{mtime:x}.{info.size:x}"
            if self._status_of(run, mtime) == "running":
                stamp += self._chunks_stamp(run)
            stamps[run] = digest(stamp.encode())
        self._status = {run: self._status[run] for run in stamps if run in self._status}
        return digest(orjson.dumps(stamps, option=orjson.OPT_SORT_KEYS)), stamps

    def _status_of(self, run: str, mtime: int) -> str:
        known = self._status.get(run)
        if known is None or known[0] != mtime:
            try:
                status = self._results.manifest(run).status
            except TradpalError:
                status = "unreadable"
            known = self._status[run] = (mtime, status)
        return known[1]

    def _chunks_stamp(self, run: str) -> str:
        selector = pafs.FileSelector(f"{self._runs_dir}/{run}/results", recursive=True, allow_not_found=True)
        files = [info for info in self._fs.get_file_info(selector) if info.type == pafs.FileType.File]
        return f".{len(files):x}.{max((f.mtime_ns or 0 for f in files), default=0):x}"
