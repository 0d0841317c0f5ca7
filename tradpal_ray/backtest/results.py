"""Results store: one directory per sweep run under ``<store>/runs/<run_id>/``.

::

    runs/<run_id>/manifest.json                         what was asked and how it went
    runs/<run_id>/results/<symbol>/chunk-00007.parquet  one file per (symbol, chunk of combinations)
    runs/<run_id>/detail/<result_id>/{trades,equity}.parquet   the best results in full

Chunk files have deterministic names and are published atomically, so a retried task or a
resumed run rewrites the same file with the same rows: never a duplicate, never a loss.
The manifest is written by the driver only. JSON is orjson; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import tradpal_ray
from tradpal_ray.errors import ConfigError, StoreError
from tradpal_ray.market.store import encode_key
from tradpal_ray.storage import open_filesystem, write_atomic

RUN_STATUSES = ("running", "complete", "partial", "failed")
HEADLINE_STATS = {
    "trades": "trades", "return_pct": "return %", "max_drawdown_pct": "max dd %",
    "win_rate_pct": "win %", "sharpe": "sharpe",
}
"""The statistics that summaries (CLI tables, reports) show, with their column headers."""
RUN_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$"
"""What :func:`new_run_id` makes: ``<strategy>-<YYYYmmddTHHMMSS>-<6 hex>`` (never ``..`` or a path)."""
RESULT_ID_PATTERN = r"^[0-9a-f]{16}$"
"""What :func:`result_id` makes: 16 hex digits."""
_RUN_ID = re.compile(RUN_ID_PATTERN)
_RESULT_ID = re.compile(RESULT_ID_PATTERN)
_CHUNK = re.compile(r"^chunk-(\d+)\.parquet$")


@dataclass
class RunManifest:
    """Everything needed to reproduce, resume or describe a sweep run."""

    run_id: str
    strategy: str
    grid: dict[str, list[Any]]
    symbols: list[str]
    source: str
    """``store`` or the data file the bars came from."""
    exchange: str | None = None
    timeframe: str | None = None
    since: str | None = None
    until: str | None = None
    costs: dict[str, Any] = field(default_factory=dict)
    metric: str = "sharpe"
    combos: int = 0
    chunk_size: int = 0
    samples: int | None = None
    seed: int = 0
    status: str = "running"
    errors: dict[str, str] = field(default_factory=dict)
    """Symbols that failed, with their error; the other symbols' results stand."""
    error: str | None = None
    """Why the whole run stopped early (an unexpected error, Ctrl-C), when status is "failed" for that."""
    results: int = 0
    code_version: str = field(default_factory=lambda: code_version())
    created_at: str = field(default_factory=lambda: _now())
    updated_at: str = field(default_factory=lambda: _now())

    def to_json(self) -> bytes:
        """orjson bytes of the manifest."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> RunManifest:
        """Parse a manifest; unknown keys from newer versions are ignored."""
        raw = orjson.loads(data)
        return cls(**{key: value for key, value in raw.items() if key in cls.__dataclass_fields__})


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(tradpal_ray.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{tradpal_ray.__version__}+{commit}" if commit else tradpal_ray.__version__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def result_id(symbol: str, params: dict[str, Any]) -> str:
    """Stable id of one (symbol, parameters) result: the same inputs give the same id in every run."""
    key = orjson.dumps({"symbol": symbol, "params": params}, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def params_label(params: str) -> str:
    """A stored params JSON as a label: ``'{"fast":10,"slow":30}'`` -> ``'fast=10 slow=30'``."""
    return " ".join(f"{key}={value}" for key, value in orjson.loads(params).items())


def new_run_id(strategy: str) -> str:
    """A sortable, readable run id: ``<strategy>-<UTC time>-<random>`` (:data:`RUN_ID_PATTERN`)."""
    run_id = f"{strategy}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.urandom(3).hex()}"
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"strategy name {strategy!r} cannot start a run id: use letters, digits, '_', '.' and '-'")
    return run_id


class ResultStore:
    """Read and write sweep runs under ``<root>/runs`` (a path or a pyarrow URI)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._fs, base = open_filesystem(root)
        self._base = f"{base}/runs"

    def __repr__(self) -> str:
        return f"ResultStore({self.root!r})"

    def _run_dir(self, run_id: str) -> str:
        if not _RUN_ID.match(run_id):
            raise ConfigError(f"unknown run {run_id!r}: run ids look like <strategy>-<YYYYmmddTHHMMSS>-<6 hex digits>")
        return f"{self._base}/{run_id}"

    def _detail_dir(self, run_id: str, rid: str) -> str:
        if not _RESULT_ID.match(rid):
            raise ConfigError(f"no result {rid!r}: result ids are 16 hex digits")
        return f"{self._run_dir(run_id)}/detail/{rid}"

    # ------------------------------------------------------------ manifests
    def write_manifest(self, manifest: RunManifest) -> None:
        """Create or replace a run's manifest (driver only)."""
        if manifest.status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {manifest.status!r}")
        manifest.updated_at = _now()
        run_dir = self._run_dir(manifest.run_id)
        self._fs.create_dir(run_dir, recursive=True)
        data = manifest.to_json()
        write_atomic(self._fs, f"{run_dir}/manifest.json", lambda out: out.write(data))

    def manifest(self, run_id: str) -> RunManifest:
        """The manifest of ``run_id``; ConfigError if there is no such run."""
        path = f"{self._run_dir(run_id)}/manifest.json"
        try:
            with self._fs.open_input_stream(path) as stream:
                return RunManifest.from_json(stream.read())
        except FileNotFoundError:
            raise ConfigError(f"unknown run {run_id!r} in {self.root}") from None
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise StoreError(f"corrupt manifest {path}: {exc}") from exc

    def runs(self) -> list[RunManifest]:
        """Every run's manifest, newest first; a run with a corrupt manifest is skipped."""
        selector = pafs.FileSelector(self._base, allow_not_found=True)
        manifests = []
        for info in self._fs.get_file_info(selector):
            if info.type == pafs.FileType.Directory and _RUN_ID.match(info.base_name):
                try:
                    manifests.append(self.manifest(info.base_name))
                except (ConfigError, StoreError):
                    continue
        return sorted(manifests, key=lambda m: m.created_at, reverse=True)

    # ------------------------------------------------------------- results
    def chunk_path(self, run_id: str, symbol: str, chunk: int) -> str:
        """Where the rows of one (symbol, chunk) live."""
        return f"{self._run_dir(run_id)}/results/{encode_key(symbol)}/chunk-{chunk:05d}.parquet"

    def write_chunk(self, run_id: str, symbol: str, chunk: int, table: pa.Table) -> None:
        """Publish one chunk's rows atomically; writing it again replaces it (idempotent)."""
        path = self.chunk_path(run_id, symbol, chunk)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        write_atomic(self._fs, path, lambda out: pq.write_table(table, out, compression="zstd"))

    def done_chunks(self, run_id: str) -> set[tuple[str, int]]:
        """(symbol directory key, chunk) pairs already written: what a resume can skip."""
        selector = pafs.FileSelector(f"{self._run_dir(run_id)}/results", recursive=True, allow_not_found=True)
        done = set()
        for info in self._fs.get_file_info(selector):
            match = _CHUNK.match(info.base_name)
            if info.type == pafs.FileType.File and match:
                done.add((info.path.rsplit("/", 2)[-2], int(match.group(1))))
        return done

    def results(self, run_id: str, symbol: str | None = None) -> pd.DataFrame:
        """All result rows of a run (or one symbol), in (symbol, chunk, combination) order."""
        root = f"{self._run_dir(run_id)}/results"
        if symbol is not None:
            root = f"{root}/{encode_key(symbol)}"
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        paths = sorted(
            info.path for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File and _CHUNK.match(info.base_name)
        )
        tables = []
        for path in paths:
            try:
                tables.append(pq.read_table(path, filesystem=self._fs))
            except (pa.ArrowInvalid, OSError) as exc:
                raise StoreError(f"corrupt result file {path}: {exc}") from exc
        if not tables:
            return pd.DataFrame()
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    # -------------------------------------------------------------- details
    def write_detail(self, run_id: str, rid: str, trades: pd.DataFrame, equity: pd.Series) -> None:
        """Keep one result's trades and equity curve (for the stats service and reports)."""
        base = self._detail_dir(run_id, rid)
        self._fs.create_dir(base, recursive=True)
        equity_table = pa.table({"time": equity.index, "equity": equity.to_numpy()})
        trades_table = pa.Table.from_pandas(trades, preserve_index=False)
        write_atomic(self._fs, f"{base}/equity.parquet", lambda out: pq.write_table(equity_table, out))
        write_atomic(self._fs, f"{base}/trades.parquet", lambda out: pq.write_table(trades_table, out))

    def detail(self, run_id: str, rid: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(trades, equity) of a kept result; ConfigError if it was not kept."""
        base = self._detail_dir(run_id, rid)
        try:
            trades = pq.read_table(f"{base}/trades.parquet", filesystem=self._fs).to_pandas()
            equity = pq.read_table(f"{base}/equity.parquet", filesystem=self._fs).to_pandas()
        except FileNotFoundError:
            raise ConfigError(f"no detail kept for result {rid!r} of run {run_id!r}") from None
        return trades, equity
