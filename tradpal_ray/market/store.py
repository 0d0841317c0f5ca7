"""Durable candle store: a hive-partitioned Parquet dataset on any pyarrow filesystem.

Layout under ``<root>/candles`` (root is a local path or a URI such as ``s3://bucket/prefix``
or ``file:///data``; all I/O goes through :mod:`pyarrow.fs`)::

    exchange=binance/timeframe=1m/symbol=BTC-USDT/period=2024-01/<write id>-<token>.parquet

* ``symbol`` is made path-safe reversibly (``/`` -> ``-``, ``-`` -> ``%2D``, other unsafe
  characters percent-encoded); see :func:`encode_key` / :func:`decode_key`.
* ``period`` is a month for 1m and 5m (at most 44,640 rows per file) and a year for the
  longer timeframes, so an upsert or a compaction only touches the period it writes.
* Files are immutable and uniquely named. A write adds one new file per period it touches,
  named by a *write id*: a 64-bit number above every write id already in those periods and
  near the wall clock in ns (a hybrid logical clock; low bits random), so a write that
  starts after another has returned always gets the higher id. Every row carries its
  write id (column ``write_id``). A read merges a period's files keeping, per open time,
  the row with the highest write id: the later write wins, whatever order files are listed.
* Compaction merges a period's files into one (rows keep their write ids; it is named by
  the highest of them), publishes it, and only then deletes exactly the files it merged.
  A file is therefore deleted only once its rows are visible in another file, and files
  written meanwhile are never touched. Partitions are compacted by writers once they hold
  more than ``compact_after`` files, and on demand by :meth:`CandleStore.compact`.
* Publishing (:func:`tradpal_ray.storage.publish_new`) is atomic: on a local disk a hidden
  ``.tmp-*`` file is fsynced and renamed into place (readers skip hidden names; compaction
  removes temps older than :data:`STALE_TEMP_S`); on an object store the upload itself
  becomes visible all at once. A write that spans several periods is atomic per period;
  repeating it is harmless (upserts are idempotent).

Concurrency contract: any number of processes, on any number of machines, may write,
compact and read any series at the same time, on a local path or an object store, with
no lock: a write that returned is durable and visible to every later read, and a later
write of the same candle wins. Readers that race a compaction re-list and retry. Two
writes of the same candle that overlap in time are ordered by write id (either may win).

A corrupt file fails only its own series: reading that series raises :class:`StoreError`
naming the file (relative to the store root), and :meth:`CandleStore.series` lists the
series with the problem instead of failing the whole listing.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tradpal_ray.errors import DataError, StoreError
from tradpal_ray.log import get_logger, redact
from tradpal_ray.market.schema import (
    CANDLE_SCHEMA,
    OHLCV_COLUMNS,
    candles_frame,
    timeframe_ms,
    to_ms,
    validate_ohlcv,
)
from tradpal_ray.storage import (
    TEMP_PREFIX,
    delete_quietly,
    open_filesystem,
    publish_new,
)

log = get_logger(__name__)

_KEY_COLUMNS = ("exchange", "symbol", "timeframe")
WRITE_ID = "write_id"
_DATA_COLUMNS = ["open_time", *OHLCV_COLUMNS]
_FILE_SCHEMA = pa.schema(
    [*(CANDLE_SCHEMA.field(name) for name in _DATA_COLUMNS), pa.field(WRITE_ID, pa.int64(), nullable=False)]
)
"""What a data file holds; the series key lives in the path (and the file's metadata)."""

WRITE_OPTIONS: dict[str, object] = {
    # Measured on 1M 1m candles (best of 3): pyarrow defaults (snappy, dictionary) 29.7 MB,
    # write 208 ms, read 72 ms (full schema); zstd + delta-encoded times 17.9 MB, write
    # 149 ms, read 26 ms. Byte-stream-split floats were faster but 50% larger.
    "compression": "zstd",
    "use_dictionary": False,
    "column_encoding": {"open_time": "DELTA_BINARY_PACKED", WRITE_ID: "DELTA_BINARY_PACKED"},
    "row_group_size": 1 << 16,
}
"""``pyarrow.parquet.write_table`` settings of every data file (a file is one row group)."""
_FILE_NAME = re.compile(r"^(\d{19})-[0-9a-f]{16}\.parquet$")
_LEGACY_NAME = re.compile(r"^\d{1,18}-(\d{1,18})\.parquet$")
"""Files of stores written before write ids: ``<lo>-<hi>.parquet``, every row of write id ``hi``."""
_PERIOD = re.compile(r"^\d{4}(-\d{2})?$")
_MONTHLY_ABOVE_ROWS_PER_YEAR = 50_000
_READ_RETRIES = 20
_ID_RANDOM_BITS = 16
STALE_TEMP_S = 600.0
"""Compaction deletes a local ``.tmp-*`` file only when it is older than this (a live writer's
temp exists for milliseconds; one this old was left by a killed writer)."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Gap:
    """Missing open times ``[start_ms, end_ms)``: ``count`` candles from ``start_ms`` on."""

    start_ms: int
    end_ms: int
    count: int


@dataclass(frozen=True)
class SeriesInfo:
    """Coverage of one stored series: distinct candles and first/last open time (ms).

    ``problem`` names the unreadable file(s) of a damaged series; its counts then cover the
    readable periods only (first/last are None when none is readable).
    """

    exchange: str
    symbol: str
    timeframe: str
    rows: int
    first_ms: int | None
    last_ms: int | None
    problem: str | None = None


@dataclass(frozen=True)
class SeriesCoverage:
    """One series' coverage and its gaps (none for a damaged series: ``info.problem`` says why)."""

    info: SeriesInfo
    gaps: tuple[Gap, ...] = ()


def encode_key(value: str) -> str:
    """A path-safe, reversible form of an exchange, symbol or timeframe (``BTC/USDT`` -> ``BTC-USDT``)."""
    if not value:
        raise DataError("empty exchange, symbol or timeframe")
    encoded = "-".join(quote(part, safe="").replace("-", "%2D") for part in value.split("/"))
    if encoded[0] in "._":  # hidden names are skipped by readers (ours and pyarrow.dataset)
        encoded = f"%{ord(encoded[0]):02X}{encoded[1:]}"
    return encoded


def decode_key(encoded: str) -> str:
    """Inverse of :func:`encode_key`."""
    return "/".join(unquote(part) for part in encoded.split("-"))


def next_write_id(newest: int, now_ns: int | None = None) -> int:
    """A write id above ``newest`` (the highest id already in the periods written) and near ``now_ns``.

    The low :data:`_ID_RANDOM_BITS` bits are random, so two writers that start in the same
    tick with the same listing almost never share an id.
    """
    now = time.time_ns() if now_ns is None else now_ns
    tick = max(now >> _ID_RANDOM_BITS, (newest >> _ID_RANDOM_BITS) + 1)
    return (tick << _ID_RANDOM_BITS) | secrets.randbits(_ID_RANDOM_BITS)


@dataclass(frozen=True)
class _File:
    path: str
    write_id: int
    """The highest write id of its rows (for a legacy file: every row's)."""
    legacy: bool = False
    """Written before write ids: no ``write_id`` column."""


@dataclass
class _Partition:
    """The files of one period directory: data files, temps ``(path, mtime s)``, stray files."""

    path: str
    files: list[_File] = field(default_factory=list)
    temps: list[tuple[str, float]] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)

    def ordered(self) -> list[_File]:
        """Data files by write id (ties by name), the order merges break ties in."""
        return sorted(self.files, key=lambda f: (f.write_id, f.path))


