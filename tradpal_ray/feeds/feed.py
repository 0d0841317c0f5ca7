"""The feed engine: one exchange connection, many series, plain asyncio (the actor wraps it).

:class:`Feed` validates the request, resumes every candle series from the store, and runs:

* the exchange clock: a server-time sample at start anchors every new series at the candle
  forming then (so REST repair and polling work even if the stream never delivers), and
  candle updates dated after the exchange's clock plus ``clock_tolerance`` are rejected and
  counted (those the clock cannot vouch for yet wait, in order, for a fresh sample);
* the stream supervisor: dial, watch for staleness (no frame for ``stale_after`` tears the
  connection down - this is what catches ccxt's silent freeze), reconnect with capped,
  jittered exponential backoff; after ``rest_fallback_after`` connections in a row without
  data the mode becomes "rest" until a connection delivers data again;
* gap repair: every :class:`~tradpal_ray.feeds.candles.CandleTracker` plan is fetched with
  the backfill pager and merged back in order (after every reconnect and restart, for lost
  frames, for ccxt's REST-confirmed closes, for closed candles the stream reported twice with
  different values, and every ``rest_poll_interval`` in REST mode); each round reads the
  exchange's clock first, and only candles that ended before it count as closed;
* the flush loop: buffered rows become one Arrow batch per kind at most every
  ``flush_interval`` (sooner when ``flush_rows`` pile up, every ``min_flush_interval`` while a
  consumer waits for any batch, and at once for a closed candle while one waits for closed
  candles only), handed to ``publish`` (``ray.put`` in the actor) and kept in a bounded
  :class:`~tradpal_ray.feeds.publish.BatchRing`;
* the store loop: every closed candle is upserted into the candle store within
  ``store_within`` seconds; ring entries are evicted only once their candles are stored;
* status snapshots into :class:`~tradpal_ray.feeds.status_store.FeedStatusStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import ccxt
import numpy as np
import pandas as pd
import pyarrow as pa

from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.feeds.candles import CandleRow, CandleTracker, RepairPlan
from tradpal_ray.feeds.clock import ClockSample, ExchangeClock
from tradpal_ray.feeds.connectors import Connector, make_connector
from tradpal_ray.feeds.metrics import FeedMetrics
from tradpal_ray.feeds.publish import BatchRing, CandleBuffer, RingRead, TradeBuffer
from tradpal_ray.feeds.status_store import FeedStatusStore
from tradpal_ray.log import get_logger
from tradpal_ray.market.backfill import iter_kline_pages, validate_request
from tradpal_ray.market.exchange import create_exchange, protocol
from tradpal_ray.market.retry import Backoff, call_with_retry
from tradpal_ray.market.schema import bad_ohlcv_rows, candles_frame, candles_table, timeframe_ms
from tradpal_ray.market.store import CandleStore

log = get_logger(__name__)

KINDS = ("candles", "trades")


@dataclass(frozen=True)
class FeedConfig:
    """What one feed streams and how; see the README "Live feeds" section for each knob."""

    symbols: tuple[str, ...]
    timeframes: tuple[str, ...] = ("1m",)
    exchange: str = "binance"
    url: str | None = None
    """Exchange base URL override (the simulator); None for the real exchange."""
    store: str | None = None
    """Candle store root; None keeps closed candles in memory only (tests, benchmarks)."""
    connector: str = "native"
    trades: bool = True
    shard: str = "0"
    stale_after: float = 10.0
    repair_grace: float = 2.0
    """Seconds a hole left by a lost closed-candle frame may wait for it before REST repair."""
    flush_interval: float = 0.1
    min_flush_interval: float = 0.01
    flush_rows: int = 20_000
    ring_batches: int = 256
    ring_bytes: int = 8 << 20
    """Memory bound of each ring (candles, trades): the newest batches within both limits are kept."""
    store_within: float = 5.0
    status_interval: float = 2.0
    reconnect: Backoff = field(default_factory=lambda: Backoff(retries=0, base=0.25, cap=30.0))
    rest: Backoff = field(default_factory=lambda: Backoff(retries=6, base=0.25, cap=10.0))
    rest_fallback_after: int = 5
    """Connections in a row without data before polling REST (0: never)."""
    rest_poll_interval: float = 2.0
    clock_tolerance: float = 5.0
    """Seconds a candle update may be dated after the exchange's clock (its REST server time) before it is rejected."""
    request_timeout_ms: int = 10_000
    history: int = 1000
    """Closed candles per series kept in memory for :meth:`Feed.latest`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "timeframes", tuple(self.timeframes))
        if not self.symbols:
            raise ConfigError("a feed needs at least one symbol, e.g. BTC/USDT")
        if not self.timeframes:
            raise ConfigError("a feed needs at least one timeframe, e.g. 1m")
        for timeframe in self.timeframes:
            timeframe_ms(timeframe)
        if self.connector not in ("ccxt", "native"):
            raise ConfigError(f"unknown connector {self.connector!r}; valid: ccxt, native")
        if self.connector == "native" and protocol(self.exchange) != "binance":
            raise ConfigError(f"the native connector speaks Binance only; use the ccxt connector for {self.exchange}")
        for name in ("stale_after", "flush_interval", "min_flush_interval", "store_within", "status_interval",
                     "rest_poll_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.clock_tolerance >= 0:
            raise ConfigError(f"clock_tolerance must be zero or more, got {self.clock_tolerance!r}")

    @property
    def name(self) -> str:
        """The feed's (and its actor's) name, ``feed:<exchange>:<shard>``."""
        return f"feed:{self.exchange}:{self.shard}"


@dataclass(frozen=True)
class KlineUpdate:
    """One candle update from a connector, with the exchange time it claims and its arrival (monotonic s)."""

    key: tuple[str, str]
    candle: tuple[int, float, float, float, float, float, bool | None, int]
    """``(t, o, h, l, c, v, closed, event_ms)`` as the connector gave it."""
    dated_ms: int
    arrived: float


UNVERIFIED_LIMIT = 100_000
"""Candle updates kept waiting for the exchange's clock; beyond it the oldest are dropped (repair refetches)."""


