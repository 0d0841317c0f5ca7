"""Replay: serve recorded candles (a DataFrame, a CSV/Parquet file or a candle store).

Each symbol is served at the finest timeframe it has; prices and volumes are put on the
decimal grid they already use. Trades are synthesized per bar as the path o -> h -> l -> c
(o -> l -> h -> c for a falling bar), four trades sharing the bar's volume exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from tradpal_ray.errors import ConfigError, DataError
from tradpal_ray.market.schema import CANDLE_SCHEMA, TIMEFRAMES, candles_table
from tradpal_ray.market.store import CandleStore
from tradpal_ray.sim.market import (
    EXCHANGE,
    Bars,
    SymbolSpec,
    Trades,
    decimals_of,
    parse_symbol,
)

TRADES_PER_BAR = 4
_COLUMNS = (
    "symbol",
    "timeframe",
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
)


class CandleReader(Protocol):
    """The part of :class:`tradpal_ray.market.store.CandleStore` that replay needs."""

    def series(self) -> list:
        """Stored series (objects with exchange, symbol, timeframe)."""
        ...

    def read_table(self, exchange: str, symbol: str, timeframe: str) -> pa.Table:
        """All candles of one series in CANDLE_SCHEMA."""
        ...


class ReplaySource:
    """A :class:`~tradpal_ray.sim.market.MarketSource` over recorded candles."""

    def __init__(
        self, candles: pa.Table | pd.DataFrame, *, symbols: Iterable[str] | None = None
    ) -> None:
        frame = candle_frame(candles)
        wanted = (
            None
            if symbols is None
            else {f"{b}/{q}" for b, q in map(parse_symbol, symbols)}
        )
        available = set(frame["symbol"].unique())
        if wanted is not None and wanted - available:
            raise ConfigError(
                f"symbol(s) {', '.join(sorted(wanted - available))} not in the replay data; have {', '.join(sorted(available))}"
            )
        self._specs: dict[str, SymbolSpec] = {}
        self._bars: dict[str, Bars] = {}
        self._base: dict[str, int] = {}
        for symbol in sorted(wanted if wanted is not None else available):
            rows = frame[frame["symbol"] == symbol]
            timeframe = min(
                rows["timeframe"].unique(),
                key=lambda tf: TIMEFRAMES.get(tf, float("inf")),
            )
            rows = rows[rows["timeframe"] == timeframe]
            self._load(
                symbol,
                timeframe,
                candles_table(
                    rows, exchange=EXCHANGE, symbol=symbol, timeframe=timeframe
                ),
            )
        if not self._specs:
            raise ConfigError("the replay data holds no candles")

    def _load(self, symbol: str, timeframe: str, table: pa.Table) -> None:
        base, quote = parse_symbol(symbol)
        prices = np.concatenate(
            [table[name].to_numpy() for name in ("open", "high", "low", "close")]
        )
        volume = table["volume"].to_numpy()
        spec = SymbolSpec(symbol, base, quote, decimals_of(prices), decimals_of(volume))
        ticks = {
            name: np.rint(table[name].to_numpy() * 10**spec.price_decimals).astype(
                np.int64
            )
            for name in ("open", "high", "low", "close")
        }
        t = table["open_time"].cast(pa.int64()).to_numpy()
        count = len(t)
        self._specs[symbol] = spec
        self._base[symbol] = TIMEFRAMES[timeframe]
        self._bars[symbol] = Bars(
            t=t,
            o=ticks["open"],
            h=ticks["high"],
            l=ticks["low"],
            c=ticks["close"],
            v=np.rint(volume * 10**spec.qty_decimals).astype(np.int64),
            n=np.full(count, TRADES_PER_BAR, dtype=np.int64),
            f=1 + TRADES_PER_BAR * np.arange(count, dtype=np.int64),
        )

    def specs(self) -> dict[str, SymbolSpec]:
        """Markets by unified symbol."""
        return dict(self._specs)

    def base_ms(self, symbol: str) -> int:
        """Length of the replayed bars of ``symbol``."""
        return self._base[symbol]

    def first_ms(self, symbol: str) -> int:
        """Open time of the first recorded bar."""
        return int(self._bars[symbol].t[0])

    def end_ms(self, symbol: str) -> int | None:
        """Close (exclusive) of the last recorded bar."""
        return int(self._bars[symbol].t[-1]) + self._base[symbol]

    def bars(self, symbol: str, start_ms: int, end_ms: int) -> Bars:
        """Recorded bars opening in ``[start_ms, end_ms)``."""
        return self._bars[symbol].between(start_ms, end_ms)

    def bar_trades(self, symbol: str, open_ms: int) -> Trades:
        """Four trades along the bar's o/h/l/c path with its volume split between them."""
        bar = self._bars[symbol].between(open_ms, open_ms + 1)
        if not len(bar):
            return Trades.empty()
        o, h, l, c, v, f = (
            int(getattr(bar, name)[0]) for name in ("o", "h", "l", "c", "v", "f")
        )
        path = [o, h, l, c] if c >= o else [o, l, h, c]
        qty = np.full(TRADES_PER_BAR, v // TRADES_PER_BAR, dtype=np.int64)
        qty[-1] += v - int(qty.sum())
        step = self._base[symbol] // TRADES_PER_BAR
        return Trades(
            id=f + np.arange(TRADES_PER_BAR, dtype=np.int64),
            t=open_ms + step * np.arange(TRADES_PER_BAR, dtype=np.int64),
            p=np.array(path, dtype=np.int64),
            q=qty,
            m=np.array([False, *(b < a for a, b in pairwise(path))]),
        )


def read_candle_file(path: str | os.PathLike) -> pa.Table:
    """Candles from a Parquet or CSV file with symbol, timeframe, open_time and OHLCV columns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"replay file not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pq.read_table(path)
    if path.suffix.lower() == ".csv":
        return pa_csv.read_csv(path)
    raise ConfigError(f"replay file must be .parquet or .csv, got {path.name}")


def store_candles(store: CandleReader) -> pa.Table:
    """Every series of a candle store in one table (a binance series wins over other exchanges)."""
    chosen: dict[tuple[str, str], str] = {}
    for info in store.series():
        key = (info.symbol, info.timeframe)
        if key not in chosen or info.exchange == EXCHANGE:
            chosen[key] = info.exchange
    if not chosen:
        raise ConfigError("the candle store holds no candles to replay")
    return pa.concat_tables(
        [
            store.read_table(exchange, symbol, timeframe).cast(CANDLE_SCHEMA)
            for (symbol, timeframe), exchange in chosen.items()
        ]
    )


def open_replay(
    locations: Iterable[str | os.PathLike], symbols: Iterable[str] | None = None
) -> ReplaySource:
    """A replay source from candle files and/or candle-store roots (directories)."""
    frames: list[pd.DataFrame] = []
    for location in locations:
        if Path(location).is_dir():
            frames.append(candle_frame(store_candles(CandleStore(location))))
        else:
            frames.append(candle_frame(read_candle_file(location)))
    if not frames:
        raise ConfigError("nothing to replay: give at least one file or store")
    return ReplaySource(pd.concat(frames, ignore_index=True), symbols=symbols)


def candle_frame(candles: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """Candles as a frame of symbol, timeframe, open_time (int ms) and OHLCV; DataError if columns lack."""
    frame = (
        candles.to_pandas() if isinstance(candles, pa.Table) else candles.reset_index()
    )
    if "open_time" not in frame.columns and "time" in frame.columns:
        frame = frame.rename(columns={"time": "open_time"})
    missing = set(_COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(f"replay candles lack column(s) {', '.join(sorted(missing))}")
    frame = frame[list(_COLUMNS)].copy()
    if not pd.api.types.is_integer_dtype(frame["open_time"]):
        frame["open_time"] = (
            pd.to_datetime(frame["open_time"], utc=True)
            .dt.as_unit("ms")
            .astype("int64")
        )
    return frame
