"""``tradpal-ray demo``: the whole pipeline on one machine, against the built-in simulator.

Steps, in data-flow order: Redis -> exchange simulator -> history backfill -> feed actors
streaming live -> sweep on Ray -> statistics API on Ray Serve -> the leaderboard read back
over HTTP -> paper traders for the sweep's best results on the live feed (the incubator). It
then runs until Ctrl-C or ``--duration``, shows the traders as the live API serves them, and
stops everything it started, in reverse order, after the feeds flushed every closed candle to
the store.

The simulator's candles go under exchange ``sim``, never ``binance``. Its clock starts in the
past (at a UTC midnight early enough for the run at ``--speed``, or where the last demo's
candles end) and never runs ahead of the wall clock; the sweep ranks the ``--days`` before that
midnight, so every demo of a day shows the same leaderboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
from rich.live import Live
from rich.progress import Progress
from rich.table import Table

from tradpal_ray.backtest import BacktestConfig
from tradpal_ray.cli._data import print_store, run_backfill
from tradpal_ray.cli.app import console, settings_for
from tradpal_ray.cli.sweep import print_results, render
from tradpal_ray.cluster import connect, dashboard_url, instance_name
from tradpal_ray.config import Settings, split_list
from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.market import CandleStore
from tradpal_ray.market.exchange import SIMULATOR
from tradpal_ray.runs import SweepOutcome, SweepRequest, run_sweep
from tradpal_ray.serve.launch import ServeOptions, app_name, deploy_stats, prepare_environment, stop_stats
from tradpal_ray.stats.local_redis import RedisProcess, redis_available

DEMO_GRID = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
DEMO_COSTS = BacktestConfig(fee=0.001)
"""Sizes come from each market's lot step, recorded by the backfill; 0.1 % fee per side."""
DEMO_TRADERS = 3
"""Paper traders started for the sweep's best results."""
DAY_MS = 86_400_000
MINUTE_MS = 60_000
Window = tuple[int, int]
"""``[since, until)`` in ms."""


def history_window(days: float, speed: float, duration: float | None, now_ms: int) -> Window:
    """The ``days`` of history the demo backfills and sweeps: those before the UTC midnight at
    which the simulator's clock may start to run ``duration`` (default an hour) at ``speed``
    without passing the wall clock. The same for every run of a day: so is the leaderboard."""
    from tradpal_ray.sim.stream import DEFAULT_RUN_S, start_for_run

    until = start_for_run(speed, DEFAULT_RUN_S if duration is None else duration, now_ms) // DAY_MS * DAY_MS
    return until - int(days * DAY_MS), until


