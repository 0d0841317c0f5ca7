"""``tradpal-ray stream``: bad input is rejected up front; a real run streams, stores and exits cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tradpal_ray.market import CandleStore
from tradpal_ray.sim import SimulatorThread, run_simulator


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


@dataclass
class StreamRun:
    """A ``tradpal-ray stream`` subprocess (its own private Ray) against its own simulator and store."""

    sim: SimulatorThread
    store: Path
    process: subprocess.Popen[str]

    def finish(self) -> subprocess.CompletedProcess[str]:
        """Wait for the run to end (it stops after its ``--duration``); its exit code and output."""
        out, err = self.process.communicate(timeout=180)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, out, err)


def start_stream(sim: Any, store_root: Path, duration: float, timeframes: str) -> subprocess.Popen[str]:
    """``tradpal-ray stream`` against ``sim`` in a subprocess with its own private Ray."""
    env = {**os.environ, "TRADPAL_LOG_LEVEL": "WARNING"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tradpal_ray.cli", "stream", "--symbols", "BTC/USDT", "--timeframes", timeframes,
         "--exchange-url", sim.url, "--store", str(store_root), "--duration", str(duration)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


@pytest.fixture(scope="module")
def stream_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, StreamRun]]:
    """The module's two real runs, started together so that their start-ups and waits overlap:
    ``flushes`` streams 1m and 5m candles for 3 s; ``silent`` streams 1m for 15 s from a simulator
    whose WebSocket sends no data at all (stalled before the start, for the whole run)."""
    with ExitStack() as stack:
        runs = {}
        for name, duration, timeframes, stalled in (("flushes", 3, "1m,5m", False), ("silent", 15, "1m", True)):
            sim = stack.enter_context(run_simulator(["BTC/USDT"], speed=300.0, start="2024-03-01"))
            if stalled:
                sim.inject("stall")
            store = tmp_path_factory.mktemp(name)
            runs[name] = StreamRun(sim, store, start_stream(sim, store, duration, timeframes))
            stack.callback(runs[name].process.wait, 30)  # at teardown, before its simulator stops:
            stack.callback(runs[name].process.kill)  # killed (a no-op once it ended), then reaped
        yield runs


def stored_as_the_simulator_closed(sim: Any, store_root: Path) -> list[int]:
    """Open times of the stored 1m candles, after checking they are exactly the simulator's closed ones."""
    stored = CandleStore(store_root).read_table("binance", "BTC/USDT", "1m")
    times = stored.column("open_time").cast(pa.int64()).to_pylist()
    assert times, "no candle stored"
    truth = sim.closed_candles("BTC/USDT", "1m", times[0], times[-1] + 60_000)
    assert truth.column("open_time").cast(pa.int64()).to_pylist() == times
    return times


def test_stream_runs_for_a_duration_and_flushes_everything(stream_runs: dict[str, StreamRun]) -> None:
    run = stream_runs["flushes"]
    done = run.finish()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "closed candles stored" in done.stderr
    assert len(stored_as_the_simulator_closed(run.sim, run.store)) >= 5
    assert (run.store / "feeds").is_dir()


def test_stream_started_while_the_exchange_stream_is_silent_stores_candles_over_rest(
    stream_runs: dict[str, StreamRun],
) -> None:
    run = stream_runs["silent"]
    done = run.finish()  # the default watchdog (10 s) reconnects once, and fetches over REST
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(stored_as_the_simulator_closed(run.sim, run.store)) >= 20
    assert run.sim.stats()["rest_requests"].get("/api/v3/klines", 0) > 0
