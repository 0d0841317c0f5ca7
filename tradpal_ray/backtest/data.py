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

BINANCE_KLINE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
    "taker_buy_base_volume", "taker_buy_quote_volume", "ignore",
)
"""The 12 columns of a header-less Binance kline dump (data.binance.vision); open time in ms, in us since 2025."""
HEADERLESS_COLUMNS = {12: BINANCE_KLINE_COLUMNS, 6: ("time", *OHLCV_COLUMNS)}
"""Column names of a CSV without a header row, by column count (ccxt-style rows have 6)."""

EPOCH_UNITS = ("s", "ms", "us", "ns")
_EPOCH_FROM_S, _EPOCH_UNTIL_S = 315_532_800, 7_258_118_400
"""Numeric times must lie in [1980, 2200): per unit the range spans a factor of 23 and units
differ by 1000, so the magnitude of a value tells its unit without ambiguity."""

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


def slice_bars(bars: Bars, start: int, end: int | None = None) -> Bars:
    """Bars ``[start, end)`` as their own series: what :func:`prepare_bars` gives for those rows
    alone (the last bar ends its day, so the slice's last day counts in its daily returns)."""
    stop = len(bars) if end is None else end
    if not 0 <= start < stop <= len(bars):
        raise DataError(f"no bars in [{start}, {stop}) of {len(bars)}")
    day_end = bars.day_end[start:stop].copy()
    day_end[-1] = True
    cut = slice(start, stop)
    return Bars(index=bars.index[cut], open=bars.open[cut], high=bars.high[cut], low=bars.low[cut],
                close=bars.close[cut], volume=bars.volume[cut], day_end=day_end)


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
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        try:
            times = pd.DatetimeIndex(
                pd.to_datetime(epoch_ns(values.to_numpy(), str(name)), unit="ns", utc=True)
                if numeric
                else pd.to_datetime(values, utc=True)
            )
        except (ValueError, TypeError) as exc:
            raise DataError(f"column {name!r} is not a time: {exc}") from None
    times = times.tz_localize("UTC") if times.tz is None else times.tz_convert("UTC")
    return times.rename("time")


def epoch_ns(values: np.ndarray, name: str = "time") -> np.ndarray:
    """Numeric epoch times as int64 ns, each value's unit (s, ms, us or ns) told by its magnitude.

    Files disagree on the unit (exchanges use ms, Binance dumps us since 2025, spreadsheets
    s), and reading seconds as ms silently dates everything in 1970. A value outside
    1980-2200 in every unit (a bar number, a date before 1980, NaN) is refused naming the row.
    """
    v = np.asarray(values)
    whole = v.astype(np.int64) if np.issubdtype(v.dtype, np.integer) else None
    scale = np.zeros(len(v), dtype=np.int64)
    for k in range(len(EPOCH_UNITS)):
        per_s = 1000**k
        inside = (v >= _EPOCH_FROM_S * per_s) & (v < _EPOCH_UNTIL_S * per_s)
        scale[inside] = 1000 ** (len(EPOCH_UNITS) - 1 - k)
    if (scale == 0).any():
        row = int(np.argmax(scale == 0))
        raise DataError(
            f"column {name!r} row {row}: {v[row]} is not an epoch time in s, ms, us or ns between 1980 and 2200 "
            "(the unit is told by magnitude); give ISO times such as 2024-01-01T00:00Z instead"
        )
    if whole is not None:
        return whole * scale
    return np.round(v.astype(np.float64) * scale).astype(np.int64)


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV with a header row, or a header-less one named by its column count (:data:`HEADERLESS_COLUMNS`)."""
    first = pd.read_csv(path, header=None, nrows=1)
    if not pd.to_numeric(first.iloc[0], errors="coerce").notna().all():
        frame = pd.read_csv(path)
        head = frame.columns[0] if len(frame.columns) else None
        if head is not None and str(head).startswith("Unnamed"):
            frame = frame.rename(columns={head: "time"})  # a frame saved with its index
        return frame
    names = HEADERLESS_COLUMNS.get(first.shape[1])
    if names is None:
        raise DataError(
            f"{path.name} has no header row and {first.shape[1]} columns; expected a header row, a Binance kline "
            f"dump (12 columns) or time,open,high,low,close,volume rows (6 columns)"
        )
    return pd.read_csv(path, header=None, names=list(names))


def load_bars(
    path: str | os.PathLike[str],
    *,
    since: str | int | None = None,
    until: str | int | None = None,
    drop_bad: bool = False,
) -> Bars:
    """Read bars from a CSV or Parquet file, keep ``[since, until)``, and validate them.

    A CSV may lack a header row (a Binance kline dump, or time,open,high,low,close,volume);
    numeric times may be in s, ms, us or ns (see :func:`epoch_ns`). Compressed CSVs
    (``.gz``, a one-file ``.zip``) are read as they are.
    """
    path = Path(path)
    suffixes = "".join(path.suffixes).lower()
    try:
        frame = pd.read_parquet(path) if suffixes.endswith((".parquet", ".pq")) else _read_csv(path)
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
