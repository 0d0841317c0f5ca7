"""``tradpal-ray strategies`` and ``tradpal-ray metrics``: what a run can use, from the registries."""

from __future__ import annotations

from typing import Annotated

import typer

from tradpal_ray.cli.app import app, console, emit_json
from tradpal_ray.cli.backtest import JsonOption


@app.command()
def strategies(
    strategy_path: Annotated[
        list[str] | None,
        typer.Option("--strategy-path", help="A .py file, a folder of them, or an importable module whose strategies "
                                             "to list too (repeatable).", show_default=False),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """List every strategy it can see: name, parameters (type, default, limits) and doc line."""
    from tradpal_ray.backtest import load_strategy_paths
    from tradpal_ray.backtest import strategies as registered

    load_strategy_paths(strategy_path or [])
    described = [s.describe() for _, s in sorted(registered().items())]
    if json_output:
        emit_json({"strategies": described})
        return
    from rich.table import Table

    table = Table("strategy", "parameters", "description", title="strategies (use --strategy NAME)")
    for item in described:
        params = ", ".join(
            f"{name}: {p['type']} = {p['default']}" + _limits(p["min"], p["max"]) for name, p in item["params"].items()
        )
        table.add_row(item["name"], params, item["doc"])
    console.print(table)


def _limits(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return ""
    return f" [{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'}]"


@app.command()
def metrics(json_output: JsonOption = False) -> None:
    """List every metric a run reports and can rank by: name, label, direction and definition."""
    from tradpal_ray.backtest.metrics import metrics as registered

    rows = [{"name": m.name, "label": m.label, "higher_is_better": m.higher_is_better, "description": m.description}
            for m in registered()]
    if json_output:
        emit_json({"metrics": rows})
        return
    from rich.table import Table

    table = Table("metric", "better", "definition", title="metrics (use --metric NAME)")
    for row in rows:
        table.add_row(row["name"], "higher" if row["higher_is_better"] else "lower", row["description"])
    console.print(table)
