"""``tradpal-ray backtest``: one strategy on one series, from a file or the candle store.

Output: without ``--json``, rich tables (statistics, and trades with ``--trades``) on
stderr, like every human-facing message of the CLI; with ``--json``, exactly one JSON
object on stdout: ``{"strategy", "params", "config", "stats", "warnings"[, "trades"]}`` with
NaN and infinities as null. Warnings (no unit affordable, data too short) are printed on
stderr as ``warning: ...`` lines in both modes. The options defined here are shared by the other research
commands: the data-source flags as one :class:`DataOptions` (:func:`with_data_options`), the cost and sizing
flags as one :class:`CostOptions` (:func:`with_cost_options`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tradpal_ray.cli.app import ExchangeOption, StoreOption, app, console, emit_json, settings_for
from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    from tradpal_ray.backtest import BacktestConfig, BacktestResult, Bars
    from tradpal_ray.config import Settings

DataOption = Annotated[
    Path | None, typer.Option("--data", help="CSV or Parquet file with open/high/low/close/volume and a time.", show_default=False)
]
SymbolOption = Annotated[str | None, typer.Option("--symbol", help="Symbol in the store, e.g. BTC/USDT.", show_default=False)]
TimeframeOption = Annotated[str | None, typer.Option("--timeframe", help="Timeframe in the store, e.g. 1h.", show_default=False)]
StrategyOption = Annotated[
    str,
    typer.Option("--strategy", help="A built-in or registered name (see `tradpal-ray strategies`), "
                                    "module.path:function, or path/to/file.py:function."),
]
CashOption = Annotated[float, typer.Option("--cash", help="Starting cash.")]
FeeOption = Annotated[float, typer.Option("--fee", help="Fee rate per side (0.001 = 0.1%).")]
SizeUnitOption = Annotated[
    float | None,
    typer.Option("--size-unit", help="Tradable increment (1 for shares, 1e-5 for BTC). Default: the market's lot step "
                                     "recorded by `fetch` for a store series, 1 for a file.", show_default=False),
]
SizeOption = Annotated[
    str, typer.Option("--size", help="Per entry: a fraction of equity in (0, 1] (1 = all-in, 0.5 = half) or a quote amount, e.g. 500usd.")
]
SlippageOption = Annotated[float, typer.Option("--slippage-bps", help="Slippage against every fill, in bps.")]
DirectionOption = Annotated[str, typer.Option("--direction", help="long, or longshort (exits open shorts).")]
StopLossOption = Annotated[
    float | None, typer.Option("--stop-loss", help="Stop distance as a fraction of the entry price.", show_default=False)
]
TakeProfitOption = Annotated[
    float | None, typer.Option("--take-profit", help="Take-profit distance as a fraction of the entry price.", show_default=False)
]
ParamOption = Annotated[list[str] | None, typer.Option("--param", help="Strategy parameter NAME=VALUE (repeatable).", show_default=False)]
PeriodsOption = Annotated[float, typer.Option("--periods-per-year", help="Sharpe/Sortino annualisation: 365 crypto, 252 stocks.")]
SinceOption = Annotated[str | None, typer.Option("--since", help="First bar time (ISO or ms), inclusive.", show_default=False)]
UntilOption = Annotated[str | None, typer.Option("--until", help="End time (ISO or ms), exclusive.", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@dataclass(frozen=True)
class CostOptions:
    """The cost, sizing and execution flags every command that trades shares, as given on the command line."""

    cash: float = 10_000.0
    fee: float = 0.001
    size_unit: float | None = None
    """None: the market's recorded lot step (1 for a data file)."""
    size: str = "1"
    slippage_bps: float = 0.0
    direction: str = "long"
    stop_loss: float | None = None
    take_profit: float | None = None
    periods_per_year: float = 365.0

    def config(self, market_unit: float | None = None) -> BacktestConfig:
        """As a config (ConfigError if bad); ``market_unit`` is the size unit when ``--size-unit`` was not given."""
        from tradpal_ray.backtest import BacktestConfig, parse_size

        unit = self.size_unit if self.size_unit is not None else market_unit
        values = {k: v for k, v in asdict(self).items() if k not in ("size_unit", "size")}
        return BacktestConfig(size_unit=1.0 if unit is None else unit, **parse_size(self.size)._asdict(), **values)


_COST_FLAGS: dict[str, Any] = {
    "cash": CashOption, "fee": FeeOption, "size_unit": SizeUnitOption, "size": SizeOption, "slippage_bps": SlippageOption,
    "direction": DirectionOption, "stop_loss": StopLossOption, "take_profit": TakeProfitOption,
    "periods_per_year": PeriodsOption,
}


