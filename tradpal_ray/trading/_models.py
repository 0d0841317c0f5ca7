"""The trading records: orders, fills and positions, as frozen dataclasses.

These are what the ledger stores and the traders exchange; they are validated when made
(a wrong side or a non-positive quantity is a :class:`~tradpal_ray.errors.DataError`), so
nothing malformed reaches the database.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from tradpal_ray.errors import DataError

Side = Literal["buy", "sell"]
OrderReason = Literal["signal", "stop_loss", "take_profit", "flatten"]
OrderStatus = Literal["new", "sent", "filled", "rejected", "canceled", "unknown"]

SIDES: tuple[str, ...] = ("buy", "sell")
ORDER_REASONS: tuple[str, ...] = ("signal", "stop_loss", "take_profit", "flatten")
ORDER_STATUSES: tuple[str, ...] = ("new", "sent", "filled", "rejected", "canceled", "unknown")
OPEN_ORDER_STATUSES: tuple[str, ...] = ("new", "sent", "unknown")
"""Orders that may still fill: not acknowledged yet, live at the exchange, or of unknown fate."""

TRADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What a trader may be called (it names Ray actors, URL paths and ledger rows)."""
CLIENT_ORDER_ID = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
"""Binance's rule for ``newClientOrderId``."""


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DataError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise DataError(f"{name} must be positive, got {value!r}")


def signed_units(side: str, units: float) -> float:
    """``units`` with the sign of the side: positive for a buy, negative for a sell."""
    return units if side == "buy" else -units


def client_order_id(trader: str, symbol: str, bar_time_ms: int, side: str) -> str:
    """The deterministic client order id of the order a trader sends for a bar and side.

    ``<trader>-<symbol>-<bar>-<b|s>`` with ``/`` and other characters Binance refuses dropped;
    when that exceeds 36 characters, ``t`` plus a 35-character digest of the same text. A
    retried or restarted trader computes the same id, so the exchange refuses a duplicate.
    """
    _choice("side", side, SIDES)
    raw = f"{trader}-{symbol}-{bar_time_ms}-{side[0]}"
    readable = re.sub(r"[^a-zA-Z0-9-_]", "", raw)
    if len(readable) <= 36 and readable == raw.replace("/", ""):
        return readable
    return "t" + hashlib.blake2b(raw.encode(), digest_size=20).hexdigest()[:35]


@dataclass(frozen=True, kw_only=True)
class Order:
    """An order a trader decided on; ``client_order_id`` is its idempotency key everywhere.
    Keyword-only: the fields with defaults sit among the others."""

    trader: str
    client_order_id: str
    symbol: str
    side: Side
    units: float
    order_type: str = "market"
    bar_time_ms: int
    reason: OrderReason = "signal"
    status: OrderStatus = "new"
    exchange_order_id: str | None = None
    created_ms: int

    def __post_init__(self) -> None:
        if not CLIENT_ORDER_ID.match(self.client_order_id):
            raise DataError(f"client order id {self.client_order_id!r} does not match {CLIENT_ORDER_ID.pattern}")
        _choice("side", self.side, SIDES)
        _choice("reason", self.reason, ORDER_REASONS)
        _choice("status", self.status, ORDER_STATUSES)
        _positive("units", self.units)


@dataclass(frozen=True)
class Fill:
    """One execution of an order; ``fill_id`` is unique (the exchange's trade id, or
    ``f"{client_order_id}:0"`` for a paper fill) and makes recording it idempotent. ``fee`` is in quote."""

    trader: str
    client_order_id: str
    fill_id: str
    symbol: str
    side: Side
    units: float
    price: float
    fee: float
    time_ms: int

    def __post_init__(self) -> None:
        _choice("side", self.side, SIDES)
        _positive("units", self.units)
        _positive("price", self.price)
        if not self.fee >= 0:
            raise DataError(f"fee must be >= 0, got {self.fee!r}")


@dataclass(frozen=True)
class Position:
    """What a trader holds in a symbol: ``units`` negative when short, zero when flat; the
    entry price and fee of the open part, and the PnL realized so far (fees included)."""

    trader: str
    symbol: str
    units: float = 0.0
    entry_price: float = 0.0
    entry_fee: float = 0.0
    realized_pnl: float = 0.0
    updated_ms: int = 0
