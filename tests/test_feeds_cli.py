"""``tradpal-ray stream``: bad input is rejected up front; a real run streams, stores and exits cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from tradpal_ray.market import CandleStore


def test_unknown_timeframe_lists_the_valid_ones(run_cli: Any) -> None:
    code, _, err = run_cli("stream", "--symbols", "BTC/USDT", "--timeframes", "1m,7m", "--exchange-url", "http://127.0.0.1:9")
    assert code == 2 and "unknown timeframe '7m'; valid: 1m, 5m, 15m, 1h, 4h, 1d" in " ".join(err.split())


def test_unknown_symbol_lists_the_valid_ones(run_cli: Any, make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator(["BTC/USDT", "ETH/USDT"])
    code, _, err = run_cli("stream", "--symbols", "BTC/USDT,XYZ/USDT", "--exchange-url", sim.url, "--store", str(store_root))
    assert code == 2 and "unknown symbol(s) XYZ/USDT on binance; valid: BTC/USDT, ETH/USDT" in " ".join(err.split())


def test_exchange_that_never_answers_gives_a_clear_error(run_cli: Any, store_root: Path) -> None:
    started = time.monotonic()
    code, _, err = run_cli("stream", "--symbols", "BTC/USDT", "--exchange-url", "http://127.0.0.1:9", "--store", str(store_root))
    assert code == 2 and "no answer after 4 attempts" in " ".join(err.split())
    assert time.monotonic() - started < 30


def test_stream_runs_for_a_duration_and_flushes_everything(make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator(["BTC/USDT"], speed=300.0)
    env = {**os.environ, "TRADPAL_LOG_LEVEL": "WARNING"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "tradpal_ray.cli", "stream", "--symbols", "BTC/USDT", "--timeframes", "1m,5m",
         "--exchange-url", sim.url, "--store", str(store_root), "--duration", "3"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "closed candles stored" in done.stderr
    stored = CandleStore(store_root).read_table("binance", "BTC/USDT", "1m")
    times = stored.column("open_time").cast(pa.int64()).to_pylist()
    assert len(times) >= 5
    truth = sim.closed_candles("BTC/USDT", "1m", times[0], times[-1] + 60_000)
    assert truth.column("open_time").cast(pa.int64()).to_pylist() == times
    assert (store_root / "feeds").is_dir()
