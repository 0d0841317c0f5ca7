"""Durable feed-status snapshots: ``<store>/feeds/<feed name>.json``, one per feed actor.

Feed actors write their ``status()`` here every few seconds so that the stats service can
report feed health even when Redis and the actors themselves are gone. orjson only.
"""

from __future__ import annotations

import os
import re
from typing import Any

import orjson
import pyarrow.fs as pafs

from tradpal_ray.storage import open_filesystem, write_atomic

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class FeedStatusStore:
    """Write and read the latest status snapshot of each feed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._fs, base = open_filesystem(root)
        self._base = f"{base}/feeds"

    def write(self, name: str, status: dict[str, Any]) -> None:
        """Replace feed ``name``'s snapshot (atomically)."""
        self._fs.create_dir(self._base, recursive=True)
        data = orjson.dumps({**status, "name": name}, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        write_atomic(self._fs, f"{self._base}/{_SAFE.sub('_', name)}.json", lambda out: out.write(data))

    def read_all(self) -> list[dict[str, Any]]:
        """Every feed's latest snapshot, by name; unreadable snapshots are skipped."""
        selector = pafs.FileSelector(self._base, allow_not_found=True)
        snapshots = []
        for info in self._fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or info.base_name.startswith("."):
                continue
            try:
                with self._fs.open_input_stream(info.path) as stream:
                    snapshots.append(orjson.loads(stream.read()))
            except (OSError, orjson.JSONDecodeError):
                continue
        return sorted(snapshots, key=lambda s: str(s.get("name")))
