"""``tradpal-ray trade``: paper traders on live feeds (start, list, stop, export).

``trade start`` starts a trader per ``--name`` in a trader host actor (``traders:<instance>:...``,
up to ``TRADPAL_TRADERS_PER_HOST`` paper traders a process) and a feed for its symbols when no
running feed of the instance serves them. On a Ray cluster
(``--address``) the actors are detached and the command returns once the trader is up; on a
private local Ray it runs until ``--duration`` or Ctrl-C, then stops the feed (which stores
every closed candle) and the trader (which trades them first). ``trade list`` and
``trade export`` read the ledger only (no Ray): ``export --json`` prints the closed trades in
the shape of ``backtest --json --trades``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tradpal_ray.cli.app import (
    AddressOption,
    ExchangeOption,
    ExchangeUrlOption,
    StoreOption,
    app,
    console,
    emit_json,
    settings_for,
)
from tradpal_ray.cli.backtest import (
    CostOptions,
    JsonOption,
    StrategyOption,
    with_cost_options,
)
from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    from tradpal_ray.config import Settings
    from tradpal_ray.trading._ledger import Ledger

trade_app = typer.Typer(help="Paper traders on live feeds: start, list, stop, export.", no_args_is_help=True)
app.add_typer(trade_app, name="trade")

LedgerUrlOption = Annotated[
    str | None, typer.Option("--db-url", help="Ledger database URL (default: TRADPAL_DB_URL, else <store>/ledger.sqlite).",
                             show_default=False)
]
InstanceOption = Annotated[
    str | None, typer.Option("--instance", help="Instance id in the actor names (default: derived from the store).",
                             show_default=False)
]
POLL_S = 0.5


def _db_url(settings: Settings, flag: str | None) -> str | None:
    return flag or settings.db_url.get_secret_value() or None


def _ledger(store: str | None, db_url: str | None) -> Ledger:
    """The ledger of the store (or at ``--db-url`` / TRADPAL_DB_URL); ConfigError when no trader ever ran there."""
    from tradpal_ray.trading._ledger import ledger_exists, open_ledger

    settings = settings_for(store=store)
    url = _db_url(settings, db_url)
    if url is None and not ledger_exists(None, settings.store):
        raise ConfigError(f"no ledger in {settings.store}: no trader has run with this store (see `tradpal-ray trade start`)")
    return open_ledger(url, settings.store)


@trade_app.command("start")
@with_cost_options(periods=False)
def start(
    name: Annotated[str | None, typer.Option("--name", help="The trader's name (ledger rows, order ids).",
                                             show_default=False)] = None,
    strategy: StrategyOption = "sma_cross",
    param: Annotated[list[str] | None, typer.Option("--param", help="Strategy parameter k=v (repeatable).", show_default=False)] = None,
    symbols: Annotated[str | None, typer.Option("--symbols", help="Comma-separated symbols, e.g. BTC/USDT,ETH/USDT.",
                                                show_default=False)] = None,
    timeframe: Annotated[str, typer.Option("--timeframe", help="Candle timeframe the strategy runs on.")] = "1m",
    broker: Annotated[str, typer.Option("--broker", help="paper (fills at the next candle's open, as backtest), or exchange "
                                                         "(market orders; keys from TRADPAL_EXCHANGE_API_KEY/SECRET).")] = "paper",
    sandbox: Annotated[bool, typer.Option("--sandbox", help="Exchange broker: the exchange's test network.")] = False,
    live: Annotated[bool, typer.Option("--live", help="Exchange broker on a real exchange: trade real money.")] = False,
    max_position_notional: Annotated[float | None, typer.Option("--max-position-notional", help="Risk limit: largest position value (quote).", show_default=False)] = None,
    max_daily_loss: Annotated[float | None, typer.Option("--max-daily-loss", help="Risk limit: largest loss in a UTC day (quote).", show_default=False)] = None,
    max_orders_per_minute: Annotated[int | None, typer.Option("--max-orders-per-minute", help="Risk limit: orders in any 60 s.", show_default=False)] = None,
    window: Annotated[int | None, typer.Option("--window", help="Candles in the signal window (default: 10x the longest window parameter, at least 500).", show_default=False)] = None,
    from_run: Annotated[str | None, typer.Option("--from-run", help="Start paper traders for the best results of this sweep run.", show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", help="With --from-run: how many of its best results.")] = 3,
    duration: Annotated[float | None, typer.Option("--duration", help="Local Ray: stop after S seconds (default: Ctrl-C).", show_default=False)] = None,
    store: StoreOption = None,
    exchange: ExchangeOption = None,
    exchange_url: ExchangeUrlOption = None,
    db_url: LedgerUrlOption = None,
    address: AddressOption = None,
    instance: InstanceOption = None,
    json_output: JsonOption = False,
    costs: CostOptions = CostOptions(),
) -> None:
    """Start paper traders: the strategy's signal on each closed candle, filled as backtest fills it."""
    from tradpal_ray.backtest import parse_params
    from tradpal_ray.backtest._references import strategy_ref
    from tradpal_ray.cluster import instance_name
    from tradpal_ray.config import split_list
    from tradpal_ray.market.markets import MarketInfoStore
    from tradpal_ray.trading._risk import RiskLimits
    from tradpal_ray.trading._session import TraderSpec

    settings = settings_for(store=store, exchange=exchange, exchange_url=exchange_url)
    config = costs.config()
    limits = RiskLimits(max_position_notional, max_daily_loss, max_orders_per_minute)
    if from_run is not None:
        from tradpal_ray.trading._incubator import incubate

        specs = incubate(settings.store, from_run, top, limits=limits, broker=broker,
                         exchange=settings.exchange, exchange_url=settings.exchange_url, window=window, prefix=name)
    else:
        wanted = tuple(split_list(symbols or ""))
        if not name:
            raise ConfigError("give the trader a --name (or --from-run RUN_ID --top K)")
        if not wanted:
            raise ConfigError("--symbols is empty; give e.g. --symbols BTC/USDT")
        ref = strategy_ref(strategy)
        from tradpal_ray.backtest import get_strategy

        params = get_strategy(ref).resolve(parse_params(param or []))
        markets = MarketInfoStore(settings.store)
        units = {} if costs.size_unit is not None else {
            s: u for s in wanted if (u := markets.size_unit(settings.exchange, s)) is not None}
        specs = [TraderSpec(name=name, strategy=ref.text, symbols=wanted, timeframe=timeframe, store=settings.store,
                            params=params, config=config, size_units=units, limits=limits, broker=broker,
                            exchange=settings.exchange, exchange_url=settings.exchange_url, window=window,
                            sandbox=sandbox, live=live)]
    keys = (settings.exchange_api_key, settings.exchange_secret)
    credentials = None if None in keys else (keys[0].get_secret_value(), keys[1].get_secret_value())
    run_traders(specs, instance_name(instance, settings.store), _db_url(settings, db_url), address,
                duration, json_output, credentials, settings.redis_url.get_secret_value(), settings.traders_per_host)


