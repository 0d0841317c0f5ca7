"""A trader with its books in the ledger: a :class:`PaperTrader` per symbol, every order and fill recorded. No Ray.

:class:`TraderSession` is what a trader host actor runs, one per trader. It writes one ledger row per decided
order, one per fill (idempotent by client order id and fill id), an equity snapshot and a
``decision`` event per processed candle (with its latency; the restart point), and the trader's status with the
reason of a halt; a trader with backtest figures (the incubator's) a ``divergence`` event
per closed trade. :meth:`TraderSession.start` rebuilds everything after a restart from the
ledger (position, realized PnL, last processed candle: the newest ``decision`` event) and the candle store (the signal
window, and the candles closed while the trader was down, which it then trades).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tradpal_ray.backtest.engine import BacktestConfig
from tradpal_ray.backtest.strategies import get_strategy
from tradpal_ray.errors import ConfigError
from tradpal_ray.log import get_logger
from tradpal_ray.market.store import CandleStore
from tradpal_ray.trading._changes import DECISION_EVENT, DIVERGENCE_EVENT
from tradpal_ray.trading._exchange import ExchangeBroker, ExchangeTrader
from tradpal_ray.trading._ledger import Ledger
from tradpal_ray.trading._models import TRADER_NAME, Fill, Order, client_order_id
from tradpal_ray.trading._paper import Candle, PaperBroker
from tradpal_ray.trading._risk import RiskGuard, RiskLimits
from tradpal_ray.trading._trader import CandleOutcome, OrderIntent, PaperTrader, SharedSignals, TraderCore

log = get_logger(__name__)

BROKERS = ("paper", "exchange")
RUNNING, HALTED, STOPPED = "running", "halted", "stopped"
_ORDER_REASON = {"signal": "signal", "stop_loss": "stop_loss", "take_profit": "take_profit", "liquidation": "flatten",
                 "flatten": "flatten"}


@dataclass(frozen=True)
class TraderSpec:
    """Everything a trader is started with; stored in the ledger as its configuration."""

    name: str
    strategy: str
    """A strategy reference (name, ``module:function`` or ``file.py:function``)."""
    symbols: tuple[str, ...]
    timeframe: str
    store: str
    params: Mapping[str, Any] = field(default_factory=dict)
    config: BacktestConfig = field(default_factory=BacktestConfig)
    """Cash, fee, sizing, slippage, direction, stops: the backtest's, per symbol (each symbol its own book)."""
    size_units: Mapping[str, float] = field(default_factory=dict)
    """Per-symbol tradable increments replacing ``config.size_unit`` (the markets' lot steps)."""
    limits: RiskLimits = field(default_factory=RiskLimits)
    broker: str = "paper"
    exchange: str = "binance"
    exchange_url: str | None = None
    window: int | None = None
    """Candles in the signal window (None: :func:`~tradpal_ray.trading._trader.signal_window`)."""
    backtest: Mapping[str, Any] | None = None
    """The backtest figures this trader is to be compared with (the incubator sets them)."""
    sandbox: bool = False
    """Exchange broker: the exchange's test network (ccxt sandbox mode)."""
    live: bool = False
    """Exchange broker on a real exchange (no ``exchange_url``, no sandbox): real money, asked for explicitly."""

    def __post_init__(self) -> None:
        if not TRADER_NAME.match(self.name):
            raise ConfigError(f"trader name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit")
        if not self.symbols:
            raise ConfigError("a trader needs at least one symbol, e.g. --symbols BTC/USDT")
        if self.broker not in BROKERS:
            raise ConfigError(f"unknown broker {self.broker!r}; valid: {', '.join(BROKERS)}")
        if self.broker == "exchange" and self.config.direction != "long":
            raise ConfigError("the exchange broker trades spot: --direction long only")
        if self.broker == "exchange" and self.exchange_url is None and not (self.sandbox or self.live):
            raise ConfigError(f"--broker exchange on the real {self.exchange} trades real money: add --live "
                              "(or --sandbox for its test network, or --exchange-url for the simulator)")
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "size_units", dict(self.size_units))

    def symbol_config(self, symbol: str) -> BacktestConfig:
        """The config of ``symbol``'s book: :attr:`config` with the symbol's size unit."""
        unit = self.size_units.get(symbol)
        return self.config if unit is None else dataclasses.replace(self.config, size_unit=unit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the ledger's trader configuration)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraderSpec:
        """The spec :meth:`to_dict` wrote."""
        values = dict(data)
        values["config"] = BacktestConfig(**values["config"])
        values["limits"] = RiskLimits(**values["limits"])
        values["symbols"] = tuple(values["symbols"])
        return cls(**values)


class TraderSession:
    """One trader's paper books over its symbols, recorded in ``ledger`` (see the module)."""

    def __init__(self, spec: TraderSpec, ledger: Ledger, *, exchange_client: Any = None, host: str | None = None,
                 shared: SharedSignals | None = None) -> None:
        self.spec = spec
        self.ledger = ledger
        self.host = host
        """The Ray actor hosting this session, recorded in the ledger (a restarted host finds its traders)."""
        self.exchange_client = exchange_client
        """A ccxt client (sync) with the account's keys, for ``broker="exchange"``."""
        self.shared = shared
        """Signals shared with the other sessions of the process (its host's), or None."""
        self.defer_fills = spec.backtest is None
        """Paper orders and fills join the host's per-candle transaction (:meth:`Ledger.deferred`), except
        an incubator trader's: its divergence event reads its closed trades back from the ledger."""
        self.store = CandleStore(spec.store)
        self.strategy = get_strategy(spec.strategy)
        """Resolved once: a reference is loaded (and hashed) once per trader, not once per symbol."""
        self.traders: dict[str, PaperTrader] = {}
        self.exchange_traders: dict[str, ExchangeTrader] = {}
        self.last_candle: dict[str, Candle] = {}
        self.first_ms: dict[str, int] = {}
        self.candles = 0
        self.status = RUNNING
        self.reason: str | None = None

    # ------------------------------------------------------------ start
    def start(self) -> None:
        """Register the trader (or find it after a restart) and rebuild each symbol's books; trade missed candles."""
        known = self.ledger.trader(self.spec.name)
        if known is None or known.status == STOPPED:
            self.ledger.upsert_trader(self.spec.name, self.spec.to_dict(), RUNNING, host=self.host)
        else:
            if known.host != self.host:
                self.ledger.set_host(self.spec.name, self.host)
            if known.status == HALTED:
                self.status, self.reason = HALTED, known.reason
        processed = self._processed()
        for symbol in self.spec.symbols:
            self._rebuild(symbol, processed.get(symbol))
        log.info("trader.started", trader=self.spec.name, symbols=list(self.spec.symbols), status=self.status,
                 resumed={s: processed[s]["time_ms"] for s in processed})
        for symbol in processed if self.spec.broker == "paper" else ():  # the candles closed while it was down
            self.catch_up(symbol)

    def _processed(self) -> dict[str, dict[str, Any]]:
        """The newest ``decision`` event per symbol: the restart point."""
        newest: dict[str, dict[str, Any]] = {}
        for event in self.ledger.events(self.spec.name, kind=DECISION_EVENT, limit=64 * len(self.spec.symbols)):
            newest.setdefault(event.detail["symbol"], event.detail)
        return newest

    def catch_up(self, symbol: str) -> int:
        """Trade the candles of ``symbol`` stored after the last one processed; how many."""
        last = self.last_candle.get(symbol)
        frame = self.store.read(self.spec.exchange, symbol, self.spec.timeframe,
                                start=None if last is None else last.time_ms + 1)
        return self.on_candles(symbol, candles_of(frame))

    def _rebuild(self, symbol: str, processed: Mapping[str, Any] | None) -> None:
        spec = self.spec
        config = spec.symbol_config(symbol)
        core = TraderCore(spec.name, symbol, spec.timeframe, self.strategy, spec.params, config, window=spec.window,
                          shared=self.shared)
        trader = PaperTrader.new(core, spec.limits)
        trader.halted = self.reason if self.status == HALTED else None
        last = None if processed is None else int(processed["time_ms"])
        frame = self.store.read(spec.exchange, symbol, spec.timeframe, end=None if last is None else last + 1)
        core.warm_up(frame.iloc[-core.window:])
        if spec.broker == "exchange":  # live orders: warm up, settle what the ledger left open, trade from now on
            exchange = ExchangeTrader(core, ExchangeBroker(self.exchange_client), self.ledger, RiskGuard(spec.limits))
            exchange.halted = trader.halted
            self.exchange_traders[symbol] = exchange
            settled = exchange.reconcile()
            log.info("trader.reconciled", trader=spec.name, symbol=symbol, orders=settled)
            if len(frame):
                self.last_candle[symbol] = candles_of(frame.iloc[-1:])[0]
            return
        self.traders[symbol] = trader
        if not len(frame):
            return
        candle = candles_of(frame.iloc[-1:])[0]
        self.last_candle[symbol] = candle
        if last is None:  # a fresh trader: the stored candles were its warm-up, it trades the next one
            return
        self.first_ms[symbol] = int(processed.get("first_ms", last))
        position = self.ledger.position(spec.name, symbol)
        trader.broker = PaperBroker.resume(config, units=position.units, entry_price=position.entry_price,
                                           entry_fee=position.entry_fee, entry_time_ms=position.updated_ms,
                                           realized_pnl=position.realized_pnl)
        trader.broker.equity = float(processed["equity"])
        if not trader.halted:  # the order decided at the last close before the restart (same id: recorded once)
            units = trader.broker.units
            trader.pending = core.order(core.target(units), candle, units, trader.broker.cash)

    # ------------------------------------------------------------ candles
    def on_candles(self, symbol: str, candles: Iterable[Candle]) -> int:
        """Process closed candles of ``symbol`` in order (already processed ones are skipped); how many were new."""
        count = 0
        for candle in candles:
            last = self.last_candle.get(symbol)
            if last is not None and candle.time_ms <= last.time_ms:
                continue
            self._on_candle(symbol, candle)
            count += 1
        return count

    def _on_candle(self, symbol: str, candle: Candle) -> None:
        started = time.perf_counter()
        if symbol in self.exchange_traders:
            halt = self.exchange_traders[symbol].on_candle(candle)
            closed = False
        else:
            outcome = self.traders[symbol].on_candle(candle)
            self._record_fills(symbol, outcome)
            if outcome.order is not None:
                self.ledger.record_order(self._order(symbol, outcome.order, "signal"), defer=self.defer_fills)
            halt, closed = outcome.halt, any(not e.opens for e in outcome.executions)
        self.last_candle[symbol] = candle
        self.first_ms.setdefault(symbol, candle.time_ms)
        self.candles += 1
        equity, cash = self._totals()
        symbol_equity = (self.exchange_traders[symbol].equity if symbol in self.exchange_traders
                         else self.traders[symbol].broker.equity)
        self.ledger.record_equity(self.spec.name, candle.time_ms, equity, cash)
        self.ledger.record_event(self.spec.name, DECISION_EVENT, {
            "symbol": symbol, "time_ms": candle.time_ms, "first_ms": self.first_ms[symbol],
            "equity": symbol_equity, "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
        if self.spec.backtest is not None and closed:
            self.ledger.record_event(self.spec.name, DIVERGENCE_EVENT, self.report()["divergence"])
        if halt and self.status != HALTED:
            self.halt(halt)

    def _totals(self) -> tuple[float, float]:
        """Equity and cash over every symbol's book; paper books only: from their brokers (no ledger read)."""
        if self.exchange_traders:
            books = self._books().values()
            return sum(b["equity"] for b in books), sum(b["cash"] for b in books)
        return sum(t.broker.equity for t in self.traders.values()), sum(t.broker.cash for t in self.traders.values())

    def _books(self) -> dict[str, dict[str, Any]]:
        """Per symbol: units, entry price, equity and cash (the paper broker's, or the ledger's for the exchange)."""
        books = {symbol: {"units": t.broker.units, "entry_price": t.broker.entry_price if t.broker.units else None,
                          "equity": t.broker.equity, "cash": t.broker.cash, "trades": len(t.broker.trades)}
                 for symbol, t in self.traders.items()}
        for symbol, trader in self.exchange_traders.items():
            position = self.ledger.position(self.spec.name, symbol)
            books[symbol] = {"units": position.units, "entry_price": position.entry_price if position.units else None,
                             "equity": trader.equity, "cash": trader.equity - position.units * position.entry_price,
                             "trades": None}
        return books

    def _order(self, symbol: str, intent: OrderIntent, reason: str, units: float | None = None) -> Order:
        return Order(trader=self.spec.name, client_order_id=intent.client_order_id, symbol=symbol, side=intent.side,
                     units=units if units is not None else max(intent.estimated_units, self.spec.symbol_config(symbol).size_unit),
                     bar_time_ms=intent.bar_time_ms, reason=reason, created_ms=_now_ms())

    def _record_fills(self, symbol: str, outcome: CandleOutcome) -> None:
        """Each execution as a fill of its order: the signal's (decided at the last close), or a stop's own."""
        signal_fills = 0
        for execution in outcome.executions:
            if execution.reason == "signal" and outcome.filled_order is not None:
                order_id = outcome.filled_order.client_order_id
                fill_id = f"{order_id}:{signal_fills}"
                signal_fills += 1
            else:
                order_id = client_order_id(self.spec.name, symbol, execution.time_ms, execution.side)
                intent = OrderIntent(order_id, symbol, execution.side, 0, execution.time_ms, execution.units)
                self.ledger.record_order(self._order(symbol, intent, _ORDER_REASON[execution.reason], execution.units),
                                         defer=self.defer_fills)
                fill_id = f"{order_id}:0"
            self.ledger.record_fill(Fill(self.spec.name, order_id, fill_id, symbol, execution.side, execution.units,
                                         execution.price, execution.fee, execution.time_ms), defer=self.defer_fills)
            self.ledger.update_order(order_id, "filled", defer=self.defer_fills)
        if outcome.filled_order is not None and not signal_fills:  # nothing affordable, or the account is dead
            self.ledger.update_order(outcome.filled_order.client_order_id, "canceled", defer=self.defer_fills)

    # ------------------------------------------------------------ control
    def halt(self, reason: str) -> None:
        """Stop ordering (a risk limit was breached): status ``halted`` with the reason, in the ledger and the log."""
        self.status, self.reason = HALTED, reason
        for trader in self.traders.values():
            trader.halted = trader.halted or reason
            trader.pending = None
        for exchange in self.exchange_traders.values():
            exchange.halted = exchange.halted or reason
        self.ledger.set_status(self.spec.name, HALTED, reason)
        self.ledger.record_event(self.spec.name, "halt", {"reason": reason})
        log.warning("trader.halted", trader=self.spec.name, reason=reason)

    def stop(self, *, flatten: bool) -> None:
        """Stop: with ``flatten`` close every position at its last close (fee and slippage as any fill), else leave it."""
        for symbol, exchange in self.exchange_traders.items():
            last = self.last_candle.get(symbol)
            if flatten and last is not None and (units := exchange.units()) > 0:
                exchange.send("sell", units, last.time_ms + exchange.core.step_ms, "flatten")
        for symbol, trader in self.traders.items():
            trader.pending = None
            last = self.last_candle.get(symbol)
            if flatten and last is not None and trader.broker.units:
                executions = trader.broker.flatten(last)
                self._record_fills(symbol, CandleOutcome(last.time_ms, tuple(executions), None, None,
                                                         trader.broker.equity, trader.broker.cash))
        self.status = STOPPED
        self.ledger.set_status(self.spec.name, STOPPED, self.reason)
        log.info("trader.stopped", trader=self.spec.name, flatten=flatten)

    def report(self) -> dict[str, Any]:
        """JSON-ready status: per symbol position, equity and last candle; totals; the backtest to compare with."""
        symbols = {
            symbol: {**book, "last_candle_ms": self.last_candle[symbol].time_ms if symbol in self.last_candle else None,
                     "first_candle_ms": self.first_ms.get(symbol)}
            for symbol, book in self._books().items()
        }
        start_cash = self.spec.config.cash * len(self.spec.symbols)
        equity = sum(s["equity"] for s in symbols.values()) + self.spec.config.cash * (len(self.spec.symbols) - len(symbols))
        out: dict[str, Any] = {
            "name": self.spec.name, "status": self.status, "reason": self.reason, "strategy": self.spec.strategy,
            "params": dict(self.spec.params), "timeframe": self.spec.timeframe, "broker": self.spec.broker,
            "candles": self.candles, "equity": equity, "return_pct": (equity / start_cash - 1.0) * 100.0,
            "symbols": symbols,
        }
        if self.spec.backtest is not None:
            out["backtest"] = dict(self.spec.backtest)
            out["divergence"] = divergence(out, self.spec.backtest, self.ledger.closed_trades(self.spec.name))
        return out


def divergence(report: Mapping[str, Any], backtest: Mapping[str, Any], closed: pd.DataFrame) -> dict[str, float]:
    """Live minus backtest: closed trades and return % (the incubator's comparison)."""
    return {"trades": float(len(closed)) - float(backtest.get("trades") or 0.0),
            "return_pct": float(report["return_pct"]) - float(backtest.get("return_pct") or 0.0)}


def candles_of(frame: pd.DataFrame) -> list[Candle]:
    """An OHLCV frame indexed by UTC time (the store's, a feed batch's) as candles."""
    times = frame.index.as_unit("ms").asi8 if len(frame) else np.empty(0, dtype=np.int64)
    columns = (frame[k].to_numpy(dtype=float) for k in ("open", "high", "low", "close", "volume"))
    return [Candle(int(t), o, h, lo, c, v) for t, o, h, lo, c, v in zip(times, *columns, strict=True)]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