class CandleStore:
    """Upsert, read and inspect candle series in a Parquet dataset under ``<root>/candles``."""

    def __init__(self, root: str | os.PathLike[str], *, compact_after: int = 16) -> None:
        """Open (lazily create) the store at a local path or pyarrow filesystem URI."""
        root = os.fspath(root)
        self._fs, base = open_filesystem(root)
        self.root = root
        self.compact_after = max(1, compact_after)
        self._root_base = base
        self._base = f"{base}/candles"

    def __repr__(self) -> str:
        return f"CandleStore({redact(self.root)!r})"

    # ------------------------------------------------------------------ write
    def write(self, table: pa.Table) -> int:
        """Upsert :data:`CANDLE_SCHEMA` rows (any number of series); return rows stored.

        Per series the rows are sorted by time; duplicate open times within one batch keep
        the last row (as if written one after another). Every series is validated before
        anything is written, so a bad row (reported with its series, index after sorting
        and time) leaves the store unchanged. When this returns, the rows are durable and
        every later read sees them, whatever other writers and compactions do meanwhile.
        """
        batches = [self._prepare(key, rows) for key, rows in _split_series(_conform(table))]
        plans = [plan for key, rows in batches for plan in self._plan(key, rows)]
        self._map(lambda plan: self._publish(plan[1], plan[2]), plans)
        for part, _, _ in plans:  # best effort: the write has landed already
            if len(part.files) + 1 > self.compact_after:
                fresh = self._list(part.path.rsplit("/", 1)[0]).get(part.path.rsplit("=", 1)[1])
                if fresh is not None and len(fresh.files) > self.compact_after:
                    self._compact_quietly(fresh)
        total = sum(rows.num_rows for _, rows in batches)
        log.debug("store.write", series=len(batches), rows=total, files=len(plans))
        return total

    def _prepare(self, key: tuple[str, str, str], rows: pa.Table) -> tuple[tuple[str, str, str], pa.Table]:
        exchange, symbol, timeframe = key
        timeframe_ms(timeframe)
        if not (exchange and symbol):
            raise DataError(f"bad candle rows: empty exchange or symbol in {key}")
        t = _times(rows)
        if len(t) > 1 and not (np.diff(t) > 0).all():
            order = np.argsort(t, kind="stable")
            t = t[order]
            last = np.append(t[1:] != t[:-1], True)  # the last of equal times = the latest row
            rows = rows.take(order[last])
            t = t[last]
        cols = {name: rows.column(name).to_numpy() for name in OHLCV_COLUMNS}
        validate_ohlcv(t, cols, label=f"{exchange} {symbol} {timeframe}")
        return key, rows

    def _plan(self, key: tuple[str, str, str], rows: pa.Table) -> list[tuple[_Partition, str, pa.Table]]:
        """One new file per period the rows touch: (partition as listed, file path, rows with write ids)."""
        series_dir = self._series_dir(*key)
        listed = self._list(series_dir)
        periods = _periods(_times(rows), key[2])
        parts = [listed.get(label) or _Partition(f"{series_dir}/period={label}") for label, _, _ in periods]
        write_id = next_write_id(max((f.write_id for part in parts for f in part.files), default=0))
        name = _file_name(write_id)
        ids = pa.array(np.full(rows.num_rows, write_id, dtype=np.int64))
        rows = rows.append_column(_FILE_SCHEMA.field(WRITE_ID), ids).replace_schema_metadata(_metadata(key))
        return [(part, f"{part.path}/{name}", rows.slice(lo, hi - lo)) for part, (_, lo, hi) in zip(parts, periods)]

    def _publish(self, path: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **WRITE_OPTIONS)
        publish_new(self._fs, path, sink.getvalue())

    # ---------------------------------------------------------------- compact
    def compact(self, exchange: str | None = None, symbol: str | None = None, timeframe: str | None = None) -> int:
        """Merge each partition's files into one (optionally only matching series); return partitions rewritten.

        Safe while other processes write, compact and read the same series. Also removes
        temp files older than :data:`STALE_TEMP_S` left by killed writers. A partition whose
        files a concurrent compaction removed first is left to it; one with an unreadable
        file is left as it is (logged; its reads name the file).
        """
        done = 0
        for (ex, sym, tf), partitions in self._all_series().items():
            if (ex, sym, tf) == (exchange or ex, symbol or sym, timeframe or tf):
                done += sum(self._compact_quietly(part) for part in partitions.values())
        return done

    def _compact_quietly(self, part: _Partition) -> int:
        """:meth:`_compact_partition`, never an error: a race is left to the other compaction, damage is logged."""
        try:
            return self._compact_partition(part)
        except FileNotFoundError:
            log.debug("store.compact.raced", partition=self._relative(part.path))
        except StoreError as exc:
            log.warning("store.compact.failed", partition=self._relative(part.path), error=str(exc))
        return 0

    def _compact_partition(self, part: _Partition) -> int:
        """Merge ``part``'s listed files into one, publish it, then delete exactly those files.

        Raises FileNotFoundError (nothing published or deleted) if an input vanished first.
        """
        now = time.time()
        for path, mtime in part.temps:
            if now - mtime > STALE_TEMP_S:
                delete_quietly(self._fs, path)
        if len(part.files) < 2:
            return 0
        files = part.ordered()
        merged = _latest(self._map(lambda f: self._read_file(f, _DATA_COLUMNS, ids=True), files))
        self._publish(f"{part.path}/{_file_name(files[-1].write_id)}", merged.replace_schema_metadata(_metadata(_key_of(part.path))))
        for f in files:  # only now: every row of these files is visible in the merged one
            delete_quietly(self._fs, f.path)
        log.debug("store.compact", partition=self._relative(part.path), files_merged=len(files))
        return 1

    # ------------------------------------------------------------------- read
    def read(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: int | str | pd.Timestamp | None = None,
        end: int | str | pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Candles with open time in ``[start, end)`` as an OHLCV frame indexed by UTC time."""
        return candles_frame(self._read_series(exchange, symbol, timeframe, to_ms(start), to_ms(end), _DATA_COLUMNS))

    def read_table(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: int | str | pd.Timestamp | None = None,
        end: int | str | pd.Timestamp | None = None,
    ) -> pa.Table:
        """Candles with open time in ``[start, end)`` as a :data:`CANDLE_SCHEMA` table, sorted by time."""
        rows = self._read_series(exchange, symbol, timeframe, to_ms(start), to_ms(end), _DATA_COLUMNS)
        n = rows.num_rows
        keys = [pa.repeat(pa.scalar(value, pa.string()), n) for value in (exchange, symbol, timeframe)]
        return pa.Table.from_arrays([*keys, *rows.columns], schema=CANDLE_SCHEMA)

    def last_open_time(self, exchange: str, symbol: str, timeframe: str) -> int | None:
        """Open time (ms) of the newest stored candle of the series, or None if it is empty."""
        def newest(partitions: dict[str, _Partition]) -> int | None:
            if not partitions:
                return None
            part = partitions[max(partitions)]
            _raise_strays(part, self._relative)
            return max(self._footer(f.path)[2] for f in part.files)

        return self._retrying(self._series_dir(exchange, symbol, timeframe), newest)

    def gaps(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: int | str | pd.Timestamp | None = None,
        end: int | str | pd.Timestamp | None = None,
    ) -> list[Gap]:
        """Missing open times as ``[start_ms, end_ms)`` ranges.

        Without a range: between the first and last stored candle. With ``start``/``end``:
        every candle slot of ``[start, end)`` (aligned to the timeframe) that is not stored.
        """
        step = timeframe_ms(timeframe)
        lo, hi = to_ms(start), to_ms(end)
        t = _times(self._read_series(exchange, symbol, timeframe, lo, hi, ["open_time"]))
        phase = int(t[0]) % step if len(t) else 0
        slots = t
        if lo is not None:
            slots = np.insert(slots, 0, _align_up(lo, step, phase) - step)
        if hi is not None:
            slots = np.append(slots, _align_up(hi, step, phase))
        if len(slots) < 2:
            return []
        missing = np.diff(slots) // step - 1
        where = np.flatnonzero(missing > 0)
        return [Gap(int(slots[i] + step), int(slots[i + 1]), int(missing[i])) for i in where]

    def series(self) -> list[SeriesInfo]:
        """Every stored series with its distinct row count and first/last open time (ms).

        Reads only Parquet footers, except in partitions awaiting compaction. A series with
        an unreadable file is listed with ``problem`` set; the other series are unaffected.
        """
        listing = sorted(self._all_series().items())
        jobs = [(key, part) for key, partitions in listing for _, part in sorted(partitions.items())]
        found = self._map(lambda job: _outcome(lambda: self._coverage(job[1])), jobs)
        per_series: dict[tuple[str, str, str], list[tuple[int, int, int] | Exception]] = defaultdict(list)
        for (key, _), outcome in zip(jobs, found):
            per_series[key].append(outcome)
        out = []
        for key, outcomes in per_series.items():
            if any(isinstance(o, FileNotFoundError) for o in outcomes):  # raced a compaction: list again
                outcomes = self._retrying(self._series_dir(*key), lambda partitions: [
                    _outcome(lambda part=part: self._coverage(part)) for _, part in sorted(partitions.items())
                ])
            out.append(_series_info(key, outcomes))
        return out

    def coverage(self) -> list[SeriesCoverage]:
        """:meth:`series` with each readable series' gaps; a series that fails to read is listed with its problem."""
        out = []
        for info in self.series():
            if info.problem is None:
                try:
                    out.append(SeriesCoverage(info, tuple(self.gaps(info.exchange, info.symbol, info.timeframe))))
                    continue
                except StoreError as exc:  # damaged after the listing
                    info = dataclasses.replace(info, problem=str(exc))
            out.append(SeriesCoverage(info))
        return out

    def problems(self) -> list[str]:
        """One line per damaged series naming its unreadable file(s); empty when every series reads.

        For a readiness check: costs what :meth:`series` costs (Parquet footers).
        """
        return [f"{s.exchange} {s.symbol} {s.timeframe}: {s.problem}" for s in self.series() if s.problem]

    def _coverage(self, part: _Partition) -> tuple[int, int, int]:
        """(distinct rows, first ms, last ms) of one partition."""
        _raise_strays(part, self._relative)
        if len(part.files) == 1:
            return self._footer(part.files[0].path)
        t = np.unique(np.concatenate([_times(self._read_file(f, ["open_time"], ids=False)) for f in part.files]))
        return len(t), int(t[0]), int(t[-1])

    # --------------------------------------------------------------- internal
    def _series_dir(self, exchange: str, symbol: str, timeframe: str) -> str:
        return (
            f"{self._base}/exchange={encode_key(exchange)}"
            f"/timeframe={encode_key(timeframe)}/symbol={encode_key(symbol)}"
        )

    def _relative(self, path: str) -> str:
        """``path`` relative to the store root: what messages show (the root may hold credentials)."""
        return path[len(self._root_base) + 1 :] if path.startswith(f"{self._root_base}/") else path

    def _retrying(self, series_dir: str, fn: Callable[[dict[str, _Partition]], R]) -> R:
        """``fn(partitions of the series)``, listing again whenever a compaction removed a listed file."""
        for _ in range(_READ_RETRIES):
            try:
                return fn(self._list(series_dir))
            except FileNotFoundError as exc:
                vanished = exc
        raise StoreError(f"files under {self._relative(series_dir)} kept vanishing while reading: {vanished}")

    def _read_series(
        self, exchange: str, symbol: str, timeframe: str, start: int | None, end: int | None, columns: list[str]
    ) -> pa.Table:
        """Sorted, de-duplicated rows of one series in [start, end); lists only its directory."""
        return self._retrying(
            self._series_dir(exchange, symbol, timeframe),
            lambda partitions: self._read_listed(partitions, start, end, columns),
        )

    def _read_listed(
        self, partitions: dict[str, _Partition], start: int | None, end: int | None, columns: list[str]
    ) -> pa.Table:
        chosen = []
        for label in sorted(partitions):
            p_start, p_end = _period_range(label)
            if (end is None or p_start < end) and (start is None or p_end > start):
                part = partitions[label]
                _raise_strays(part, self._relative)
                chosen.append((p_start, p_end, part.ordered()))
        jobs = [(f, len(files) > 1) for _, _, files in chosen for f in files]
        tables = iter(self._map(lambda job: self._read_file(job[0], columns, ids=job[1]), jobs))
        pieces = []
        for p_start, p_end, files in chosen:
            part = _latest([next(tables) for _ in files]).drop_columns([WRITE_ID]) if len(files) > 1 else next(tables)
            if (start is not None and start > p_start) or (end is not None and end < p_end):
                t = _times(part)
                i0 = 0 if start is None else int(np.searchsorted(t, start))
                i1 = len(t) if end is None else int(np.searchsorted(t, end))
                part = part.slice(i0, i1 - i0)
            pieces.append(part)
        if pieces:
            return pa.concat_tables(pieces)
        return pa.schema([_FILE_SCHEMA.field(c) for c in columns]).empty_table()

    def _read_file(self, f: _File, columns: list[str], *, ids: bool) -> pa.Table:
        """``columns`` of one data file, plus ``write_id`` per row when ``ids`` (from the name for legacy files).

        FileNotFoundError when it vanished (a compaction removed it); StoreError naming it when
        it cannot be read.
        """
        wanted = [*columns, WRITE_ID] if ids and not f.legacy else columns
        try:
            with self._fs.open_input_file(f.path) as source:
                table = pq.read_table(source, columns=wanted, use_threads=False)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            self._raise_unreadable(f.path, exc)
        if table.column_names != wanted or not all(
            table.schema.field(c).type == _FILE_SCHEMA.field(c).type for c in wanted
        ):
            raise StoreError(f"candle file {self._relative(f.path)} has an unexpected schema: {table.schema}")
        table = table.replace_schema_metadata(None)
        if ids and f.legacy:
            table = table.append_column(_FILE_SCHEMA.field(WRITE_ID), pa.array(np.full(table.num_rows, f.write_id, dtype=np.int64)))
        return table

    def _footer(self, path: str) -> tuple[int, int, int]:
        """(rows, first ms, last ms) of one file from its Parquet footer alone."""
        try:
            with self._fs.open_input_file(path) as source:
                meta = pq.ParquetFile(source).metadata
            stats = [meta.row_group(i).column(0).statistics for i in range(meta.num_row_groups)]
            if meta.num_rows == 0 or not all(s is not None and s.has_min_max for s in stats):
                raise ValueError("no open_time statistics")
            return meta.num_rows, min(s.min_raw for s in stats), max(s.max_raw for s in stats)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            self._raise_unreadable(path, exc)

    def _raise_unreadable(self, path: str, exc: Exception) -> NoReturn:
        """FileNotFoundError if ``path`` is gone (an object store says so only on the next call), else StoreError."""
        try:
            gone = self._fs.get_file_info(path).type == pafs.FileType.NotFound
        except OSError:
            gone = False
        if gone:
            raise FileNotFoundError(path) from exc
        reason = str(exc).replace(f"{self._root_base}/", "")
        raise StoreError(f"corrupt or unreadable candle file {self._relative(path)}: {reason}") from exc

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(x) for x in items]``, on I/O threads when there is more than one item."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        return list(_io_pool(os.getpid()).map(fn, items))

    def _list(self, series_dir: str) -> dict[str, _Partition]:
        """Partitions of one series by period label (only periods holding data or stray files)."""
        return {label: p for label, p in self._scan(series_dir, depth=0).get((), {}).items() if p.files or p.strays}

    def _all_series(self) -> dict[tuple[str, str, str], dict[str, _Partition]]:
        """Partitions of every series in the store, keyed by (exchange, symbol, timeframe)."""
        out = {}
        for dirs, partitions in self._scan(self._base, depth=3).items():
            exchange, timeframe, symbol = (decode_key(d.partition("=")[2]) for d in dirs)
            out[(exchange, symbol, timeframe)] = partitions
        return out

    def _scan(self, root: str, depth: int) -> dict[tuple[str, ...], dict[str, _Partition]]:
        """One recursive listing of ``root`` grouped as ``{series dirs: {period: _Partition}}``.

        ``depth`` is the number of series directory levels below ``root`` (3 from the
        store base, 0 from a series directory). A file that is not where data files go is
        logged and skipped; one inside a period directory is kept as a stray of that period
        (which then fails to read, naming it).
        """
        for attempt in range(_READ_RETRIES):
            try:
                infos = self._fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
                break
            except FileNotFoundError as exc:  # a directory below vanished while it was listed (a compaction)
                if attempt == _READ_RETRIES - 1:
                    raise StoreError(f"cannot list {self._relative(root)}: it kept changing: {exc}") from exc
            except OSError as exc:
                raise StoreError(f"cannot list {self._relative(root)}: {exc}") from exc
        found: dict[tuple[str, ...], dict[str, _Partition]] = defaultdict(dict)
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            parts = info.path[len(root) + 1 :].split("/")
            name = parts[-1]
            key, label = parts[depth].partition("=")[::2] if len(parts) == depth + 2 else ("", "")
            if key != "period" or not _PERIOD.match(label):
                if not name.startswith((".", "_")):
                    log.debug("store.stray_file", path=self._relative(info.path))
                continue
            dirs = tuple(parts[:depth])
            part = found[dirs].get(label)
            if part is None:
                part = found[dirs][label] = _Partition(info.path.rsplit("/", 1)[0])
            if match := _FILE_NAME.match(name):
                part.files.append(_File(info.path, int(match[1])))
            elif match := _LEGACY_NAME.match(name):
                part.files.append(_File(info.path, int(match[1]), legacy=True))
            elif name.startswith(TEMP_PREFIX):
                part.temps.append((info.path, info.mtime.timestamp() if info.mtime else 0.0))
            elif not name.startswith((".", "_")):
                part.strays.append(info.path)
        return dict(found)


