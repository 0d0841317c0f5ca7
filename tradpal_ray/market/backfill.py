"""History backfill: page through an exchange's REST klines into the candle store.

Resumable (only what lies before the first or after the last stored candle of the range is
fetched), idempotent (the store upserts), concurrent across symbols, and patient with
rate limits (:mod:`tradpal_ray.market.retry`). Only closed candles are stored: the range
ends at the exchange's current forming candle.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tradpal_ray.errors import ConfigError
from tradpal_ray.log import get_logger
from tradpal_ray.market.markets import MarketInfoStore, market_info
from tradpal_ray.market.retry import Backoff, call_with_retry
from tradpal_ray.market.schema import candles_table, timeframe_ms
from tradpal_ray.market.store import CandleStore, Gap

log = get_logger(__name__)

PAGE_LIMIT = 1000
"""Candles per REST page (Binance's maximum)."""

ProgressCallback = Callable[[str, int, int], None]
"""``(symbol, candles_done, candles_total)`` after every page written."""


@dataclass
class BackfillReport:
    """What one symbol's backfill did."""

    symbol: str
    timeframe: str
    rows_written: int = 0
    pages: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    gaps: list[Gap] = field(default_factory=list)


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


async def validate_request(client: Any, symbols: Sequence[str], timeframe: str, policy: Backoff) -> dict[str, Any]:
    """Load markets and reject unknown symbols or timeframes, listing valid ones; the markets."""
    timeframe_ms(timeframe)
    if client.timeframes and timeframe not in client.timeframes:
        raise ConfigError(f"{client.id} has no timeframe {timeframe!r}; valid: {', '.join(client.timeframes)}")
    markets = await call_with_retry(client.load_markets, policy=policy, what=f"{client.id} load_markets", client=client)
    unknown = [symbol for symbol in symbols if symbol not in markets]
    if unknown:
        valid = sorted(markets)
        shown = ", ".join(valid[:20]) + (f", ... ({len(valid)} in all)" if len(valid) > 20 else "")
        raise ConfigError(f"unknown symbol(s) {', '.join(unknown)} on {client.id}; valid: {shown}")
    return markets


def ranges_to_fetch(since: int, until: int, stored_first: int | None, stored_last: int | None, step: int) -> list[tuple[int, int]]:
    """The [start, end) open-time ranges still missing at the head and tail of [since, until)."""
    if stored_first is None or stored_last is None or stored_last < since or stored_first >= until:
        return [(since, until)] if since < until else []
    ranges = []
    if since < stored_first:
        ranges.append((since, stored_first))
    if stored_last + step < until:
        ranges.append((stored_last + step, until))
    return ranges


async def iter_kline_pages(
    client: Any,
    symbol: str,
    timeframe: str,
    start: int,
    end: int | None,
    *,
    policy: Backoff = Backoff(),
    what: str = "klines",
) -> AsyncIterator[list[list[float]]]:
    """Pages of REST klines ``[t, o, h, l, c, v]`` with open time in ``[start, end)``, oldest first.

    ``end=None`` pages up to the newest candle, which may still be forming. Shared by the
    history backfill and the live feeds' gap repair.
    """
    step = timeframe_ms(timeframe)
    cursor = start
    while end is None or cursor < end:
        params = {} if end is None else {"endTime": end - 1}
        rows = await call_with_retry(
            lambda: client.fetch_ohlcv(symbol, timeframe, since=cursor, limit=PAGE_LIMIT, params=params),
            policy=policy,
            what=f"{what} {symbol} {timeframe}",
            client=client,
        )
        rows = [row for row in rows if cursor <= row[0] and (end is None or row[0] < end)]
        if not rows:
            return
        yield rows
        if end is None and len(rows) < PAGE_LIMIT:
            return  # a short open-ended page reached the newest candle
        cursor = rows[-1][0] + step


async def backfill_symbol(
    client: Any,
    store: CandleStore,
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
    since: int,
    until: int,
    policy: Backoff = Backoff(),
    on_progress: ProgressCallback | None = None,
) -> BackfillReport:
    """Fetch the closed candles of ``symbol`` in [since, until) missing from ``store``."""
    step = timeframe_ms(timeframe)
    since = -(-since // step) * step  # first open time at or after since
    report = BackfillReport(symbol, timeframe)
    stored = store.read_table(exchange, symbol, timeframe, since, until).column("open_time")
    stored_first = stored[0].value if len(stored) else None
    stored_last = stored[-1].value if len(stored) else None
    ranges = ranges_to_fetch(since, until, stored_first, stored_last, step)
    total = sum(-(-(end - start) // step) for start, end in ranges)
    done = 0
    for start, end in ranges:
        cursor = start
        async for rows in iter_kline_pages(client, symbol, timeframe, start, end, policy=policy, what=f"{exchange} klines"):
            table = candles_table(rows, exchange=exchange, symbol=symbol, timeframe=timeframe)
            await asyncio.to_thread(store.write, table)
            report.rows_written += len(rows)
            report.pages += 1
            done += (rows[-1][0] + step - cursor) // step
            cursor = rows[-1][0] + step
            if on_progress:
                on_progress(symbol, min(done, total), total)
    report.gaps = store.gaps(exchange, symbol, timeframe, since, until)
    coverage = store.read_table(exchange, symbol, timeframe, since, until).column("open_time")
    if len(coverage):
        report.first_ms, report.last_ms = coverage[0].value, coverage[-1].value
    log.info("backfill.done", exchange=exchange, symbol=symbol, timeframe=timeframe,
             rows=report.rows_written, pages=report.pages, gaps=len(report.gaps))
    return report


async def backfill(
    client: Any,
    store: CandleStore,
    *,
    exchange: str,
    symbols: Sequence[str],
    timeframe: str,
    since: int,
    until: int | None = None,
    concurrency: int = 4,
    policy: Backoff = Backoff(),
    on_progress: ProgressCallback | None = None,
) -> list[BackfillReport]:
    """Backfill ``symbols`` concurrently; ``until`` defaults to the forming candle (exclusive).

    ``client`` is an asyncio ccxt client (``create_exchange(..., pro=True)``); the caller
    opens and closes it. Raises ConfigError for bad input and ExchangeUnavailable when the
    exchange does not answer within ``policy``.
    """
    step = timeframe_ms(timeframe)
    markets = await validate_request(client, symbols, timeframe, policy)
    MarketInfoStore(store.root).record(
        exchange, {s: market_info(s, markets[s], getattr(client, "precisionMode", 4)) for s in symbols})
    now = await call_with_retry(client.fetch_time, policy=policy, what=f"{exchange} time", client=client)
    forming = (now // step) * step
    until = forming if until is None else min(until, forming)
    if since >= until:
        raise ConfigError(
            f"since ({_iso(since)}) must be before until ({_iso(until)}); the current candle opened {_iso(forming)}"
        )
    gate = asyncio.Semaphore(concurrency)

    async def one(symbol: str) -> BackfillReport:
        async with gate:
            return await backfill_symbol(client, store, exchange=exchange, symbol=symbol, timeframe=timeframe,
                                         since=since, until=until, policy=policy, on_progress=on_progress)

    return list(await asyncio.gather(*(one(symbol) for symbol in symbols)))
