"""The statistics service: :class:`StatsQueries` behind the Redis cache, as encoded payloads.

Each public coroutine returns the bytes to send (orjson): from Redis on a hit, computed
from the stores (in a worker thread, never on the event loop) on a miss or when Redis is
unavailable. Keys carry a data version, so a new or updated run is visible within
``version_interval`` plus one scan (well under 1 s) without any invalidation message:

    tradpal:stats:<digest of the store root>:<kind>:<stamp>:<digest of the arguments>

Run-scoped kinds use the run's own stamp (a new run does not evict older runs' entries);
kinds spanning runs use the global stamp; candle coverage and feed status are not
versioned and rely on their (short) TTL. Tables the cache shares between queries (a
run's result rows, the recorded trades) are stored as Arrow IPC streams, conformed to the
schema the query layer declares; a cached table that does not fit it is a miss.
Errors meant for clients go through :meth:`StatsService.public_message` (no filesystem paths).

The live statistics (``live_*``) read the trade ledger (:mod:`tradpal_ray.stats._live`) and
are cached under ``tradpal:live:<digest of the ledger>:<kind>:<generation>:<digest of the
arguments>``: the ledger's writer bumps the generation on every change, so a new fill is
visible on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import pyarrow as pa

from tradpal_ray.errors import ConfigError, StoreError
from tradpal_ray.log import get_logger
from tradpal_ray.stats import _live
from tradpal_ray.stats.cache import RedisCache
from tradpal_ray.stats.metrics import CacheMetrics
from tradpal_ray.stats.queries import TRADES_SCHEMA, StatsQueries
from tradpal_ray.stats.versions import RunVersions, digest
from tradpal_ray.storage import open_filesystem
from tradpal_ray.trading import Ledger, ledger_exists, ledger_identity, open_ledger
from tradpal_ray.trading._changes import generation_key, live_prefix

log = get_logger(__name__)

DEFAULT_TTLS: dict[str, float] = {
    "runs": 60, "run": 600, "results": 600, "leaderboard": 600, "equity": 3600, "walkforward": 3600, "symbols": 300,
    "trades": 300, "trade_counts": 300, "trade_stats": 300, "coverage": 30, "feeds": 2,
    "live_counts": 60, "live_stats": 60, "live_traders": 60, "live_equity": 60,
}
"""Seconds per query kind. Versioned kinds can live long (a new version is a new key);
coverage and feeds have no version, so their TTL is how stale they may get. The live kinds
carry the ledger's generation; their TTL bounds staleness only if a writer could not reach Redis."""

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def encode_json(value: Any) -> bytes:
    """orjson bytes of a query result (NaN and infinities become null)."""
    return orjson.dumps(value, option=JSON_OPTIONS)


def encode_table(table: pa.Table) -> bytes:
    """An Arrow IPC stream of ``table``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_table(data: bytes) -> pa.Table:
    """Inverse of :func:`encode_table`; ArrowInvalid on bad bytes."""
    return pa.ipc.open_stream(data).read_all()


def valid_json(data: bytes) -> bool:
    """Whether ``data`` parses as JSON."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def schema_fits(actual: pa.Schema, expected: pa.Schema) -> bool:
    """Whether a table of schema ``actual`` has every column of ``expected`` with the same type.

    The one check a cached table passes before any query reads it: a value written by
    another version of the code (or by anyone with access to Redis) is a miss, not a 500.
    """
    return all(
        (index := actual.get_field_index(field.name)) >= 0 and actual.field(index).type == field.type
        for field in expected
    )


