"""``tradpal-ray demo``: the whole pipeline on one machine, against the built-in simulator.

Steps, in data-flow order: Redis -> exchange simulator -> history backfill -> feed actors
streaming live -> sweep on Ray -> statistics API on Ray Serve -> the leaderboard read back
over HTTP. It then runs until Ctrl-C or ``--duration`` and stops everything it started, in
reverse order, after the feeds flushed every closed candle to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import pandas as pd
import typer
from rich.live import Live
from rich.progress import Progress
from rich.table import Table

from tradpal_ray.backtest import BacktestConfig
from tradpal_ray.cli.app import StoreOption, app, console, settings_for
from tradpal_ray.cli.data import print_store, run_backfill
from tradpal_ray.cli.sweep import print_results, render
from tradpal_ray.cluster import connect, dashboard_url
from tradpal_ray.config import Settings, split_list
from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.market import CandleStore
from tradpal_ray.runs import SweepOutcome, SweepRequest, run_sweep
from tradpal_ray.serve.launch import ServeOptions, deploy_stats, prepare_environment
from tradpal_ray.stats.local_redis import RedisProcess, redis_available

DEMO_SYMBOLS = "BTC/USDT,ETH/USDT,SOL/USDT,BNB/USDT,XRP/USDT"
DEMO_GRID = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
DEMO_COSTS = BacktestConfig(fee=0.001)
"""Sizes come from each market's lot step, recorded by the backfill."""
"""Crypto sizing: fractional units down to one satoshi, 0.1 % fee per side."""


def start_redis(stack: contextlib.ExitStack) -> str | None:
    """A private redis-server for the stats cache, or None (store-only answers) with a warning.

    The server's stop is registered before it starts, so one that never answers is not left running.
    """
    if not redis_available():
        console.print("[yellow]warning:[/yellow] no redis-server here: the API answers from the store, uncached "
                      "(`make demo` installs it)", highlight=False)
        return None
    server = RedisProcess(Path(stack.enter_context(tempfile.TemporaryDirectory())))
    stack.callback(server.stop)
    try:
        server.start()
    except (AssertionError, OSError) as exc:  # RedisProcess.start raises AssertionError when PING never answers
        server.stop()
        console.print(f"[yellow]warning:[/yellow] redis-server did not start ({exc}): the API answers from the "
                      "store, uncached", highlight=False)
        return None
    console.print(f"redis-server on 127.0.0.1:{server.port}", highlight=False)
    return server.url


def backfill_history(settings: Settings, symbols: list[str], days: float) -> None:
    """Fetch ``days`` of closed 1m candles for ``symbols`` into the store and list the store."""
    console.rule("history backfill")
    since = int((time.time() - days * 86_400) * 1000) // 60_000 * 60_000
    asyncio.run(run_backfill(settings, symbols, "1m", since, None))
    print_store(CandleStore(settings.store))


def start_feeds(settings: Settings, symbols: list[str], stack: contextlib.ExitStack) -> Any:
    """One feed actor streaming 1m candles and trades of ``symbols`` into the store; stopped (flushed) on exit."""
    import ray

    from tradpal_ray.feeds import FeedConfig, start_feed

    console.rule("live feeds")
    config = FeedConfig(symbols=tuple(symbols), timeframes=("1m",), exchange=settings.exchange,
                        url=settings.exchange_url, store=settings.store)
    feed = start_feed(config)
    stack.callback(lambda: (ray.get(feed.stop.remote(), timeout=60), ray.kill(feed)))
    ray.get(feed.ready.remote(), timeout=120)
    console.print(f"feed actor {config.name} streaming {', '.join(symbols)} (1m candles, trades)", highlight=False)
    return feed


