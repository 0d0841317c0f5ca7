"""``tradpal-ray walkforward``: optimise on each training window, test on the next; or CPCV.

Human output (folds table, summary) goes to stderr; with ``--json`` stdout holds exactly
one object: ``{"run_id", "status", "objective", "executor", "warmup", "summary", "folds": [...]}``
for a walk-forward, ``{"cv": "cpcv", "splits", "paths", "sharpe_quantiles", ...}`` for CPCV.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tradpal_ray.cli.app import AddressOption, app, console, emit_json
from tradpal_ray.cli.backtest import CostOptions, DataOptions, JsonOption, StrategyOption, with_cost_options, with_data_options
from tradpal_ray.cli.sweep import AllowChangedCodeOption, ExecutorOption, GridOption, ResumeOption, SymbolsOption
from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    from tradpal_ray.runs import WalkForwardOutcome
    from tradpal_ray.runs._walkforward import CpcvReport

CV_METHODS = ("walkforward", "cpcv")


@app.command()
@with_cost_options()
@with_data_options(SymbolsOption, period_after="embargo")
def walkforward(
    source: DataOptions = DataOptions(),
    strategy: StrategyOption = "sma_cross",
    grid: GridOption = None,
    train: Annotated[str, typer.Option("--train", help="Training window, e.g. 180d.")] = "180d",
    test: Annotated[str, typer.Option("--test", help="Test window after each training window, e.g. 30d.")] = "30d",
    step: Annotated[str | None, typer.Option("--step", help="Shift between folds (default: --test).", show_default=False)] = None,
    anchored: Annotated[bool, typer.Option("--anchored", help="Every training window starts at the first bar.")] = False,
    objective: Annotated[str, typer.Option("--objective", help="What each fold maximises: sharpe, sortino, calmar, return, "
                                                               "profit_drawdown, sqn, a metric, or module:function.")] = "sharpe",
    warmup: Annotated[int | None, typer.Option("--warmup", help="Bars before every window for indicators "
                                                                "(default: the grid's longest window).", show_default=False)] = None,
    search: Annotated[str, typer.Option("--search", help="In-sample optimiser: grid (every combination), or an Optuna "
                                                         "sampler (tpe, cmaes, random, nsga2) over the grid's ranges.")] = "grid",
    trials: Annotated[int, typer.Option("--trials", help="Trials per fold with --search SAMPLER.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seeds --search's sampler (fold f uses seed + f).")] = 0,
    cv: Annotated[str, typer.Option("--cv", help="walkforward, or cpcv (combinatorial purged cross-validation).")] = "walkforward",
    groups: Annotated[int, typer.Option("--groups", help="CPCV: contiguous groups N of the days.")] = 6,
    test_groups: Annotated[int, typer.Option("--test-groups", help="CPCV: test groups k per split.")] = 2,
    purge: Annotated[int, typer.Option("--purge", help="CPCV: days dropped from training on each side of a test group.")] = 0,
    embargo: Annotated[int, typer.Option("--embargo", help="CPCV: further days dropped from training after a test group.")] = 0,
    executor: ExecutorOption = "auto",
    resume: ResumeOption = None,
    allow_changed_code: AllowChangedCodeOption = False,
    address: AddressOption = None,
    json_output: JsonOption = False,
    costs: CostOptions = CostOptions(),
) -> None:
    """Walk a strategy's grid forward (or CPCV it); a walk-forward persists under <store>/runs/<run_id>."""
    if cv not in CV_METHODS:
        raise ConfigError(f"--cv must be one of {', '.join(CV_METHODS)}, got {cv!r}")
    settings = source.settings()
    from tradpal_ray.cli.sweep import _request
    from tradpal_ray.runs import (
        EXECUTORS,
        WalkForwardRequest,
        WalkForwardSpec,
        run_walkforward,
    )

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    request = None
    if not resume:
        config = costs.config()
        swept = _request(source, settings.exchange, strategy, grid or [], None, 0, "sharpe", config, 10_000_000)
        request = WalkForwardRequest(swept, WalkForwardSpec(train, test, step, anchored, objective, warmup, search, trials, seed))
        if cv == "cpcv":
            request.spec.check()
            request.sweep.check()
        else:
            request.check()  # strategy, grid, objective, windows: all checked before any data or cluster
        if costs.size_unit is None:
            units, no_market = swept.with_market_units(settings.store)
            request = WalkForwardRequest(units, request.spec)
            for symbol in no_market:
                console.print(f"[yellow]warning:[/yellow] no market info recorded for {symbol}: size unit 1", highlight=False)
    if cv == "cpcv":
        if request is None:
            raise ConfigError("--resume is for walk-forward runs; a CPCV runs in one go")
        from tradpal_ray.runs._walkforward import run_cpcv

        report = run_cpcv(request, settings.store, groups=groups, test_groups=test_groups, purge=purge, embargo=embargo)
        if json_output:
            emit_json(report.to_dict())
        else:
            _render_cpcv(report)
        return
    with console.status("walk-forward") as status:
        outcome = run_walkforward(request, store=settings.store, resume=resume, executor=executor, address=address,
                                  allow_changed_code=allow_changed_code,
                                  on_progress=lambda done, total: status.update(f"walk-forward: {done}/{total} units"))
    if json_output:
        emit_json(_json(outcome))
    else:
        _render(outcome)


