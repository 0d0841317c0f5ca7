"""The exchange broker: market orders through ccxt, under the trader's deterministic client order ids.

A live order cannot fill at a past open: the exchange trader sends its order when the
deciding candle closes (the next candle's open, in time) and records what the exchange
reports: one ledger fill per exchange trade (``fill_id`` = the exchange's trade id), its
price and fee (quote). Stops are checked on each closed candle (low/high against the levels
from the ledger's entry price) and sent as market orders then. Spot only: long positions.

Every order is written to the ledger (``new``) before it is sent, and the client order id
is derived from (trader, symbol, candle, side): a retried send is refused by the exchange
as a duplicate, and :meth:`ExchangeTrader.reconcile` (on every start) asks the exchange
for each order the ledger still has open and records the fills it is missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tradpal_ray.backtest.engine import NO_CHANGE
from tradpal_ray.errors import ConfigError
from tradpal_ray.log import get_logger
from tradpal_ray.trading._ledger import Ledger
from tradpal_ray.trading._models import Fill, Order, client_order_id
from tradpal_ray.trading._paper import Candle
from tradpal_ray.trading._risk import RiskGuard
from tradpal_ray.trading._trader import TraderCore, estimate_units

log = get_logger(__name__)

SEND_ATTEMPTS = 4
"""Sends of one order (same client order id) before a network error halts the trader."""
SEND_RETRY_S = 0.5
"""Pause before the n-th resend: n times this (a rate limit's Retry-After is usually a second or so)."""
RECV_WINDOW_MS = 5_000
"""Binance's default ``recvWindow``: a signed request older than this on arrival is refused (-1021)."""
ARRIVAL_MARGIN_MS = 2_000
"""Beyond the recvWindow: the exchange's clock may lag ours by up to a second (it refuses requests dated more than
1 s ahead of it), plus the time to send."""


@dataclass(frozen=True)
class ExchangeTrade:
    """One execution as the exchange reports it."""

    trade_id: str
    price: float
    units: float
    fee: float
    time_ms: int


def exchange_trades(trades: list[dict[str, Any]]) -> list[ExchangeTrade]:
    """ccxt trade dicts (``fetch_my_trades``, an order's ``trades``) as :class:`ExchangeTrade` s; fees in quote."""
    return [ExchangeTrade(str(t["id"]), float(t["price"]), float(t["amount"]), float((t.get("fee") or {}).get("cost") or 0.0),
                          int(t["timestamp"])) for t in trades]


@dataclass(frozen=True)
class ExchangeOrder:
    """What the exchange says of an order: its id, whether it is done (filled or closed), its trades."""

    exchange_id: str
    closed: bool
    trades: list[ExchangeTrade]


class ExchangeBroker:
    """Market orders of one account through a ccxt client (sync), by client order id."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def send(self, order: Order, cost: float | None = None) -> ExchangeOrder:
        """Send a market order under its client order id: ``order.units``, or a buy spending ``cost`` (quote, fees
        on top) so that a price moved since the decision never makes it unaffordable.

        A network error (a lost answer, a dropped connection, a 5xx, a rate limit) leaves it unknown whether the
        exchange took the order: it is sent again under the same id, up to ``SEND_ATTEMPTS`` times; the exchange
        refuses a second one as a duplicate, and the order it has is looked up instead."""
        import ccxt

        params = {"newClientOrderId": order.client_order_id, "newOrderRespType": "FULL"}
        attempt = 1
        while True:
            try:
                if cost is not None:
                    answer = self.client.create_market_buy_order_with_cost(order.symbol, cost, params=params)
                else:
                    answer = self.client.create_order(order.symbol, "market", order.side, order.units, params=params)
            except ccxt.InvalidOrder as exc:
                if "Duplicate order" not in str(exc):
                    raise
                return self.lookup(order)  # sent before (a lost answer, a restart before recording): what became of it
            except ccxt.NetworkError as exc:
                if attempt == SEND_ATTEMPTS:
                    raise
                log.warning("trader.order_send_retry", order=order.client_order_id, attempt=attempt,
                            error=type(exc).__name__)
                time.sleep(SEND_RETRY_S * attempt)
                attempt += 1
                continue
            return self._answer(order, answer)

    def lookup(self, order: Order) -> ExchangeOrder:
        """The exchange's view of ``order`` (found by its client order id); ccxt OrderNotFound if it never arrived."""
        return self._answer(order, self.client.fetch_order(None, order.symbol,
                                                           params={"origClientOrderId": order.client_order_id}))

    def settled_lookup(self, order: Order) -> ExchangeOrder:
        """:meth:`lookup`, but an order not found while it may still be on its way (a request sent by a trader that
        died, delayed in the network) is looked up again once it can no longer arrive: the exchange refuses a
        request older than its ``recvWindow``. ccxt OrderNotFound when it never arrived."""
        import ccxt

        try:
            return self.lookup(order)
        except ccxt.OrderNotFound:
            window = int(self.client.options.get("recvWindow") or RECV_WINDOW_MS)
            wait_ms = order.created_ms + window + ARRIVAL_MARGIN_MS - _now(None)
            if wait_ms <= 0:
                raise
            log.info("trader.order_maybe_in_flight", order=order.client_order_id, wait_ms=wait_ms)
            time.sleep(wait_ms / 1000)
            return self.lookup(order)

    def _answer(self, order: Order, answer: dict[str, Any]) -> ExchangeOrder:
        exchange_id = str(answer["id"])
        trades = exchange_trades(self.client.fetch_my_trades(order.symbol, params={"orderId": exchange_id}))
        return ExchangeOrder(exchange_id, answer.get("status") in ("closed", "canceled", "expired", "rejected"), trades)


class ExchangeTrader:
    """One symbol traded on the exchange: the core's targets as market orders, the position from the ledger."""

    def __init__(self, core: TraderCore, broker: ExchangeBroker, ledger: Ledger, risk: RiskGuard) -> None:
        if core.config.direction != "long":
            raise ConfigError("the exchange broker trades spot: --direction long only")
        self.core = core
        self.broker = broker
        self.ledger = ledger
        self.risk = risk
        self.halted: str | None = None
        self.equity = core.config.cash

    @property
    def name(self) -> str:
        return self.core.name

    def units(self) -> float:
        """The position, as the ledger has it."""
        return self.ledger.position(self.name, self.core.symbol).units

    def reconcile(self) -> int:
        """Record the fills of every order the ledger still has open, as the exchange reports them; orders settled."""
        import ccxt

        settled = 0
        for order in self.ledger.open_orders(self.name):
            if order.symbol != self.core.symbol:
                continue
            try:
                found = self.broker.settled_lookup(order)
            except ccxt.OrderNotFound as exc:  # never reached the exchange (any other error: its fate unknown, raised)
                log.info("trader.order_not_at_exchange", trader=self.name, order=order.client_order_id,
                         error=type(exc).__name__)
                self.ledger.update_order(order.client_order_id, "canceled")
                settled += 1
                continue
            self._record(order, found)
            settled += 1
        return settled

    def on_candle(self, candle: Candle, now_ms: int | None = None) -> str | None:
        """Stops inside the candle, then the signal at its close, sent now; the breach that halts it, or None."""
        position = self.ledger.position(self.name, self.core.symbol)
        units = position.units
        config = self.core.config
        stop = self._stop_hit(position.entry_price, candle) if units else None
        if stop is not None:
            self.send("sell", units, candle.time_ms, stop)
            units = 0.0
        target = self.core.on_candle(candle, units)
        position = self.ledger.position(self.name, self.core.symbol)
        equity = config.cash + position.realized_pnl - position.entry_fee + units * (candle.close - position.entry_price)
        self.equity = equity
        breach = self.risk.check_equity(candle.time_ms, equity)
        if breach or self.halted or target == NO_CHANGE:
            return breach
        fill_time = candle.time_ms + self.core.step_ms
        if target == 0 and units > 0:
            breach = self.risk.check_order(_now(now_ms), 0.0)
            if not breach:
                self.send("sell", units, fill_time, "signal")
        elif target == 1 and units == 0:
            size = estimate_units(config, config.cash + position.realized_pnl, candle.close)
            breach = self.risk.check_order(_now(now_ms), size * candle.close)
            if size > 0 and not breach:
                budget = (config.cash + position.realized_pnl) * config.size_fraction
                if config.size_notional is not None:
                    budget = min(budget, config.size_notional)
                self.send("buy", size, fill_time, "signal", cost=budget / (1.0 + config.fee))
        return breach

    def _stop_hit(self, entry: float, candle: Candle) -> str | None:
        """``stop_loss`` or ``take_profit`` when the candle reached that level of the held long, else None."""
        config = self.core.config
        if config.stop_loss is not None and candle.low <= entry * (1 - config.stop_loss):
            return "stop_loss"
        if config.take_profit is not None and candle.high >= entry * (1 + config.take_profit):
            return "take_profit"
        return None

    def send(self, side: str, units: float, bar_time_ms: int, reason: str, cost: float | None = None) -> None:
        """Record, send and record the fills of a market order for the candle at ``bar_time_ms`` (``units``
        estimated when a buy spends ``cost``)."""
        order = Order(trader=self.name, client_order_id=client_order_id(self.name, self.core.symbol, bar_time_ms, side),
                      symbol=self.core.symbol, side=side, units=units, bar_time_ms=bar_time_ms, reason=reason,
                      created_ms=_now(None))
        self.ledger.record_order(order)  # before sending: a crash in between is reconciled on restart
        self._record(order, self.broker.send(order, cost))

    def _record(self, order: Order, found: ExchangeOrder) -> None:
        self.ledger.update_order(order.client_order_id, "sent", exchange_order_id=found.exchange_id)
        for trade in found.trades:
            self.ledger.record_fill(Fill(self.name, order.client_order_id, trade.trade_id, order.symbol, order.side,
                                         trade.units, trade.price, trade.fee, trade.time_ms))
        if found.closed:
            self.ledger.update_order(order.client_order_id, "filled" if found.trades else "canceled")


def _now(now_ms: int | None) -> int:
    return time.time_ns() // 1_000_000 if now_ms is None else now_ms


def exchange_client(exchange: str, url: str | None, credentials: tuple[str, str] | None, *, sandbox: bool) -> Any:
    """A sync ccxt client for the exchange broker (keys never logged; sandbox = the exchange's test network)."""
    from tradpal_ray.market.exchange import create_exchange

    api_key, secret = credentials or (None, None)
    if not api_key or not secret:
        raise ConfigError("the exchange broker needs API keys: set TRADPAL_EXCHANGE_API_KEY and TRADPAL_EXCHANGE_SECRET")
    client = create_exchange(exchange, url=url, api_key=api_key, secret=secret)
    if sandbox:
        client.set_sandbox_mode(True)
    return client
