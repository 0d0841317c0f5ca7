"""CandleStore on real files: upserts, ranges, gaps, coverage, crash safety, corruption."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradpal_ray.errors import DataError, StoreError
from tradpal_ray.market.schema import CANDLE_SCHEMA, OHLCV_COLUMNS, candles_table
from tradpal_ray.market.store import (
    STALE_TEMP_S,
    CandleStore,
    Gap,
    SeriesInfo,
    decode_key,
    encode_key,
)
from tradpal_ray.stats.local_redis import wait_for

MIN = 60_000
FEB1 = 1_706_745_600_000  # 2024-02-01T00:00Z
JAN31 = FEB1 - 1440 * MIN


def candles(start: int, n: int, *, step: int = MIN, price: float = 100.0) -> list[list[float]]:
    """``n`` valid ccxt-style rows from ``start``, closing at ``price + i``."""
    return [[start + i * step, price + i, price + i + 2, price + i - 1, price + i + 1, 1.0 + i] for i in range(n)]


def table(rows: list[list[float]], symbol: str = "BTC/USDT", timeframe: str = "1m", **kw: object) -> pa.Table:
    return candles_table(rows, exchange="binance", symbol=symbol, timeframe=timeframe, **kw)


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def ms(index: pd.DatetimeIndex) -> np.ndarray:
    return index.as_unit("ms").asi8



def test_upsert_twice_is_one_row_and_revision_wins(store_root: Path) -> None:
    store = CandleStore(store_root)
    rows = candles(JAN31, 10)
    assert store.write(table(rows)) == 10
    assert store.write(table(rows)) == 10
    frame = store.read("binance", "BTC/USDT", "1m")
    assert len(frame) == 10 and frame.index.is_unique
    revised = [rows[4][0], 500.0, 510.0, 490.0, 505.0, 7.0]
    store.write(table([revised]))
    frame = store.read("binance", "BTC/USDT", "1m")
    assert len(frame) == 10
    assert frame.iloc[4].tolist() == revised[1:]
    assert frame.iloc[3].tolist() == rows[3][1:]


def test_duplicates_in_one_batch_keep_last_and_unsorted_input_is_sorted(store_root: Path) -> None:
    store = CandleStore(store_root)
    rows = candles(JAN31, 5)
    late = [rows[2][0], 300.0, 301.0, 299.0, 300.5, 9.0]
    batch = table([rows[4], rows[2], rows[0], late, rows[1], rows[3]], validate=False)
    assert store.write(batch) == 5
    frame = store.read("binance", "BTC/USDT", "1m")
    assert (np.diff(frame.index.asi8) > 0).all()
    assert frame.iloc[2].tolist() == late[1:]


def test_read_range_boundaries_across_partitions(store_root: Path) -> None:
    store = CandleStore(store_root)
    store.write(table(candles(FEB1 - 5 * MIN, 10)))  # 5 candles in January, 5 in February
    assert sorted(p.parent.name for p in data_files(store_root)) == ["period=2024-01", "period=2024-02"]
    read = lambda start, end: store.read("binance", "BTC/USDT", "1m", start, end).index  # noqa: E731
    idx = read(FEB1 - 2 * MIN, FEB1 + 2 * MIN)
    assert ms(idx).tolist() == [FEB1 + k * MIN for k in (-2, -1, 0, 1)]  # end exclusive
    assert read("2024-02-01T00:00", "2024-02-01T00:01").tolist() == [pd.Timestamp(FEB1, unit="ms", tz="UTC")]
    assert len(read(pd.Timestamp(FEB1, unit="ms", tz="UTC"), None)) == 5
    assert len(read(None, FEB1)) == 5
    assert len(read(FEB1 + 60 * MIN, None)) == 0
    table_ = store.read_table("binance", "BTC/USDT", "1m", FEB1 - MIN, FEB1 + MIN)
    assert table_.schema.equals(CANDLE_SCHEMA) and table_.num_rows == 2
    assert table_.column("symbol").to_pylist() == ["BTC/USDT"] * 2


def test_gaps_are_exact_ranges(store_root: Path) -> None:
    store = CandleStore(store_root)
    present = [0, 1, 2, 5, 6, 9]  # missing 3-4 and 7-8
    store.write(table([candles(JAN31 + k * MIN, 1)[0] for k in present]))
    assert store.gaps("binance", "BTC/USDT", "1m") == [
        Gap(JAN31 + 3 * MIN, JAN31 + 5 * MIN, 2),
        Gap(JAN31 + 7 * MIN, JAN31 + 9 * MIN, 2),
    ]
    # Within a range: leading and trailing slots count too; end is exclusive.
    assert store.gaps("binance", "BTC/USDT", "1m", JAN31 - 2 * MIN, JAN31 + 12 * MIN) == [
        Gap(JAN31 - 2 * MIN, JAN31, 2),
        Gap(JAN31 + 3 * MIN, JAN31 + 5 * MIN, 2),
        Gap(JAN31 + 7 * MIN, JAN31 + 9 * MIN, 2),
        Gap(JAN31 + 10 * MIN, JAN31 + 12 * MIN, 2),
    ]
    assert store.gaps("binance", "BTC/USDT", "1m", JAN31 + 5 * MIN, JAN31 + 7 * MIN) == []
    assert store.gaps("binance", "ETH/USDT", "1h", "2024-01-01", "2024-01-02") == [
        Gap(1_704_067_200_000, 1_704_153_600_000, 24)
    ]


def test_series_coverage_and_last_open_time(store_root: Path) -> None:
    store = CandleStore(store_root, compact_after=100)
    store.write(table(candles(FEB1 - 3 * MIN, 6)))
    store.write(table(candles(FEB1 - MIN, 6)))  # overlaps: 8 distinct candles in all
    store.write(table(candles(JAN31, 3, step=3_600_000), symbol="ETH-PERP/USDT", timeframe="1h"))
    assert store.series() == [
        SeriesInfo("binance", "BTC/USDT", "1m", 8, FEB1 - 3 * MIN, FEB1 + 4 * MIN),
        SeriesInfo("binance", "ETH-PERP/USDT", "1h", 3, JAN31, JAN31 + 2 * 3_600_000),
    ]
    assert store.last_open_time("binance", "BTC/USDT", "1m") == FEB1 + 4 * MIN
    assert store.last_open_time("binance", "ETH-PERP/USDT", "1h") == JAN31 + 2 * 3_600_000


def test_empty_reads(store_root: Path) -> None:
    store = CandleStore(store_root)
    assert store.series() == []
    frame = store.read("binance", "BTC/USDT", "1m")
    assert frame.empty and list(frame.columns) == list(OHLCV_COLUMNS)
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.name == "time"
    assert store.read_table("binance", "BTC/USDT", "1m").schema.equals(CANDLE_SCHEMA)
    assert store.last_open_time("binance", "BTC/USDT", "1m") is None
    assert store.gaps("binance", "BTC/USDT", "1m") == []
    store.write(table(candles(JAN31, 2)))
    assert store.read("binance", "BTC/USDT", "1m", JAN31 + 10 * MIN, None).empty


def test_file_uri_and_path_safe_symbols(store_root: Path) -> None:
    store = CandleStore(f"file://{store_root}")
    symbol = "BTC/USDT:USDT-240329-C"
    store.write(table(candles(JAN31, 3), symbol=symbol))
    (series_dir,) = (store_root / "candles" / "exchange=binance" / "timeframe=1m").iterdir()
    assert series_dir.name == f"symbol={encode_key(symbol)}" and "/" not in encode_key(symbol)
    assert decode_key("BTC-USDT") == "BTC/USDT" and encode_key("BTC/USDT") == "BTC-USDT"
    assert encode_key(".hidden")[0] != "."
    assert len(CandleStore(store_root).read("binance", symbol, "1m")) == 3
    assert store.series()[0].symbol == symbol


def test_many_multi_series_interleaved_write(store_root: Path) -> None:
    store = CandleStore(store_root)
    a, b = table(candles(JAN31, 4)), table(candles(JAN31, 4, price=50.0), symbol="ETH/USDT")
    mixed = pa.concat_tables([a, b]).take([0, 4, 1, 5, 2, 6, 3, 7])
    assert store.write(mixed) == 8
    assert store.read_table("binance", "BTC/USDT", "1m").equals(a)
    assert store.read_table("binance", "ETH/USDT", "1m").equals(b)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"close": float("nan")}, "NaN or infinite value"),
        ({"open": -1.0}, "non-positive price"),
        ({"high": 50.0}, "high below open/close"),
        ({"low": 10_000.0, "high": 20_000.0}, "low above open/close"),
    ],
)
def test_bad_rows_rejected_naming_the_row_and_nothing_written(
    store_root: Path, change: dict[str, float], reason: str
) -> None:
    store = CandleStore(store_root)
    store.write(table(candles(JAN31, 3)))
    before = data_files(store_root)
    good = table(candles(JAN31, 5), symbol="ETH/USDT")
    rows = candles(JAN31, 5)
    for column, value in change.items():
        rows[3][1 + OHLCV_COLUMNS.index(column)] = value
    bad_table = table(rows, validate=False)
    stamp = pd.Timestamp(JAN31 + 3 * MIN, unit="ms", tz="UTC").isoformat()
    with pytest.raises(DataError, match=re.escape(f"binance BTC/USDT 1m row 3 at {stamp}: {reason}")):
        store.write(pa.concat_tables([good, bad_table]))
    assert data_files(store_root) == before
    assert len(store.read("binance", "BTC/USDT", "1m")) == 3


def test_malformed_tables_rejected(store_root: Path) -> None:
    store = CandleStore(store_root)
    good = table(candles(JAN31, 3))
    with pytest.raises(DataError, match="lacks column.*volume"):
        store.write(good.drop_columns(["volume"]))
    nulls = good.set_column(6, "low", pa.array([1.0, None, 1.0], pa.float64()))
    with pytest.raises(DataError, match="row 1: low is null"):
        store.write(nulls)
    assert data_files(store_root) == []


def test_compaction_keeps_the_read_result(store_root: Path) -> None:
    store = CandleStore(store_root, compact_after=1000)
    for k in range(30):  # small overlapping appends straddling two months
        store.write(table(candles(FEB1 - 40 * MIN + k * 3 * MIN, 5, price=100.0 + k)))
    assert len(data_files(store_root)) > 30
    before = store.read("binance", "BTC/USDT", "1m")
    assert store.compact() == 2
    assert len(data_files(store_root)) == 2
    after = store.read("binance", "BTC/USDT", "1m")
    pd.testing.assert_frame_equal(before, after)
    assert store.compact() == 0

    for k in range(3):  # compact() of one series leaves the others alone
        store.write(table(candles(JAN31 + k * MIN, 1, price=7.0 + k), symbol="ETH/USDT"))
        store.write(table(candles(JAN31 + k * MIN, 1, price=7.0 + k), symbol="SOL/USDT"))
    assert store.compact(symbol="ETH/USDT") == 1
    assert [len(list(p.glob("*/*.parquet"))) for p in sorted((store_root / "candles").glob("*/*/symbol=*"))] == [2, 1, 3]

    auto = CandleStore(store_root / "auto", compact_after=4)
    for k in range(20):
        auto.write(table(candles(JAN31 + k * MIN, 2, price=100.0 + k)))
        assert len(data_files(store_root / "auto")) <= 5
    assert len(auto.read("binance", "BTC/USDT", "1m")) == 21


def test_crash_between_merged_write_and_delete_reads_correctly(store_root: Path) -> None:
    store = CandleStore(store_root, compact_after=1000)
    for k in range(6):
        store.write(table(candles(JAN31 + k * 2 * MIN, 4, price=100.0 + 10 * k)))
    expected = store.read("binance", "BTC/USDT", "1m")
    old = {p: p.read_bytes() for p in data_files(store_root)}
    store.compact()
    for path, content in old.items():  # the crash: inputs never deleted next to the merged file
        path.write_bytes(content)
    assert len(data_files(store_root)) == len(old) + 1
    pd.testing.assert_frame_equal(store.read("binance", "BTC/USDT", "1m"), expected)
    assert store.series()[0].rows == len(expected)
    newer = [JAN31 + 5 * MIN, 1.0, 2.0, 0.5, 1.5, 3.0]
    store.write(table([newer]))  # a later write still wins over the merged file
    assert store.read("binance", "BTC/USDT", "1m").loc[pd.Timestamp(newer[0], unit="ms", tz="UTC")].tolist() == newer[1:]
    store.compact()
    assert len(data_files(store_root)) == 1


def test_corrupt_file_fails_only_its_own_series_and_is_named(store_root: Path) -> None:
    """One truncated file: its series' reads fail naming it; listings show it; every other series reads."""
    store = CandleStore(store_root)
    store.write(table(candles(FEB1 - 2 * MIN, 4)))  # two periods
    store.write(table(candles(JAN31, 3), symbol="ETH/USDT"))
    store.write(table(candles(JAN31, 2, step=300_000), symbol="ETH/USDT", timeframe="5m"))
    (jan,) = [p for p in data_files(store_root) if "BTC" in str(p) and "2024-01" in str(p)]
    jan.write_bytes(jan.read_bytes()[: jan.stat().st_size // 2])  # truncated
    named = str(jan.relative_to(store_root))
    with pytest.raises(StoreError, match=re.escape(named)) as failure:
        store.read("binance", "BTC/USDT", "1m")
    assert str(store_root) not in str(failure.value)  # messages name files relative to the root
    with pytest.raises(StoreError, match=re.escape(named)):
        store.gaps("binance", "BTC/USDT", "1m")
    listed = {(s.symbol, s.timeframe): s for s in store.series()}
    assert listed[("BTC/USDT", "1m")].problem is not None and named in listed[("BTC/USDT", "1m")].problem
    assert listed[("BTC/USDT", "1m")].rows == 2 and listed[("BTC/USDT", "1m")].first_ms == FEB1  # the readable period
    assert listed[("ETH/USDT", "1m")] == SeriesInfo("binance", "ETH/USDT", "1m", 3, JAN31, JAN31 + 2 * MIN)
    assert listed[("ETH/USDT", "5m")].problem is None
    (problem,) = store.problems()
    assert problem.startswith("binance BTC/USDT 1m: ") and named in problem
    assert len(store.read("binance", "BTC/USDT", "1m", FEB1, None)) == 2
    assert store.last_open_time("binance", "BTC/USDT", "1m") == FEB1 + MIN
    assert len(store.read("binance", "ETH/USDT", "1m")) == 3
    assert store.compact() == 0 and jan.exists()  # nothing to merge; the damaged file is left for the user

    stray = jan.parent / "notes.txt"  # a file that is not ours inside a period: named, its series only
    jan.unlink()
    stray.write_text("hello")
    with pytest.raises(StoreError, match=re.escape(str(stray.relative_to(store_root)))):
        store.read("binance", "BTC/USDT", "1m")
    (store_root / "candles" / "README.txt").write_text("not a series")  # outside any series: skipped
    assert [s.problem is None for s in store.series()] == [False, True, True]


def test_compaction_skips_a_damaged_partition_and_compacts_the_rest(store_root: Path) -> None:
    store = CandleStore(store_root, compact_after=100)
    for k in range(3):
        store.write(table(candles(JAN31 + k * MIN, 1)))
        store.write(table(candles(JAN31 + k * MIN, 1), symbol="ETH/USDT"))
    damaged = data_files(store_root)[0]
    assert "BTC-USDT" in str(damaged)
    damaged.write_bytes(b"PAR1 truncated")
    assert store.compact() == 1  # ETH merged; BTC left as it is, no error
    assert len([p for p in data_files(store_root) if "BTC" in str(p)]) == 3
    assert len(store.read("binance", "ETH/USDT", "1m")) == 3


def test_stores_written_before_write_ids_still_read_and_compact(store_root: Path) -> None:
    """Legacy ``<lo>-<hi>.parquet`` files (no write_id column): the higher ``hi`` wins, any new write wins over both."""
    period = store_root / "candles" / "exchange=binance" / "timeframe=1m" / "symbol=BTC-USDT" / "period=2024-01"
    period.mkdir(parents=True)
    columns = ["open_time", *OHLCV_COLUMNS]
    first = table(candles(JAN31, 4)).select(columns)
    revised = table([[JAN31 + MIN, 50.0, 52.0, 49.0, 51.0, 9.0]]).select(columns)
    pq.write_table(revised, period / "0000000002-0000000002.parquet")
    pq.write_table(first, period / "0000000001-0000000001.parquet")
    store = CandleStore(store_root)
    frame = store.read("binance", "BTC/USDT", "1m")
    assert frame["close"].tolist() == [101.0, 51.0, 103.0, 104.0]
    store.write(table([[JAN31 + MIN, 60.0, 62.0, 59.0, 61.0, 1.0]]))
    assert store.compact() == 1
    (merged,) = data_files(store_root)
    assert re.fullmatch(r"\d{19}-[0-9a-f]{16}\.parquet", merged.name)
    assert store.read("binance", "BTC/USDT", "1m")["close"].tolist() == [101.0, 61.0, 103.0, 104.0]


WRITER = textwrap.dedent(
    """
    import sys
    from tradpal_ray.market.schema import candles_table
    from tradpal_ray.market.store import CandleStore
    root, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rows = [[start + i * 60000, 100.0, 102.0, 99.0, 101.0, 1.0] for i in range(n)]
    table = candles_table(rows, exchange="binance", symbol="BTC/USDT", timeframe="1m")
    store = CandleStore(root, compact_after=1_000_000)
    while True:
        store.write(table)
    """
)


def test_writer_process_killed_mid_write_leaves_store_intact(store_root: Path) -> None:
    store = CandleStore(store_root)
    store.write(table(candles(JAN31, 60)))
    previous = store.read("binance", "BTC/USDT", "1m")
    start, n = JAN31 + 60 * MIN, 200_000  # the same January partition, then 4.6 months: six files
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store_root), str(start), str(n)])
    try:
        series_dir = store_root / "candles" / "exchange=binance" / "timeframe=1m" / "symbol=BTC-USDT"
        wait_for(lambda: any(p.name.startswith(".tmp-") for p in series_dir.rglob("*")) or proc.poll() is not None,
                 timeout=30.0, interval=0.001, what="a temp file of the writer")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    frame = store.read("binance", "BTC/USDT", "1m")
    pd.testing.assert_frame_equal(frame.loc[: pd.Timestamp(start - 1, unit="ms", tz="UTC")], previous)
    new = frame.loc[pd.Timestamp(start, unit="ms", tz="UTC") :]
    assert frame.index.is_unique and (new["close"] == 101.0).all()
    months = new.groupby(new.index.strftime("%Y-%m")).size()
    ends = pd.date_range(pd.Timestamp(start, unit="ms", tz="UTC"), periods=n, freq="1min")
    full = pd.Series(1, index=ends).groupby(ends.strftime("%Y-%m")).size()
    assert (months == full[months.index]).all(), "a period file is partial"
    temps = list(series_dir.rglob(".tmp-*"))
    store.compact()
    assert all(p.exists() for p in temps)  # young: could be a live writer's, kept
    for temp in temps:
        os.utime(temp, (time.time() - STALE_TEMP_S - 60,) * 2)
    store.compact()
    assert not [p for p in series_dir.rglob(".tmp-*")]
    pd.testing.assert_frame_equal(store.read("binance", "BTC/USDT", "1m"), frame)


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.integers(1, 1000)), min_size=1, max_size=12),
        min_size=1,
        max_size=8,
    ),
)
def test_upserts_match_a_last_write_wins_model(batches: list[list[tuple[int, int]]]) -> None:
    base = FEB1 - 20 * MIN  # slots straddle a monthly partition boundary
    model: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as root:
        store = CandleStore(root, compact_after=2)
        for batch in batches:
            rows = [[base + slot * MIN, price, price, price, price, 1.0] for slot, price in batch]
            store.write(table(rows, validate=False))
            model.update({base + slot * MIN: float(price) for slot, price in batch})
        frame = store.read("binance", "BTC/USDT", "1m")
        assert dict(zip(ms(frame.index), frame["close"])) == model
        assert (np.diff(frame.index.asi8) > 0).all()
        times = sorted(model)
        missing = sum((b - a) // MIN - 1 for a, b in zip(times, times[1:]))
        assert sum(g.count for g in store.gaps("binance", "BTC/USDT", "1m")) == missing
        assert store.series() == [SeriesInfo("binance", "BTC/USDT", "1m", len(model), times[0], times[-1])]
