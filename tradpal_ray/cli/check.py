"""``tradpal-ray check-strategy``: does a strategy look ahead, and how long is its warm-up?

Exit 0 when no signal changes once later bars are known, 1 with the first look-ahead bar
otherwise, 2 (one ``error:`` line) for bad input. Without ``--json`` the verdict goes to
stderr; with ``--json`` stdout holds exactly one object (see
:meth:`~tradpal_ray.validation.LookaheadReport.to_dict`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from tradpal_ray.cli.app import AddressOption, app, console, emit_json
from tradpal_ray.cli.backtest import DataOptions, JsonOption, ParamOption, SymbolOption, load_cli_bars, with_data_options

if TYPE_CHECKING:
    from tradpal_ray.validation import LookaheadReport


@app.command("check-strategy")
@with_data_options(SymbolOption)
def check_strategy(
    strategy: Annotated[str, typer.Argument(help="A built-in or registered name, module.path:function, or path/to/file.py:function.",
                                            show_default=False)],
    source: DataOptions = DataOptions(),
    param: ParamOption = None,
    prefixes: Annotated[int, typer.Option("--prefixes", help="Prefixes to recompute: every one when the series is no longer, "
                                                             "else each bar the strategy signals on, then bars spread evenly.")] = 1000,
    executor: Annotated[str | None, typer.Option("--executor", help="local (in process) or ray (parallel tasks). "
                                                             "Default: ray when --address or RAY_ADDRESS is given, else local.",
                                          show_default=False)] = None,
    address: AddressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Recompute a strategy's signals on cut data: look-ahead (exit 1) and indicator warm-up."""
    from tradpal_ray.backtest import parse_params
    from tradpal_ray.validation import check_executor
    from tradpal_ray.validation import check_strategy as run_check

    params = parse_params(param or [])
    chosen = check_executor(executor or ("ray" if address or os.environ.get("RAY_ADDRESS") else "local"))
    bars, _ = load_cli_bars(source, drop_bad=False)
    report = run_check(bars, strategy, params, prefixes=prefixes, executor=chosen, address=address)
    if json_output:
        emit_json(report.to_dict())
    else:
        _render(report)
    if not report.clean:
        raise typer.Exit(1)


def _render(report: LookaheadReport) -> None:
    """The verdict in a few lines on stderr."""
    params = ", ".join(f"{k}={v}" for k, v in report.params.items())
    coverage = "every prefix" if report.exhaustive else f"{report.prefixes_checked:,} prefixes"
    head = f"{report.strategy}({params}) on {report.n_bars:,} bars, {coverage} recomputed"
    if report.first is None:
        console.print(f"[green]no look-ahead[/green]: {head}", highlight=False)
    else:
        console.print(f"[red]look-ahead[/red] at {len(report.lookahead):,} signal(s): {head}", highlight=False)
        console.print(f"first: {report.first.describe()}", highlight=False)
    window = f"longest window {report.longest_window}" if report.longest_window else "no window parameter"
    console.print(f"warm-up: {report.warmup_bars:,} bars until the signals agree whatever the start "
                  f"({window}; {len(report.warmup)} start offsets)", highlight=False)