# --------------------------------------------------------------------- helpers
def _conform(table: pa.Table) -> pa.Table:
    """The table with exactly CANDLE_SCHEMA's columns and types, without nulls."""
    if not isinstance(table, pa.Table):
        raise DataError(f"write() takes a pyarrow Table (see candles_table), not {type(table).__name__}")
    missing = [name for name in CANDLE_SCHEMA.names if name not in table.column_names]
    if missing:
        raise DataError(f"candle table lacks column(s) {', '.join(missing)}")
    table = table.select(CANDLE_SCHEMA.names)
    for name in CANDLE_SCHEMA.names:
        column = table.column(name)
        if column.null_count:
            row = int(np.argmax(pc.is_null(column).to_numpy(zero_copy_only=False)))
            raise DataError(f"bad candle row {row}: {name} is null")
    if not table.schema.equals(CANDLE_SCHEMA):
        try:
            table = table.cast(CANDLE_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise DataError(f"candle table does not match CANDLE_SCHEMA: {exc}") from exc
    return table


def _split_series(table: pa.Table) -> list[tuple[tuple[str, str, str], pa.Table]]:
    """``[(exchange, symbol, timeframe), rows (open_time + OHLCV)]`` per series, rows in input order."""
    if table.num_rows == 0:
        return []
    data = table.select(_DATA_COLUMNS).combine_chunks()
    code = np.zeros(table.num_rows, dtype=np.int64)
    keys: list[Callable[[int], str]] = []
    for name in _KEY_COLUMNS:
        column = table.column(name)
        first = column[0].as_py()
        if pc.all(pc.equal(column, first)).as_py():  # cheaper than hashing, and the usual case
            keys.append(lambda _row, value=first: value)
            continue
        encoded = pc.dictionary_encode(column).combine_chunks()
        keys.append(lambda row, column=column: column[row].as_py())
        code = code * len(encoded.dictionary) + encoded.indices.to_numpy(zero_copy_only=False)
    starts = np.append(0, np.flatnonzero(code[1:] != code[:-1]) + 1)
    if len(np.unique(code[starts])) == len(starts):  # each series is one run of rows: slice
        runs = [(int(i), data.slice(i, j - i)) for i, j in zip(starts, np.append(starts[1:], len(code)))]
    else:
        order = np.argsort(code, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(code[order])) + 1)
        runs = [(int(rows[0]), data.take(rows)) for rows in groups]
    return [(tuple(key(first) for key in keys), rows) for first, rows in runs]


