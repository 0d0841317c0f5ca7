"""The run store: one directory per run under ``<store>/runs/<run_id>/``.

::

    runs/<run_id>/manifest.json                         what was asked and how it went
    runs/<run_id>/results/<symbol>/chunk-00007.parquet  one file per (symbol, chunk of combinations)
    runs/<run_id>/returns/<symbol>/chunk-00007.arrow    the same chunk's daily returns (Arrow IPC: day, one column per result id)
    runs/<run_id>/returns.parquet                       every result's daily returns (rows: UTC days, columns: result ids)
    runs/<run_id>/detail/<result_id>/{trades,equity}.parquet   kept results in full
    runs/<run_id>/trials.parquet, study.journal          optimize runs: trials table, Optuna journal

Chunk files (and their returns parts, written first) have deterministic names and are published atomically, so a retried task or a
resumed run rewrites the same file with the same rows: never a duplicate, never a loss.
Each chunk file's Arrow metadata records the combinations it skipped (and why), so a
resumed run still counts them. JSON is orjson; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tradpal_ray.backtest.metrics import derive_metrics, metric_names
from tradpal_ray.backtest.sweep import rank
from tradpal_ray.errors import ConfigError, StoreError
from tradpal_ray.market.store import encode_key
from tradpal_ray.runs._manifest import (
    HEARTBEAT_SECONDS,
    RESULT_ID_PATTERN,
    RUN_ID_PATTERN,
    RUN_STATUSES,
    RunManifest,
    now,
)
from tradpal_ray.runs._schema import (
    EQUITY_SCHEMA,
    ID_COLUMNS,
    SCHEMA_VERSION,
    TRADES_SCHEMA,
    metric_type,
)
from tradpal_ray.storage import open_filesystem, write_atomic

RETURNS_DAY = pa.field("day", pa.timestamp("ns", tz="UTC"), nullable=False)
"""The row label of every returns table: the UTC day (midnight) a daily return ends on."""
RETURNS_BLOCK_CELLS = 1 << 24
"""Days x results of ``returns.parquet`` built at once (one row group, 128 MB of float64):
:meth:`RunStore.write_returns` never holds the whole matrix."""
RETURNS_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": False, "write_statistics": ["day"]}
"""Returns are distinct floats: no dictionary, no per-column statistics (their cost grows with the columns)."""
RETURNS_PART_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
"""Chunk parts are Arrow IPC files, LZ4-compressed: a tenth of Parquet's per-column cost to write and read."""

_CHUNK = re.compile(r"^chunk-(\d+)\.parquet$")
_RETURNS_PART = re.compile(r"^chunk-(\d+)\.arrow$")
_PATTERNS = {"results": _CHUNK, "returns": _RETURNS_PART}
_SKIPPED_KEY = b"tradpal.skipped"
_RUN_ID = re.compile(RUN_ID_PATTERN)
_RESULT_ID = re.compile(RESULT_ID_PATTERN)


