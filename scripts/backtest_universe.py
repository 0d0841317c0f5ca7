#!/usr/bin/env python
"""Sweep a strategy over a universe of symbols from the store, on Ray.

The universe is every symbol of --exchange/--timeframe in the store (--timeframe may be left
out when the store holds one), or --symbols. Every other option is `tradpal-ray sweep`'s, so
the output (tables on stderr, or one JSON object on stdout with --json) and the exit codes
are the same. It joins the Ray cluster --address or RAY_ADDRESS names, else a running cluster
(``ray submit`` runs it on the head with no RAY_ADDRESS), else starts a local Ray.

It imports only the installed ``tradpal_ray`` package, never a file next to it, so it runs
the same three ways:

    python scripts/backtest_universe.py --timeframe 1d --grid fast=5:50:5 --grid slow=20:200:10
    ray submit cluster.yaml scripts/backtest_universe.py -- --timeframe 1m --grid fast=5:50:5 --grid slow=20:200:10
    ray job submit --working-dir . -- python scripts/backtest_universe.py --timeframe 1m --grid fast=5:50:5 --grid slow=20:200:10
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import typer.main

from tradpal_ray.cli import app
from tradpal_ray.cli import main as cli_main
from tradpal_ray.cli.app import settings_for
from tradpal_ray.cluster import connect
from tradpal_ray.config import split_list
from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.market import CandleStore
from tradpal_ray.market.store import SeriesInfo

OWN_OPTIONS = ("--store", "--exchange", "--timeframe", "--symbols", "--address")
NOT_PASSED_ON = (*OWN_OPTIONS, "--data")
"""The universe comes from the store, so the sweep's --data does not apply."""


def universe(series: Iterable[SeriesInfo], exchange: str, timeframe: str | None) -> tuple[str, list[str]]:
    """(timeframe, sorted symbols) stored for ``exchange``; ``timeframe`` None means the only one stored."""
    stored = [info for info in series if info.exchange == exchange]
    if timeframe is None:
        timeframes = sorted({info.timeframe for info in stored})
        if len(timeframes) != 1:
            raise ConfigError(f"give --timeframe: the store has {', '.join(timeframes) or 'no'} {exchange} candles")
        timeframe = timeframes[0]
    symbols = sorted({info.symbol for info in stored if info.timeframe == timeframe})
    if not symbols:
        raise ConfigError(f"no {exchange} {timeframe} candles in the store")
    return timeframe, symbols


def _parser() -> argparse.ArgumentParser:
    sweep_command = typer.main.get_command(app).commands["sweep"]
    passed_on = [
        f"  {', '.join(param.opts)}: {getattr(param, 'help', '') or ''}"
        for param in sweep_command.params
        if param.opts[0].startswith("--") and param.opts[0] not in NOT_PASSED_ON
    ]
    parser = argparse.ArgumentParser(
        prog="backtest_universe.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="options passed on to `tradpal-ray sweep`:\n" + "\n".join(passed_on),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", help="Store root (path or URI). Env: TRADPAL_STORE.")
    parser.add_argument("--exchange", help="Exchange of the universe. Env: TRADPAL_EXCHANGE.")
    parser.add_argument("--timeframe", help="Timeframe of the universe (default: the only one stored).")
    parser.add_argument("--symbols", help="Comma-separated symbols instead of every stored one.")
    parser.add_argument("--address", help="Ray address: HOST:PORT, auto or local (default: RAY_ADDRESS, else the "
                                          "running cluster, else a local Ray).")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Resolve the universe, then run ``tradpal-ray sweep`` on it with the remaining options."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    try:
        settings = settings_for(store=args.store, exchange=args.exchange)
        symbols, timeframe = split_list(args.symbols), args.timeframe
        if not (symbols and timeframe):
            timeframe, stored = universe(CandleStore(settings.store).series(), settings.exchange, timeframe)
            symbols = symbols or stored
        connect(args.address, discover=True)  # the sweep below finds this Ray initialised and uses it
    except TradpalError as exc:
        parser.exit(2, f"error: {exc}\n")
    cli_main(["sweep", "--store", settings.store, "--exchange", settings.exchange,
              "--timeframe", timeframe, "--symbols", ",".join(symbols), *rest])


if __name__ == "__main__":
    main()
