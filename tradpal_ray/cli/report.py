"""``tradpal-ray report RUN_ID``: one self-contained HTML page about a sweep run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tradpal_ray.cli.app import StoreOption, app, console, settings_for
from tradpal_ray.errors import ConfigError


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="The sweep run (see `tradpal-ray sweep` output or <store>/runs/).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file to write. Default: report-<RUN_ID>.html.", show_default=False)] = None,
    store: StoreOption = None,
    top: Annotated[int, typer.Option("--top", help="Kept results to draw equity and drawdown curves for.")] = 5,
    metric: Annotated[str | None, typer.Option("--metric", help="Heatmap and tables by this metric (see `tradpal-ray metrics`). Default: the run's.", show_default=False)] = None,
) -> None:
    """Write an HTML report of a sweep run: equity/drawdown curves, parameter heatmap, per-symbol table."""
    from tradpal_ray.report import build_report
    from tradpal_ray.runs import RunStore

    settings = settings_for(store=store)
    page = build_report(RunStore(settings.store), run_id, top=top, metric=metric)
    path = out or Path(f"report-{run_id}.html")
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    console.print(f"wrote {path} ({len(page.encode()) / 1024:,.0f} KiB)", highlight=False)