def simulator_start(store: CandleStore, symbols: list[str], window: Window, now_ms: int) -> int:
    """Where the simulator's clock starts: at the end of the history window, or where the
    candles of an earlier demo end (the oldest last candle over ``symbols``), so a second run
    streams new candles instead of replaying stored ones. Never after ``now_ms``."""
    lasts = [store.last_open_time(SIMULATOR, symbol, "1m") for symbol in symbols]
    resume = min((last + MINUTE_MS if last is not None else window[1]) for last in lasts)
    return min(max(window[1], resume), now_ms // MINUTE_MS * MINUTE_MS)


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


def backfill_history(settings: Settings, symbols: list[str], window: Window) -> None:
    """Fetch the closed 1m candles of ``window`` for ``symbols`` into the store and list the store."""
    console.rule("history backfill")
    asyncio.run(run_backfill(settings, symbols, "1m", *window))
    print_store(CandleStore(settings.store))


def start_feeds(settings: Settings, symbols: list[str], stack: contextlib.ExitStack, instance: str,
                replace: bool) -> Any:
    """One feed actor streaming 1m candles and trades of ``symbols`` into the store; stopped (flushed) on exit."""
    import ray

    from tradpal_ray.feeds import FeedConfig, start_feed
    from tradpal_ray.feeds.actor import actor_name

    console.rule("live feeds")
    config = FeedConfig(symbols=tuple(symbols), timeframes=("1m",), exchange=settings.exchange,
                        url=settings.exchange_url, store=settings.store)
    feed = start_feed(config, instance=instance, if_running="replace" if replace else "refuse")
    stack.callback(lambda: (ray.get(feed.stop.remote(), timeout=60), ray.kill(feed)))
    ray.get(feed.ready.remote(), timeout=120)
    console.print(f"feed actor {actor_name(config, instance)} streaming {', '.join(symbols)} (1m candles, trades)", highlight=False)
    return feed


def sweep_history(settings: Settings, symbols: list[str], window: Window) -> SweepOutcome:
    """Run the sma_cross grid over the history ``window`` of every symbol on Ray and print the summary tables."""
    console.rule("parameter sweep on Ray")
    since, until = (pd.Timestamp(ms, unit="ms", tz="UTC").isoformat() for ms in window)
    request = SweepRequest(strategy="sma_cross", grid=DEMO_GRID, symbols=symbols, exchange=settings.exchange,
                           timeframe="1m", since=since, until=until, metric="return_pct", config=DEMO_COSTS)
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


def start_traders(settings: Settings, run_id: str, where: DemoRay, stack: contextlib.ExitStack) -> list[str]:
    """Paper traders for the :data:`DEMO_TRADERS` best results of the sweep, on the streaming feed
    (the incubator: each compares its live trades and return with its backtest); stopped on exit."""
    import ray

    from tradpal_ray.trading._incubator import incubate
    from tradpal_ray.trading._risk import RiskLimits
    from tradpal_ray.trading.actor import start_trader, stop_trader

    console.rule("paper traders")
    specs = incubate(settings.store, run_id, DEMO_TRADERS, limits=RiskLimits(), exchange=settings.exchange,
                     exchange_url=settings.exchange_url, prefix="demo")
    handles = []
    for spec in specs:
        handle = start_trader(spec, instance=where.instance, redis_url=where.redis_url)
        # The callback holds the handle: an actor that is not detached lives as long as a handle does.
        stack.callback(lambda name=spec.name, _handle=handle: stop_trader(where.instance, name, flatten=False))
        handles.append(handle)
    ray.get([handle.ready() for handle in handles], timeout=120)  # their books are rebuilt side by side
    for spec in specs:
        params = " ".join(f"{k}={v}" for k, v in spec.params.items())
        console.print(f"paper trader {spec.name}: {spec.strategy} {params} on {', '.join(spec.symbols)} "
                      f"{spec.timeframe} (backtest {spec.backtest['metric']} rank {spec.backtest['rank']})", highlight=False)
    return [spec.name for spec in specs]


def traders_from_api(url: str, names: list[str]) -> list[dict[str, Any]]:
    """The demo's traders as ``/live/traders`` serves them (from the ledger, via the cache), printed as a table."""
    with httpx.Client(base_url=url, timeout=10) as client:
        answer = client.get("/live/traders")
    if answer.status_code != 200:
        console.print(f"[yellow]warning:[/yellow] {url}/live/traders answered {answer.status_code}", highlight=False)
        return []
    rows = [row for row in orjson.loads(answer.content)["traders"] if row["name"] in names]
    table = Table("trader", "status", "position", "trades", "PnL", "equity", "latency ms",
                  title=f"paper traders served at {url}/live/traders")
    for row in rows:
        position = ", ".join(f"{p['symbol']} {p['units']:g}" for p in row["positions"]) or "-"
        equity = row["equity"]["equity"] if row["equity"] else None
        latency = (row["last_decision"] or {}).get("latency_ms")
        table.add_row(row["name"], row["status"] or "-", position, str(row["trades"]["closed"]),
                      f"{row['realized_pnl']:,.2f}", "-" if equity is None else f"{equity:,.2f}",
                      "-" if latency is None else f"{latency:,.1f}")
    console.print(table)
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
    # Measured by the feed against the exchange's own clock (the simulator's runs in the past,
    # faster); a few ms below zero is that clock's estimate, not a frame from the future.
    return "-" if lag_ms is None else str(max(lag_ms, 0))


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


def run_demo(symbols: str, days: float, speed: float, duration: float | None, port: int, live: bool, store: str | None, address: str | None, name: str | None, replace: bool) -> None:
    """The body of ``tradpal-ray demo`` (see :mod:`tradpal_ray.cli.demo`): simulator + backfill + live feeds + sweep on Ray + statistics API, in laptop mode."""
    from tradpal_ray.sim import run_simulator

    settings = settings_for(store=store)
    wanted = split_list(symbols)
    if not wanted:
        raise ConfigError("--symbols is empty")
    instance = instance_name(name, settings.store)
    now_ms = int(time.time() * 1000)
    with contextlib.ExitStack() as stack:
        redis_url = start_redis(stack)
        if redis_url:
            settings = settings.override(redis_url=redis_url)
        if live:
            window = (now_ms - int(days * DAY_MS)) // MINUTE_MS * MINUTE_MS, now_ms // MINUTE_MS * MINUTE_MS
            exchange_now = lambda: int(time.time() * 1000)  # noqa: E731
        else:
            window = history_window(days, speed, duration, now_ms)
            start = simulator_start(CandleStore(settings.store), wanted, window, now_ms)
            sim = stack.enter_context(run_simulator(wanted, speed=speed, start=start))
            console.print(f"exchange simulator at {sim.url} ({speed:g}x real time from "
                          f"{pd.Timestamp(start, unit='ms', tz='UTC'):%Y-%m-%d %H:%M} UTC; its candles go under "
                          f"exchange '{SIMULATOR}')", highlight=False)
            settings = settings.override(exchange=SIMULATOR, exchange_url=sim.url)
            exchange_now = sim.now_ms
        run_pipeline(settings, wanted, window, port, duration, stack,
                     DemoRay(address=address, instance=instance, replace=replace, redis_url=redis_url), exchange_now)
    console.print("demo stopped: feeds flushed, Serve, Ray, simulator and Redis shut down", highlight=False)


@dataclass(frozen=True)
class DemoRay:
    """Where the demo's Ray parts run and what they are called."""

    address: str | None
    """None: a private local Ray (or RAY_ADDRESS)."""
    instance: str
    replace: bool
    redis_url: str | None = None
    """The demo's own Redis (the statistics cache that every trader's ledger write invalidates), if it started one."""


def run_pipeline(settings: Settings, symbols: list[str], window: Window, port: int, duration: float | None,
                 stack: contextlib.ExitStack, where: DemoRay, exchange_now: Callable[[], int]) -> None:
    """The demo's steps against whatever exchange ``settings`` point at; ``stack`` undoes them.

    ``exchange_now`` is the exchange's clock: a run that covered a few candles of it must have
    delivered some.
    """
    import ray

    backfill_history(settings, symbols, window)
    options = prepare_environment(settings, ServeOptions(host="127.0.0.1", port=port, fast=False))
    mode = connect(where.address, log_to_driver=False)
    if mode != "existing":
        stack.callback(ray.shutdown)
    feed = start_feeds(settings, symbols, stack, where.instance, where.replace)
    outcome = sweep_history(settings, symbols, window)
    console.rule("statistics API")
    app_id = app_name(where.instance)
    deployed = deploy_stats(options, settings.store, app=app_id, replace=where.replace)
    stack.callback(stop_stats, app_id)  # through Serve's API, before Ray stops
    console.print(deployed.describe(), highlight=False)
    leaderboard_from_api(deployed.url, outcome.run_id)
    traders = start_traders(settings, outcome.run_id, where, stack)
    console.print(f"statistics API: {deployed.url}/docs   page: {deployed.url}/   "
                  f"Ray dashboard: {dashboard_url() or 'not running'}", highlight=False)
    console.print("streaming; Ctrl-C stops" if duration is None else f"streaming for {duration:g} s", highlight=False)
    streamed_from = exchange_now()
    status = watch(feed, duration)
    closed = sum(stream.get("closed", 0) for stream in status.get("streams", []))
    console.print(f"feed delivered {closed} closed candles", highlight=False)
    traders_from_api(deployed.url, traders)
    if closed == 0 and exchange_now() - streamed_from >= 3 * MINUTE_MS:
        raise TradpalError("the feed delivered no closed candle")
