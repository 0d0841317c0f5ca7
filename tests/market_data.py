"""Real market data for tests: backtesting.py's GOOG daily bars, optionally rescaled, in a store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from backtesting.test import GOOG

from tradpal_ray.market import CandleStore, candles_table


def goog(scale: float = 1.0) -> pd.DataFrame:
    """GOOG daily OHLCV with lowercase columns; prices times ``scale`` (a distinct but real-shaped series)."""
    frame = GOOG.rename(columns=str.lower)
    frame[["open", "high", "low", "close"]] *= scale
    return frame


def write_goog(root: str | Path, scales: dict[str, float], exchange: str = "test") -> str:
    """Store ``goog(scale)`` as 1d candles of each ``symbol: scale``; the store root."""
    store = CandleStore(root)
    for symbol, scale in scales.items():
        store.write(candles_table(goog(scale), exchange=exchange, symbol=symbol, timeframe="1d"))
    return str(root)
