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


def run_stream(sim: Any, store_root: Path, duration: float, timeframes: str = "1m") -> subprocess.CompletedProcess:
    """``tradpal-ray stream`` against ``sim`` in a subprocess with its own private Ray."""
    env = {**os.environ, "TRADPAL_LOG_LEVEL": "WARNING"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "tradpal_ray.cli", "stream", "--symbols", "BTC/USDT", "--timeframes", timeframes,
         "--exchange-url", sim.url, "--store", str(store_root), "--duration", str(duration)],
        capture_output=True, text=True, timeout=180, env=env, check=False,
    )


def stored_as_the_simulator_closed(sim: Any, store_root: Path) -> list[int]:
    """Open times of the stored 1m candles, after checking they are exactly the simulator's closed ones."""
    stored = CandleStore(store_root).read_table("binance", "BTC/USDT", "1m")
    times = stored.column("open_time").cast(pa.int64()).to_pylist()
    assert times, "no candle stored"
    truth = sim.closed_candles("BTC/USDT", "1m", times[0], times[-1] + 60_000)
    assert truth.column("open_time").cast(pa.int64()).to_pylist() == times
    return times


def test_stream_runs_for_a_duration_and_flushes_everything(make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator(["BTC/USDT"], speed=300.0)
    done = run_stream(sim, store_root, 3, "1m,5m")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "closed candles stored" in done.stderr
    assert len(stored_as_the_simulator_closed(sim, store_root)) >= 5
    assert (store_root / "feeds").is_dir()


def test_stream_started_while_the_exchange_stream_is_silent_stores_candles_over_rest(make_simulator: Any,
                                                                                    store_root: Path) -> None:
    sim = make_simulator(["BTC/USDT"], speed=300.0)
    sim.inject("stall")  # no WebSocket data at all, for the whole run
    done = run_stream(sim, store_root, 15)  # the default watchdog (10 s) reconnects once, and fetches over REST
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(stored_as_the_simulator_closed(sim, store_root)) >= 20
    assert sim.stats()["rest_requests"].get("/api/v3/klines", 0) > 0
