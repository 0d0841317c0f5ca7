"""``tradpal-ray optimize``: Optuna's samplers over a strategy's parameters, trials in parallel on Ray.

Human output (progress bar, best trial or Pareto front) goes to stderr; with ``--json``
stdout holds exactly one object ``{"run_id", "status", "sampler", "objectives", "directions",
"trials", "executor", "best": [{"trial", "params", "values", "stats"}]}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from tradpal_ray.cli.app import AddressOption, app, console, emit_json
from tradpal_ray.cli.backtest import CostOptions, DataOptions, JsonOption, StrategyOption, with_cost_options, with_data_options
from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    from tradpal_ray.runs import OptimizeOutcome, OptimizeRequest

OneSymbolOption = Annotated[str | None, typer.Option("--symbols", help="One symbol in the store.", show_default=False)]


@app.command()
@with_cost_options()
@with_data_options(OneSymbolOption, period_after="trials_per_task")
def optimize(
    source: DataOptions = DataOptions(),
    strategy: StrategyOption = "sma_cross",
    space: Annotated[
        list[str] | None,
        typer.Option("--space", help="NAME=int:LOW:HIGH, NAME=float:LOW:HIGH[:log] or NAME=cat:A,B; repeatable.",
                     show_default=False),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", help="Trials to evaluate (exactly this many, also across --resume).")] = 100,
    sampler: Annotated[str | None, typer.Option("--sampler", help="tpe, cmaes, nsga2 or random. Default: tpe, nsga2 with "
                                                                  "several objectives.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler.")] = 0,
    objective: Annotated[
        list[str] | None,
        typer.Option("--objective", help="sharpe, sortino, calmar, return, profit_drawdown, sqn, any metric, or "
                                         "module:function / file.py:function; repeat for a Pareto front. Default: sharpe.",
                     show_default=False),
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Tasks in flight on Ray (default: the cluster's CPUs).",
                                                show_default=False)] = None,
    trials_per_task: Annotated[int | None, typer.Option("--trials-per-task", help="Trials one task evaluates "
                                                        "(default: from --trials and --workers).", show_default=False)] = None,
    executor: Annotated[str, typer.Option("--executor", help="auto (Ray when a cluster is given or running or --workers "
                                                             "is above 1, else in process), local, or ray.")] = "auto",
    resume: Annotated[str | None, typer.Option("--resume", help="Finish run RUN_ID to its number of trials.",
                                               show_default=False)] = None,
    allow_changed_code: Annotated[bool, typer.Option("--allow-changed-code", help="With --resume: go on although the "
                                                                                  "strategy's source changed.")] = False,
    address: AddressOption = None,
    json_output: JsonOption = False,
    costs: CostOptions = CostOptions(),
) -> None:
    """Search a strategy's parameters with Optuna's samplers; the run persists under <store>/runs/<run_id>."""
    settings = source.settings()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from tradpal_ray.runs import EXECUTORS, run_optimize
    from tradpal_ray.runs._optimize import parse_space

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    request = None
    if not resume:
        config = costs.config()
        dims = parse_space(space or [])
        request = _request(source, settings.store, settings.exchange, strategy=strategy,
                           space={name: dim.spec for name, dim in dims.items()}, objectives=tuple(objective or ["sharpe"]),
                           trials=trials, sampler=sampler, seed=seed, config=config, trials_per_task=trials_per_task)
        request.check()  # strategy, space, objectives, sampler: all checked before any data, cluster or output
        if costs.size_unit is None and not source.data:
            request = _with_market_unit(request, settings.store)
    columns = (TextColumn("optimize"), BarColumn(), MofNCompleteColumn(), TextColumn("trials"), TimeElapsedColumn())
    progress = Progress(*columns, console=console, transient=json_output)
    task = progress.add_task("optimize", total=None)

    def show(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        outcome = run_optimize(request, store=settings.store, resume=resume, executor=executor, address=address,
                               workers=workers, allow_changed_code=allow_changed_code, on_progress=show)
    finally:
        if progress.live.is_started:
            progress.stop()
    if json_output:
        emit_json(_json(outcome))
    else:
        _render(outcome)
    if outcome.manifest.status == "failed":
        raise typer.Exit(1)


def _request(source: DataOptions, store: str, exchange: str, **fields: Any) -> OptimizeRequest:
    """The search the flags ask for (``store``, ``exchange``: the settings'), before its checks."""
    from tradpal_ray.config import split_list
    from tradpal_ray.runs import BarsSource, OptimizeRequest

    since, until = source.since, source.until
    data = source.file()
    if data is not None:
        return OptimizeRequest(source=BarsSource(data.stem, data_file=str(data), since=since, until=until), **fields)
    wanted = split_list(source.symbols)
    if len(wanted) != 1 or not source.timeframe:
        raise ConfigError("give --data FILE, or one --symbols SYMBOL and --timeframe to read from the store")
    return OptimizeRequest(source=BarsSource(wanted[0], store=store, exchange=exchange, timeframe=source.timeframe,
                                             since=since, until=until), **fields)


def _with_market_unit(request: OptimizeRequest, store: str) -> OptimizeRequest:
    """The request with the market's recorded lot step as size unit (a warning when none is recorded)."""
    from dataclasses import replace

    from tradpal_ray.runs import SweepRequest

    source = request.source
    swept, missing = SweepRequest(request.strategy, {}, symbols=[source.symbol], exchange=source.exchange,
                                  timeframe=source.timeframe, config=request.config).with_market_units(store)
    for symbol in missing:
        console.print(f"[yellow]warning:[/yellow] no market info recorded for {symbol}: size unit 1 "
                      "(run `tradpal-ray fetch` for it, or give --size-unit)", highlight=False)
    return replace(request, config=swept.config_for(source.symbol))


def _json(outcome: OptimizeOutcome) -> dict[str, Any]:
    m = outcome.manifest
    return {"run_id": m.run_id, "status": m.status, "error": m.error, "strategy": m.strategy,
            "strategy_ref": m.strategy_ref.get("text"), "sampler": m.sampler, "objectives": m.objectives,
            "directions": m.directions, "trials": m.results, "executor": m.executor, "best": m.best}


def _render(outcome: OptimizeOutcome) -> None:
    """The best trial, or the Pareto front, as a table on stderr."""
    from rich.table import Table

    from tradpal_ray.cli.sweep import _cell
    from tradpal_ray.runs import params_label

    m = outcome.manifest
    title = "Pareto front" if len(m.objectives) > 1 else "best trial"
    table = Table("trial", "params", *(f"{name} ({d[:3]})" for name, d in zip(m.objectives, m.directions)),
                  "trades", title=f"{title} of {m.results:,} trials ({m.sampler})")
    for best in m.best:
        table.add_row(str(best["trial"]), params_label(best["params"]), *(_cell(v) for v in best["values"]),
                      _cell(best["stats"].get("trades")))
    console.print(table)
    if m.error:
        console.print(f"[red]failed[/red]: {m.error}", highlight=False)
    console.print(f"run [bold]{m.run_id}[/bold]: {m.status}, {m.results:,} trials ({m.executor})", highlight=False)
