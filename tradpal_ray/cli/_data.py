"""The work of the market-data commands (see :mod:`tradpal_ray.cli.data`): backfill and store listings."""

from __future__ import annotations

import pandas as pd
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tradpal_ray.cli.app import (
    console,
)
from tradpal_ray.config import Settings
from tradpal_ray.log import redact
from tradpal_ray.market import create_exchange
from tradpal_ray.market.backfill import BackfillReport, backfill
from tradpal_ray.market.store import CandleStore


def _iso(ms: int | None) -> str:
    return "-" if ms is None else pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


async def run_backfill(
    settings: Settings,
    symbols: list[str],
    timeframe: str,
    since: int,
    until: int | None,
    *,
    show_progress: bool = True,
) -> list[BackfillReport]:
    """Backfill ``symbols`` from the configured exchange into the configured store, with a progress bar."""
    client = create_exchange(
        settings.exchange,
        url=settings.exchange_url,
        pro=True,
        api_key=settings.exchange_api_key.get_secret_value() if settings.exchange_api_key else None,
        secret=settings.exchange_secret.get_secret_value() if settings.exchange_secret else None,
    )
    store = CandleStore(settings.store)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, disable=not show_progress, transient=False) as progress:
            tasks = {symbol: progress.add_task(f"{symbol} {timeframe}", total=None) for symbol in symbols}

            def on_progress(symbol: str, done: int, total: int) -> None:
                progress.update(tasks[symbol], completed=done, total=total)

            return await backfill(
                client, store, exchange=settings.exchange, symbols=symbols, timeframe=timeframe,
                since=since, until=until, on_progress=on_progress,
            )
    finally:
        await client.close()


def print_store(store: CandleStore) -> list[str]:
    """A table of every series in ``store`` with its coverage and gap count; returns the damaged series' problems."""
    table = Table("exchange", "symbol", "timeframe", "rows", "first", "last", "missing",
                  title=f"candles in {redact(store.root)}")
    problems = []
    for found in store.coverage():
        s = found.info
        missing = "damaged" if s.problem else str(sum(g.count for g in found.gaps))
        table.add_row(s.exchange, s.symbol, s.timeframe, str(s.rows), _iso(s.first_ms), _iso(s.last_ms), missing)
        if s.problem:
            problems.append(f"{s.exchange} {s.symbol} {s.timeframe}: {s.problem}")
    console.print(table)
    for problem in problems:
        console.print(f"[red]damaged series:[/red] {problem}", highlight=False, soft_wrap=True)
    return problems


def print_backfill(reports: list[BackfillReport]) -> None:
    """The backfill's per-symbol outcome as a table on stderr."""
    table = Table("symbol", "timeframe", "rows written", "pages", "first", "last", "gaps", title="backfill")
    for r in reports:
        table.add_row(r.symbol, r.timeframe, str(r.rows_written), str(r.pages), _iso(r.first_ms), _iso(r.last_ms),
                      str(sum(g.count for g in r.gaps)))
    console.print(table)