def _finite(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def fold_rows(outcome: WalkForwardOutcome) -> list[dict[str, Any]]:
    """Each fold as ``{"fold", "train", "test", "params", "is", "oos", ...}`` (JSON-ready)."""
    m = outcome.manifest
    rows = []
    for row in outcome.folds.to_dict("records"):
        chose = row["candidates"] > 0
        rows.append({
            "fold": row["fold"], "train": [row["train_from"].isoformat(), row["train_to"].isoformat()],
            "test": [row["test_from"].isoformat(), row["test_to"].isoformat()],
            "train_bars": row["train_bars"], "test_bars": row["test_bars"], "candidates": row["candidates"],
            "params": {n: _finite(row[n]) for n in m.param_names} if chose else None,
            "is_objective": _finite(row["is_objective"]), "oos_objective": _finite(row["oos_objective"]),
            "is": {k[3:]: _finite(v) for k, v in row.items() if k.startswith("is_") and k != "is_objective"},
            "oos": {k[4:]: _finite(v) for k, v in row.items() if k.startswith("oos_") and k != "oos_objective"},
        })
    return rows


def _json(outcome: WalkForwardOutcome) -> dict[str, Any]:
    m = outcome.manifest
    summary = {k: ({kk: _finite(vv) for kk, vv in v.items()} if isinstance(v, dict) else _finite(v))
               for k, v in outcome.summary.items()}
    return {"run_id": m.run_id, "status": m.status, "objective": m.walkforward["spec"]["objective"],
            "executor": m.executor, "strategy": m.strategy, "warmup": m.walkforward["warmup"],
            "summary": summary, "folds": fold_rows(outcome)}


def _cell(value: Any) -> str:
    value = _finite(value)
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:,.2f}"


def _render(outcome: WalkForwardOutcome) -> None:
    from rich.table import Table

    m = outcome.manifest
    goal = m.walkforward["spec"]["objective"]
    table = Table("fold", "train", "test", "params", f"IS {goal}", f"OOS {goal}", "OOS return %", "OOS trades",
                  title=f"walk-forward of {m.strategy} by {goal}")
    for row in fold_rows(outcome):
        params = " ".join(f"{k}={v}" for k, v in row["params"].items()) if row["params"] else "(none fits)"
        table.add_row(str(row["fold"]), f"{row['train'][0][:10]}..{row['train'][1][:10]}",
                      f"{row['test'][0][:10]}..{row['test'][1][:10]}", params, _cell(row["is_objective"]),
                      _cell(row["oos_objective"]), _cell(row["oos"]["return_pct"]), _cell(row["oos"]["trades"]))
    console.print(table)
    s = outcome.summary
    oos = s["oos"]
    console.print(f"stitched out of sample: return {_cell(oos['return_pct'])}%, CAGR {_cell(oos['cagr_pct'])}%, "
                  f"Sharpe {_cell(oos['sharpe'])}, max drawdown {_cell(oos['max_drawdown_pct'])}%, "
                  f"{oos['trades']} trades", highlight=False)
    console.print(f"walk-forward efficiency (OOS CAGR / mean IS CAGR): {_cell(s['wfe'])}; "
                  f"{goal} OOS/IS: {_cell(s['objective_ratio'])}", highlight=False)
    console.print(f"run [bold]{m.run_id}[/bold]: {m.status}, {s['folds']} folds ({m.executor})", highlight=False)


def _render_cpcv(report: CpcvReport) -> None:
    doc = report.to_dict()
    quantiles = ", ".join(f"{k} {_cell(v)}" for k, v in doc["sharpe_quantiles"].items())
    console.print(f"CPCV: {doc['groups']} groups, {doc['test_groups']} test groups, {doc['splits']} splits, "
                  f"{doc['paths']} paths (purge {doc['purge']} d, embargo {doc['embargo']} d)", highlight=False)
    console.print(f"out-of-sample Sharpe across paths: {quantiles}", highlight=False)
