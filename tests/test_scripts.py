"""scripts/backtest_universe.py as `ray submit` runs it: the script alone, in another directory, as a process."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import ray
from market_data import goog

from tradpal_ray.backtest import BacktestConfig, sweep
from tradpal_ray.errors import ConfigError
from tradpal_ray.market import CandleStore, candles_table
from tradpal_ray.market.store import SeriesInfo
from tradpal_ray.stats.local_redis import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "backtest_universe.py"



@pytest.fixture(scope="module")
def script_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("backtest_universe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def lone_script(tmp_path: Path) -> Path:
    """The script copied alone into an empty directory, as `ray submit` copies it to ~/ on the head."""
    home = tmp_path / "home"
    home.mkdir()
    return Path(shutil.copy(SCRIPT, home))


def start_script(script: Path, *args: str, ray_address: str | None = None) -> subprocess.Popen[str]:
    """Start ``script ARGS`` as ``ray submit`` runs it (in its own directory, RAY_ADDRESS only if given)."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.Popen([sys.executable, str(script), *args], cwd=script.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*started: subprocess.Popen[str]) -> list[subprocess.CompletedProcess[str]]:
    """Wait for scripts started together (independent runs overlap their start-up); each one's outcome."""
    done = []
    try:
        for process in started:
            out, err = process.communicate(timeout=240)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    return done


def run_script(script: Path, *args: str, ray_address: str | None = None) -> subprocess.CompletedProcess[str]:
    [done] = finish(start_script(script, *args, ray_address=ray_address))
    return done


def test_universe_is_every_stored_symbol_of_the_exchange_and_timeframe(script_module: ModuleType) -> None:
    series = [SeriesInfo("test", s, tf, 10, 0, 1) for s, tf in [("B/USD", "1d"), ("A/USD", "1d"), ("A/USD", "1h")]]
    series.append(SeriesInfo("other", "C/USD", "1d", 10, 0, 1))
    assert script_module.universe(series, "test", "1d") == ("1d", ["A/USD", "B/USD"])
    assert script_module.universe(series, "other", None) == ("1d", ["C/USD"])
    with pytest.raises(ConfigError, match="give --timeframe: the store has 1d, 1h test candles"):
        script_module.universe(series, "test", None)
    with pytest.raises(ConfigError, match="no test 4h candles"):
        script_module.universe(series, "test", "4h")


def test_joins_the_running_cluster_sweeps_the_store_universe_and_prints_json(
    ray_session: None, lone_script: Path, tmp_path: Path
) -> None:
    from ray._private.state import jobs

    drivers_before = len(jobs())

    store = CandleStore(tmp_path / "store")
    for symbol, scale in [("GOOG/USD", 1.0), ("GOOG2/USD", 0.37)]:
        store.write(candles_table(goog(scale), exchange="test", symbol=symbol, timeframe="1d"))
    store.write(candles_table(goog(), exchange="elsewhere", symbol="NOT/USD", timeframe="1d"))

    strategy_file = tmp_path / "signals" / "universe_golden.py"  # the user's own file, outside sys.path
    strategy_file.parent.mkdir()
    strategy_file.write_text(
        "from tradpal_ray.backtest import cross_above, cross_below, sma\n\n"
        "def golden_cross(bars, fast=10, slow=50):\n"
        "    f, s = sma(bars.close, fast), sma(bars.close, slow)\n"
        "    return cross_above(f, s), cross_below(f, s)\n"
    )
    done = run_script(lone_script, "--store", str(tmp_path / "store"), "--exchange", "test", "--grid", "fast=5,10",
                      "--grid", "slow=20,30", "--metric", "return_pct", "--top", "0", "--json",
                      "--strategy", f"{strategy_file}:golden_cross", ray_address=ray.get_runtime_context().gcs_address)
    assert done.returncode == 0, done.stderr
    assert len(jobs()) == drivers_before + 1  # it joined the session's cluster as a new driver
    doc = json.loads(done.stdout)
    assert doc["status"] == "complete" and doc["metric"] == "return_pct" and doc["errors"] == {}
    assert doc["executor"] == "ray" and doc["strategy"] == "golden_cross"
    assert {row["symbol"] for row in doc["results"]} == {"GOOG/USD", "GOOG2/USD"} and len(doc["results"]) == 8
    returns = [row["stats"]["return_pct"] for row in doc["results"]]
    assert returns == sorted(returns, reverse=True)
    expected = sweep(goog(), "sma_cross", {"fast": [5, 10], "slow": [20, 30]}, BacktestConfig()).set_index(["fast", "slow"])
    for row in doc["results"]:
        if row["symbol"] == "GOOG/USD":
            key = (row["params"]["fast"], row["params"]["slow"])
            assert row["stats"]["final_equity"] == pytest.approx(expected.loc[key, "final_equity"], rel=1e-12)


