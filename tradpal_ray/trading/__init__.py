"""Trading: orders, fills and positions, and the ledger that records them (SQLite or PostgreSQL)."""

from tradpal_ray.trading._changes import LiveCacheNotifier
from tradpal_ray.trading._ledger import Ledger, LedgerEvent, TraderRecord, apply_fill, ledger_exists, ledger_identity, open_ledger
from tradpal_ray.trading._models import TRADER_NAME, Fill, Order, Position, client_order_id

__all__ = [
    "TRADER_NAME",
    "Fill",
    "Ledger",
    "LedgerEvent",
    "LiveCacheNotifier",
    "Order",
    "Position",
    "TraderRecord",
    "apply_fill",
    "client_order_id",
    "ledger_exists",
    "ledger_identity",
    "open_ledger",
]