def _times(table: pa.Table) -> np.ndarray:
    """The open times of ``table`` as int64 ms (zero-copy when in one chunk)."""
    column = table.column("open_time")
    if column.num_chunks == 1:
        return column.chunk(0).view(pa.int64()).to_numpy()
    return column.combine_chunks().view(pa.int64()).to_numpy()


def _latest(tables: list[pa.Table]) -> pa.Table:
    """Concatenate per-file tables (with ``write_id``) keeping, per open time, the row of the highest write id.

    Files come in :meth:`_Partition.ordered` order and the sort is stable, so equal write ids
    resolve the same way in every reader. The result is sorted by open time.
    """
    table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()  # nullability may differ
    t = _times(table)
    order = np.lexsort((table.column(WRITE_ID).to_numpy(), t))
    ts = t[order]
    last = np.append(ts[1:] != ts[:-1], True)
    return table.take(order[last])


def _file_name(write_id: int) -> str:
    """A data file's unique name: its write id and a random token."""
    return f"{write_id:019d}-{secrets.token_hex(8)}.parquet"


def _outcome(fn: Callable[[], R]) -> R | Exception:
    """``fn()``, or the StoreError / FileNotFoundError it raised (so one series cannot fail a listing)."""
    try:
        return fn()
    except (StoreError, FileNotFoundError) as exc:
        return exc


