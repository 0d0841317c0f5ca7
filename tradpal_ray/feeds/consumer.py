"""Consumer API: ``subscribe`` to a feed's batches as an async iterator, ``latest`` candles as a frame.

``source`` is a feed actor handle (consumers anywhere in the cluster: the actor returns
ObjectRefs and the batches come straight from the object store, zero-copy, never through
the driver) or an in-process :class:`~tradpal_ray.feeds.feed.Feed`.

A candle subscription given the feed's ``store`` delivers every closed candle of its series
exactly once and in order, even across consumer lag and feed restarts: when it fell behind
the ring (or the feed restarted) it reads what it missed from the candle store and skips
rows it already has. Without a store it still never repeats a candle, but what it missed is
only recorded, in :attr:`Subscription.missed` (sequence numbers), as for trade subscriptions.
Iteration ends when the feed has been stopped and everything it published was read.

Several subscriptions in one process (a trader on several symbols) read the same batches:
each batch is fetched from the object store once per process and event loop, and the first
reference to it is kept while it may still be asked for (:class:`_PayloadCache`). Fetching a
batch again through a second reference after the first was released can hang in Ray 2.60
(measured here: the second subscription's read never returned); sharing the fetch avoids it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tradpal_ray.feeds.publish import CANDLE_BATCH_SCHEMA, RingRead
from tradpal_ray.log import get_logger
from tradpal_ray.market.schema import timeframe_ms
from tradpal_ray.market.store import CandleStore

log = get_logger(__name__)

PAYLOAD_CACHE_ENTRIES = 4096
"""Batches a process remembers per event loop: a feed ring's hard capacity, so a subscription
that is behind by a whole ring still finds what another one fetched."""


class _PayloadCache:
    """One fetch per batch (object id) in this event loop, shared by every subscription; the first
    reference is held with its fetch until :data:`PAYLOAD_CACHE_ENTRIES` newer batches pushed it out."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _PayloadCache] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.fetches: OrderedDict[bytes, tuple[Any, asyncio.Future[Any]]] = OrderedDict()

    @classmethod
    def here(cls) -> _PayloadCache:
        loop = asyncio.get_running_loop()
        cache = cls._by_loop.get(loop)
        if cache is None:
            cache = cls._by_loop[loop] = cls()
        return cache

    async def get(self, ref: Any) -> Any:
        key = ref.binary()
        held = self.fetches.get(key)
        if held is None:
            held = (ref, asyncio.ensure_future(_fetch(ref)))
            self.fetches[key] = held
            held[1].add_done_callback(lambda done: self._forget_failed(key, done))
            while len(self.fetches) > PAYLOAD_CACHE_ENTRIES:
                self.fetches.popitem(last=False)
        return await asyncio.shield(held[1])

    def _forget_failed(self, key: bytes, done: asyncio.Future[Any]) -> None:
        """A fetch that failed (a lost object, a dead feed) is not remembered: the subscription's retry fetches anew."""
        if done.cancelled() or done.exception() is not None:
            self.fetches.pop(key, None)


async def _fetch(ref: Any) -> Any:
    return await ref


def _is_actor(source: Any) -> bool:
    return hasattr(getattr(source, "poll", None), "remote")


