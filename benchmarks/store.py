"""CandleStore write/read throughput against plain pyarrow.parquet on the same table.

Data: 10 symbols x 1,000,000 1m candles (10M rows, about 1.9 years per symbol), one
CANDLE_SCHEMA table. Ours: one ``CandleStore.write`` of the whole table (split into
series, validated, partitioned into monthly files), then ``read_table`` of every series.
The limit: ``pq.write_table`` / ``pq.read_table`` of the same table as one file (pyarrow
defaults, and with our codec settings). Also: a one-candle upsert per series (fsynced), and
a full read while each series' newest period holds ``compact_after`` uncompacted files. Prints one JSON object; best of ``--repeat``
interleaved runs.

    .venv/bin/python benchmarks/store.py [--symbols 10] [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tradpal_ray.market.schema import CANDLE_SCHEMA, OHLCV_COLUMNS
from tradpal_ray.market.store import WRITE_OPTIONS, CandleStore

START_MS = 1_640_995_200_000  # 2022-01-01


def make_table(symbols: int, rows: int) -> pa.Table:
    """A random-walk candle table: ``symbols`` series of ``rows`` consecutive 1m candles."""
    rng = np.random.default_rng(7)
    pieces = []
    for k in range(symbols):
        close = np.round(100 * (k + 1) * np.exp(np.cumsum(rng.normal(0, 1e-3, rows))), 2)
        open_ = np.append(close[0], close[:-1])
        high = np.maximum(open_, close) + np.round(rng.random(rows), 2)
        low = np.minimum(open_, close) - np.round(rng.random(rows) * 1e-2, 2)
        cols = dict(zip(OHLCV_COLUMNS, (open_, high, low, close, np.round(rng.random(rows) * 50, 4))))
        pieces.append(
            pa.table(
                {
                    "exchange": pa.repeat("binance", rows),
                    "symbol": pa.repeat(f"S{k}/USDT", rows),
                    "timeframe": pa.repeat("1m", rows),
                    "open_time": pa.array(START_MS + np.arange(rows, dtype=np.int64) * 60_000).cast(
                        CANDLE_SCHEMA.field("open_time").type
                    ),
                    **cols,
                },
                schema=CANDLE_SCHEMA,
            )
        )
    return pa.concat_tables(pieces).combine_chunks()


def best_of(runs: dict[str, tuple[Callable[[], None], Callable[[], object]]], repeat: int) -> dict[str, float]:
    """Fastest wall time of each ``name: (untimed setup, timed fn)``, runs interleaved.

    Interleaving means a burst of load from other processes hits ours and the limit alike.
    """
    times: dict[str, float] = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, (setup, fn) in runs.items():
            setup()
            t0 = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - t0)
    return times


def dir_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    """Run the benchmark and print one JSON object."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table = make_table(args.symbols, args.rows)
    n = table.num_rows
    work = Path(tempfile.mkdtemp(prefix="tradpal-store-bench-"))
    try:
        plain = work / "plain.parquet"
        tuned = work / "tuned.parquet"
        root = work / "store"
        keys = [("binance", f"S{k}/USDT", "1m") for k in range(args.symbols)]
        fresh = lambda: shutil.rmtree(root, ignore_errors=True)  # noqa: E731
        nothing = lambda: None  # noqa: E731
        store = CandleStore(root)
        t = best_of(
            {
                "limit_write": (nothing, lambda: pq.write_table(table, plain)),
                "ours_write": (fresh, lambda: store.write(table)),
                "limit_read": (nothing, lambda: pq.read_table(plain)),
                "ours_read": (nothing, lambda: [store.read_table(*key) for key in keys]),
                "ours_read_frame": (nothing, lambda: [store.read(*key) for key in keys]),
                "tuned_write": (nothing, lambda: pq.write_table(table, tuned, **WRITE_OPTIONS)),
                "tuned_read": (nothing, lambda: pq.read_table(tuned)),
            },
            args.repeat,
        )
        check = pa.concat_tables(store.read_table(*key) for key in keys)
        assert check.equals(table), "store round trip differs"
        # Upsert of one fresh candle per series into the full store (a live feed's write).
        tail = pa.concat_tables(
            store.read_table(*key, start=START_MS + (args.rows - 1) * 60_000) for key in keys
        )
        upsert = best_of({"upsert": (nothing, lambda: store.write(tail))}, args.repeat)["upsert"]
        # Reads while small upserts await compaction (as a live feed leaves the newest period):
        # those periods merge their files by write id.
        newest = max((root / "candles").glob("*/*/symbol=S0-USDT/period=*"))
        while sum(1 for _ in newest.glob("*.parquet")) < store.compact_after:
            store.write(tail)
        pending = best_of({"read": (nothing, lambda: [store.read_table(*key) for key in keys])}, args.repeat)["read"]

        result = {
            "benchmark": "candle_store",
            "data": f"{args.symbols} symbols x {args.rows} 1m candles = {n} rows, one table",
            "ours_write_rows_per_s": round(n / t["ours_write"]),
            "ours_read_rows_per_s": round(n / t["ours_read"]),
            "ours_read_frame_rows_per_s": round(n / t["ours_read_frame"]),
            "limit_write_rows_per_s": round(n / t["limit_write"]),
            "limit_read_rows_per_s": round(n / t["limit_read"]),
            "write_ratio": round(t["limit_write"] / t["ours_write"], 2),
            "read_ratio": round(t["limit_read"] / t["ours_read"], 2),
            "limit_zstd_write_rows_per_s": round(n / t["tuned_write"]),
            "limit_zstd_read_rows_per_s": round(n / t["tuned_read"]),
            "upsert_one_candle_per_series_ms": round(upsert * 1000, 1),
            "ours_read_with_pending_upserts_rows_per_s": round(n / pending),
            "pending_files_in_newest_period": sum(1 for _ in newest.glob("*.parquet")),
            "ours_bytes": dir_size(root),
            "limit_bytes": os.path.getsize(plain),
            "files": sum(1 for _ in root.rglob("*.parquet")),
            "note": "ratio = limit time / our time (1.0 = as fast as plain pyarrow; >1 faster); "
            "limit = pq.write_table/read_table defaults (snappy) of the same table; "
            "limit_zstd = same with the store's codec settings; "
            f"ours writes/reads partition files on {pa.io_thread_count()} I/O threads ({os.cpu_count()} cores)",
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