def test_help_and_bad_input(lone_script: Path, tmp_path: Path) -> None:
    shown, empty = finish(start_script(lone_script, "--help"),
                          start_script(lone_script, "--store", str(tmp_path / "empty"), "--exchange", "test", "--grid", "fast=5"))
    assert shown.returncode == 0
    assert all(option in shown.stdout for option in ("--symbols", "--timeframe", "--grid", "--metric", "--top", "--json"))
    assert empty.returncode == 2 and empty.stderr.strip() == "error: give --timeframe: the store has no test candles"


SERVE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "serve_stats.py"



def test_serve_stats_deploys_on_the_running_cluster_and_exits(ray_session: None, tmp_path: Path) -> None:
    import urllib.request

    from ray import serve

    script = Path(shutil.copy(SERVE_SCRIPT, tmp_path))
    port = free_port()
    done = run_script(script, "--port", str(port), "--store", str(tmp_path / "store"),
                      "--redis-url", "redis://127.0.0.1:1/0", ray_address=ray.get_runtime_context().gcs_address)
    try:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=10) as answer:  # no Redis: store fallback
            assert answer.status == 200 and json.loads(answer.read()) == []
    finally:
        serve.shutdown()


def test_serve_stats_help_and_refusals(tmp_path: Path) -> None:
    script = Path(shutil.copy(SERVE_SCRIPT, tmp_path))
    shown, refused = finish(start_script(script, "--help"), start_script(script, "--host", "0.0.0.0"))
    assert shown.returncode == 0 and "ray submit cluster.yaml scripts/serve_stats.py" in shown.stdout
    assert refused.returncode == 2 and "TRADPAL_API_KEYS" in refused.stderr and "Traceback" not in refused.stderr


STREAM_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stream.py"


def test_stream_script_streams_locally_then_stops_with_everything_stored(tmp_path: Path) -> None:
    from tradpal_ray.sim import run_simulator

    script = Path(shutil.copy(STREAM_SCRIPT, tmp_path))
    with run_simulator(["BTC/USDT", "ETH/USDT"], speed=120) as sim:
        # Two private Rays at once: the refusal runs while the first one streams.
        done, bad = finish(
            start_script(script, "--symbols", "BTC/USDT,ETH/USDT", "--exchange-url", sim.url, "--store",
                         str(tmp_path / "store"), "--shards", "2", "--duration", "8", ray_address="local"),
            start_script(script, "--symbols", "DOGE/USDT", "--exchange-url", sim.url, "--store",
                         str(tmp_path / "bad-store"), "--duration", "1", ray_address="local"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "feed:binance:0: ws, 1 symbols" in done.stdout and "feed:binance:1: ws, 1 symbols" in done.stdout
    stored = int(done.stdout.rsplit("stopped; ", 1)[1].split()[0])
    store = CandleStore(tmp_path / "store")
    assert stored > 0 and sum(s.rows for s in store.series()) == stored
    assert bad.returncode == 2 and "DOGE/USDT" in bad.stderr and "BTC/USDT" in bad.stderr and "Traceback" not in bad.stderr
