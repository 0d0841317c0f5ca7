"""The Typer application and the options every command shares.

Nothing here (or in any command module at import time) loads more than Typer and Rich:
``tradpal-ray --help`` and every command's ``--help`` answer at once. Settings, logging and
the heavy libraries (pandas, numba, Ray, ccxt) load inside the command that runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    from tradpal_ray.config import Settings

app = typer.Typer(
    name="tradpal-ray",
    help="Crypto-trading research and live market data on Ray: simulate, fetch, backtest, sweep, stream, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

console = Console(stderr=True)
"""Progress bars, tables and messages for people go to stderr; stdout stays for --json."""

StoreOption = Annotated[
    str | None, typer.Option("--store", help="Store root (path or URI). Env: TRADPAL_STORE.", show_default=False)
]
ExchangeOption = Annotated[
    str | None, typer.Option("--exchange", help="ccxt exchange id. Env: TRADPAL_EXCHANGE.", show_default=False)
]
ExchangeUrlOption = Annotated[
    str | None,
    typer.Option("--exchange-url", help="Exchange base URL override, e.g. the simulator. Env: TRADPAL_EXCHANGE_URL.", show_default=False),
]
LogLevelOption = Annotated[
    str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR. Env: TRADPAL_LOG_LEVEL.", show_default=False)
]

AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="Join this Ray cluster (HOST:PORT, ray://..., or auto for one started with `ray start`). "
                                   "Default: RAY_ADDRESS, else a private local Ray when Ray is needed.", show_default=False),
]
_NAME_HELP = ("Instance id in the names of its Ray actors and Serve app (default: derived from the store), so "
              "tradpal processes sharing a cluster never touch each other's.")
NameOption = Annotated[str | None, typer.Option("--name", help=_NAME_HELP, show_default=False)]
_REPLACE_HELP = "Replace a running feed actor or statistics app of that name instead of refusing."
ReplaceOption = Annotated[bool, typer.Option("--replace", help=_REPLACE_HELP)]


def settings_for(**flags: object) -> Settings:
    """Settings from the environment with the given CLI flags on top; logging set up."""
    from pydantic import ValidationError

    from tradpal_ray.config import load_settings
    from tradpal_ray.log import configure_logging

    try:
        settings = load_settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ConfigError(f"bad setting: {problems}") from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def emit_json(doc: object) -> None:
    """Write ``doc`` as one JSON line on stdout (orjson: NaN and infinities become null, numpy values allowed)."""
    import sys

    import orjson

    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    sys.stdout.flush()