def sweep_history(settings: Settings, symbols: list[str]) -> SweepOutcome:
    """Run the sma_cross grid over every symbol on Ray and print the summary tables."""
    console.rule("parameter sweep on Ray")
    request = SweepRequest(strategy="sma_cross", grid=DEMO_GRID, symbols=symbols, exchange=settings.exchange,
                           timeframe="1m", metric="return_pct", config=DEMO_COSTS)
    request, _ = request.with_market_units(settings.store)
    with Progress(console=console) as progress:
        task = progress.add_task("sweep chunks", total=None)
        outcome = run_sweep(request, store=settings.store, executor="ray",
                            on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    render(outcome, top=5)
    return outcome


def leaderboard_from_api(url: str, run_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The run's top 10 as the statistics API serves it (waiting until it does), printed as a table."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            try:
                answer = client.get(f"/runs/{run_id}/leaderboard", params={"top": 10})
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"the statistics API at {url} did not serve run {run_id} within {timeout:.0f} s")
            time.sleep(0.25)  # polling a server that is still starting
    rows = orjson.loads(answer.content)["results"]
    if not rows:  # every symbol failed: there is no table to show (and no columns to build one from)
        console.print(f"[yellow]warning:[/yellow] the leaderboard of run {run_id} is empty: the sweep kept no result",
                      highlight=False)
        return rows
    frame = pd.DataFrame([{**row, **row["params"]} for row in rows])
    print_results(f"leaderboard served at {url}/runs/{run_id}/leaderboard", frame, list(rows[0]["params"]))
    return rows


def feed_table(status: dict[str, Any]) -> Table:
    """One row per stream: messages, closed candles, lag, mode; the connection in the title."""
    title = (f"feed {status.get('name', '')}: {status.get('mode', '-')}, reconnects {status.get('reconnects', 0)}, "
             f"stored {status.get('stored_rows', 0)} candles")
    table = Table("symbol", "stream", "messages", "closed", "lag ms", title=title)
    for stream in status.get("streams", []):
        table.add_row(stream["symbol"], stream["stream"], str(stream["messages"]),
                      str(stream.get("closed", "")), _lag(stream["lag_ms"]))
    return table


def _lag(lag_ms: int | None) -> str:
    # The simulator's clock runs ``--speed`` times faster than the wall clock, so its events
    # look like they come from the future: there is no meaningful lag to show then.
    return "-" if lag_ms is None or lag_ms < 0 else str(lag_ms)


def watch(feed: Any, duration: float | None) -> dict[str, Any]:
    """Show the feed's status live until ``duration`` passes (or Ctrl-C); the last status."""
    import ray

    deadline = time.monotonic() + duration if duration is not None else None
    status = ray.get(feed.status.remote())
    with contextlib.suppress(KeyboardInterrupt), Live(feed_table(status), console=console, refresh_per_second=2) as live:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1.0)  # the refresh cadence of the table
            status = ray.get(feed.status.remote())
            live.update(feed_table(status))
    console.print()
    return status


@app.command()
def demo(
    symbols: Annotated[str, typer.Option("--symbols", help="Comma-separated symbols to simulate.")] = DEMO_SYMBOLS,
    days: Annotated[float, typer.Option("--days", help="Days of 1m history to backfill.", min=0.1)] = 7.0,
    speed: Annotated[float, typer.Option("--speed", help="Simulator clock speed (simulated seconds per second).", min=0.01)] = 60.0,
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after S seconds (default: at Ctrl-C).", min=0, show_default=False)] = None,
    port: Annotated[int, typer.Option("--port", help="Port of the statistics API.", min=1, max=65535)] = 8000,
    live: Annotated[bool, typer.Option("--live", help="Use the real exchange (needs internet) instead of the simulator.")] = False,
    store: StoreOption = None,
) -> None:
    """Simulator + backfill + live feeds + sweep on Ray + statistics API, in laptop mode."""
    from tradpal_ray.sim import run_simulator

    settings = settings_for(store=store)
    wanted = split_list(symbols)
    if not wanted:
        raise ConfigError("--symbols is empty")
    with contextlib.ExitStack() as stack:
        redis_url = start_redis(stack)
        if redis_url:
            settings = settings.override(redis_url=redis_url)
        if not live:
            sim = stack.enter_context(run_simulator(wanted, speed=speed))
            console.print(f"exchange simulator at {sim.url} ({speed:g}x real time)", highlight=False)
            settings = settings.override(exchange="binance", exchange_url=sim.url)
        run_pipeline(settings, wanted, days, port, duration, stack)
    console.print("demo stopped: feeds flushed, Serve, Ray, simulator and Redis shut down", highlight=False)


def run_pipeline(settings: Settings, symbols: list[str], days: float, port: int, duration: float | None,
                 stack: contextlib.ExitStack) -> None:
    """The demo's steps against whatever exchange ``settings`` point at; ``stack`` undoes them."""
    import ray
    from ray import serve

    backfill_history(settings, symbols, days)
    options = prepare_environment(settings, ServeOptions(host="127.0.0.1", port=port, fast=False))
    connect(log_to_driver=False)
    stack.callback(ray.shutdown)
    feed = start_feeds(settings, symbols, stack)
    outcome = sweep_history(settings, symbols)
    console.rule("statistics API")
    url = deploy_stats(options, settings.store)
    stack.callback(serve.shutdown)
    leaderboard_from_api(url, outcome.run_id)
    console.print(f"statistics API: {url}/docs   page: {url}/   Ray dashboard: {dashboard_url() or 'not running'}",
                  highlight=False)
    console.print("streaming; Ctrl-C stops" if duration is None else f"streaming for {duration:g} s", highlight=False)
    status = watch(feed, duration)
    closed = sum(stream.get("closed", 0) for stream in status.get("streams", []))
    console.print(f"feed delivered {closed} closed candles", highlight=False)
    if closed == 0 and duration and duration >= 10:
        raise TradpalError("the feed delivered no closed candle")