def _gathered(into: str, options: type[Any], flags: dict[str, Any],
              after: dict[str, str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator giving a Typer command ``flags`` (name: annotated option, default from ``options()``) in place of
    its parameter ``into``, which receives their values as one ``options`` object. ``after`` puts a flag right after
    another parameter of the command instead, where its --help has always listed it."""
    defaults, after = options(), after or {}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        def flag(name: str) -> inspect.Parameter:
            return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, name),
                                     annotation=flags[name])

        signature, parameters = inspect.signature(command, eval_str=True), []
        for own in signature.parameters.values():
            if own.name == into:
                parameters += [flag(name) for name in flags if name not in after]
            else:
                parameters += [own.replace(kind=inspect.Parameter.KEYWORD_ONLY)]
                parameters += [flag(name) for name in flags if after.get(name) == own.name]
        if missing := set(flags) - {p.name for p in parameters}:
            raise TypeError(f"{command.__name__}: no parameter {into!r} or {sorted(after.values())} for {sorted(missing)}")

        @functools.wraps(command)
        def wrapper(**given: Any) -> Any:
            gathered = options(**{name: given.pop(name) for name in flags})
            return command(**given, **{into: gathered})

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def with_cost_options(*, periods: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a Typer command the shared cost and sizing flags (``--cash`` ... ``--periods-per-year``,
    which ``periods=False`` leaves out); the command receives them as one ``costs: CostOptions``."""
    return _gathered("costs", CostOptions, {name: option for name, option in _COST_FLAGS.items()
                                            if periods or name != "periods_per_year"})


@dataclass(frozen=True)
class DataOptions:
    """Where a command's bars come from, as given on the command line: a data file, or series of the store."""

    data: Path | None = None
    store: str | None = None
    exchange: str | None = None
    symbols: str | None = None
    """The text of ``--symbols`` (comma-separated) or ``--symbol``, whichever flag the command takes."""
    timeframe: str | None = None
    since: str | None = None
    until: str | None = None

    def settings(self) -> Settings:
        """The settings with ``--store`` and ``--exchange`` on top (see :func:`settings_for`)."""
        return settings_for(store=self.store, exchange=self.exchange)

    def file(self) -> Path | None:
        """The ``--data`` file, or None for the store; ConfigError when it is missing or given with store series."""
        if self.data is None:
            return None
        if self.symbols or self.timeframe:
            raise ConfigError("give either --data FILE or --symbols/--timeframe, not both")
        if not self.data.exists():
            raise ConfigError(f"no such file: {self.data}")
        return self.data


def with_data_options(symbols: Any, *, period_after: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a Typer command the shared data-source flags (``--data --store --exchange``, ``symbols``: its own
    ``--symbol(s)`` option, ``--timeframe --since --until``) in place of its parameter ``source: DataOptions``;
    ``--since``/``--until`` follow its parameter ``period_after`` when given, else ``--timeframe``."""
    flags = {"data": DataOption, "store": StoreOption, "exchange": ExchangeOption, "symbols": symbols,
             "timeframe": TimeframeOption, "since": SinceOption, "until": UntilOption}
    return _gathered("source", DataOptions, flags, {"since": period_after, "until": period_after} if period_after else None)


def load_cli_bars(source: DataOptions, drop_bad: bool) -> tuple[Bars, float | None]:
    """Bars from ``--data FILE`` or from the store (``--symbol``), with the series' recorded size unit (None for a file)."""
    from tradpal_ray.backtest import load_bars, load_store_bars
    from tradpal_ray.market.schema import timeframe_ms

    symbol, timeframe, since, until = source.symbols, source.timeframe, source.since, source.until
    if source.data is not None:
        if source.store or symbol or timeframe:
            raise ConfigError("give either --data FILE or --store/--symbol/--timeframe, not both")
        return load_bars(source.data, since=since, until=until, drop_bad=drop_bad), None
    if not symbol or not timeframe:
        raise ConfigError("give --data FILE, or --symbol and --timeframe to read from the store")
    timeframe_ms(timeframe)
    settings = source.settings()
    from tradpal_ray.market.markets import MarketInfoStore

    bars = load_store_bars(settings.store, settings.exchange, symbol, timeframe, since=since, until=until, drop_bad=drop_bad)
    return bars, MarketInfoStore(settings.store).size_unit(settings.exchange, symbol)


def _number(value: int | float) -> str:
    """Counts as integers with separators, amounts to 4 decimals."""
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4f}"


def render(result: BacktestResult, *, trades: bool) -> None:
    """Print the statistics (and trades) as rich tables on stderr."""
    from rich.table import Table

    params = ", ".join(f"{k}={v}" for k, v in result.params.items())
    table = Table(title=f"{result.strategy}({params})", show_header=False)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for name, value in result.stats.items():
        table.add_row(name, _number(value))
    console.print(table)
    if trades:
        listing = Table(title="trades")
        for column in ("entry_time", "exit_time", "entry_price", "exit_price", "units", "pnl", "return_pct", "exit_reason"):
            listing.add_column(column, justify="left" if column.endswith(("time", "reason")) else "right")
        for row in result.trades.itertuples(index=False):
            listing.add_row(
                f"{row.entry_time:%Y-%m-%d %H:%M}", "" if row.exit_reason == "open" else f"{row.exit_time:%Y-%m-%d %H:%M}",
                _number(row.entry_price), _number(row.exit_price), f"{row.units:g}",
                _number(row.pnl), f"{row.return_pct:.2f}", str(row.exit_reason),
            )
        console.print(listing)


@app.command()
@with_cost_options()
@with_data_options(SymbolOption, period_after="param")
def backtest(
    source: DataOptions = DataOptions(),
    strategy: StrategyOption = "sma_cross",
    param: ParamOption = None,
    drop_bad: Annotated[bool, typer.Option("--drop-bad", help="Drop bad rows instead of failing.")] = False,
    json_output: JsonOption = False,
    trades: Annotated[bool, typer.Option("--trades", help="Include the trade list.")] = False,
    costs: CostOptions = CostOptions(),
) -> None:
    """Backtest one strategy on one series: signal at a bar's close, fill at the next open."""
    from tradpal_ray.backtest import backtest as run_backtest
    from tradpal_ray.backtest import get_strategy, parse_params

    params = parse_params(param or [])
    costs.config()  # bad costs fail before any data is read
    strat = get_strategy(strategy)
    bars, market_unit = load_cli_bars(source, drop_bad)
    config = costs.config(market_unit)
    result = run_backtest(bars, strat, params, config)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if json_output:
        emit_json(result.to_dict(trades=trades))
    else:
        render(result, trades=trades)
