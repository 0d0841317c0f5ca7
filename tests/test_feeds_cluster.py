"""A consumer on another node of a real multi-node Ray receives the feed's batches from the object store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tradpal_ray.feeds import FeedConfig, start_feed, subscribe
from tradpal_ray.market.retry import Backoff

pytestmark = pytest.mark.slow
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
