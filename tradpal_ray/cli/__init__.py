"""``tradpal-ray`` command line: one module per command, all on one Typer app.

User mistakes raise :class:`~tradpal_ray.errors.TradpalError`; :func:`main` prints them as
one line on stderr and exits 2. Anything else is a bug and keeps its traceback. Ctrl-C needs
nothing here: Typer itself turns KeyboardInterrupt into a quiet exit 130.
"""

from __future__ import annotations

import sys

# Each module registers its command(s) on ``app`` when imported.
from tradpal_ray.cli import (  # noqa: F401
    backtest,
    check,
    data,
    demo,
    optimize,
    report,
    serve,
    sim,
    strategies,
    stream,
    sweep,
    trade,
    walkforward,
)
from tradpal_ray.cli.app import app, console
from tradpal_ray.errors import TradpalError


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tradpal-ray`` console script."""
    try:
        app(args=argv, prog_name="tradpal-ray")
    except TradpalError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "main"]