def conform_table(table: pa.Table, expected: pa.Schema) -> pa.Table:
    """``table`` with the columns of ``expected`` cast to their types (other columns kept as they are).

    A table without rows may lack columns (a run with no results yet): they are added empty.
    StoreError if rows lack a column or a value does not cast.
    """
    for field in expected:
        index = table.schema.get_field_index(field.name)
        if index < 0:
            if table.num_rows:
                raise StoreError(f"stored rows lack the column {field.name!r}")
            table = table.append_column(field, pa.array([], field.type))
        elif table.schema.field(index).type != field.type:
            try:
                table = table.set_column(index, field, table.column(index).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise StoreError(f"stored column {field.name!r} is not {field.type}: {exc}") from exc
    return table


def valid_table(data: bytes, expected: pa.Schema) -> bool:
    """Whether ``data`` is a readable Arrow IPC stream of a table that fits ``expected``."""
    try:
        return schema_fits(pa.ipc.open_stream(data).schema, expected)
    except (pa.ArrowInvalid, OSError):
        return False


_ABSOLUTE_PATH = re.compile(r"(?<![\w<>.~-])/[^\s'\"<>,;:]+")


def hide_paths(message: str, roots: Iterable[str]) -> str:
    """``message`` with each of ``roots`` (the store, as given and as resolved) shown as ``<store>``
    and any other absolute path as ``<path>``: what an HTTP client may see of a store error."""
    for root in sorted({r for r in roots if r}, key=len, reverse=True):
        message = message.replace(root, "<store>")
    return _ABSOLUTE_PATH.sub("<path>", message)


def store_spellings(root: str) -> tuple[str, ...]:
    """The ways a store root can appear in its errors: as given, as a filesystem base path, resolved."""
    _, base = open_filesystem(root)
    return (root, base) if "://" in root else (root, base, os.path.realpath(base))


DAMAGED_TTL_S = 30.0
"""How long ``/ready`` reuses its listing of damaged candle series."""


class StatsService:
    """Cached statistics over one store; create, ``await start()``, query, ``await close()``."""

    def __init__(
        self,
        store: str | os.PathLike[str],
        redis_url: str | None,
        *,
        ttls: dict[str, float] | None = None,
        timeout: float = 0.1,
        retry_after: float = 1.0,
        version_interval: float = 0.5,
        warm_up: bool = True,
        warm_runs: int = 3,
        metrics: CacheMetrics | None = None,
        db_url: str | None = None,
    ) -> None:
        self.queries = StatsQueries(store)
        self.metrics = metrics or CacheMetrics()
        root = os.fspath(store)
        where = root if "://" in root else os.path.abspath(root)
        self._roots = store_spellings(root)
        self.cache = RedisCache(redis_url, prefix=f"tradpal:stats:{digest(where.encode())}:", timeout=timeout,
                                retry_after=retry_after, metrics=self.metrics)
        self.ttls = {**DEFAULT_TTLS, **(ttls or {})}
        self.version_interval = version_interval
        self.warm_up = warm_up
        self.warm_runs = warm_runs
        self._versions = RunVersions(store)
        self._global = ""
        self._runs: dict[str, str] = {}
        self._scanned_at = 0.0
        self._store_error: str | None = None
        self._damaged: tuple[float, list[str]] = (-math.inf, [])
        """(when, lines) of the last listing of damaged candle series (it reads every footer: cached)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._warming: asyncio.Task[None] | None = None
        self._store, self._db_url = root, db_url
        self._ledger: Ledger | None = None
        self._ledger_lock = threading.Lock()
        try:
            prefix = live_prefix(ledger_identity(db_url, root))
        except ConfigError as exc:  # no ledger here (a remote store, no TRADPAL_DB_URL): live_* answer that
            prefix, self._ledger_problem = "tradpal:live:-:", exc
        else:
            self._ledger_problem = None
        self.live_cache = RedisCache(redis_url, prefix=prefix, timeout=timeout, retry_after=retry_after,
                                     metrics=self.metrics)

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """First version scan, then the periodic scan and the warm-up of the hot keys (in the background)."""
        await self._rescan()
        self._tasks.append(asyncio.create_task(self._watch(), name="stats-versions"))
        self._warm()

    async def close(self) -> None:
        """Stop the background tasks and close the Redis pool."""
        for task in [*self._tasks, self._warming]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._tasks.clear()
        await self.cache.close()
        await self.live_cache.close()
        if self._ledger is not None:
            self._ledger.close()

    async def _rescan(self) -> bool:
        """Refresh the versions; True if the global one changed."""
        try:
            stamp, runs = await asyncio.to_thread(self._versions.scan)
        except Exception as exc:  # noqa: BLE001 - an unreachable store must not stop the watcher
            if self._store_error is None:
                log.warning("stats.store.unreachable", error=str(exc).splitlines()[0])
            self._store_error = self.public_message(exc)
            return False
        if self._store_error is not None:
            log.info("stats.store.reachable")
        self._store_error = None
        changed = stamp != self._global
        self._global, self._runs, self._scanned_at = stamp, runs, time.monotonic()
        return changed

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.version_interval)
            if await self._rescan():
                self._warm()

    def _warm(self) -> None:
        if self.warm_up and (self._warming is None or self._warming.done()):
            self._warming = asyncio.create_task(self._warm_up(), name="stats-warm-up")

    async def _warm_up(self) -> None:
        """Compute the keys most clients ask for first: the runs, the newest runs' pages, the overviews."""
        started = time.perf_counter()
        try:
            newest = [run["run_id"] for run in orjson.loads(await self.runs())[: self.warm_runs]]
        except Exception:  # noqa: BLE001 - warm-up is best effort; requests will report errors
            newest = []
        jobs = [self.coverage(), self.feeds(), self.trade_stats(), self.symbol_stats()]
        jobs += [job for run_id in newest for job in (self.run(run_id), self.leaderboard(run_id))]
        if self._ledger_problem is None and ledger_exists(self._db_url, self._store):  # never create one to warm it
            jobs += [self.live_trade_counts(), self.live_stats(), self.live_traders()]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        failed = [type(o).__name__ for o in outcomes if isinstance(o, BaseException)]
        log.info("stats.warm_up", keys=len(jobs) + 1, failed=failed, seconds=round(time.perf_counter() - started, 3))

    # --------------------------------------------------------------- plumbing
    def _key(self, kind: str, stamp: str, *args: Any) -> str:
        return f"{kind}:{stamp}:{digest(orjson.dumps(args))}"

    async def _cached(self, kind: str, stamp: str | None, args: tuple[Any, ...], compute: Callable[[], Awaitable[bytes]]) -> bytes:
        """Cached JSON bytes of ``compute()``; uncached if ``stamp`` is None (a run the last scan did not see)."""
        if stamp is None:
            self.metrics.count(kind, "miss")
            return await compute()
        return await self.cache.get_or_compute(kind, self._key(kind, stamp, *args), self.ttls[kind], compute, valid_json)

    async def _json(self, kind: str, stamp: str | None, args: tuple[Any, ...], compute: Callable[[], Any]) -> bytes:
        """Cached orjson bytes of the blocking ``compute()``, run in a worker thread."""

        async def encoded() -> bytes:
            return encode_json(await asyncio.to_thread(compute))

        return await self._cached(kind, stamp, args, encoded)

    async def _json_over(
        self, kind: str, stamp: str | None, args: tuple[Any, ...],
        table: Callable[[], Awaitable[pa.Table]], compute: Callable[[pa.Table], Any],
    ) -> bytes:
        """Like :meth:`_json` for a query over a shared table, fetched (cached) only on a miss."""

        async def encoded() -> bytes:
            rows = await table()
            return encode_json(await asyncio.to_thread(compute, rows))

        return await self._cached(kind, stamp, args, encoded)

    async def _table(
        self, kind: str, stamp: str | None, args: tuple[Any, ...], compute: Callable[[], pa.Table], schema: pa.Schema
    ) -> pa.Table:
        """A table shared by several queries, conformed to ``schema`` and cached as Arrow IPC.

        A cached table that does not fit ``schema`` is a miss (counted ``invalid``).
        """

        def conformed() -> pa.Table:
            return conform_table(compute(), schema)

        async def encoded() -> bytes:
            return encode_table(await asyncio.to_thread(conformed))

        if stamp is None:
            return await asyncio.to_thread(conformed)
        data = await self.cache.get_or_compute(kind, self._key(kind, stamp, *args), self.ttls[kind], encoded,
                                               functools.partial(valid_table, expected=schema))
        return decode_table(data)

    def _run_stamp(self, run_id: str) -> str | None:
        """The run's stamp; None for a run the last scan did not see (answered uncached)."""
        return self._runs.get(run_id)

    async def _results(self, run_id: str) -> pa.Table:
        return await self._table("results", self._run_stamp(run_id), (run_id,), lambda: self.queries.results_table(run_id),
                                 self.queries.results_schema(run_id))

    async def _trades(self) -> pa.Table:
        return await self._table("trades", self._global, (), self.queries.trades_table, TRADES_SCHEMA)

    # ---------------------------------------------------------------- queries
    async def runs(self) -> bytes:
        """Every run, newest first."""
        return await self._json("runs", self._global, (), self.queries.runs)

    async def run(self, run_id: str) -> bytes:
        """One run's manifest and summary (NotFound if unknown)."""
        return await self._json_over("run", self._run_stamp(run_id), (run_id,), lambda: self._results(run_id),
                                     lambda table: self.queries.run(run_id, table))

    async def leaderboard(
        self, run_id: str, metric: str | None = None, top: int = 10, symbol: str | None = None,
        strategy: str | None = None, timeframe: str | None = None,
    ) -> bytes:
        """The top results of a run by a metric, optionally filtered."""
        return await self._json_over(
            "leaderboard", self._run_stamp(run_id), (run_id, metric, top, symbol, strategy, timeframe),
            lambda: self._results(run_id),
            lambda table: self.queries.leaderboard(
                run_id, metric=metric, top=top, symbol=symbol, strategy=strategy, timeframe=timeframe, table=table
            ),
        )

    async def equity(self, run_id: str, result_id: str) -> bytes:
        """One kept result's equity curve and trades."""
        return await self._json("equity", self._run_stamp(run_id), (run_id, result_id),
                                lambda: self.queries.equity(run_id, result_id))

    async def walkforward(self, run_id: str) -> bytes:
        """A walk-forward run's summary, folds and stitched out-of-sample equity."""
        return await self._json("walkforward", self._run_stamp(run_id), (run_id,), lambda: self.queries.walkforward(run_id))

    async def symbol_stats(self, exchange: str | None = None, symbol: str | None = None, timeframe: str | None = None) -> bytes:
        """Per-symbol statistics across runs."""
        return await self._json("symbols", self._global, (exchange, symbol, timeframe),
                                lambda: self.queries.symbol_stats(exchange, symbol, timeframe))

    async def coverage(self) -> bytes:
        """Candle-store coverage: series, ranges, gaps."""
        return await self._json("coverage", "-", (), self.queries.coverage)

    async def feeds(self) -> bytes:
        """Feed status snapshots."""
        return await self._json("feeds", "-", (), self.queries.feeds)

    async def trade_counts(self, status: str = "all") -> bytes:
        """Recorded trades: all, open or closed."""
        return await self._json_over("trade_counts", self._global, (status,), self._trades,
                                     lambda table: self.queries.trade_counts(status, table))

    async def trade_stats(self) -> bytes:
        """Win rate, PnL and profit factor over the recorded trades."""
        return await self._json_over("trade_stats", self._global, (), self._trades, self.queries.trade_stats)

    # ------------------------------------------------------------ live (ledger)
    def ledger(self) -> Ledger:
        """The trade ledger (opened on first use, from a worker thread)."""
        if self._ledger_problem is not None:
            raise StoreError(f"no trade ledger: {self._ledger_problem}")
        with self._ledger_lock:
            if self._ledger is None:
                self._ledger = open_ledger(self._db_url, self._store, retry_s=1.0)
            return self._ledger

    async def _live(self, kind: str, topic: str, args: tuple[Any, ...], compute: Callable[[Ledger], Any]) -> bytes:
        """Cached JSON of ``compute(ledger)``, keyed by the topic's generation (0 if absent or Redis is down)."""
        generation = await self.live_cache.get(generation_key(topic))
        stamp = generation.decode() if generation else "0"

        async def encoded() -> bytes:
            return encode_json(await asyncio.to_thread(lambda: compute(self.ledger())))

        return await self.live_cache.get_or_compute(kind, self._key(kind, stamp, *args), self.ttls[kind], encoded,
                                                    valid_json)

    async def live_trade_counts(self, status: str = "all", trader: str | None = None) -> bytes:
        """Round trips in the ledger: all, open or closed (of one trader)."""
        return await self._live("live_counts", "trades", (status, trader),
                                lambda ledger: _live.trade_counts(ledger, status, trader))

    async def live_stats(self, day: str | None = None, trader: str | None = None) -> bytes:
        """Per UTC day: trades, win rate, PnL, fees, best and worst."""
        return await self._live("live_stats", "trades", (day, trader), lambda ledger: _live.daily_stats(ledger, day, trader))

    async def live_traders(self) -> bytes:
        """Every trader's status, positions, equity, last decision; the recent fills."""
        return await self._live("live_traders", "traders", (), _live.traders_view)

    async def live_trader_equity(self, name: str) -> bytes:
        """One trader's equity snapshots (NotFound if unknown)."""
        return await self._live("live_equity", "traders", (name,), lambda ledger: _live.trader_equity(ledger, name))

    def public_message(self, exc: BaseException) -> str:
        """The first line of an error as clients may see it: no filesystem path (see :func:`hide_paths`)."""
        return hide_paths(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self._roots)

    # ----------------------------------------------------------------- health
    async def readiness(self) -> dict[str, Any]:
        """Whether the store can be listed and Redis answers (``ready`` needs both), and which candle
        series are damaged (an unreadable file fails only its own series: the API stays ready)."""
        redis_ok = await self.cache.ping()
        store_ok = self._store_error is None and self._scanned_at > 0
        damaged = await self._damaged_series() if store_ok else []
        return {"ready": redis_ok and store_ok, "store": store_ok, "redis": redis_ok,
                **({"store_error": self._store_error} if self._store_error else {}),
                **({"damaged_series": damaged} if damaged else {})}

    async def _damaged_series(self) -> list[str]:
        """Damaged candle series, one line each naming its file (no path above the store), refreshed every
        :data:`DAMAGED_TTL_S` at most."""
        checked, lines = self._damaged
        if time.monotonic() - checked > DAMAGED_TTL_S:
            try:
                found = await asyncio.to_thread(self.queries.candles.problems)
            except StoreError as exc:
                found = [str(exc)]
            lines = [self.public_message(StoreError(line)) for line in found]
            self._damaged = (time.monotonic(), lines)
        return lines

    def cache_stats(self) -> bytes:
        """Counters and latencies of this process, the Redis state and the data version."""
        return encode_json({
            "redis": {"configured": self.cache.url is not None, "available": self.cache.available, "url": self.cache.url},
            "data_version": self._global, "runs_tracked": len(self._runs),
            "version_age_s": round(time.monotonic() - self._scanned_at, 3) if self._scanned_at else None,
            "pid": os.getpid(), **self.metrics.snapshot(),
        })
