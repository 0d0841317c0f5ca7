"""Market data at rest: the candle schema, the durable candle store, exchange access.

``create_exchange`` / ``exchange_ids`` load ccxt (~0.7 s) on first use only, so that
backtest workers that never talk to an exchange start fast.
"""

from typing import Any

from tradpal_ray.market.schema import (
    CANDLE_SCHEMA,
    OHLCV_COLUMNS,
    TIMEFRAMES,
    bad_ohlcv_rows,
    candles_frame,
    candles_table,
    ohlcv_problems,
    timeframe_ms,
    to_ms,
    validate_ohlcv,
)
from tradpal_ray.market.store import CandleStore, Gap, SeriesInfo


def __getattr__(name: str) -> Any:
    if name in ("create_exchange", "exchange_ids"):
        from tradpal_ray.market import exchange

        return getattr(exchange, name)
    raise AttributeError(f"module 'tradpal_ray.market' has no attribute {name!r}")

__all__ = [
    "CANDLE_SCHEMA",
    "CandleStore",
    "Gap",
    "OHLCV_COLUMNS",
    "SeriesInfo",
    "TIMEFRAMES",
    "bad_ohlcv_rows",
    "candles_frame",
    "candles_table",
    "create_exchange",
    "exchange_ids",
    "ohlcv_problems",
    "timeframe_ms",
    "to_ms",
    "validate_ohlcv",
]
