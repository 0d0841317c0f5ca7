"""Market-data commands: ``fetch`` (history backfill) and ``candles`` (what the store holds)."""

from __future__ import annotations

from typing import Annotated

import typer

from tradpal_ray.cli.app import ExchangeOption, ExchangeUrlOption, StoreOption, app, settings_for
from tradpal_ray.errors import ConfigError


@app.command()
def fetch(
    symbols: Annotated[str, typer.Option("--symbols", help="Comma-separated unified symbols, e.g. BTC/USDT,ETH/USDT.")],
    since: Annotated[str, typer.Option("--since", help="Start (ISO 8601 UTC), e.g. 2024-01-01.")],
    timeframe: Annotated[str, typer.Option("--timeframe", help="1m, 5m, 15m, 1h, 4h or 1d.")] = "1m",
    until: Annotated[str | None, typer.Option("--until", help="End, exclusive (default: now).", show_default=False)] = None,
    exchange: ExchangeOption = None,
    exchange_url: ExchangeUrlOption = None,
    store: StoreOption = None,
) -> None:
    """Backfill closed candles over REST into the store: resumable, idempotent, rate-limit aware."""
    import asyncio

    from tradpal_ray.cli._data import print_backfill, run_backfill
    from tradpal_ray.config import split_list
    from tradpal_ray.market import to_ms

    settings = settings_for(store=store, exchange=exchange, exchange_url=exchange_url)
    wanted = split_list(symbols)
    if not wanted:
        raise ConfigError("--symbols is empty; give e.g. --symbols BTC/USDT,ETH/USDT")
    print_backfill(asyncio.run(run_backfill(settings, wanted, timeframe, to_ms(since), to_ms(until))))


@app.command()
def candles(store: StoreOption = None) -> None:
    """List the candle series in the store: rows, first and last candle, missing candles.

    A series with an unreadable file is listed with the file named; the command then exits 1.
    """
    from tradpal_ray.cli._data import print_store
    from tradpal_ray.market.store import CandleStore

    settings = settings_for(store=store)
    if print_store(CandleStore(settings.store)):
        raise typer.Exit(1)
