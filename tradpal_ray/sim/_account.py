"""The simulated spot account as pure logic: balances, orders, matching against the price path, fills.

No server, no clock: every method takes the current price (in ticks) and the simulated time.
Rules, kept simple and documented in the README:

- MARKET orders fill at once, completely, at the current price (the last trade of the
  simulator's price path). ``quantity`` is in base units; ``quoteOrderQty`` spends that much
  quote (the quantity is rounded down to the lot step).
- LIMIT orders (GTC) that are marketable when placed fill at once at the current price;
  otherwise they rest (their funds locked) and fill completely at their limit price on the
  first trade of the price path at or through it (buy: price <= limit; sell: price >= limit).
  IOC/FOK orders that cannot fill at once expire.
- The fee is ``fee_rate`` (default 0.001) of the notional, rounded half-up to 8 decimals,
  charged in the quote asset for buys and sells alike: a buy costs ``qty*price + fee``
  quote, a sell yields ``qty*price - fee`` quote.
- Filters as served by ``/api/v3/exchangeInfo``: PRICE_FILTER, LOT_SIZE and NOTIONAL
  (min 5, also for MARKET orders), -1013 "Filter failure: ..." otherwise.
- A ``newClientOrderId`` already used on the symbol is refused with -2010 "Duplicate order sent."
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

import numpy as np

from tradpal_ray.errors import ConfigError
from tradpal_ray.sim._errors import (
    DUPLICATE_ORDER,
    INSUFFICIENT_BALANCE,
    ORDER_NOT_FOUND,
    UNKNOWN_ORDER,
    ApiError,
    missing,
)
from tradpal_ray.sim.market import SymbolSpec

DEFAULT_FEE_RATE = Decimal("0.001")
DEFAULT_BALANCES = {"USDT": Decimal(10000)}
MIN_NOTIONAL = Decimal(5)
MAX_NOTIONAL = Decimal(9000000)
MAX_QTY = Decimal(90000000)
MAX_PRICE = Decimal(10000000)
FEE_QUANTUM = Decimal("0.00000001")
ORDER_TYPES = ("MARKET", "LIMIT")
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
RESPONSE_TYPES = ("ACK", "RESULT", "FULL")



def parse_balances(text: str | Mapping[str, object] | None) -> dict[str, Decimal]:
    """Starting balances from ``"USDT=10000,BTC=0"`` (or a mapping); ConfigError if malformed."""
    if text is None:
        return dict(DEFAULT_BALANCES)
    items = text.items() if isinstance(text, Mapping) else (
        part.partition("=")[::2] for part in text.split(",") if part.strip()
    )
    balances: dict[str, Decimal] = {}
    for asset, amount in items:
        asset = str(asset).strip().upper()
        try:
            value = Decimal(str(amount).strip())
        except InvalidOperation:
            value = Decimal("NaN")
        if not asset.isalnum() or not value.is_finite() or value < 0:
            raise ConfigError(f"malformed balance {asset}={amount}; use ASSET=AMOUNT,... e.g. USDT=10000,BTC=0")
        balances[asset] = value
    if not balances:
        raise ConfigError("give at least one balance, e.g. --balance USDT=10000")
    return balances


def parse_fee_rate(value: float | str | Decimal) -> Decimal:
    """A fee rate in [0, 1) from a number or string; ConfigError otherwise."""
    try:
        rate = Decimal(str(value))
    except InvalidOperation:
        rate = Decimal("NaN")
    if not rate.is_finite() or not 0 <= rate < 1:
        raise ConfigError(f"fee rate must be a number in [0, 1), e.g. 0.001; got {value!r}")
    return rate


def _decimal(params: Mapping[str, str], name: str) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise ApiError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.")
    return value


@dataclass(frozen=True)
class OrderRequest:
    """A validated new-order request (the parameters of ``POST /api/v3/order``)."""

    symbol: str  # Binance id, BTCUSDT
    side: str  # BUY / SELL
    type: str  # MARKET / LIMIT
    client_order_id: str
    quantity: Decimal | None = None
    quote_order_qty: Decimal | None = None
    price: Decimal | None = None
    time_in_force: str | None = None
    response_type: str = "FULL"

    @classmethod
    def from_params(cls, params: Mapping[str, str], client_order_id: str) -> OrderRequest:
        """Binance's parameter rules (-1102 missing, -1116 type, -1117 side, -1106 extra); ids are
        not resolved here. ``client_order_id`` is used when ``newClientOrderId`` is absent."""
        for name in ("symbol", "side", "type"):
            if not params.get(name):
                raise missing(name)
        side, kind = params["side"].upper(), params["type"].upper()
        if side not in ("BUY", "SELL"):
            raise ApiError(-1117, "Invalid side.")
        if kind not in ORDER_TYPES:
            raise ApiError(-1116, "Invalid orderType.")
        quantity, quote = _decimal(params, "quantity"), _decimal(params, "quoteOrderQty")
        price = _decimal(params, "price")
        time_in_force = params.get("timeInForce") or None
        if kind == "MARKET":
            if (quantity is None) == (quote is None):
                raise ApiError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty or both sent.")
            if price is not None:
                raise ApiError(-1106, "Parameter 'price' sent when not required.")
        else:
            for name, value in (("timeInForce", time_in_force), ("quantity", quantity), ("price", price)):
                if value is None:
                    raise missing(name)
            if time_in_force not in TIME_IN_FORCE:
                raise ApiError(-1115, "Invalid timeInForce.")
            if quote is not None:
                raise ApiError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        response_type = (params.get("newOrderRespType") or "FULL").upper()
        if response_type not in RESPONSE_TYPES:
            raise ApiError(-1100, "Illegal characters found in parameter 'newOrderRespType'.")
        return cls(
            symbol=params["symbol"].upper(),
            side=side,
            type=kind,
            client_order_id=params.get("newClientOrderId") or client_order_id,
            quantity=quantity,
            quote_order_qty=quote,
            price=price,
            time_in_force=time_in_force,
            response_type=response_type,
        )


@dataclass(frozen=True)
class Fill:
    """One trade of the account (a row of ``myTrades``)."""

    id: int
    order_id: int
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_maker: bool


@dataclass(frozen=True)
class Order:
    """An order's state; replaced (never mutated) as it changes."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    price: Decimal  # 0 for MARKET
    orig_qty: Decimal
    orig_quote_qty: Decimal
    executed_qty: Decimal
    cumulative_quote_qty: Decimal
    status: str  # NEW, FILLED, CANCELED, EXPIRED
    time: int
    update_time: int
    fills: tuple[Fill, ...] = ()
    cancel_client_order_id: str = ""

    @property
    def is_open(self) -> bool:
        """Whether the order rests on the book."""
        return self.status == "NEW"


