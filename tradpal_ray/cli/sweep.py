"""``tradpal-ray sweep``: a parameter grid over symbols, in process or as Ray tasks.

Human output (progress bar, leaderboard, best per symbol, parameters across symbols,
skipped combinations, failures) goes to stderr; with ``--json`` stdout holds exactly one
object ``{"run_id", "status", "metric", "executor", "errors", "skipped", "warnings", "overfitting", "check",
"results": [...]}`` (``overfitting``: per symbol, the deflated Sharpe ratio of its best result and
the PBO of its results, with their readings). With ``--check``, a strategy that looks ahead
stops the sweep before it starts: one ``error:`` line, exit 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tradpal_ray.cli.app import AddressOption, app, console, emit_json
from tradpal_ray.cli.backtest import CostOptions, DataOptions, JsonOption, StrategyOption, with_cost_options, with_data_options
from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from tradpal_ray.runs import RunManifest, StrategyCheck, SweepOutcome, SweepRequest


SymbolsOption = Annotated[str | None, typer.Option("--symbols", help="Comma-separated symbols in the store.", show_default=False)]
GridOption = Annotated[
    list[str] | None,
    typer.Option("--grid", help="NAME=START:STOP:STEP (stop included) or NAME=A,B,C; repeatable.", show_default=False),
]
ExecutorOption = Annotated[str, typer.Option("--executor", help="auto (in process when the work is small and no cluster is "
                                                                "given, else Ray), local, or ray.")]
ResumeOption = Annotated[str | None, typer.Option("--resume", help="Finish run RUN_ID: only its missing chunks run.", show_default=False)]
AllowChangedCodeOption = Annotated[bool, typer.Option("--allow-changed-code", help="With --resume: go on although the strategy's source changed.")]
"""Options ``sweep`` shares with ``walkforward``."""


@app.command()
@with_cost_options()
@with_data_options(SymbolsOption, period_after="top")
def sweep(
    source: DataOptions = DataOptions(),
    strategy: StrategyOption = "sma_cross",
    grid: GridOption = None,
    samples: Annotated[int | None, typer.Option("--samples", help="Random sample of N combinations instead of the full grid.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --samples.")] = 0,
    metric: Annotated[str, typer.Option("--metric", help="Rank by this metric (see `tradpal-ray metrics`).")] = "sharpe",
    top: Annotated[int, typer.Option("--top", help="Results to list (0 = all).")] = 20,
    executor: ExecutorOption = "auto",
    max_combos: Annotated[int, typer.Option("--max-combos", help="Refuse grids with more combinations than this.")] = 10_000_000,
    resume: ResumeOption = None,
    allow_changed_code: AllowChangedCodeOption = False,
    pbo_partitions: Annotated[int | None, typer.Option(
        "--pbo-partitions", help="CSCV partitions of the probability of backtest overfitting (even, 2-20; default 16, "
                                 "or the resumed run's).", show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check", help="First check the strategy for look-ahead (first symbol, the "
                                                        "grid's first combination); exit 1 if it looks ahead.")] = False,
    address: AddressOption = None,
    json_output: JsonOption = False,
    costs: CostOptions = CostOptions(),
) -> None:
    """Sweep a strategy's parameter grid over symbols; results persist under <store>/runs/<run_id>."""
    if top < 0:
        raise ConfigError("--top must be >= 0 (0 lists all)")
    if max_combos <= 0:
        raise ConfigError("--max-combos must be positive")
    settings = source.settings()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tradpal_ray.runs import EXECUTORS, LookaheadFound, check_partitions, run_sweep

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if pbo_partitions is not None:
        check_partitions(pbo_partitions)
    request, no_market = None, []
    if not resume:
        config = costs.config()
        request = _request(source, settings.exchange, strategy, grid or [], samples, seed, metric, config, max_combos)
        request.check()  # strategy, grid, metric, times: all checked before any data, cluster or output
        if costs.size_unit is None:
            request, no_market = request.with_market_units(settings.store)
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"), TimeElapsedColumn())
    progress = Progress(*columns, console=console, transient=json_output)
    task = progress.add_task("sweep", total=None)

    def show(done: int, total: int) -> None:  # the run has started: nothing before this can be an error
        if not progress.live.is_started:
            for symbol in no_market:
                console.print(f"[yellow]warning:[/yellow] no market info recorded for {symbol}: size unit 1 "
                              "(run `tradpal-ray fetch` for it, or give --size-unit)", highlight=False)
            progress.start()
        progress.update(task, completed=done, total=total)

    def checked(verdict: StrategyCheck) -> None:
        console.print(f"[green]check[/green]: {verdict.describe()}", highlight=False)

    try:
        outcome = run_sweep(request, store=settings.store, resume=resume, executor=executor, address=address,
                            allow_changed_code=allow_changed_code, on_progress=show,
                            pbo_partitions=pbo_partitions,
                            check=check, on_check=checked)
    except LookaheadFound as found:
        console.print(f"[red]error:[/red] {found}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        if progress.live.is_started:
            progress.stop()
    if json_output:
        emit_json(_json(outcome, top))
    else:
        render(outcome, top)
    if outcome.manifest.status == "failed":
        raise typer.Exit(1)


def _request(
    source: DataOptions, exchange: str, strategy: str, grid: list[str], samples: int | None, seed: int, metric: str,
    config: Any, max_combos: int,
) -> SweepRequest:
    """The sweep the flags ask for (``exchange``: the settings' exchange), before its checks."""
    from tradpal_ray.backtest import parse_grid
    from tradpal_ray.config import split_list
    from tradpal_ray.runs import SweepRequest

    if not grid:
        raise ConfigError("give at least one --grid NAME=START:STOP:STEP (or NAME=A,B,C)")
    common = dict(strategy=strategy, grid=parse_grid(grid), since=source.since, until=source.until, config=config,
                  metric=metric, samples=samples, seed=seed, max_combos=max_combos)
    data = source.file()
    if data is not None:
        return SweepRequest(data_file=str(data), **common)
    wanted = split_list(source.symbols)
    if not wanted or not source.timeframe:
        raise ConfigError("give --data FILE, or --symbols and --timeframe to read from the store")
    return SweepRequest(symbols=wanted, exchange=exchange, timeframe=source.timeframe, **common)


def _finite(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def result_rows(frame: pd.DataFrame, manifest: RunManifest) -> list[dict[str, Any]]:
    """``[{"symbol", "result_id", "params", "stats"}]`` for each row of a results frame."""
    from tradpal_ray.backtest.metrics import metric_names
    from tradpal_ray.runs import params_of, result_warnings

    stats = [name for name in metric_names() if name in frame.columns]
    return [
        {"symbol": row["symbol"], "result_id": row["result_id"], "params": params_of(row, manifest.param_names),
         "stats": {name: _finite(row[name]) for name in stats}, "warnings": result_warnings(manifest, row)}
        for row in frame.to_dict("records")
    ]


def _json(outcome: SweepOutcome, top: int) -> dict[str, Any]:
    m = outcome.manifest
    shown = outcome.results if top == 0 else outcome.top(top)
    if top == 0 and len(shown):
        from tradpal_ray.backtest.sweep import rank

        shown = rank(shown, m.metric)
    return {"run_id": m.run_id, "status": m.status, "metric": m.metric, "executor": m.executor,
            "strategy": m.strategy, "strategy_ref": m.strategy_ref.get("text"), "errors": m.errors,
            "skipped": m.skipped, "warnings": m.warnings, "overfitting": overfitting_json(m),
            "check": asdict(m.check) if m.check else None, "results": result_rows(shown, m)}


def overfitting_json(manifest: RunManifest) -> dict[str, dict[str, Any]]:
    """Per symbol, the overfitting statistics of a run as JSON (None where undefined)."""
    return {symbol: asdict(stats) for symbol, stats in manifest.overfitting.items()}


def render(outcome: SweepOutcome, top: int) -> None:
    """Leaderboard, best per symbol, parameters across symbols, skips and failures, as tables on stderr."""
    from rich.table import Table

    from tradpal_ray.runs import result_warnings

    m = outcome.manifest
    shown = outcome.results if top == 0 else outcome.top(top)
    print_results(f"top {len(shown)} of {m.results:,} by {m.metric}", shown, m.param_names)
    unaffordable = [w for row in shown.to_dict("records") for w in result_warnings(m, row)]
    if unaffordable:
        console.print(f"[yellow]warning:[/yellow] {len(unaffordable)} listed result(s): {unaffordable[0]}", highlight=False)
    if len(m.symbols) > 1 and m.results:
        print_results("best per symbol", outcome.best_per_symbol(), m.param_names)
        if m.results <= ACROSS_LIMIT:
            across = outcome.across_symbols().head(10)
            table = Table("params", f"median {m.metric}", f"min {m.metric}", "symbols", title="parameters across symbols")
            from tradpal_ray.runs import params_label, params_of

            for row in across.to_dict("records"):
                table.add_row(params_label(params_of(row, m.param_names)), _cell(row[m.metric]),
                              _cell(row[f"min_{m.metric}"]), str(row["symbols"]))
            console.print(table)
    for symbol, stats in m.overfitting.items():
        console.print(f"overfitting {symbol} ({stats.n_trials:,} trials, {stats.n_days:,} days): {stats.reading_dsr}",
                      highlight=False)
        console.print(f"overfitting {symbol}: {stats.reading_pbo}", highlight=False)
    for warning in m.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    for symbol, error in m.errors.items():
        console.print(f"[red]failed[/red] {symbol}: {error}", highlight=False)
    console.print(f"run [bold]{m.run_id}[/bold]: {m.status}, {m.results:,} results ({m.executor})", highlight=False)


ACROSS_LIMIT = 2_000_000
"""Results above which the across-symbols table (it groups every row) is left out."""


def print_results(title: str, frame: pd.DataFrame, param_names: list[str]) -> None:
    """Result rows (symbol, parameters, headline metrics) as a table on stderr."""
    from rich.table import Table

    from tradpal_ray.backtest.metrics import metrics
    from tradpal_ray.runs import params_label, params_of

    headline = [m for m in metrics() if m.headline]
    table = Table("symbol", title=title)
    table.add_column("params", no_wrap=True)
    for m in headline:
        table.add_column(m.label, justify="right")
    for row in frame.to_dict("records"):
        table.add_row(row["symbol"], params_label(params_of(row, param_names)),
                      *(_cell(row.get(m.name)) for m in headline))
    console.print(table)


def _cell(value: Any) -> str:
    value = _finite(value)
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:,.2f}"
