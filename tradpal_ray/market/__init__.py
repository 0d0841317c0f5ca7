"""Market data at rest: the candle schema, the durable candle store, exchange access."""

from tradpal_ray.market.exchange import create_exchange, exchange_ids
from tradpal_ray.market.schema import (
    CANDLE_SCHEMA,
    OHLCV_COLUMNS,
    TIMEFRAMES,
    candles_frame,
    candles_table,
    timeframe_ms,
    to_ms,
    validate_ohlcv,
)
from tradpal_ray.market.store import CandleStore, Gap, SeriesInfo

__all__ = [
    "CANDLE_SCHEMA",
    "CandleStore",
    "Gap",
    "OHLCV_COLUMNS",
    "SeriesInfo",
    "TIMEFRAMES",
    "candles_frame",
    "candles_table",
    "create_exchange",
    "exchange_ids",
    "timeframe_ms",
    "to_ms",
    "validate_ohlcv",
]
