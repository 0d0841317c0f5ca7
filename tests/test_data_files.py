"""Bar files as users have them: numeric epoch times in any unit, header-less Binance kline dumps."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tradpal_ray.backtest.data import BINANCE_KLINE_COLUMNS, epoch_ns, load_bars, prepare_bars
from tradpal_ray.errors import DataError

START = pd.Timestamp("2024-03-01", tz="UTC")
HOURS = pd.date_range(START, periods=48, freq="1h", name="time")


def ohlcv(n: int = len(HOURS)) -> pd.DataFrame:
    """``n`` valid hourly bars without a time column."""
    close = 100.0 + np.sin(np.arange(n) / 3.0) * 5
    return pd.DataFrame({"open": close - 0.5, "high": close + 1.0, "low": close - 1.0, "close": close, "volume": 10.0})


@pytest.mark.parametrize(("unit", "per_s"), [("s", 1), ("ms", 1_000), ("us", 1_000_000), ("ns", 1_000_000_000)])
def test_integer_epoch_times_in_any_unit_are_read_as_their_dates(tmp_path: Path, unit: str, per_s: int) -> None:
    """Issue 11: epoch seconds were read as milliseconds (bars dated January 1970)."""
    seconds = HOURS.as_unit("s").asi8
    frame = ohlcv().assign(timestamp=seconds * per_s)
    assert prepare_bars(frame).index.equals(HOURS)
    frame.to_csv(tmp_path / f"{unit}.csv", index=False)
    assert load_bars(tmp_path / f"{unit}.csv").index.equals(HOURS)
    floats = ohlcv().assign(time=seconds.astype(np.float64) * per_s)  # e.g. a spreadsheet export
    assert prepare_bars(floats).index.equals(HOURS)


def test_numbers_that_are_no_epoch_time_are_refused_naming_the_row(
    tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    with pytest.raises(DataError, match=r"column 'time' row 0: 0 is not an epoch time in s, ms, us or ns"):
        prepare_bars(ohlcv(5).assign(time=np.arange(5)))  # bar numbers
    seconds = HOURS.as_unit("s").asi8[:5].copy()
    seconds[3] = 86_400  # 1970-01-02 in seconds, or a day-count: refused, not guessed
    with pytest.raises(DataError, match="row 3: 86400"):
        epoch_ns(seconds)
    ohlcv(5).assign(time=np.arange(5)).to_csv(tmp_path / "numbered.csv", index=False)
    code, _, err = run_cli("backtest", "--data", str(tmp_path / "numbered.csv"))
    assert code == 2 and err.count("error:") == 1 and "not an epoch time" in err and "Traceback" not in err


def binance_rows(times: np.ndarray, frame: pd.DataFrame, per_ms: int) -> pd.DataFrame:
    """The 12 columns of a data.binance.vision kline dump; open/close times in ms (per_ms=1) or us (1000)."""
    close_time = times + 3_600_000 - 1
    return pd.DataFrame({
        "open_time": times * per_ms, **{c: frame[c] for c in ("open", "high", "low", "close", "volume")},
        "close_time": close_time * per_ms, "quote_volume": frame["volume"] * frame["close"], "trades": 42,
        "taker_buy_base_volume": frame["volume"] / 2, "taker_buy_quote_volume": 1.0, "ignore": 0,
    }, columns=list(BINANCE_KLINE_COLUMNS))


def test_headerless_binance_kline_dumps_load(tmp_path: Path) -> None:
    """Header-less 12-column dumps: ms before 2025, us since; also zipped, and the two concatenated."""
    frame = ohlcv()
    times = HOURS.as_unit("ms").asi8
    half = len(times) // 2
    ms_dump, us_dump = tmp_path / "BTCUSDT-1h-2024-03.csv", tmp_path / "BTCUSDT-1h-2025-03.csv"
    binance_rows(times, frame, 1).to_csv(ms_dump, header=False, index=False)
    binance_rows(times, frame, 1000).to_csv(us_dump, header=False, index=False)
    for path in (ms_dump, us_dump):
        bars = load_bars(path)
        assert bars.index.equals(HOURS)
        np.testing.assert_array_equal(bars.close, frame["close"].to_numpy())
    with zipfile.ZipFile(tmp_path / "BTCUSDT-1h-2025-03.zip", "w") as archive:  # as the dumps are published
        archive.write(us_dump, us_dump.name)
    assert load_bars(tmp_path / "BTCUSDT-1h-2025-03.zip").index.equals(HOURS)
    mixed = pd.concat([binance_rows(times[:half], frame[:half], 1), binance_rows(times[half:], frame[half:], 1000)])
    mixed.to_csv(tmp_path / "mixed.csv", header=False, index=False)
    assert load_bars(tmp_path / "mixed.csv").index.equals(HOURS)


def test_headerless_ohlcv_rows_load_and_other_shapes_are_refused(tmp_path: Path) -> None:
    rows = ohlcv().assign(time=HOURS.as_unit("ms").asi8)[["time", "open", "high", "low", "close", "volume"]]
    rows.to_csv(tmp_path / "rows.csv", header=False, index=False)
    assert load_bars(tmp_path / "rows.csv", since="2024-03-02").index.equals(HOURS[24:])
    rows.assign(extra=1.0).to_csv(tmp_path / "seven.csv", header=False, index=False)
    with pytest.raises(DataError, match="seven.csv has no header row and 7 columns"):
        load_bars(tmp_path / "seven.csv")
    ohlcv().assign(time=HOURS.strftime("%Y-%m-%dT%H:%MZ")).to_csv(tmp_path / "iso.csv", index=False)
    assert load_bars(tmp_path / "iso.csv").index.equals(HOURS)  # a header row still wins
