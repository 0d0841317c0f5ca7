"""``tradpal-ray stream``: live feeds with a health table (the work is in :mod:`tradpal_ray.cli._stream`)."""

from __future__ import annotations

from typing import Annotated

import typer

from tradpal_ray.cli.app import (
    AddressOption,
    ExchangeOption,
    ExchangeUrlOption,
    NameOption,
    ReplaceOption,
    StoreOption,
    app,
)


@app.command()
def stream(
    symbols: Annotated[str, typer.Option("--symbols", help="Comma-separated unified symbols, e.g. BTC/USDT,ETH/USDT.")],
    timeframes: Annotated[str, typer.Option("--timeframes", help="Comma-separated candle timeframes, e.g. 1m,5m.")] = "1m",
    exchange: ExchangeOption = None,
    exchange_url: ExchangeUrlOption = None,
    store: StoreOption = None,
    connector: Annotated[str, typer.Option("--connector", help="native (Binance, fastest) or ccxt (any exchange).")] = "native",
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after S seconds (default: Ctrl-C).", show_default=False)] = None,
    trades: Annotated[bool, typer.Option("--trades/--no-trades", help="Also stream trades.")] = True,
    shard: Annotated[str, typer.Option("--shard", help="Feed shard name: the actor is feed:<exchange>:<shard>@<name>.")] = "0",
    address: AddressOption = None,
    name: NameOption = None,
    replace: ReplaceOption = False,
) -> None:
    """Stream live candles (and trades) into the object store and the candle store, with a live health table."""
    from tradpal_ray.cli._stream import run_stream

    run_stream(symbols, timeframes, exchange, exchange_url, store, connector, duration, trades, shard, address, name, replace)