def run_traders(specs: list[Any], instance: str, db_url: str | None, address: str | None, duration: float | None,
                json_output: bool, credentials: tuple[str, str] | None = None, redis_url: str | None = None,
                per_host: int | None = None) -> None:
    """Start the traders (then their feeds) and, on a private Ray, watch them until ``duration`` or Ctrl-C."""
    import ray

    from tradpal_ray.cluster import connect
    from tradpal_ray.trading.actor import ensure_feed, start_trader, stop_trader

    mode = connect(address, log_to_driver=False)
    detached = mode != "local"
    try:
        handles = [start_trader(spec, instance=instance, ledger_url=db_url, detached=detached, credentials=credentials,
                                redis_url=redis_url, per_host=per_host) for spec in specs]
        ready = [_unwrap_get(ray, handle.ready()) for handle in handles]  # books rebuilt before the feed starts
        feeds = {}
        for spec in specs:
            feed = ensure_feed(spec, instance, detached=detached)
            feeds[feed._actor_id] = feed
        for feed in feeds.values():
            _unwrap_get(ray, feed.ready.remote())
        for spec, status in zip(specs, ready, strict=True):
            console.print(f"trader {spec.name}: {status['status']} on {', '.join(spec.symbols)} {spec.timeframe} "
                          f"({spec.strategy} {spec.params})", highlight=False)
        if detached:
            _report(ready, json_output)
            return
        _wait(duration)
        for feed in feeds.values():  # the feed stores every closed candle, then the traders trade them
            ray.get(feed.stop.remote())
            ray.kill(feed)
        final = [stop_trader(instance, spec.name, flatten=False) for spec in specs]
        _report(final, json_output)
    finally:
        if mode == "local":
            ray.shutdown()


