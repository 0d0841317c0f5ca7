"""Bars for the engine: OHLCV loaded from CSV, Parquet or the candle store, validated once.

:class:`Bars` holds C-contiguous float64 arrays plus a UTC ``DatetimeIndex``. It is cheap
to pickle (plain numpy arrays), so a Ray step can put it in the object store once and let
every sweep task reuse it without re-validating.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tradpal_ray.errors import DataError
from tradpal_ray.market.schema import (
    OHLCV_COLUMNS,
    bad_ohlcv_rows,
    to_ms,
    validate_ohlcv,
)

TIME_COLUMNS = ("time", "open_time", "timestamp", "datetime", "date")
"""Column names (any case) taken as the bar time when the frame has no DatetimeIndex."""

_NS_PER_DAY = 86_400_000_000_000


@dataclass(frozen=True, eq=False)
class Bars:
    """Validated OHLCV bars: strictly increasing UTC times, finite positive float64 prices."""

    index: pd.DatetimeIndex
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    day_end: np.ndarray = field(repr=False)
    """True on the last bar of each UTC calendar day (daily returns for Sharpe/Sortino)."""

    def __len__(self) -> int:
        return len(self.close)


def prepare_bars(data: pd.DataFrame | Bars, *, drop_bad: bool = False, label: str = "") -> Bars:
    """Validate an OHLCV frame (columns in any case; DatetimeIndex or a time column) into Bars.

    Bad rows (see :func:`~tradpal_ray.market.schema.validate_ohlcv`) raise :class:`DataError`
    naming the row, or are dropped when ``drop_bad`` is set. No bars at all is a DataError too.
    """
    if isinstance(data, Bars):
        return data
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"bars must be a pandas DataFrame, got {type(data).__name__}")
    index = _time_index(data)
    by_lower = {str(col).lower(): col for col in data.columns}
    missing = [name for name in OHLCV_COLUMNS if name not in by_lower]
    if missing:
        found = ", ".join(map(str, data.columns)) or "none"
        raise DataError(f"missing column(s) {', '.join(missing)}; found: {found}")
    try:
        cols = {name: np.ascontiguousarray(data[by_lower[name]].to_numpy(dtype=np.float64)) for name in OHLCV_COLUMNS}
    except (TypeError, ValueError) as exc:
        raise DataError(f"OHLCV columns must be numeric: {exc}") from None
    t_ms = index.as_unit("ns").asi8 // 1_000_000
    if drop_bad:
        keep = ~bad_ohlcv_rows(t_ms, cols)
        t_ms, index = t_ms[keep], index[keep]
        cols = {name: values[keep] for name, values in cols.items()}
    if not len(t_ms):  # nothing to backtest; a sweep would also divide by the bar count
        raise DataError(f"no bars{f' in {label}' if label else ''} (empty data, or nothing in the since/until window)")
    validate_ohlcv(t_ms, cols, label=label)
    days = index.as_unit("ns").asi8 // _NS_PER_DAY
    day_end = np.ones(len(days), dtype=np.bool_)
    day_end[:-1] = days[1:] != days[:-1]
    return Bars(index=index, day_end=day_end, **cols)


def _time_index(frame: pd.DataFrame) -> pd.DatetimeIndex:
    """The frame's times as a UTC DatetimeIndex named ``time`` (naive times are taken as UTC)."""
    if isinstance(frame.index, pd.DatetimeIndex):
        times: pd.Index = frame.index
    else:
        by_lower = {str(col).lower(): col for col in frame.columns}
        name = next((by_lower[c] for c in TIME_COLUMNS if c in by_lower), None)
        if name is None:
            raise DataError(
                f"no time: expected a DatetimeIndex or a column named one of {', '.join(TIME_COLUMNS)}"
            )
        values = frame[name]
        try:
            times = pd.DatetimeIndex(
                pd.to_datetime(values, unit="ms", utc=True)
                if pd.api.types.is_integer_dtype(values)
                else pd.to_datetime(values, utc=True)
            )
        except (ValueError, TypeError) as exc:
            raise DataError(f"column {name!r} is not a time: {exc}") from None
    times = times.tz_localize("UTC") if times.tz is None else times.tz_convert("UTC")
    return times.rename("time")


def load_bars(
    path: str | os.PathLike[str],
    *,
    since: str | int | None = None,
    until: str | int | None = None,
    drop_bad: bool = False,
) -> Bars:
    """Read bars from a CSV or Parquet file, keep ``[since, until)``, and validate them."""
    path = Path(path)
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path)
            first = frame.columns[0] if len(frame.columns) else None
            if first is not None and str(first).startswith("Unnamed"):
                frame = frame.rename(columns={first: "time"})  # a frame saved with its index
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return prepare_bars(_window(frame, since, until), drop_bad=drop_bad, label=path.name)


def load_store_bars(
    root: str | os.PathLike[str],
    exchange: str,
    symbol: str,
    timeframe: str,
    *,
    since: str | int | None = None,
    until: str | int | None = None,
    drop_bad: bool = False,
) -> Bars:
    """Read ``[since, until)`` of one series from the candle store under ``root``."""
    from tradpal_ray.market.store import (
        CandleStore,  # the store pulls in pyarrow datasets
    )

    frame = CandleStore(root).read(exchange, symbol, timeframe, start=since, end=until)
    if frame.empty:
        raise DataError(f"no candles for {exchange} {symbol} {timeframe} in the store at {root}")
    return prepare_bars(frame, drop_bad=drop_bad, label=f"{exchange} {symbol} {timeframe}")


def _window(frame: pd.DataFrame, since: str | int | None, until: str | int | None) -> pd.DataFrame:
    if since is None and until is None:
        return frame
    index = _time_index(frame)
    t_ms = index.as_unit("ns").asi8 // 1_000_000
    keep = np.ones(len(frame), dtype=np.bool_)
    if since is not None:
        keep &= t_ms >= to_ms(since)
    if until is not None:
        keep &= t_ms < to_ms(until)
    return frame.set_index(index)[keep]
