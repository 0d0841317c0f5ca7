"""On a real multi-node Ray (one ``ray_cluster`` for the module, started once): a consumer on another
node receives the feed's batches from the object store; sweeps ship a user's strategy file to every
node, and a worker node lost mid-sweep changes nothing (last: it removes a node).
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import ray
from market_data import write_goog
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tradpal_ray.backtest import sweep
from tradpal_ray.feeds import FeedConfig, start_feed, subscribe
from tradpal_ray.market.retry import Backoff
from tradpal_ray.runs import SweepRequest, run_sweep

pytestmark = pytest.mark.slow
SYMBOLS = ["GOOG/USD", "GOOG2/USD", "GOOG3/USD"]
SYMBOL = "BTC/USDT"


@ray.remote(num_cpus=0)
def consume(handle: Any, closed_wanted: int) -> dict[str, Any]:
    """Runs on the consumer node: subscribe through the actor handle and collect closed candles."""

    async def main() -> dict[str, Any]:
        seen: list[int] = []
        batches = 0
        async for batch in subscribe(handle, SYMBOL, "1m", poll_timeout=0.5):
            batches += 1
            times = batch.column("open_time").cast(pa.int64()).to_pylist()
            seen += [t for t, closed in zip(times, batch.column("closed").to_pylist()) if closed]
            if len(seen) >= closed_wanted:
                break
        return {"node": ray.get_runtime_context().get_node_id(), "seen": seen, "batches": batches}

    return asyncio.run(main())


def test_consumer_on_another_node_receives_batches(ray_cluster: Any, make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator([SYMBOL], speed=300.0)
    workers = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0]
    assert len(workers) == 2
    feed_node, consumer_node = workers
    config = FeedConfig(symbols=(SYMBOL,), timeframes=("1m",), url=sim.url, store=str(store_root), shard="cluster",
                        stale_after=2.0, reconnect=Backoff(retries=0, base=0.05, cap=0.5))
    handle = start_feed(config, scheduling_strategy=NodeAffinitySchedulingStrategy(feed_node, soft=False))
    try:
        status = ray.get(handle.ready.remote(), timeout=60)
        assert status["name"] == "feed:binance:cluster"
        where = consume.options(scheduling_strategy=NodeAffinitySchedulingStrategy(consumer_node, soft=False))
        result = ray.get(where.remote(handle, 5), timeout=60)
        assert result["node"] == consumer_node != feed_node
        seen = result["seen"]
        assert len(seen) >= 5 and seen == list(range(seen[0], seen[0] + 60_000 * len(seen), 60_000))
        truth = sim.closed_candles(SYMBOL, "1m", seen[0], seen[-1] + 60_000)
        assert truth.column("open_time").cast(pa.int64()).to_pylist() == seen
    finally:
        ray.get(handle.stop.remote(), timeout=30)
        ray.kill(handle)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_goog(tmp_path_factory.mktemp("store"), {symbol: 1 + 0.1 * k for k, symbol in enumerate(SYMBOLS)})


def sweep_once(store: str, on_progress: Any = None) -> pd.DataFrame:
    request = SweepRequest(
        strategy="sma_cross", grid={"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))},
        symbols=SYMBOLS, exchange="test", timeframe="1d",
    )
    outcome = run_sweep(request, store=store, chunk_size=6, keep_best=1, on_progress=on_progress, executor="ray")
    assert outcome.manifest.status == "complete", outcome.manifest.errors
    return outcome.results.drop(columns=["run_id"]).sort_values("result_id").reset_index(drop=True)


GOLDEN_CROSS = textwrap.dedent('''
    from tradpal_ray.backtest import Param, cross_above, cross_below, sma, strategy

    @strategy(fast=Param(int, 10, min=1, window=True), slow=Param(int, 50, min=2, window=True),
              rules=((lambda p: p["fast"] < p["slow"], "fast must be below slow"),))
    def golden_cross_multinode(bars, fast, slow):
        """Long when SMA(fast) crosses above SMA(slow); out when it crosses back below."""
        f, s = sma(bars.close, fast), sma(bars.close, slow)
        return cross_above(f, s), cross_below(f, s)
''')


def test_a_strategy_file_reaches_every_node_after_it_is_deleted(ray_cluster: Any, store: str, tmp_path: Path) -> None:
    """The file lives outside the project and sys.path, and is gone once the first chunks are in flight."""
    from market_data import goog

    home = tmp_path / "elsewhere"
    home.mkdir()
    path = home / "golden_multinode.py"
    path.write_text(GOLDEN_CROSS)
    grid = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
    request = SweepRequest(strategy=f"{path}:golden_cross_multinode", grid=grid, symbols=SYMBOLS[:2],
                           exchange="test", timeframe="1d")

    def delete_once_submitted(done: int, total: int) -> None:
        if done >= 1 and path.exists():
            path.unlink()

    outcome = run_sweep(request, store=store, chunk_size=10, keep_best=1, executor="ray", on_progress=delete_once_submitted)
    assert not path.exists()
    m = outcome.manifest
    assert m.status == "complete" and m.results == 2 * 174, m.errors
    assert m.strategy == "golden_cross_multinode" and m.strategy_ref["kind"] == "file"
    assert len(m.strategy_ref["source_hash"]) == 64
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
    assert len(nodes) == 2  # both worker nodes were there to run chunks
    ours = outcome.results[outcome.results["symbol"] == "GOOG/USD"]
    reference = sweep(goog(), "sma_cross", grid)
    merged = ours.merge(reference, on=["fast", "slow"], suffixes=("", "_ref"))
    assert len(merged) == 174 and (merged["final_equity"] == merged["final_equity_ref"]).all()


def test_worker_node_killed_mid_sweep(ray_cluster: Any, store: str) -> None:
    reference = sweep_once(store)
    assert len(reference) == 3 * 174

    victim = next(node for node in ray_cluster.list_all_nodes() if node is not ray_cluster.head_node)
    killed: list[int] = []

    def kill_a_third_of_the_way(done: int, total: int) -> None:
        if not killed and done >= total // 3:
            killed.append(done)
            ray_cluster.remove_node(victim, allow_graceful=False)

    disturbed = sweep_once(store, on_progress=kill_a_third_of_the_way)
    assert killed and killed[0] < 3 * 29  # the node died while most chunks were still to run
    assert disturbed["result_id"].is_unique
    pd.testing.assert_frame_equal(disturbed, reference)
