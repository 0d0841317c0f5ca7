"""The README's main job end to end: `tradpal-ray demo --duration 5` on a fresh store, then again.

Five seconds of streaming suffice: the feed also delivers the candles the simulator closed while the
demo started (at 60x, a minute of them per second of start-up), so the checks below never wait on it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tradpal_ray.market import CandleStore
from tradpal_ray.stats.local_redis import free_port
from tradpal_ray.trading import open_ledger

pytestmark = pytest.mark.slow


def _demo(store: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # its own Ray by default
    return subprocess.run(
        [sys.executable, "-m", "tradpal_ray.cli", "demo", "--duration", "5", "--days", "1",
         "--port", str(port), "--store", str(store)],
        capture_output=True, text=True, timeout=420, env={**env, "COLUMNS": "120"}, check=False,
    )


def _leaderboard(err: str) -> list[str]:
    """The rows of the leaderboard table the demo read back over HTTP."""
    table = err.split("leaderboard served at", 1)[1]
    return [line for line in table.split("└", 1)[0].splitlines() if line.startswith("│")]


def test_demo_runs_the_whole_pipeline_twice_with_the_same_leaderboard_and_stops_quietly(tmp_path: Path) -> None:
    port = free_port()
    first = _demo(tmp_path, port)
    assert first.returncode == 0, first.stderr[-3000:]
    err = first.stderr
    flat = " ".join(err.split())  # rich wraps long titles
    assert f"leaderboard served at http://127.0.0.1:{port}/runs/" in flat
    assert re.search(r"│ (BTC|ETH|SOL|BNB|XRP)/USDT │ fast=\d+ slow=\d+", err)
    delivered = int(re.search(r"feed delivered (\d+) closed candles", err).group(1))
    assert delivered >= 5  # 5 s at 60x alone: about 5 closed 1m candles per symbol
    assert "demo stopped" in err and "Traceback" not in err
    # Paper traders for the sweep's three best results followed the feed (each recorded decisions in the
    # ledger, served by the live API) until the demo stopped them.
    assert f"paper traders served at http://127.0.0.1:{port}/live/traders" in flat
    traders = re.findall(r"│ (demo-[0-9a-f]{6}-[123]) +│ running +│.*│ +([\d.,]+) +│\n", err)
    assert len({name for name, _ in traders}) == 3, err[-3000:]
    stopped = {t.name: t.status for t in open_ledger(None, str(tmp_path)).traders()}
    assert stopped == {name: "stopped" for name, _ in traders}
    # One true line about Serve, and a quiet stop (the raylet's lines go to stdout).
    assert flat.count(f"stats API on http://127.0.0.1:{port} (Serve app stats-tp-") == 1 and "Serve started" in flat
    for noise in ("Started Serve", "Connecting to existing Serve app", "graceful_shutdown", "killed by"):
        assert noise not in first.stdout + err, noise
    # Simulated candles live under their own exchange id, none dated after the wall clock.
    store = CandleStore(tmp_path)
    assert {(s.exchange, s.symbol) for s in store.series()} == {
        ("sim", symbol) for symbol in ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT")}
    assert all(not store.gaps(s.exchange, s.symbol, s.timeframe) for s in store.series())
    assert max(s.last_ms for s in store.series()) <= time.time() * 1000
    assert len(list((tmp_path / "runs").iterdir())) == 1
    rows = sum(s.rows for s in store.series())

    second = _demo(tmp_path, port)  # the same store again: a user's second `make demo`
    assert second.returncode == 0, second.stderr[-3000:]
    assert _leaderboard(second.stderr) == _leaderboard(err)
    assert int(re.search(r"feed delivered (\d+) closed candles", second.stderr).group(1)) >= 5  # new candles, stored
    assert sum(s.rows for s in CandleStore(tmp_path).series()) > rows
    leftovers = subprocess.run(["pgrep", "-f", f"redis-server .*--port {re.escape(str(port))}|serve.*{port}"],
                               capture_output=True, text=True, check=False)
    assert leftovers.stdout == ""