def _unwrap_get(ray: Any, ref: Any) -> Any:
    from tradpal_ray.errors import TradpalError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, TradpalError):
            raise cause from None
        raise


def _wait(duration: float | None) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic())))
    except KeyboardInterrupt:
        console.print("stopping: storing the last candles and trading them...", highlight=False)


def _report(statuses: list[dict[str, Any]], json_output: bool) -> None:
    if json_output:
        emit_json(statuses)
        return
    for status in statuses:
        console.print(f"{status['name']}: {status['status']}{' (' + status['reason'] + ')' if status['reason'] else ''}"
                      f", {status['candles']} candles, equity {status['equity']:,.2f} ({status['return_pct']:+.2f}%)",
                      highlight=False)


@trade_app.command("list")
def list_traders(
    store: StoreOption = None,
    db_url: LedgerUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """The traders in the ledger: status (and why), strategy, symbols, position, closed trades."""
    from rich.table import Table

    ledger = _ledger(store, db_url)
    rows = []
    for record in ledger.traders():
        positions = {p.symbol: p.units for p in ledger.positions(record.name)}
        rows.append({"name": record.name, "status": record.status, "reason": record.reason,
                     "strategy": record.config.get("strategy"), "params": record.config.get("params"),
                     "symbols": record.config.get("symbols"), "timeframe": record.config.get("timeframe"),
                     "positions": positions, "closed_trades": len(ledger.closed_trades(record.name)), "host": record.host,
                     "backtest": record.config.get("backtest")})
    if json_output:
        emit_json(rows)
        return
    table = Table("name", "status", "strategy", "symbols", "positions", "closed trades", title="traders")
    for row in rows:
        status = row["status"] + (f" ({row['reason']})" if row["reason"] else "")
        table.add_row(row["name"], status, f"{row['strategy']} {row['params']}", ",".join(row["symbols"] or []),
                      ", ".join(f"{s} {u:g}" for s, u in row["positions"].items()), str(row["closed_trades"]))
    console.print(table)


@trade_app.command("stop")
def stop(
    name: Annotated[str, typer.Argument(help="The trader's name.")],
    flatten: Annotated[bool, typer.Option("--flatten/--leave", help="Close its positions at the last close, or leave them open.")] = False,
    store: StoreOption = None,
    address: AddressOption = None,
    instance: InstanceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop a running trader (on the Ray cluster at --address)."""
    from tradpal_ray.cluster import connect, instance_name
    from tradpal_ray.trading.actor import stop_trader

    settings = settings_for(store=store)
    connect(address, log_to_driver=False)
    _report([stop_trader(instance_name(instance, settings.store), name, flatten=flatten)], json_output)


@trade_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="The trader's name.")],
    store: StoreOption = None,
    db_url: LedgerUrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """A trader's closed trades, as ``backtest --json --trades`` lists them (plus the symbol)."""
    from tradpal_ray.backtest.engine import trade_records

    ledger = _ledger(store, db_url)
    if name not in {t.name for t in ledger.traders()}:
        raise ConfigError(f"no trader {name!r} in the ledger; see `tradpal-ray trade list`")
    trades = ledger.closed_trades(name)
    records = [{**row, "symbol": symbol} for row, symbol in zip(trade_records(trades), trades["symbol"], strict=True)]
    if json_output:
        emit_json({"trader": name, "trades": records})
        return
    for row in records:
        console.print(f"{row['symbol']} {row['entry_time']} -> {row['exit_time']} {row['units']:g} "
                      f"@ {row['entry_price']:,.4f} -> {row['exit_price']:,.4f} pnl {row['pnl']:,.4f} ({row['exit_reason']})",
                      highlight=False)
