"""``tradpal-ray demo``: the whole pipeline in laptop mode (the work is in :mod:`tradpal_ray.cli._demo`)."""

from __future__ import annotations

from typing import Annotated

import typer

from tradpal_ray.cli.app import AddressOption, NameOption, ReplaceOption, StoreOption, app

DEMO_SYMBOLS = "BTC/USDT,ETH/USDT,SOL/USDT,BNB/USDT,XRP/USDT"


@app.command()
def demo(
    symbols: Annotated[str, typer.Option("--symbols", help="Comma-separated symbols to simulate.")] = DEMO_SYMBOLS,
    days: Annotated[float, typer.Option("--days", help="Days of 1m history to backfill.", min=0.1)] = 7.0,
    speed: Annotated[float, typer.Option("--speed", help="Simulator clock speed (simulated seconds per second; it never passes the wall clock).", min=0.01)] = 60.0,
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after S seconds (default: at Ctrl-C).", min=0, show_default=False)] = None,
    port: Annotated[int, typer.Option("--port", help="Port of the statistics API.", min=1, max=65535)] = 8000,
    live: Annotated[bool, typer.Option("--live", help="Use the real exchange (needs internet) instead of the simulator.")] = False,
    store: StoreOption = None,
    address: AddressOption = None,
    name: NameOption = None,
    replace: ReplaceOption = False,
) -> None:
    """Simulator + backfill + live feeds + sweep on Ray + statistics API, in laptop mode."""
    from tradpal_ray.cli._demo import run_demo

    run_demo(symbols, days, speed, duration, port, live, store, address, name, replace)