def result_id(symbol: str, params: Mapping[str, object]) -> str:
    """Stable id of one (symbol, parameters) result: the same inputs give the same id in every run."""
    key = orjson.dumps({"symbol": symbol, "params": dict(params)}, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def check_run_id(run_id: str) -> str:
    """``run_id`` if it has the shape of one; ConfigError otherwise (it becomes a path component)."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ConfigError(f"unknown run {run_id!r}: run ids look like <strategy>-<YYYYmmddTHHMMSS>-<6 hex digits>")
    return run_id


def check_result_id(rid: str) -> str:
    """``rid`` if it is 16 hex digits; ConfigError otherwise."""
    if not isinstance(rid, str) or not _RESULT_ID.match(rid):
        raise ConfigError(f"no result {rid!r}: result ids are 16 hex digits")
    return rid


class RunStore:
    """Read and write runs under ``<root>/runs`` (a path or a pyarrow URI)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._fs, base = open_filesystem(root)
        self._base = f"{base}/runs"

    def __repr__(self) -> str:
        return f"RunStore({self.root!r})"

    def _run_dir(self, run_id: str) -> str:
        return f"{self._base}/{check_run_id(run_id)}"

    # ------------------------------------------------------------ manifests
    def write_manifest(self, manifest: RunManifest) -> None:
        """Create or replace a run's manifest (driver only)."""
        if manifest.status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {manifest.status!r}")
        manifest.updated_at = now()
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
            raise ConfigError(f"unknown run {run_id!r}") from None
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise StoreError(f"corrupt manifest of run {run_id}: {exc}") from exc

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

    def write_chunk(
        self, run_id: str, symbol: str, chunk: int, table: pa.Table, skipped: Mapping[str, int] | None = None
    ) -> None:
        """Publish one chunk's rows (and what it skipped) atomically; writing it again replaces it."""
        self._publish_chunk(self.chunk_path(run_id, symbol, chunk), table, skipped)

    def _publish_chunk(self, path: str, table: pa.Table, skipped: Mapping[str, int] | None, **options: Any) -> None:
        meta = dict(table.schema.metadata or {})
        meta[_SKIPPED_KEY] = orjson.dumps(dict(skipped or {}))
        meta[b"tradpal.schema_version"] = str(SCHEMA_VERSION).encode()
        table = table.replace_schema_metadata(meta)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        write_atomic(self._fs, path, lambda out: pq.write_table(table, out, **{"compression": "zstd", **options}))

    def returns_part_path(self, run_id: str, symbol: str, chunk: int) -> str:
        """Where the daily returns of one (symbol, chunk) live."""
        return f"{self._run_dir(run_id)}/returns/{encode_key(symbol)}/chunk-{chunk:05d}.arrow"

    def returns_path(self, run_id: str) -> str:
        """Where a finished run's returns matrix lives (absent for runs over the cap)."""
        return f"{self._run_dir(run_id)}/returns.parquet"

    def write_returns_part(self, run_id: str, symbol: str, chunk: int, days: pd.DatetimeIndex,
                           result_ids: list[str], returns: np.ndarray) -> None:
        """Publish one chunk's daily returns (``returns``: days x results, float64) atomically, as one write."""
        fields = [RETURNS_DAY] + [pa.field(rid, pa.float64()) for rid in result_ids]
        arrays = [pa.array(days.tz_convert("UTC") if days.tz else days.tz_localize("UTC"), RETURNS_DAY.type)]
        arrays += [pa.array(returns[:, j], pa.float64()) for j in range(returns.shape[1])]
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        path = self.returns_part_path(run_id, symbol, chunk)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)

        def write(out: Any) -> None:
            with pa.ipc.new_file(out, table.schema, options=RETURNS_PART_OPTIONS) as writer:
                writer.write_table(table)

        write_atomic(self._fs, path, write)

    def write_returns(self, run_id: str, exclude: Iterable[str] = ()) -> int:
        """Gather the returns parts (but ``exclude``'s symbols) into ``returns.parquet``; its column count.

        Rows are the union of the symbols' days (null where a symbol has no return that day),
        columns ``day`` then the result ids in results order. Built one row group of at most
        :data:`RETURNS_BLOCK_CELLS` at a time, so the driver never holds the whole matrix.
        """
        excluded = {encode_key(s) for s in exclude}
        parts = [info for info in self._files(run_id, "returns") if info.path.rsplit("/", 2)[-2] not in excluded]
        part_days = [self._read_part(run_id, info, ["day"]).column("day").to_numpy() for info in parts]
        days = np.unique(np.concatenate([np.empty(0, "datetime64[ns]"), *part_days]))
        names = [[name for name in self._part_schema(run_id, info).names if name != "day"] for info in parts]
        schema = pa.schema([RETURNS_DAY] + [pa.field(rid, pa.float64()) for group in names for rid in group])
        step = max(1, RETURNS_BLOCK_CELLS // max(len(schema) - 1, 1))

        def write(out: Any) -> None:
            with pq.ParquetWriter(out, schema, **RETURNS_WRITE_OPTIONS) as writer:
                for start in range(0, max(len(days), 1), step):
                    block = days[start:start + step]
                    matrix = np.full((len(schema) - 1, len(block)), np.nan)  # one row per result: columns contiguous
                    column = 0
                    for info, group, own in zip(parts, names, part_days, strict=True):
                        rows = np.flatnonzero((own >= block[0]) & (own <= block[-1])) if len(block) else own[:0]
                        if len(rows) and group:
                            part = self._read_part(run_id, info, group).slice(rows[0], len(rows))
                            at = np.searchsorted(block, own[rows])
                            for offset, values in enumerate(part.columns):
                                matrix[column + offset, at] = values.to_numpy()
                        column += len(group)
                    arrays = [pa.array(block, pa.timestamp("ns")).cast(RETURNS_DAY.type)]
                    arrays += [pa.array(values, pa.float64(), from_pandas=True) for values in matrix]
                    writer.write_table(pa.Table.from_arrays(arrays, schema=schema))

        write_atomic(self._fs, self.returns_path(run_id), write)
        return len(schema) - 1

    def returns(self, run_id: str, symbol: str | None = None, results: Iterable[str] | None = None) -> pd.DataFrame:
        """Daily returns, one column per result id, indexed by UTC ``day``.

        The whole run from ``returns.parquet`` (days a symbol has no bar are NaN), or one
        symbol's (its days only) from its chunk parts; ``results`` picks result ids.
        ConfigError when the run has no returns (older runs, or too large for one file:
        ask for one symbol).
        """
        wanted = None if results is None else set(results)
        if symbol is None:
            try:
                schema = pq.read_schema(self.returns_path(run_id), filesystem=self._fs)
                columns = None if wanted is None else ["day"] + [n for n in schema.names if n in wanted]
                table = pq.read_table(self.returns_path(run_id), columns=columns, filesystem=self._fs)
            except FileNotFoundError:
                raise ConfigError(f"run {run_id} has no returns.parquet (written before returns were kept, or over "
                                  "the size cap: read one symbol's returns)") from None
            except (pa.ArrowInvalid, OSError) as exc:
                raise StoreError(f"corrupt returns.parquet of run {run_id}: {exc}") from exc
            return table.to_pandas().set_index("day")
        parts = self._files(run_id, "returns", symbol)
        if not parts:
            raise ConfigError(f"run {run_id} kept no returns for {symbol!r}")
        names = [[n for n in self._part_schema(run_id, info).names if n != "day" and (wanted is None or n in wanted)]
                 for info in parts]
        days = self._read_part(run_id, parts[0], ["day"]).column("day")
        matrix = np.empty((len(days), sum(map(len, names))), order="F")  # filled column by column, no concat
        column = 0
        for info, group in zip(parts, names, strict=True):
            if group:
                for values in self._read_part(run_id, info, group).columns:
                    matrix[:, column] = values.to_numpy()
                    column += 1
        index = pd.DatetimeIndex(days.to_pandas(), name="day")
        return pd.DataFrame(matrix, index=index, columns=[n for group in names for n in group], copy=False)

    def _part_schema(self, run_id: str, info: pafs.FileInfo) -> pa.Schema:
        try:
            with self._fs.open_input_file(info.path) as source:
                return pa.ipc.open_file(source).schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"corrupt returns file {info.base_name} of run {run_id}: {exc}") from exc

    def _read_part(self, run_id: str, info: pafs.FileInfo, columns: list[str] | None = None) -> pa.Table:
        try:
            with self._fs.open_input_file(info.path) as source:
                table = pa.ipc.open_file(source).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"corrupt returns file {info.base_name} of run {run_id}: {exc}") from exc
        return table if columns is None else table.select(columns)

    def _chunk_files(self, run_id: str, symbol: str | None = None) -> list[pafs.FileInfo]:
        return self._files(run_id, "results", symbol)

    def _files(self, run_id: str, kind: str, symbol: str | None = None) -> list[pafs.FileInfo]:
        """The chunk files of ``kind`` (``results`` or ``returns``), in (symbol key, chunk) order."""
        root = f"{self._run_dir(run_id)}/{kind}"
        if symbol is not None:
            root = f"{root}/{encode_key(symbol)}"
        return self._chunk_files_under(root, _PATTERNS[kind])

    def _chunk_files_under(self, root: str, pattern: re.Pattern[str] = _CHUNK) -> list[pafs.FileInfo]:
        """Files under ``root`` whose names match ``pattern`` (results chunks by default), in path order."""
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        files = [i for i in self._fs.get_file_info(selector) if i.type == pafs.FileType.File and pattern.match(i.base_name)]
        return sorted(files, key=lambda i: i.path)

    def done_chunks(self, run_id: str) -> set[tuple[str, int]]:
        """(symbol directory key, chunk) pairs already written: what a resume can skip."""
        done = set()
        for info in self._chunk_files(run_id):
            match = _CHUNK.match(info.base_name)
            assert match is not None
            done.add((info.path.rsplit("/", 2)[-2], int(match.group(1))))
        return done

    def skipped(self, run_id: str) -> dict[str, int]:
        """Combinations the written chunks skipped, by reason (read from the files' metadata only)."""
        total: Counter[str] = Counter()
        for info in self._chunk_files(run_id):
            try:
                meta = pq.read_schema(info.path, filesystem=self._fs).metadata or {}
            except (pa.ArrowInvalid, OSError) as exc:
                raise StoreError(f"corrupt result file {info.base_name} of run {run_id}: {exc}") from exc
            total.update(orjson.loads(meta.get(_SKIPPED_KEY, b"{}")))
        return dict(total)

    def tables(self, run_id: str) -> Iterator[pa.Table]:
        """Each chunk file of a run as a typed table (with derived metrics), one at a time: bounded memory."""
        for info in self._chunk_files(run_id):
            yield _with_derived(_typed(self._read(run_id, info)))

    def row_count(self, run_id: str) -> dict[str, int]:
        """Result rows per symbol directory key, from the files' footers only."""
        counts: Counter[str] = Counter()
        for info in self._chunk_files(run_id):
            try:
                counts[info.path.rsplit("/", 2)[-2]] += pq.read_metadata(info.path, filesystem=self._fs).num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                raise StoreError(f"corrupt result file {info.base_name} of run {run_id}: {exc}") from exc
        return dict(counts)

    def top(self, run_id: str, by: str, n: int, *, per_symbol: bool = False, exclude: Iterable[str] = ()) -> pd.DataFrame:
        """The ``n`` best rows by metric ``by`` (of each symbol with ``per_symbol``), read chunk by chunk."""
        excluded = set(exclude)
        best: pd.DataFrame | None = None
        for table in self.tables(run_id):
            frame = table.to_pandas()
            frame = frame[~frame["symbol"].isin(excluded)] if excluded else frame
            merged = frame if best is None else pd.concat([best, frame], ignore_index=True)
            ranked = rank(merged, by)
            best = ranked.groupby("symbol", sort=False).head(n) if per_symbol else ranked.head(n)
        return rank(best, by).reset_index(drop=True) if best is not None else pd.DataFrame()

    def _read(self, run_id: str, info: pafs.FileInfo) -> pa.Table:
        try:
            return pq.read_table(info.path, filesystem=self._fs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"corrupt result file {info.base_name} of run {run_id}: {exc}") from exc

    def results_table(self, run_id: str, symbol: str | None = None) -> pa.Table:
        """All result rows of a run (or one symbol) as a typed Arrow table, in (symbol, chunk, combination) order.

        Runs written before typed results (one JSON ``params`` column) come back typed too,
        and every metric of the registry that can be derived from stored columns is added.
        """
        tables = [_typed(self._read(run_id, info)) for info in self._chunk_files(run_id, symbol)]
        if not tables:
            return pa.table({name: pa.array([], pa.string()) for name in ID_COLUMNS})
        return _with_derived(pa.concat_tables(tables, promote_options="default"))

    def results(self, run_id: str, symbol: str | None = None) -> pd.DataFrame:
        """:meth:`results_table` as pandas (int64 and float64 columns keep their types)."""
        return self.results_table(run_id, symbol).to_pandas()

    # ------------------------------------------------------- optimize runs
    def heartbeat(self, manifest: RunManifest, last: float) -> float:
        """Write ``manifest`` with a fresh heartbeat if the last one (``time.monotonic()``) is due; the time of the latest."""
        now = time.monotonic()
        if now - last < HEARTBEAT_SECONDS:
            return last
        manifest.beat()
        self.write_manifest(manifest)
        return now

    def local_path(self, run_id: str, name: str) -> str:
        """The local path of file ``name`` in a run's folder (created); ConfigError for a store that is not a local path.

        An optimize run keeps its Optuna journal there, which needs file locks and appends.
        """
        if not isinstance(self._fs, pafs.LocalFileSystem):
            raise ConfigError(f"optimize keeps its study in the run folder and needs a local store path, not {self.root!r}")
        run_dir = self._run_dir(run_id)
        self._fs.create_dir(run_dir, recursive=True)
        return f"{run_dir}/{name}"

    def write_trials(self, run_id: str, table: pa.Table) -> None:
        """Publish an optimize run's trials table (``trials.parquet``) atomically."""
        path = f"{self._run_dir(run_id)}/trials.parquet"
        write_atomic(self._fs, path, lambda out: pq.write_table(table, out, compression="zstd"))

    def trials(self, run_id: str) -> pd.DataFrame:
        """An optimize run's trials (one row per evaluated trial); ConfigError when it has none yet."""
        try:
            return pq.read_table(f"{self._run_dir(run_id)}/trials.parquet", filesystem=self._fs).to_pandas()
        except FileNotFoundError:
            raise ConfigError(f"run {run_id!r} has no trials table") from None

    # --------------------------------------------------------- walk-forward
    def fold_chunk_path(self, run_id: str, fold: int, chunk: int) -> str:
        """Where the in-sample rows of one (fold, chunk) unit of a walk-forward live."""
        return f"{self._run_dir(run_id)}/folds/fold-{fold:05d}/chunk-{chunk:05d}.parquet"

    def write_fold_chunk(self, run_id: str, fold: int, chunk: int, table: pa.Table,
                         skipped: Mapping[str, int] | None = None) -> None:
        """Publish one walk-forward unit's in-sample rows atomically (idempotent, as :meth:`write_chunk`).

        Written for speed (a fold's chunk is small and read whole: no compression, no column
        statistics, dictionaries for the repeated id strings only): there is one per fold.
        """
        self._publish_chunk(self.fold_chunk_path(run_id, fold, chunk), table, skipped, compression="none",
                            write_statistics=False, use_dictionary=list(ID_COLUMNS))

    def _fold_files(self, run_id: str, fold: int | None = None) -> list[pafs.FileInfo]:
        return self._chunk_files_under(f"{self._run_dir(run_id)}/folds" + ("" if fold is None else f"/fold-{fold:05d}"))

    def done_fold_chunks(self, run_id: str) -> set[tuple[int, int]]:
        """(fold, chunk) units of a walk-forward already written: what a resume skips."""
        done = set()
        for info in self._fold_files(run_id):
            fold = info.path.rsplit("/", 2)[-2].removeprefix("fold-")
            match = _CHUNK.match(info.base_name)
            assert match is not None
            done.add((int(fold), int(match.group(1))))
        return done

    def fold_results(self, run_id: str, fold: int) -> pd.DataFrame:
        """One fold's in-sample rows (typed, derived metrics added), in chunk and grid order."""
        tables = [_typed(self._read(run_id, info)) for info in self._fold_files(run_id, fold)]
        if not tables:
            return pd.DataFrame()
        return _with_derived(pa.concat_tables(tables, promote_options="default")).to_pandas()

    def write_walkforward(self, run_id: str, folds: pa.Table, equity: pa.Table, trades: pa.Table) -> None:
        """Publish a walk-forward's per-fold table, stitched out-of-sample equity and trades."""
        base = f"{self._run_dir(run_id)}/walkforward"
        self._fs.create_dir(base, recursive=True)
        for name, table in (("folds", folds), ("oos_equity", equity), ("oos_trades", trades)):
            write_atomic(self._fs, f"{base}/{name}.parquet", lambda out, t=table: pq.write_table(t, out))

    def walkforward(self, run_id: str) -> dict[str, pd.DataFrame]:
        """``{"folds", "oos_equity", "oos_trades"}`` of a finished walk-forward; ConfigError if there is none."""
        base = f"{self._run_dir(run_id)}/walkforward"
        try:
            return {name: pq.read_table(f"{base}/{name}.parquet", filesystem=self._fs).to_pandas()
                    for name in ("folds", "oos_equity", "oos_trades")}
        except FileNotFoundError:
            raise ConfigError(f"run {run_id!r} has no finished walk-forward") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"corrupt walk-forward tables of run {run_id}: {exc}") from exc

    # -------------------------------------------------------------- details
    def write_detail(self, run_id: str, rid: str, trades: pd.DataFrame, equity: pd.Series) -> None:
        """Keep one result's trades and equity curve (for the stats service and reports)."""
        base = f"{self._run_dir(run_id)}/detail/{check_result_id(rid)}"
        self._fs.create_dir(base, recursive=True)
        equity_table = pa.table({"time": equity.index, "equity": equity.to_numpy()}, schema=EQUITY_SCHEMA)
        frame = trades.assign(exit_reason=trades["exit_reason"].astype(str))
        trades_table = pa.Table.from_pandas(frame[TRADES_SCHEMA.names], schema=TRADES_SCHEMA, preserve_index=False)
        write_atomic(self._fs, f"{base}/equity.parquet", lambda out: pq.write_table(equity_table, out))
        write_atomic(self._fs, f"{base}/trades.parquet", lambda out: pq.write_table(trades_table, out))

    def detail(self, run_id: str, rid: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(trades, equity) of a kept result; ConfigError if it was not kept."""
        base = f"{self._run_dir(run_id)}/detail/{check_result_id(rid)}"
        try:
            trades = pq.read_table(f"{base}/trades.parquet", filesystem=self._fs).to_pandas()
            equity = pq.read_table(f"{base}/equity.parquet", filesystem=self._fs).to_pandas()
        except FileNotFoundError:
            raise ConfigError(f"no detail kept for result {rid!r} of run {run_id!r}") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"corrupt detail of result {rid} of run {run_id}: {exc}") from exc
        return trades, equity


def _typed(table: pa.Table) -> pa.Table:
    """A chunk table without file metadata; a version-1 one (parameters as one JSON string
    column ``params``) with one typed column per parameter."""
    table = table.replace_schema_metadata(None)
    if "params" not in table.column_names:
        return table
    params = [orjson.loads(text) for text in table.column("params").to_pylist()]
    names = list(params[0]) if params else []
    table = table.drop_columns(["params"])
    at = len(ID_COLUMNS)
    for offset, name in enumerate(names):
        values = [p.get(name) for p in params]
        kind = pa.float64() if any(isinstance(v, float) for v in values) else pa.int64()
        table = table.add_column(at + offset, pa.field(name, kind), pa.array(values, kind))
    return table


def _with_derived(table: pa.Table) -> pa.Table:
    """``table`` plus the registry's derived metrics it lacks (computed from its stored columns)."""
    stored = set(table.column_names)
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in metric_names() if name in stored}
    for name, values in derive_metrics(columns, skip_missing=True).items():
        if name not in stored:
            table = table.append_column(pa.field(name, metric_type(name)), pa.array(values, metric_type(name)))
    return table
