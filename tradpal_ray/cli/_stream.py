"""``tradpal-ray stream``: run a feed actor and show its health live until Ctrl-C or ``--duration``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.live import Live
from rich.table import Table

from tradpal_ray.cli.app import (
    console,
    settings_for,
)
from tradpal_ray.cluster import connect, instance_name
from tradpal_ray.config import split_list
from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.feeds.feed import FeedConfig, validate_feed
from tradpal_ray.market.retry import Backoff

REFRESH_S = 0.5
CLI_REST_BUDGET = Backoff(retries=3, base=0.25, cap=2.0)
"""The CLI gives up on an exchange that does not answer after ~4 s of retries (plus request timeouts)."""


def _age(now_ms: int, ms: int | None) -> str:
    return "-" if ms is None else f"{(now_ms - ms) / 1000:.1f}s"


def status_table(status: dict[str, Any], rates: dict[tuple[str, str], float]) -> Table:
    """One row per stream of a feed status: mode, messages and rate, last message, lag, candles."""
    title = (f"{status['name']}  connector={status['connector']}  mode={status['mode']}  "
             f"reconnects={status['reconnects']}  stored={status['stored_rows']}")
    table = Table("symbol", "stream", "mode", "messages", "msg/s", "last msg", "lag", "last closed", "closed", "repaired",
                  title=title)
    now = status["now_ms"]
    for row in status["streams"]:
        last_closed = row.get("last_closed_ms")
        table.add_row(
            row["symbol"], row["stream"], row["mode"], str(row["messages"]),
            f"{rates.get((row['symbol'], row['stream']), 0.0):,.0f}", _age(now, row["last_message_ms"]),
            "-" if row["lag_ms"] is None else f"{row['lag_ms'] / 1000:.1f}s",
            "-" if last_closed is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(last_closed / 1000)),
            str(row.get("closed", "")), str(row.get("repaired", "")),
        )
    return table


def _unwrap(exc: Exception) -> Exception:
    """The TradpalError inside a Ray task error, if that is what it carries."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, TradpalError) else exc


def run_stream(symbols: str, timeframes: str, exchange: str | None, exchange_url: str | None, store: str | None, connector: str, duration: float | None, trades: bool, shard: str, address: str | None, name: str | None, replace: bool) -> None:
    """The body of ``tradpal-ray stream`` (see :mod:`tradpal_ray.cli.stream`): stream live candles (and trades) into the object store and the candle store, with a live health table."""
    settings = settings_for(store=store, exchange=exchange, exchange_url=exchange_url)
    wanted = split_list(symbols)
    if not wanted:
        raise ConfigError("--symbols is empty; give e.g. --symbols BTC/USDT,ETH/USDT")
    config = FeedConfig(symbols=tuple(wanted), timeframes=tuple(split_list(timeframes)), exchange=settings.exchange,
                        url=settings.exchange_url, store=settings.store, connector=connector, trades=trades, shard=shard,
                        rest=CLI_REST_BUDGET, request_timeout_ms=5000)
    asyncio.run(validate_feed(config))  # bad symbols/timeframes or a dead exchange fail here, before Ray starts

    instance = instance_name(name, settings.store)

    import ray

    from tradpal_ray.feeds.actor import start_feed

    mode = connect(address, log_to_driver=False)
    try:
        handle = start_feed(config, instance=instance, if_running="replace" if replace else "refuse", max_restarts=-1)
        try:
            try:
                ray.get(handle.ready.remote())
            except ray.exceptions.RayTaskError as exc:
                raise _unwrap(exc) from None
            _watch(ray, handle, duration)
            final = ray.get(handle.stop.remote())
            console.print(status_table(final, {}))
            console.print(f"stopped: {final['stored_rows']} closed candles stored in {settings.store}", highlight=False)
        finally:
            ray.kill(handle)  # our own actor, never another process's (start_feed refused those)
    finally:
        if mode != "existing":
            ray.shutdown()


def _watch(ray: Any, handle: Any, duration: float | None) -> None:
    """Refresh the live table until ``duration`` elapses or Ctrl-C."""
    deadline = None if duration is None else time.monotonic() + duration
    last: dict[tuple[str, str], tuple[int, float]] = {}
    try:
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            while deadline is None or time.monotonic() < deadline:
                status = ray.get(handle.status.remote())
                now = time.monotonic()
                rates = {}
                for row in status["streams"]:
                    key = (row["symbol"], row["stream"])
                    count, at = last.get(key, (row["messages"], now))
                    rates[key] = (row["messages"] - count) / (now - at) if now > at else 0.0
                    last[key] = (row["messages"], now)
                live.update(status_table(status, rates))
                time.sleep(REFRESH_S if deadline is None else max(0.0, min(REFRESH_S, deadline - time.monotonic())))
    except KeyboardInterrupt:
        console.print("stopping: flushing everything to the store...", highlight=False)