def _series_info(key: tuple[str, str, str], outcomes: list[tuple[int, int, int] | Exception]) -> SeriesInfo:
    """Coverage of one series from its partitions' (rows, first, last) or errors, in period order."""
    good = [o for o in outcomes if not isinstance(o, Exception)]
    problems = "; ".join(str(o) for o in outcomes if isinstance(o, Exception))
    return SeriesInfo(
        *key, rows=sum(n for n, _, _ in good), first_ms=good[0][1] if good else None,
        last_ms=good[-1][2] if good else None, problem=problems or None,
    )


def _raise_strays(part: _Partition, relative: Callable[[str], str]) -> None:
    """StoreError naming a file in ``part`` that is neither a data file nor a temp file."""
    if part.strays:
        raise StoreError(f"unexpected file in the candle store: {', '.join(relative(p) for p in part.strays)}")


def _monthly(timeframe: str) -> bool:
    return 365 * 86_400_000 // timeframe_ms(timeframe) > _MONTHLY_ABOVE_ROWS_PER_YEAR


def _periods(t: np.ndarray, timeframe: str) -> list[tuple[str, int, int]]:
    """``(label, first row, end row)`` of each period spanned by the sorted times ``t``."""
    unit = "M" if _monthly(timeframe) else "Y"
    first, last = np.array([t[0], t[-1]], dtype="datetime64[ms]").astype(f"datetime64[{unit}]")
    periods = np.arange(first, last + 2)
    edges = np.searchsorted(t, periods.astype("datetime64[ms]").astype(np.int64))
    return [(str(p), int(i), int(j)) for p, i, j in zip(periods[:-1], edges[:-1], edges[1:]) if j > i]