@dataclass
class StreamStats:
    """Counters of one series (or one symbol's trades) for :meth:`Feed.status`."""

    messages: int = 0
    last_message_ms: int | None = None
    last_event_ms: int | None = None


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _split_bad_candles(rows: list[list[float]]) -> tuple[list[list[float]], list[list[float]]]:
    """``[t, o, h, l, c, v]`` rows that pass the candle store's checks, and those that do not."""
    if not rows:
        return rows, []
    values = np.asarray(rows, dtype=np.float64)
    bad = bad_ohlcv_rows(values[:, 0].astype(np.int64),
                         {name: values[:, k] for k, name in enumerate(("open", "high", "low", "close", "volume"), 1)})
    if not bad.any():
        return rows, []
    return [row for row, drop in zip(rows, bad) if not drop], [row for row, drop in zip(rows, bad) if drop]


async def open_rest_client(config: FeedConfig) -> Any:
    """An asyncio ccxt client with markets loaded, after checking the feed's symbols and timeframes.

    Raises ConfigError listing the valid ones, ExchangeUnavailable after the ``rest`` retry budget.
    """
    client = create_exchange(config.exchange, url=config.url, pro=True)
    client.timeout = config.request_timeout_ms
    try:
        for timeframe in config.timeframes:
            await validate_request(client, config.symbols, timeframe, config.rest)
    except BaseException:
        await client.close()
        raise
    return client


async def validate_feed(config: FeedConfig) -> None:
    """Check ``config`` against the exchange up front (see :func:`open_rest_client`)."""
    client = await open_rest_client(config)
    await client.close()


