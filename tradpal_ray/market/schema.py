"""The candle contract shared by the simulator, the store, the feeds and the engine.

One Arrow schema, the supported timeframes, and one validator so that every producer
rejects the same bad rows with the same message.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from tradpal_ray.errors import ConfigError, DataError

TIMEFRAMES: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}
"""Supported timeframes and their length in milliseconds."""

PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")

CANDLE_SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("timeframe", pa.string(), nullable=False),
        pa.field("open_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        *(pa.field(name, pa.float64(), nullable=False) for name in OHLCV_COLUMNS),
    ]
)
"""Arrow schema of a stored candle; ``open_time`` is the candle's UTC open, in ms."""


def timeframe_ms(timeframe: str) -> int:
    """Length of ``timeframe`` in ms; a clear error listing the valid ones otherwise."""
    try:
        return TIMEFRAMES[timeframe]
    except KeyError:
        raise ConfigError(
            f"unknown timeframe {timeframe!r}; valid: {', '.join(TIMEFRAMES)}"
        ) from None


def to_ms(value: int | float | str | pd.Timestamp | None) -> int | None:
    """A time given as ms since the epoch, an ISO string or a Timestamp, as UTC ms.

    A string of more than 8 digits is ms since the epoch (``"1700000000000"``, as the CLI's
    ``--since`` help promises); shorter digit strings stay ISO dates (``"2024"``, ``"20240101"``).
    """
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and len(digits := value.strip()) > 8 and digits.isascii() and digits.isdigit():
        return int(digits)
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a time: {value!r} (use ISO 8601, e.g. 2024-01-01T00:00)") from exc
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value // 1_000_000)


def ohlcv_problems(open_time_ms: np.ndarray, columns: dict[str, np.ndarray]) -> list[tuple[np.ndarray, str]]:
    """Each candle check as (mask of failing rows, reason), in the order errors are reported.

    Bad: NaN or non-finite values, non-positive prices, negative volume,
    high < max(open, close), low > min(open, close), or a time not after every earlier time.
    """
    o, h, l, c = (np.asarray(columns[name], dtype=np.float64) for name in PRICE_COLUMNS)
    v = np.asarray(columns["volume"], dtype=np.float64)
    t = np.asarray(open_time_ms, dtype=np.int64)
    late = np.zeros(len(t), dtype=np.bool_)
    if len(t) > 1:
        late[1:] = t[1:] <= np.maximum.accumulate(t)[:-1]
    return [
        (~(np.isfinite(o) & np.isfinite(h) & np.isfinite(l) & np.isfinite(c) & np.isfinite(v)), "NaN or infinite value"),
        ((o <= 0) | (h <= 0) | (l <= 0) | (c <= 0), "non-positive price"),
        (v < 0, "negative volume"),
        (h < np.maximum(o, c), "high below open/close"),
        (l > np.minimum(o, c), "low above open/close"),
        (late, "time not strictly increasing"),
    ]


def bad_ohlcv_rows(open_time_ms: np.ndarray, columns: dict[str, np.ndarray]) -> np.ndarray:
    """Mask of the rows that break any candle check (for callers that drop bad rows)."""
    masks = [mask for mask, _ in ohlcv_problems(open_time_ms, columns)]
    return np.logical_or.reduce(masks) if masks else np.zeros(0, dtype=np.bool_)


def validate_ohlcv(
    open_time_ms: np.ndarray,
    columns: dict[str, np.ndarray],
    *,
    label: str = "",
) -> None:
    """Raise :class:`DataError` naming the first bad row (see :func:`ohlcv_problems`), else return."""
    t = np.asarray(open_time_ms, dtype=np.int64)
    for bad, reason in ohlcv_problems(t, columns):
        if bad.any():
            _raise_row(int(np.argmax(bad)), t, columns, reason, label)


def _raise_row(i: int, t: np.ndarray, columns: dict[str, np.ndarray], reason: str, label: str) -> None:
    stamp = pd.Timestamp(int(t[i]), unit="ms", tz="UTC").isoformat()
    values = ", ".join(f"{k}={float(columns[k][i]):g}" for k in OHLCV_COLUMNS)
    where = f"{label} " if label else ""
    raise DataError(f"bad candle {where}row {i} at {stamp}: {reason} ({values})")


def candles_table(
    rows: Sequence[Sequence[float]] | pd.DataFrame | pa.Table,
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
    validate: bool = True,
) -> pa.Table:
    """Build a :data:`CANDLE_SCHEMA` table from ccxt rows ``[t, o, h, l, c, v]`` or a frame.

    A DataFrame may carry the open time as a DatetimeIndex or an ``open_time`` column
    (datetime or ms). Rows are sorted by time; validation rejects bad rows by default.
    """
    timeframe_ms(timeframe)
    if isinstance(rows, pa.Table):
        rows = rows.to_pandas()
    if isinstance(rows, pd.DataFrame):
        frame = rows.reset_index() if "open_time" not in rows.columns else rows
        frame = frame.rename(columns={frame.columns[0]: "open_time"}) if "open_time" not in frame.columns else frame
        times = frame["open_time"]
        t = (
            times.to_numpy(dtype=np.int64)
            if pd.api.types.is_integer_dtype(times)
            else _datetimes_to_ms(times)
        )
        cols = {name: frame[name].to_numpy(dtype=np.float64) for name in OHLCV_COLUMNS}
    else:
        array = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        t = array[:, 0].astype(np.int64)
        cols = {name: array[:, k + 1] for k, name in enumerate(OHLCV_COLUMNS)}
    order = np.argsort(t, kind="stable")
    if not np.all(order == np.arange(len(t))):
        t = t[order]
        cols = {name: values[order] for name, values in cols.items()}
    if validate:
        validate_ohlcv(t, cols, label=f"{exchange} {symbol} {timeframe}")
    n = len(t)
    return pa.table(
        {
            "exchange": pa.array([exchange] * n, pa.string()),
            "symbol": pa.array([symbol] * n, pa.string()),
            "timeframe": pa.array([timeframe] * n, pa.string()),
            "open_time": pa.array(t, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            **{name: pa.array(cols[name], pa.float64()) for name in OHLCV_COLUMNS},
        },
        schema=CANDLE_SCHEMA,
    )


def _datetimes_to_ms(times: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(times, utc=True)
    return stamps.dt.as_unit("ms").astype("int64").to_numpy()


def candles_frame(table: pa.Table) -> pd.DataFrame:
    """OHLCV DataFrame indexed by UTC open time (``DatetimeIndex`` named ``time``)."""
    frame = table.select(["open_time", *OHLCV_COLUMNS]).to_pandas()
    frame = frame.set_index("open_time")
    frame.index.name = "time"
    return frame