def _period_range(label: str) -> tuple[int, int]:
    """``[start, end)`` in ms of a period label (``2024-01`` or ``2024``)."""
    start = np.datetime64(label)
    return int(start.astype("datetime64[ms]").astype(np.int64)), int(
        (start + 1).astype("datetime64[ms]").astype(np.int64)
    )


def _key_of(partition_path: str) -> tuple[str, str, str]:
    """(exchange, symbol, timeframe) of a partition directory."""
    parts = dict(p.partition("=")[::2] for p in partition_path.split("/")[-4:-1])
    exchange, symbol, timeframe = (decode_key(parts[name]) for name in _KEY_COLUMNS)
    return exchange, symbol, timeframe


def _metadata(key: tuple[str, str, str]) -> dict[str, str]:
    """Parquet key-value metadata naming a file's series, so a lone file describes itself."""
    return {f"tradpal.{name}": value for name, value in zip(_KEY_COLUMNS, key)}


@functools.cache
def _io_pool(pid: int) -> ThreadPoolExecutor:
    """A process-wide pool for file I/O (keyed by pid so a forked child makes its own)."""
    return ThreadPoolExecutor(max_workers=pa.io_thread_count(), thread_name_prefix=f"candle-store-{pid}")


def _align_up(value: int, step: int, phase: int) -> int:
    """The smallest ``phase + k * step`` that is >= ``value``."""
    return value + (phase - value) % step