class Subscription:
    """Async iterator of Arrow record batches of one series (candles) or one symbol (trades)."""

    def __init__(self, source: Any, kind: str, key: Hashable, *, store: str | None = None,
                 exchange: str = "binance", poll_timeout: float = 1.0, retry_interval: float = 0.2,
                 closed_only: bool = False) -> None:
        self.source = source
        self.kind = kind
        self.key = key
        self.closed_only = closed_only
        """Candles: only batches with a closed candle of the series (see :meth:`Feed.poll`)."""
        self.store = CandleStore(store) if store else None
        self.exchange = exchange
        self.poll_timeout = poll_timeout
        self.retry_interval = retry_interval
        self.step = timeframe_ms(key[1]) if kind == "candles" else 0
        self.cursor: int | None = None
        self.epoch: str | None = None
        self.last_closed: int | None = None
        """Open time of the newest closed candle delivered."""
        self.missed: list[tuple[int, int]] = []
        self.restarts_seen = 0
        self._lost = False
        self._ended = False
        self._ready: list[pa.RecordBatch] = []

    def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        return self

    async def __anext__(self) -> pa.RecordBatch:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            await self._fill()
        return self._ready.pop(0)

    async def _fill(self) -> None:
        try:
            read, payloads = await self._poll()
        except Exception as exc:
            if not _is_actor(self.source) or not _recoverable(exc):
                raise
            log.info("feed.consumer_retry", error=type(exc).__name__)
            self.epoch = None
            self.cursor = None
            self._lost = True
            await asyncio.sleep(self.retry_interval)
            return
        lost = bool(read.missed) or (self.epoch is not None and read.epoch != self.epoch) or self._lost
        self._lost = False
        if self.epoch is not None and read.epoch != self.epoch:
            self.restarts_seen += 1
        if read.missed:
            self.missed.append(read.missed)
        self.epoch, self.cursor = read.epoch, read.cursor
        self._ended = read.ended
        if lost and self.kind == "candles":
            await asyncio.to_thread(self._catch_up_from_store)
        for entry, batch in zip(read.entries, payloads):
            batch = self._select(batch, single=entry.keys == frozenset([self.key]))
            if batch.num_rows:
                self._ready.append(batch)

    async def _poll(self) -> tuple[RingRead, list[Any]]:
        kwargs = {"epoch": self.epoch, "timeout": self.poll_timeout, "closed_only": self.closed_only}
        if _is_actor(self.source):
            read = await self.source.poll.remote(self.kind, self.cursor, self.key, **kwargs)
            cache = _PayloadCache.here()
            payloads = list(await asyncio.gather(*(cache.get(entry.payload) for entry in read.entries)))
            return read, payloads
        read = await self.source.poll(self.kind, self.cursor, self.key, **kwargs)
        return read, [entry.payload for entry in read.entries]

    def _select(self, batch: pa.RecordBatch, single: bool) -> pa.RecordBatch:
        """Rows of this subscription's key, minus candles already delivered (zero-copy when nothing goes)."""
        if self.kind == "trades":
            return batch if single else batch.filter(pc.equal(batch.column("symbol"), self.key))
        if not single:
            symbol, timeframe = self.key
            batch = batch.filter(pc.and_(pc.equal(batch.column("symbol"), symbol),
                                         pc.equal(batch.column("timeframe"), timeframe)))
        if not batch.num_rows:
            return batch
        times = batch.column("open_time").cast(pa.int64()).to_numpy()
        if self.last_closed is not None and times.min() <= self.last_closed:
            keep = times > self.last_closed
            batch = batch.filter(pa.array(keep))
            times = times[keep]
        closed = batch.column("closed").to_numpy(zero_copy_only=False)
        if closed.any():
            self.last_closed = int(times[closed].max())
        return batch

    def _catch_up_from_store(self) -> None:
        """Queue the closed candles stored after the last one delivered (what the ring no longer has)."""
        if self.store is None or self.last_closed is None:
            return
        symbol, timeframe = self.key
        table = self.store.read_table(self.exchange, symbol, timeframe, start=self.last_closed + self.step)
        if not table.num_rows:
            return
        n = table.num_rows
        columns = {"symbol": pa.repeat(pa.scalar(symbol, pa.string()), n),
                   "timeframe": pa.repeat(pa.scalar(timeframe, pa.string()), n),
                   **{name: table.column(name) for name in ("open_time", "open", "high", "low", "close", "volume")},
                   "closed": pa.array(np.ones(n, dtype=bool)), "event_time": table.column("open_time")}
        batch = pa.table(columns, schema=CANDLE_BATCH_SCHEMA).combine_chunks().to_batches()[0]
        self.last_closed = int(table.column("open_time").cast(pa.int64())[-1].as_py())
        log.info("feed.consumer_caught_up", symbol=symbol, timeframe=timeframe, candles=n)
        self._ready.append(batch)


def _recoverable(exc: Exception) -> bool:
    import ray.exceptions

    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                            ray.exceptions.OwnerDiedError))


def subscribe(source: Any, symbol: str, timeframe: str, *, store: str | None = None, exchange: str = "binance",
              poll_timeout: float = 1.0, closed_only: bool = False) -> Subscription:
    """Candle batches of one series as an async iterator (``store``: where to read missed candles;
    ``closed_only``: only batches that close a candle of it, not every update of the forming one)."""
    return Subscription(source, "candles", (symbol, timeframe), store=store, exchange=exchange,
                        poll_timeout=poll_timeout, closed_only=closed_only)


def subscribe_trades(source: Any, symbol: str, *, poll_timeout: float = 1.0) -> Subscription:
    """Trade batches of one symbol as an async iterator."""
    return Subscription(source, "trades", symbol, poll_timeout=poll_timeout)


async def latest(source: Any, symbol: str, timeframe: str, n: int = 100) -> pd.DataFrame:
    """The last ``n`` closed candles of a series as an OHLCV frame indexed by UTC open time."""
    if _is_actor(source):
        return await source.latest.remote(symbol, timeframe, n)
    return source.latest(symbol, timeframe, n)
