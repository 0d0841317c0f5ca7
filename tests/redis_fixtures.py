"""Pytest plugin for the stats service tests: real redis-server processes and stores with runs.

``redis_server`` is one redis-server per test session (flushed before each test through
``redis_url``); ``make_redis`` starts private ones that a test may kill and restart
(same port). ``make_run`` writes a real sweep run (engine statistics, kept trades and
equity curves) straight through the RunStore, without Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tradpal_ray.backtest import backtest, sweep
from tradpal_ray.backtest.sweep import rank
from tradpal_ray.runs import RunManifest, RunStore, chunk_table, params_of
from tradpal_ray.stats.local_redis import RedisProcess


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One redis-server for the whole test session."""
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """URL of the session's redis-server, flushed for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Factory of private redis-servers (``make_redis(password=...)``), all killed after the test."""
    servers: list[RedisProcess] = []

    def make(**options: Any) -> RedisProcess:
        server = RedisProcess(tmp_path, **options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


def synthetic_bars(seed: int, n: int = 600) -> pd.DataFrame:
    """An hourly random-walk OHLCV frame."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0, 0.004, n)) * close
    index = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC", name="time")
    return pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + spread, "low": np.minimum(open_, close) - spread,
                         "close": close, "volume": rng.uniform(1, 10, n)}, index=index)


def run_id(n: int) -> str:
    """A run id of the real shape (``<strategy>-<YYYYmmddTHHMMSS>-<6 hex>``), distinct per ``n``."""
    return f"sma_cross-20240601T000000-{n:06x}"


def write_run(
    root: Path | str,
    run_id: str,
    *,
    symbols: tuple[str, ...] = ("BTC/USDT", "ETH/USDT"),
    grid: dict[str, list[Any]] | None = None,
    keep: int = 2,
    created_at: str = "2024-06-01T00:00:00+00:00",
    seed: int = 1,
) -> RunManifest:
    """Write a complete sma_cross run the way the sweep runner does (results, kept details, manifest)."""
    grid = grid or {"fast": [5, 10], "slow": [20, 40]}
    store = RunStore(root)
    types = {"fast": "int", "slow": "int"}
    manifest = RunManifest(run_id=run_id, strategy="sma_cross", grid=grid, symbols=list(symbols), source="store",
                           exchange="binance", timeframe="1h", created_at=created_at, status="running",
                           param_types=types)
    store.write_manifest(manifest)
    total = 0
    for k, symbol in enumerate(symbols):
        bars = synthetic_bars(seed * 100 + k)
        frame = sweep(bars, "sma_cross", grid)
        store.write_chunk(run_id, symbol, 0, chunk_table(run_id, symbol, "sma_cross", frame, types))
        stored = store.results(run_id, symbol)
        for row in rank(stored, "sharpe").head(keep).to_dict("records"):
            outcome = backtest(bars, "sma_cross", params_of(row, list(types)))
            store.write_detail(run_id, row["result_id"], outcome.trades, outcome.equity)
            manifest.kept[row["result_id"]] = symbol
        total += len(frame)
    manifest.status, manifest.results, manifest.combos = "complete", total, total // len(symbols)
    store.write_manifest(manifest)
    return manifest


@pytest.fixture
def make_run() -> Callable[..., RunManifest]:
    """``make_run(root, run_id, **options)``: see :func:`write_run`."""
    return write_run