class Feed:
    """One exchange connection's live data: see the module docstring. Create, ``await start()``, ``await stop()``."""

    def __init__(self, config: FeedConfig, *, publish: Callable[[pa.RecordBatch], Any] | None = None,
                 metrics: FeedMetrics | None = None) -> None:
        self.config = config
        self.name = config.name
        self._publish = publish or (lambda batch: batch)
        self.metrics = metrics or FeedMetrics(config.name, enabled=False)
        self.store = CandleStore(config.store) if config.store else None
        self.status_store = FeedStatusStore(config.store) if config.store else None
        self.trackers: dict[tuple[str, str], CandleTracker] = {}
        self.series: dict[tuple[str, str], StreamStats] = {}
        self.trade_stats: dict[str, StreamStats] = {s: StreamStats() for s in config.symbols}
        self.candles = CandleBuffer()
        self.trades = TradeBuffer({})
        self.rings = {
            "candles": BatchRing(config.ring_batches, config.ring_bytes, guard=self.store is not None),
            "trades": BatchRing(config.ring_batches, config.ring_bytes),
        }
        self.connector: Connector | None = None
        self.rest_client: Any = None
        self.connected = False
        self.reconnects = 0
        self.failures = 0
        self.repair_errors = 0
        self.stored_rows = 0
        self.started_ms: int | None = None
        self._store_pending: list[tuple[str, str, CandleRow]] = []
        self._store_lock = asyncio.Lock()
        self._store_write: asyncio.Future | None = None
        self.bad_candles = 0
        self.clock = ExchangeClock(int(config.clock_tolerance * 1000))
        self.future_events = 0
        self.unverified_dropped = 0
        self._unverified: deque[KlineUpdate] = deque()
        self._clock_wake = asyncio.Event()
        self._store_wake = asyncio.Event()
        self._unstored: set[tuple[str, str]] = set()
        self._held: dict[tuple[str, str], list[CandleRow]] = {}
        self._new_batch = asyncio.Event()
        self._new_closed = asyncio.Event()
        """Set by a flush that published a closed candle (what ``poll(closed_only=True)`` waits for)."""
        self._repair_wake = asyncio.Event()
        self._waiting = {False: 0, True: 0}
        """Consumers waiting, by ``closed_only``. For any batch: the flush loop then publishes every
        ``min_flush_interval``; for closed candles only: a closed candle is then published at once."""
        self._closed_flush_due = False
        self._tasks: list[asyncio.Task] = []
        self._stopped = False
        self._ended = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Validate symbols and timeframes, resume from the store, start streaming.

        Raises ConfigError for unknown symbols/timeframes (listing valid ones) and
        ExchangeUnavailable when the exchange does not answer within the ``rest`` budget.
        """
        cfg = self.config
        self.rest_client = await open_rest_client(cfg)
        try:
            await self._prepare()
            exchange_now = (await self._sample_clock()).server_ms
        except BaseException:
            await self.rest_client.close()
            raise
        for tracker in self.trackers.values():
            tracker.start_at(exchange_now)
        self.started_ms = _wall_ms()
        loops = [self._supervise(), self._repair_loop(), self._flush_loop(), self._rest_poll_loop(), self._clock_loop()]
        if self.store is not None:
            loops += [self._store_loop(), self._status_loop()]
        self._tasks = [asyncio.create_task(loop) for loop in loops]
        log.info("feed.started", feed=self.name, connector=cfg.connector, symbols=",".join(cfg.symbols),
                 timeframes=",".join(cfg.timeframes),
                 resumed={f"{s} {tf}": t.last_closed for (s, tf), t in self.trackers.items() if t.last_closed})

    async def _prepare(self) -> None:
        """The connector, and every series' tracker resumed from the store."""
        cfg = self.config
        self.connector = make_connector(cfg.connector, exchange=cfg.exchange, url=cfg.url,
                                        rest_client=self.rest_client, symbols=cfg.symbols,
                                        timeframes=cfg.timeframes, trades=cfg.trades)
        ids = {self.rest_client.markets[s]["id"]: s for s in cfg.symbols}
        self.trades = TradeBuffer(ids)
        for symbol in cfg.symbols:
            for timeframe in cfg.timeframes:
                last = await asyncio.to_thread(self.store.last_open_time, cfg.exchange, symbol, timeframe) if self.store else None
                self.trackers[(symbol, timeframe)] = CandleTracker(
                    timeframe_ms(timeframe), last, rest_confirms=cfg.connector == "ccxt",
                    grace=cfg.repair_grace, history=cfg.history,
                )
                self.series[(symbol, timeframe)] = StreamStats()
                if self.store is not None and last is None:
                    self._unstored.add((symbol, timeframe))

    async def stop(self) -> dict[str, Any]:
        """Stop streaming; publish and store everything received; return the final status."""
        if self._stopped:
            return self.status()
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=10.0)
            if stuck:  # never expected: say which loop ignored its cancellation, and go on flushing
                log.error("feed.stop_stuck", feed=self.name, tasks=[t.get_coro().__qualname__ for t in stuck])
        try:
            if self._unverified:  # updates that arrived just before: one more clock reading judges them
                try:
                    await asyncio.wait_for(self._sample_clock(), 5.0)
                except (TimeoutError, TradpalError, ccxt.BaseError) as exc:
                    log.warning("feed.unverified_at_stop", feed=self.name, updates=len(self._unverified),
                                error=f"{type(exc).__name__}: {str(exc)[:200]}")
            self.flush(force=True)
            if self.store is not None:
                if self._store_write is not None:  # a write cancelled with its loop still runs in its thread
                    await asyncio.gather(self._store_write, return_exceptions=True)
                await self.write_store()
                self.flush(force=True)  # candles held until stored
                await asyncio.to_thread(self.status_store.write, self.name, self.status())
        finally:
            if self.connector is not None:
                await self.connector.close()
            if self.rest_client is not None:
                await self.rest_client.close()
            self._ended = True  # everything is published: consumers may finish
            self._new_batch.set()
            self._new_closed.set()
        log.info("feed.stopped", feed=self.name, stored=self.stored_rows, reconnects=self.reconnects)
        return self.status()

    # -- events from the connector ------------------------------------------------------------

    def kline(self, symbol: str, timeframe: str, t: int, o: float, h: float, l: float, c: float,
              v: float, closed: bool | None, event_ms: int) -> None:
        """One candle update from the stream (see :class:`~tradpal_ray.feeds.connectors.FeedSink`).

        Applied at once if the exchange's clock vouches for its date, else queued for the clock loop.
        """
        key = (symbol, timeframe)
        tracker = self.trackers.get(key)
        if tracker is None:
            return
        stats = self.series[key]
        stats.messages += 1
        stats.last_message_ms = _wall_ms()
        now = time.monotonic()
        dated = t + tracker.step - 1 if closed else t  # a candle opens, and closes, before it is reported
        if self.connector is not None and self.connector.exchange_times:
            dated = max(dated, event_ms)
        update = KlineUpdate(key, (t, o, h, l, c, v, closed, event_ms), dated, now)
        if self._unverified or not self.clock.admits(dated, now):
            if len(self._unverified) >= UNVERIFIED_LIMIT:
                self._unverified.popleft()
                self.unverified_dropped += 1
            self._unverified.append(update)
            self._clock_wake.set()
            return
        self._apply(update)

    def _apply(self, update: KlineUpdate) -> None:
        """Hand a candle update the exchange's clock vouches for to its series' tracker."""
        tracker = self.trackers[update.key]
        self.series[update.key].last_event_ms = update.candle[-1]
        now = time.monotonic()
        self._emit(update.key, tracker.on_update(*update.candle, now), now)
        if tracker.next is not None and (tracker.closed_until > tracker.next or tracker.disputed):
            self._repair_wake.set()

    def observe_clock(self, sample: ClockSample) -> None:
        """Take a reading of the exchange's clock; apply or reject queued updates it can judge, oldest first."""
        self.clock.observe(sample)
        queue = self._unverified
        while queue:
            update = queue[0]
            verdict = self.clock.admits(update.dated_ms, update.arrived)
            if verdict is None:  # it arrived after the sample was asked for: the next sample decides
                self._clock_wake.set()
                return
            queue.popleft()
            if verdict:
                self._apply(update)
                continue
            self.future_events += 1
            log.warning("feed.future_event_rejected", feed=self.name, symbol=update.key[0], timeframe=update.key[1],
                        open_ms=update.candle[0], dated_ms=update.dated_ms, exchange_ms=sample.server_ms)

    # -- the exchange clock ---------------------------------------------------------------------

    async def _sample_clock(self) -> ClockSample:
        """Read the exchange's server time (the wall clock for an exchange that does not tell it)."""
        client = self.rest_client
        sent = time.monotonic()
        if client.has.get("fetchTime"):
            server_ms = await call_with_retry(client.fetch_time, policy=self.config.rest,
                                              what=f"{self.config.exchange} server time", client=client)
        else:
            server_ms = _wall_ms()
        sample = ClockSample(int(server_ms), sent, time.monotonic())
        self.observe_clock(sample)
        return sample

    async def _clock_loop(self) -> None:
        attempt = 0
        while True:
            await self._clock_wake.wait()
            self._clock_wake.clear()
            try:
                await self._sample_clock()
            except Exception as exc:  # updates stay queued: the next round retries
                log.warning("feed.clock_failed", feed=self.name, error=f"{type(exc).__name__}: {str(exc)[:200]}",
                            exc_info=None if isinstance(exc, (TradpalError, ccxt.BaseError)) else exc)
                self._clock_wake.set()
                await asyncio.sleep(self.config.rest.delay(min(attempt, 16)))
                attempt += 1
                continue
            attempt = 0

    def _emit(self, key: tuple[str, str], rows: list[CandleRow], now: float) -> None:
        if not rows:
            return
        closed = [(key[0], key[1], row) for row in rows if row.closed]
        self._store_pending += closed
        if closed and key in self._unstored:
            # A series with nothing stored has no point to resume from after a crash: its
            # first closed candles are published only once they are in the store.
            self._held.setdefault(key, []).extend(row for _, _, row in closed)
            rows = [row for row in rows if not row.closed]
            self._store_wake.set()
        if rows:
            self._buffer(key, rows, now)

    def _buffer(self, key: tuple[str, str], rows: list[CandleRow], now: float) -> None:
        """Queue rows for the next flush; one holding a closed candle is flushed as soon as the loop
        is free when a consumer waits for closed candles (a trader acts on the close: every ms counts)."""
        self.candles.add(key[0], key[1], rows, now)
        if self._waiting[True] and not self._closed_flush_due and any(row.closed for row in rows):
            self._closed_flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_closed)

    def _flush_closed(self) -> None:
        self._closed_flush_due = False
        self._flush_logged(force=True, kinds=("candles",))

    # -- stream supervision ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """"ws" while streaming works, "rest" while polling REST after repeated stream failures."""
        after = self.config.rest_fallback_after
        return "rest" if after > 0 and self.failures >= after else "ws"

    async def _supervise(self) -> None:
        cfg = self.config
        connector = self.connector
        check = min(cfg.stale_after / 4, 0.5)
        attempt = 0
        while True:
            run = asyncio.create_task(connector.run(self))
            self.connected = True
            reason = "closed"
            try:
                while not run.done():
                    await asyncio.wait({run}, timeout=check)
                    if connector.received and self.failures:
                        log.info("feed.stream_recovered", feed=self.name, after_failures=self.failures)
                        self.failures = 0
                        self.metrics.mode(False)
                    if not run.done() and time.monotonic() - connector.last_message > cfg.stale_after:
                        reason = "stale"
                        run.cancel()
                        await asyncio.wait({run})
            finally:
                if not run.done():
                    run.cancel()
                    await asyncio.gather(run, return_exceptions=True)
                self.connected = False
            if not run.cancelled() and run.exception() is not None:
                reason = f"{type(run.exception()).__name__}: {str(run.exception())[:200]}"
            if connector.received:
                attempt = 0
                self.failures = 0
            else:
                self.failures += 1
            self.reconnects += 1
            self.metrics.reconnect()
            self.metrics.mode(self.mode == "rest")
            for tracker in self.trackers.values():
                tracker.resync()
            self._repair_wake.set()
            delay = cfg.reconnect.delay(min(attempt, 16))
            log.warning("feed.disconnected", feed=self.name, reason=reason, failures=self.failures, mode=self.mode,
                        retry_in_s=round(delay, 3))
            attempt += 1
            await asyncio.sleep(delay)

    # -- gap repair ----------------------------------------------------------------------------------

    async def _repair_loop(self) -> None:
        attempt = 0
        tick = max(0.02, min(self.config.repair_grace / 4, 0.25))
        while True:
            try:
                await asyncio.wait_for(self._repair_wake.wait(), tick)
            except TimeoutError:
                pass
            self._repair_wake.clear()
            now = time.monotonic()
            plans = [(key, plan) for key, tracker in self.trackers.items() if (plan := tracker.plan(now))]
            if not plans:
                continue
            try:  # candles that ended before this reading have closed
                sample = await self._sample_clock()
            except Exception as exc:
                results: list[Any] = [exc]
            else:
                results = await asyncio.gather(*(self._repair(key, plan, sample.server_ms) for key, plan in plans),
                                               return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            for error in errors:
                if not isinstance(error, Exception):
                    raise error
                self.repair_errors += 1
                expected = isinstance(error, (TradpalError, ccxt.BaseError))
                log.warning("feed.repair_failed", feed=self.name, error=f"{type(error).__name__}: {str(error)[:200]}",
                            exc_info=None if expected else error)
            if errors:
                await asyncio.sleep(self.config.rest.delay(min(attempt, 16)))
                attempt += 1
            else:
                attempt = 0

    async def _repair(self, key: tuple[str, str], plan: RepairPlan, exchange_now: int) -> None:
        symbol, timeframe = key
        rows: list[list[float]] = []
        async for page in iter_kline_pages(self.rest_client, symbol, timeframe, plan.start, plan.end,
                                           policy=self.config.rest, what=f"{self.config.exchange} gap repair"):
            rows += page
        tracker = self.trackers[key]
        before, corrected = tracker.repaired, tracker.corrected
        self._emit(key, tracker.on_rest(plan, rows, _wall_ms(), exchange_now), time.monotonic())
        repaired = tracker.repaired - before
        self.metrics.repaired(repaired)
        if repaired:
            log.info("feed.repaired", feed=self.name, symbol=symbol, timeframe=timeframe, candles=repaired,
                     start=plan.start, end=plan.end)
        if tracker.corrected > corrected:
            log.warning("feed.corrected", feed=self.name, symbol=symbol, timeframe=timeframe,
                        candles=tracker.corrected - corrected, start=plan.start, end=plan.end)

    async def _rest_poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.rest_poll_interval)
            if self.mode == "rest":
                for tracker in self.trackers.values():
                    tracker.resync()
                self._repair_wake.set()

    # -- publishing ------------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.min_flush_interval)
            self._flush_logged(force=False)

    def _flush_logged(self, force: bool, kinds: tuple[str, ...] = KINDS) -> None:
        try:
            self.flush(force=force, kinds=kinds)
        except Exception as exc:  # never expected; a dead flush loop would silently stop publishing
            log.error("feed.flush_failed", feed=self.name, error=f"{type(exc).__name__}: {str(exc)[:200]}", exc_info=exc)

    def flush(self, force: bool = True, kinds: tuple[str, ...] = KINDS) -> int:
        """Publish buffered rows of ``kinds`` as batches (only those due unless ``force``); returns batches published."""
        cfg = self.config
        now = time.monotonic()
        published, any_closed = 0, False
        for kind, buffer in (("candles", self.candles), ("trades", self.trades)):
            if kind not in kinds or not len(buffer):
                continue
            age = now - buffer.first_at
            if not (force or self._waiting[False] or age >= cfg.flush_interval or len(buffer) >= cfg.flush_rows):
                continue
            closed: frozenset[Hashable] = frozenset()
            if kind == "candles":
                batch, keys, closed = self.candles.take()
            else:
                batch, keys, per_symbol = self.trades.take()
                self._note_trades(per_symbol)
            self.rings[kind].append(self._publish(batch), keys, batch.nbytes, closed)
            any_closed = any_closed or bool(closed)
            self.metrics.messages(kind, batch.num_rows)
            self.metrics.flushed(kind, age * 1000.0)
            published += 1
        if published:
            self._new_batch.set()
            self._new_batch = asyncio.Event()
            if any_closed:
                self._new_closed.set()
                self._new_closed = asyncio.Event()
            if self.metrics.enabled:
                self._record_lag()
        return published

    def _note_trades(self, per_symbol: dict[str, tuple[int, int]]) -> None:
        now_ms = _wall_ms()
        for symbol, (count, last_event) in per_symbol.items():
            stats = self.trade_stats.setdefault(symbol, StreamStats())
            stats.messages += count
            stats.last_message_ms = now_ms
            stats.last_event_ms = last_event

    def exchange_now_ms(self) -> int:
        """The exchange's time now, projected from its newest server-time sample at its measured
        rate (our clock before any sample). Lag is measured against it: a simulator's clock may
        run in the past, and faster than ours."""
        newest, rate = self.clock.newest, self.clock.rate
        if newest is None:
            return _wall_ms()
        return newest.server_ms + int((1000.0 if rate is None else rate) * (time.monotonic() - newest.sent))

    def _record_lag(self) -> None:
        now_ms = self.exchange_now_ms()
        for symbol, stats in self.trade_stats.items():
            if stats.last_event_ms is not None:
                self.metrics.lag(symbol, now_ms - stats.last_event_ms)

    async def poll(self, kind: str, cursor: int | None = None, key: Hashable | None = None, *,
                   epoch: str | None = None, timeout: float = 1.0, limit: int = 64,
                   closed_only: bool = False) -> RingRead:
        """Batches of ``kind`` after ``cursor`` holding ``key``; waits up to ``timeout`` s for one.

        ``key`` is ``(symbol, timeframe)`` for candles and ``symbol`` for trades. A cursor of
        another ``epoch`` (a previous incarnation of the feed) restarts at the oldest batch.
        ``closed_only`` (candles): only batches with a closed candle of ``key``; the consumer
        is not woken by the updates of candles still forming (a trader's subscription).
        """
        if kind not in self.rings:
            raise ConfigError(f"unknown batch kind {kind!r}; valid: {', '.join(KINDS)}")
        if limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit}")
        ring = self.rings[kind]
        if epoch is not None and epoch != ring.epoch:
            cursor = None
        deadline = time.monotonic() + timeout
        while True:
            read = ring.read(cursor, key, limit, closed_only)
            remaining = deadline - time.monotonic()
            if self._ended and not read.entries:
                read.ended = True
            if read.entries or read.missed or remaining <= 0 or read.ended:
                return read
            cursor = read.cursor
            if self.flush(force=True, kinds=(kind,)):  # rows arrived since the last flush: hand them over now
                continue
            event = self._new_closed if closed_only else self._new_batch
            self._waiting[closed_only] += 1
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                self._waiting[closed_only] -= 1

    # -- the durable store -------------------------------------------------------------------------------

    async def _store_loop(self) -> None:
        period = self.config.store_within / 5
        while True:
            try:
                await asyncio.wait_for(self._store_wake.wait(), period)
            except TimeoutError:
                pass
            self._store_wake.clear()
            try:
                await self.write_store()
            except Exception as exc:  # rows stay queued: the next round retries them
                log.error("feed.store_failed", feed=self.name, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                          exc_info=None if isinstance(exc, TradpalError) else exc)

    async def write_store(self) -> int:
        """Upsert every closed candle not yet stored; returns rows written (failed rows stay queued)."""
        async with self._store_lock:
            if self.store is None:
                return 0
            ring = self.rings["candles"]
            covered = ring.next_seq - 1  # every candle in batches up to here is in ``rows``
            rows, self._store_pending = self._store_pending, []
            releasable = [key for key in self._held if key in {(symbol, timeframe) for symbol, timeframe, _ in rows}]
            if rows:
                by_series: dict[tuple[str, str], list[list[float]]] = {}
                for symbol, timeframe, row in rows:
                    by_series.setdefault((symbol, timeframe), []).append(list(row[:6]))
                try:
                    table = pa.concat_tables(
                        candles_table(self._storable(symbol, timeframe, series_rows), exchange=self.config.exchange,
                                      symbol=symbol, timeframe=timeframe)
                        for (symbol, timeframe), series_rows in by_series.items()
                    )
                    self._store_write = asyncio.ensure_future(asyncio.to_thread(self.store.write, table))
                    await asyncio.shield(self._store_write)
                except BaseException:
                    self._store_pending = rows + self._store_pending
                    raise
                self.stored_rows += len(rows)
            ring.persisted(covered)
            for key in releasable:  # stored now: publish them (and any held since)
                self._buffer(key, self._held.pop(key), time.monotonic())
                self._unstored.discard(key)
            return len(rows)

    def _storable(self, symbol: str, timeframe: str, rows: list[list[float]]) -> list[list[float]]:
        """``rows`` minus candles that break the store's checks (an exchange's bad data must not block the rest)."""
        good, bad = _split_bad_candles(rows)
        if bad:
            self.bad_candles += len(bad)
            log.warning("feed.bad_candles_dropped", feed=self.name, symbol=symbol, timeframe=timeframe,
                        candles=len(bad), first_open_ms=int(bad[0][0]))
        return good

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval)
            try:
                await asyncio.to_thread(self.status_store.write, self.name, self.status())
            except (OSError, TradpalError) as exc:
                log.warning("feed.status_write_failed", feed=self.name, error=str(exc)[:200])

    # -- reading ----------------------------------------------------------------------------------------------

    def latest(self, symbol: str, timeframe: str, n: int = 100) -> pd.DataFrame:
        """The last ``n`` closed candles of a series (memory first, then the store) as an OHLCV frame."""
        tracker = self.trackers.get((symbol, timeframe))
        if tracker is None:
            raise ConfigError(f"{self.name} does not stream {symbol} {timeframe}; it has "
                              f"{', '.join(f'{s} {tf}' for s, tf in self.trackers)}")
        if n < 1:
            raise ConfigError(f"n must be at least 1, got {n}")
        rows, _ = _split_bad_candles([list(row[:6]) for row in list(tracker.history)[-n:]])  # as stored
        table = candles_table(rows, exchange=self.config.exchange, symbol=symbol, timeframe=timeframe)
        if len(rows) < n and self.store is not None:
            end = rows[0][0] if rows else None
            start = None if end is None else end - (n - len(rows)) * tracker.step
            older = self.store.read_table(self.config.exchange, symbol, timeframe, start=start, end=end)
            if start is not None and older.num_rows < n - len(rows):  # holes in the series: look further back
                older = self.store.read_table(self.config.exchange, symbol, timeframe, end=end)
            older = older.slice(max(0, older.num_rows - (n - len(rows))))
            table = pa.concat_tables([older, table])
        return candles_frame(table)

    def status(self) -> dict[str, Any]:
        """Health per stream (last message time, lag, messages, closed candles) and of the connection."""
        now_ms = _wall_ms()
        exchange_ms = self.exchange_now_ms()
        mode = self.mode
        streams = []

        def row(symbol: str, stream: str, stats: StreamStats, **extra: Any) -> dict[str, Any]:
            lag = None if stats.last_event_ms is None else exchange_ms - stats.last_event_ms
            return {"symbol": symbol, "stream": stream, "messages": stats.messages,
                    "last_message_ms": stats.last_message_ms, "lag_ms": lag, "mode": mode,
                    "reconnects": self.reconnects, **extra}

        for (symbol, timeframe), tracker in self.trackers.items():
            streams.append(row(symbol, f"kline_{timeframe}", self.series[(symbol, timeframe)],
                               last_closed_ms=tracker.last_closed, closed=tracker.closed_count,
                               repaired=tracker.repaired, corrected=tracker.corrected,
                               duplicates=tracker.duplicates + tracker.stale))
        if self.config.trades:
            for symbol, stats in self.trade_stats.items():
                streams.append(row(symbol, "trade", stats))
        connector = self.connector
        return {
            "name": self.name,
            "exchange": self.config.exchange,
            "connector": self.config.connector,
            "mode": mode,
            "connected": self.connected,
            "reconnects": self.reconnects,
            "repair_errors": self.repair_errors,
            "malformed": (connector.malformed if connector else 0) + self.trades.malformed,
            "trade_duplicates": self.trades.duplicates,
            "bad_candles": self.bad_candles,
            "future_events": self.future_events,
            "unverified": len(self._unverified),
            "unverified_dropped": self.unverified_dropped,
            "stored_rows": self.stored_rows,
            "store_pending": len(self._store_pending),
            "batches": {kind: ring.next_seq for kind, ring in self.rings.items()},
            "started_ms": self.started_ms,
            "now_ms": now_ms,
            "streams": streams,
        }
