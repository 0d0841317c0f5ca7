"""``tradpal-ray sim``: run the local Binance exchange simulator until Ctrl-C."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from tradpal_ray.cli.app import LogLevelOption, StoreOption, app, console, settings_for
from tradpal_ray.errors import ConfigError


@app.command()
def sim(
    symbols: Annotated[
        str | None,
        typer.Option(
            "--symbols", help="Comma-separated unified symbols, e.g. BTC/USDT,ETH/USDT."
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option(
            "--port", help="Port to listen on (0 picks a free one).", min=0, max=65535
        ),
    ] = 8765,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind.")
    ] = "127.0.0.1",
    speed: Annotated[
        float, typer.Option("--speed", help="Simulated seconds per real second.")
    ] = 1.0,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the synthetic market.")
    ] = 7,
    start: Annotated[
        str | None,
        typer.Option("--start", help="Simulated start time (ISO 8601, in the past); default: early enough "
                     "to run an hour at --speed before the clock meets the wall clock (it never runs ahead)."),
    ] = None,
    replay: Annotated[
        list[str] | None,
        typer.Option(
            "--replay",
            help="Candle file (.parquet/.csv), store root, or 'store' (the --store) to replay; repeatable.",
        ),
    ] = None,
    balance: Annotated[
        str | None,
        typer.Option("--balance", help="Starting balances of the simulated account, e.g. USDT=10000,BTC=0 "
                     "(default USDT=10000)."),
    ] = None,
    fee: Annotated[
        str | None,
        typer.Option("--fee", help="Fee per fill as a fraction of the notional, charged in the quote asset "
                     "(default 0.001)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="API key the simulated account accepts (default: the test key in the README)."),
    ] = None,
    api_secret: Annotated[
        str | None, typer.Option("--api-secret", help="Its secret (default: the test secret in the README).")
    ] = None,
    store: StoreOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Serve Binance spot REST + WebSocket for ccxt from synthetic or replayed candles."""
    from tradpal_ray.sim import open_replay, run_simulator

    settings = settings_for(store=store, log_level=log_level)
    from tradpal_ray.config import split_list

    names = split_list(symbols)
    locations = [settings.store if location == "store" else location for location in replay or []]
    source = open_replay(locations, names or None) if locations else None
    if source is None and not names:
        raise ConfigError("give --symbols (e.g. BTC/USDT,ETH/USDT) or --replay FILE")
    with run_simulator(
        names or None,
        seed=seed,
        speed=speed,
        start=start,
        host=host,
        port=port,
        source=source,
        balances=balance,
        fee_rate=fee,
        api_key=api_key,
        api_secret=api_secret,
    ) as handle:
        console.print(
            f"simulator at {handle.url} for {', '.join(handle.symbols)} (speed {speed:g}x); Ctrl-C stops it\n"
            f"its candles go under exchange 'sim': --exchange sim --exchange-url {handle.url}",
            highlight=False,
        )
        print(handle.url, flush=True)  # stdout: machine-readable URL for scripts
        threading.Event().wait()  # until Ctrl-C (KeyboardInterrupt) leaves the context and stops the server
