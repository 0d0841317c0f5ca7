"""``tradpal-ray demo``: the whole pipeline on one machine, against the built-in simulator.

Steps: simulator -> history backfill -> sweep on Ray -> leaderboard. Each step is a small
function so the order reads as the data flow. Everything started is stopped on exit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer
from rich.progress import Progress

from tradpal_ray.backtest import BacktestConfig
from tradpal_ray.backtest.distributed import SweepOutcome, SweepRequest, run_sweep
from tradpal_ray.cli.app import StoreOption, app, console, settings_for
from tradpal_ray.cli.data import print_store, run_backfill
from tradpal_ray.cli.sweep import render
from tradpal_ray.cluster import connect
from tradpal_ray.config import Settings, split_list
from tradpal_ray.errors import ConfigError
from tradpal_ray.market import CandleStore

DEMO_SYMBOLS = "BTC/USDT,ETH/USDT,SOL/USDT,BNB/USDT,XRP/USDT"
DEMO_GRID = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
DEMO_COSTS = BacktestConfig(size_unit=1e-8, fee=0.001)
"""Crypto sizing: fractional units down to one satoshi, 0.1 % fee per side."""


def backfill_history(settings: Settings, symbols: list[str], days: float) -> None:
    """Fetch ``days`` of closed 1m candles for ``symbols`` into the store and list the store."""
    console.rule("history backfill")
    since = int((time.time() - days * 86_400) * 1000) // 60_000 * 60_000
    asyncio.run(run_backfill(settings, symbols, "1m", since, None))
    print_store(CandleStore(settings.store))


def sweep_history(settings: Settings, symbols: list[str]) -> SweepOutcome:
    """Run the sma_cross grid over every symbol on Ray and print the leaderboard."""
    console.rule("parameter sweep on Ray")
    request = SweepRequest(strategy="sma_cross", grid=DEMO_GRID, symbols=symbols, exchange=settings.exchange,
                           timeframe="1m", metric="return_pct", config=DEMO_COSTS)
    with Progress(console=console) as progress:
        task = progress.add_task("sweep chunks", total=None)
        outcome = run_sweep(request, store=settings.store,
                            on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    render(outcome, top=10)
    return outcome


@app.command()
def demo(
    symbols: Annotated[str, typer.Option("--symbols", help="Comma-separated symbols to simulate.")] = DEMO_SYMBOLS,
    days: Annotated[float, typer.Option("--days", help="Days of 1m history to backfill.", min=0.1)] = 7.0,
    speed: Annotated[float, typer.Option("--speed", help="Simulator clock speed (simulated seconds per second).", min=0.01)] = 60.0,
    live: Annotated[bool, typer.Option("--live", help="Use the real exchange (needs internet) instead of the simulator.")] = False,
    store: StoreOption = None,
) -> None:
    """Simulator + backfill + sweep on Ray, in laptop mode; prints what each step produced."""
    from tradpal_ray.sim import run_simulator

    settings = settings_for(store=store)
    wanted = split_list(symbols)
    if not wanted:
        raise ConfigError("--symbols is empty")
    if live:
        run_pipeline(settings, wanted, days)
        return
    with run_simulator(wanted, speed=speed) as sim:
        console.print(f"exchange simulator at {sim.url} ({speed:g}x real time)")
        run_pipeline(settings.override(exchange="binance", exchange_url=sim.url), wanted, days)


def run_pipeline(settings: Settings, symbols: list[str], days: float) -> None:
    """The demo's steps against whatever exchange ``settings`` point at."""
    backfill_history(settings, symbols, days)
    connect()
    sweep_history(settings, symbols)
