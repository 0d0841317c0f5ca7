"""Market data at rest: the candle schema, the durable candle store, exchange access.

``create_exchange`` / ``exchange_ids`` (ccxt, ~0.7 s) and the store (pyarrow's Parquet and
filesystem layers) load on first use only, so a backtest worker that only needs the schema
starts fast.
"""

import importlib
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

_LAZY = {"create_exchange": "exchange", "exchange_ids": "exchange", "CandleStore": "store", "Gap": "store",
         "SeriesInfo": "store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"tradpal_ray.market.{_LAZY[name]}")
        return getattr(module, name)
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
