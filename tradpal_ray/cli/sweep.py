"""``tradpal-ray sweep``: a parameter grid over many symbols, as named Ray tasks.

Human output (progress bar, leaderboard, best per symbol, failures) goes to stderr; with
``--json`` stdout holds exactly one object ``{"run_id", "status", "errors", "results": [...]}``.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any

import orjson
import pandas as pd
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tradpal_ray.backtest import STAT_NAMES, BacktestConfig, parse_grid
from tradpal_ray.backtest.distributed import SweepOutcome, SweepRequest, run_sweep
from tradpal_ray.backtest.results import HEADLINE_STATS, ResultStore, params_label
from tradpal_ray.cli.app import ExchangeOption, StoreOption, app, console, settings_for
from tradpal_ray.cli.backtest import (
    CashOption,
    DataOption,
    DirectionOption,
    FeeOption,
    JsonOption,
    PeriodsOption,
    SinceOption,
    SizeUnitOption,
    SlippageOption,
    StopLossOption,
    StrategyOption,
    TakeProfitOption,
    TimeframeOption,
    UntilOption,
)
from tradpal_ray.cluster import connect
from tradpal_ray.config import split_list
from tradpal_ray.errors import ConfigError


@app.command()
def sweep(
    data: DataOption = None,
    store: StoreOption = None,
    exchange: ExchangeOption = None,
    symbols: Annotated[str | None, typer.Option("--symbols", help="Comma-separated symbols in the store.", show_default=False)] = None,
    timeframe: TimeframeOption = None,
    strategy: StrategyOption = "sma_cross",
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="NAME=START:STOP:STEP (stop included) or NAME=A,B,C; repeatable.", show_default=False),
    ] = None,
    samples: Annotated[int | None, typer.Option("--samples", help="Random sample of N combinations instead of the full grid.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --samples.")] = 0,
    metric: Annotated[str, typer.Option("--metric", help=f"Rank by: {', '.join(STAT_NAMES)}.")] = "sharpe",
    top: Annotated[int, typer.Option("--top", help="Results to list (0 = all).")] = 20,
    cash: CashOption = 10_000.0,
    fee: FeeOption = 0.001,
    size_unit: SizeUnitOption = 1.0,
    slippage_bps: SlippageOption = 0.0,
    direction: DirectionOption = "long",
    stop_loss: StopLossOption = None,
    take_profit: TakeProfitOption = None,
    periods_per_year: PeriodsOption = 365.0,
    since: SinceOption = None,
    until: UntilOption = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Finish run RUN_ID: only its missing chunks run.", show_default=False)] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray address: HOST:PORT, or auto for the cluster `ray start` runs (default: RAY_ADDRESS, else a private local Ray).", show_default=False)] = None,
    json_output: JsonOption = False,
) -> None:
    """Sweep a strategy's parameter grid over symbols on Ray; results persist under <store>/runs/<run_id>."""
    settings = settings_for(store=store, exchange=exchange)
    if top < 0:
        raise ConfigError("--top must be >= 0 (0 lists all)")
    request = None
    if resume:
        ResultStore(settings.store).manifest(resume)  # an unknown run id fails before Ray starts
    else:
        request = _request(data, symbols, timeframe, strategy, grid or [], samples, seed, metric, since, until,
                           settings.exchange, BacktestConfig(
                               cash=cash, fee=fee, size_unit=size_unit, slippage_bps=slippage_bps, direction=direction,
                               stop_loss=stop_loss, take_profit=take_profit, periods_per_year=periods_per_year))
        request.combos()  # strategy, grid, samples, metric, times: all checked before Ray starts
    connect(address)
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=json_output) as progress:
        task = progress.add_task("sweep", total=None)
        outcome = run_sweep(request, store=settings.store, resume=resume,
                            on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    if json_output:
        sys.stdout.buffer.write(orjson.dumps(_json(outcome, top), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        sys.stdout.flush()
    else:
        render(outcome, top)
    if outcome.manifest.status == "failed":
        raise typer.Exit(1)


def _request(
    data: Any, symbols: str | None, timeframe: str | None, strategy: str, grid: list[str], samples: int | None,
    seed: int, metric: str, since: str | None, until: str | None, exchange: str, config: BacktestConfig,
) -> SweepRequest:
    if not grid:
        raise ConfigError("give at least one --grid NAME=START:STOP:STEP (or NAME=A,B,C)")
    if data is not None:
        if symbols or timeframe:
            raise ConfigError("give either --data FILE or --symbols/--timeframe, not both")
        if not data.exists():
            raise ConfigError(f"no such file: {data}")
        return SweepRequest(strategy=strategy, grid=parse_grid(grid), data_file=str(data), since=since, until=until,
                            config=config, metric=metric, samples=samples, seed=seed)
    wanted = split_list(symbols)
    if not wanted or not timeframe:
        raise ConfigError("give --data FILE, or --symbols and --timeframe to read from the store")
    return SweepRequest(strategy=strategy, grid=parse_grid(grid), symbols=wanted, exchange=exchange, timeframe=timeframe,
                        since=since, until=until, config=config, metric=metric, samples=samples, seed=seed)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def result_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``[{"symbol", "result_id", "params", "stats"}]`` for each row of a results frame."""
    stats = [name for name in STAT_NAMES if name in frame.columns]
    return [
        {"symbol": row["symbol"], "result_id": row["result_id"], "params": orjson.loads(row["params"]),
         "stats": {name: _finite(row[name].item() if hasattr(row[name], "item") else row[name]) for name in stats}}
        for row in frame.to_dict("records")
    ]


def _json(outcome: SweepOutcome, top: int) -> dict[str, Any]:
    ranked = outcome.ranked()
    shown = ranked if top == 0 else ranked.head(top)
    return {"run_id": outcome.run_id, "status": outcome.manifest.status, "metric": outcome.manifest.metric,
            "errors": outcome.manifest.errors, "results": result_rows(shown)}


def render(outcome: SweepOutcome, top: int) -> None:
    """Leaderboard, best per symbol, parameters across symbols, and failures, as tables on stderr."""
    manifest = outcome.manifest
    ranked = outcome.ranked()
    print_results(f"top {top or len(ranked)} of {len(ranked)} by {manifest.metric}", ranked if top == 0 else ranked.head(top))
    if ranked["symbol"].nunique() > 1 if len(ranked) else False:
        print_results("best per symbol", outcome.best_per_symbol())
        across = outcome.across_symbols().head(10)
        table = Table("params", f"mean {manifest.metric}", f"min {manifest.metric}", "symbols", title="parameters across symbols")
        for row in across.itertuples(index=False):
            table.add_row(params_label(row[0]), _cell(row[1]), _cell(row[2]), str(row[3]))
        console.print(table)
    for symbol, error in manifest.errors.items():
        console.print(f"[red]failed[/red] {symbol}: {error}", highlight=False)
    console.print(f"run [bold]{manifest.run_id}[/bold]: {manifest.status}, {manifest.results} results", highlight=False)


def print_results(title: str, frame: pd.DataFrame) -> None:
    """Result rows (symbol, params JSON, statistics) as a table on stderr."""
    table = Table("symbol", title=title)
    table.add_column("params", no_wrap=True)
    for header in HEADLINE_STATS.values():
        table.add_column(header, justify="right")
    for row in frame.to_dict("records"):
        table.add_row(row["symbol"], params_label(row["params"]), *(_cell(row[name]) for name in HEADLINE_STATS))
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, (int,)) or (hasattr(value, "dtype") and value.dtype.kind == "i"):
        return str(int(value))
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:,.2f}"
