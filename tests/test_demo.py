"""The README's main job end to end: `tradpal-ray demo --duration 30` on a fresh store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tradpal_ray.market import CandleStore
from tradpal_ray.stats.local_redis import free_port

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_pipeline_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ADDRESS": "local", "COLUMNS": "120"}  # its own Ray, never the test session's
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "tradpal_ray.cli", "demo", "--duration", "30", "--days", "1",
         "--port", str(port), "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=420, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    flat = " ".join(err.split())  # rich wraps long titles
    assert f"leaderboard served at http://127.0.0.1:{port}/runs/" in flat
    assert re.search(r"│ (BTC|ETH|SOL|BNB|XRP)/USDT │ fast=\d+ slow=\d+", err)
    delivered = int(re.search(r"feed delivered (\d+) closed candles", err).group(1))
    assert delivered >= 5  # 30 s at 60x: about 30 closed 1m candles per symbol
    assert "demo stopped" in err and "Traceback" not in err
    store = CandleStore(tmp_path)
    assert {s.symbol for s in store.series()} == {"BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"}
    assert all(not store.gaps(s.exchange, s.symbol, s.timeframe) for s in store.series())
    assert len(list((tmp_path / "runs").iterdir())) == 1
    leftovers = subprocess.run(["pgrep", "-f", f"redis-server .*--port {re.escape(str(port))}|serve.*{port}"],
                               capture_output=True, text=True, check=False)
    assert leftovers.stdout == ""