@dataclass(frozen=True)
class Execution:
    """What happened to an order (an ``executionReport``): NEW, TRADE, CANCELED or EXPIRED."""

    order: Order
    kind: str
    time: int
    fill: Fill | None = None


@dataclass(frozen=True)
class Balance:
    """Free and locked amounts of one asset."""

    free: Decimal
    locked: Decimal = Decimal(0)


class Account:
    """One spot account: balances, orders and fills; matching against prices in ticks."""

    def __init__(
        self,
        specs: Iterable[SymbolSpec],
        balances: Mapping[str, Decimal] | None = None,
        fee_rate: Decimal | float | str = DEFAULT_FEE_RATE,
    ) -> None:
        self.specs = {spec.id: spec for spec in specs}
        self.fee_rate = parse_fee_rate(fee_rate)
        self.balances: dict[str, Balance] = {
            asset: Balance(Decimal(amount)) for asset, amount in (balances or DEFAULT_BALANCES).items()
        }
        for spec in self.specs.values():
            for asset in (spec.base, spec.quote):
                self.balances.setdefault(asset, Balance(Decimal(0)))
        self.orders: dict[int, Order] = {}
        self.fills: list[Fill] = []
        self._by_client_id: dict[tuple[str, str], int] = {}
        self._limits: dict[int, int] = {}  # open LIMIT order id -> limit price in ticks
        self.update_time = 0

    # -- queries ---------------------------------------------------------------------------

    def spec(self, symbol: str) -> SymbolSpec:
        """The spec of a Binance symbol id; -1121 if not traded here."""
        spec = self.specs.get(symbol.upper())
        if spec is None:
            raise ApiError(-1121, "Invalid symbol.")
        return spec

    def assets(self, symbol: str) -> tuple[str, str]:
        """Base and quote asset of a Binance symbol id."""
        spec = self.specs[symbol]
        return spec.base, spec.quote

    def find(self, symbol: str, order_id: int | None = None, client_order_id: str | None = None) -> Order:
        """An order by id or client id on ``symbol``; -2013 if there is none."""
        if order_id is None and client_order_id is None:
            raise ApiError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if order_id is None:
            order_id = self._by_client_id.get((symbol, client_order_id or ""))
        order = self.orders.get(order_id) if order_id is not None else None
        if order is None or order.symbol != symbol or (
            client_order_id is not None and order.client_order_id != client_order_id
        ):
            raise ORDER_NOT_FOUND.error()
        return order

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Resting orders, oldest first (of one symbol if given)."""
        return [self.orders[i] for i in self._limits if symbol is None or self.orders[i].symbol == symbol]

    def trades(self, symbol: str, order_id: int | None = None) -> list[Fill]:
        """The account's fills on ``symbol`` in order (of one order if given)."""
        return [f for f in self.fills if f.symbol == symbol and (order_id is None or f.order_id == order_id)]

    # -- orders ----------------------------------------------------------------------------

    def place(self, request: OrderRequest, price_ticks: int, now_ms: int) -> list[Execution]:
        """Check and place ``request`` at the current price; the executions it caused
        (NEW, then TRADE when it fills at once, or EXPIRED for IOC/FOK that cannot)."""
        spec = self.spec(request.symbol)
        key = (spec.id, request.client_order_id)
        if key in self._by_client_id:
            raise DUPLICATE_ORDER.error()
        market = _price(spec, price_ticks)
        qty = request.quantity
        if qty is None:  # MARKET by quoteOrderQty: as much as that buys, rounded down to the lot step
            assert request.quote_order_qty is not None
            qty = (request.quote_order_qty / market).quantize(_step(spec.qty_decimals), rounding=ROUND_DOWN)
        limit_ticks = self._check_filters(spec, request, qty, market)
        marketable = limit_ticks is None or (
            limit_ticks >= price_ticks if request.side == "BUY" else limit_ticks <= price_ticks
        )
        price = request.price if request.price is not None else Decimal(0)
        # funds are checked at the price the order can fill at: now, or its limit when it rests
        self._check_funds(spec, request.side, qty, market if marketable else price)
        order = Order(
            order_id=len(self.orders) + 1,
            client_order_id=request.client_order_id,
            symbol=spec.id,
            side=request.side,
            type=request.type,
            time_in_force=request.time_in_force or "GTC",
            price=price,
            orig_qty=qty,
            orig_quote_qty=request.quote_order_qty or Decimal(0),
            executed_qty=Decimal(0),
            cumulative_quote_qty=Decimal(0),
            status="NEW",
            time=now_ms,
            update_time=now_ms,
        )
        self.orders[order.order_id] = order
        self._by_client_id[key] = order.order_id
        executions = [Execution(order, "NEW", now_ms)]
        if marketable:
            executions.append(self._fill(order, market, now_ms, is_maker=False))
        elif order.time_in_force != "GTC":
            expired = replace(order, status="EXPIRED", update_time=now_ms)
            self.orders[order.order_id] = expired
            executions.append(Execution(expired, "EXPIRED", now_ms))
        else:
            self._limits[order.order_id] = limit_ticks
            self._lock(spec, order, +1)
        self.update_time = now_ms
        return executions

    def cancel(self, symbol: str, order_id: int | None, client_order_id: str | None, cancel_id: str, now_ms: int) -> Execution:
        """Cancel a resting order (its funds unlocked); -2011 "Unknown order sent." otherwise."""
        try:
            order = self.find(symbol, order_id, client_order_id)
        except ApiError as exc:
            if exc.code == ORDER_NOT_FOUND.code:
                raise UNKNOWN_ORDER.error() from None
            raise
        if not order.is_open:
            raise UNKNOWN_ORDER.error()
        del self._limits[order.order_id]
        self._lock(self.specs[symbol], order, -1)
        canceled = replace(order, status="CANCELED", update_time=now_ms, cancel_client_order_id=cancel_id)
        self.orders[order.order_id] = canceled
        self.update_time = now_ms
        return Execution(canceled, "CANCELED", now_ms)

    def match(self, symbol: str, times: np.ndarray, prices: np.ndarray) -> list[Execution]:
        """Fill the resting orders of ``symbol`` that the trades (times ms, prices in ticks, in
        time order) reach: each at its limit price, at the time of the first trade through it."""
        executions = []
        if not len(prices):
            return executions
        low, high = int(prices.min()), int(prices.max())
        for order_id, limit in list(self._limits.items()):
            order = self.orders[order_id]
            if order.symbol != symbol:
                continue
            buy = order.side == "BUY"
            if (buy and low > limit) or (not buy and high < limit):
                continue
            first = int(np.argmax(prices <= limit if buy else prices >= limit))
            del self._limits[order_id]
            self._lock(self.specs[symbol], order, -1)
            executions.append(self._fill(order, order.price, int(times[first]), is_maker=True))
        executions.sort(key=lambda e: (e.time, e.order.order_id))
        if executions:
            self.update_time = max(self.update_time, executions[-1].time)
        return executions

    # -- internals ---------------------------------------------------------------------------

    def _check_filters(self, spec: SymbolSpec, request: OrderRequest, qty: Decimal, market: Decimal) -> int | None:
        """PRICE_FILTER, LOT_SIZE and NOTIONAL (-1013); the limit price in ticks (None for MARKET)."""
        step = _step(spec.qty_decimals)
        if qty < step or qty > MAX_QTY or qty % step:
            raise ApiError(-1013, "Filter failure: LOT_SIZE")
        limit_ticks = None
        if request.price is not None:
            tick = _step(spec.price_decimals)
            if request.price < tick or request.price > MAX_PRICE or request.price % tick:
                raise ApiError(-1013, "Filter failure: PRICE_FILTER")
            limit_ticks = int(request.price / tick)
        notional = qty * (request.price if request.price is not None else market)
        if not MIN_NOTIONAL <= notional <= MAX_NOTIONAL:
            raise ApiError(-1013, "Filter failure: NOTIONAL")
        return limit_ticks

    def _fee(self, notional: Decimal) -> Decimal:
        return (notional * self.fee_rate).quantize(FEE_QUANTUM, rounding=ROUND_HALF_UP)

    def _cost(self, side: str, qty: Decimal, price: Decimal) -> tuple[str, Decimal]:
        """Which side of the pair an order spends, and how much (a buy's cost includes the fee)."""
        if side == "SELL":
            return "base", qty
        notional = qty * price
        return "quote", notional + self._fee(notional)

    def _check_funds(self, spec: SymbolSpec, side: str, qty: Decimal, price: Decimal) -> None:
        which, amount = self._cost(side, qty, price)
        asset = spec.base if which == "base" else spec.quote
        if self.balances[asset].free < amount:
            raise INSUFFICIENT_BALANCE.error()

    def _lock(self, spec: SymbolSpec, order: Order, sign: int) -> None:
        """Move a resting order's funds from free to locked (sign +1) or back (-1)."""
        which, amount = self._cost(order.side, order.orig_qty, order.price)
        asset = spec.base if which == "base" else spec.quote
        old = self.balances[asset]
        self.balances[asset] = Balance(old.free - sign * amount, old.locked + sign * amount)

    def _fill(self, order: Order, price: Decimal, now_ms: int, *, is_maker: bool) -> Execution:
        spec = self.specs[order.symbol]
        qty = order.orig_qty
        notional = qty * price
        fee = self._fee(notional)
        base, quote = self.balances[spec.base], self.balances[spec.quote]
        if order.side == "BUY":
            self.balances[spec.base] = Balance(base.free + qty, base.locked)
            self.balances[spec.quote] = Balance(quote.free - notional - fee, quote.locked)
        else:
            self.balances[spec.base] = Balance(base.free - qty, base.locked)
            self.balances[spec.quote] = Balance(quote.free + notional - fee, quote.locked)
        fill = Fill(
            id=len(self.fills) + 1,
            order_id=order.order_id,
            symbol=order.symbol,
            side=order.side,
            price=price,
            qty=qty,
            quote_qty=notional,
            commission=fee,
            commission_asset=spec.quote,
            time=now_ms,
            is_maker=is_maker,
        )
        self.fills.append(fill)
        filled = replace(
            order,
            executed_qty=qty,
            cumulative_quote_qty=notional,
            status="FILLED",
            update_time=now_ms,
            fills=(*order.fills, fill),
        )
        self.orders[order.order_id] = filled
        return Execution(filled, "TRADE", now_ms, fill)


def _step(decimals: int) -> Decimal:
    return Decimal(1).scaleb(-decimals)


def _price(spec: SymbolSpec, ticks: int) -> Decimal:
    return Decimal(int(ticks)).scaleb(-spec.price_decimals)
