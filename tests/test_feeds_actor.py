"""The feed as a real Ray actor: consumers pull ObjectRefs, the actor survives being killed."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray

from tradpal_ray.feeds import FeedConfig, get_feed, latest, start_feed, subscribe
from tradpal_ray.market import CandleStore
from tradpal_ray.market.retry import Backoff

SYMBOL = "BTC/USDT"
STEP = 60_000


def actor_config(sim: Any, store: Path, shard: str) -> FeedConfig:
    return FeedConfig(symbols=(SYMBOL,), timeframes=("1m",), url=sim.url, store=str(store), shard=shard,
                      stale_after=0.6, repair_grace=0.3, store_within=0.5, status_interval=0.5,
                      reconnect=Backoff(retries=0, base=0.02, cap=0.2), rest=Backoff(retries=6, base=0.02, cap=0.2))


async def closed_until(sub: Any, seen: list[int], target: int, timeout: float = 30.0) -> None:
    """Consume ``sub`` into ``seen`` (closed open times) until ``target`` is in it."""
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] < target:
        assert time.monotonic() < deadline, f"consumer stuck at {seen[-1:]} waiting for {target}"
        batch = await asyncio.wait_for(anext(sub), max(0.1, deadline - time.monotonic()))
        times = batch.column("open_time").cast(pa.int64()).to_pylist()
        seen.extend(t for t, closed in zip(times, batch.column("closed").to_pylist()) if closed)


async def back_again(handle: Any, started_ms: int, timeout: float = 60.0) -> None:
    """Wait until a new incarnation of the actor answers."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "the feed actor did not come back"
        try:
            status = await handle.ready.remote()
            if status["started_ms"] > started_ms:
                return
        except ray.exceptions.RayActorError:
            pass
        await asyncio.sleep(0.1)


def test_actor_killed_mid_stream_resumes_and_loses_nothing(ray_session: None, make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator([SYMBOL], speed=300.0)
    handle = start_feed(actor_config(sim, store_root, "kill"))
    first_status = ray.get(handle.ready.remote(), timeout=60)
    assert first_status["connected"] in (True, False) and first_status["name"] == "feed:binance:kill"
    assert get_feed("feed:binance:kill")._actor_id == handle._actor_id
    # its start-up heap is frozen, out of the cyclic collector's way (again after every restart)
    assert ray.get(handle.__ray_call__.remote(lambda self: gc.get_freeze_count())) > 10_000

    async def main() -> tuple[list[int], Any]:
        sub = subscribe(handle, SYMBOL, "1m", store=str(store_root), poll_timeout=0.5)
        seen: list[int] = []
        await closed_until(sub, seen, sim.now_ms() // STEP * STEP - 3 * STEP)
        ray.kill(handle, no_restart=False)
        await back_again(handle, first_status["started_ms"])
        await closed_until(sub, seen, sim.now_ms() // STEP * STEP - STEP)  # goes on across the restart
        frame = await latest(handle, SYMBOL, "1m", 5)
        assert len(frame) == 5
        await handle.stop.remote()
        return seen, sub

    seen, sub = asyncio.run(main())
    status = ray.get(handle.status.remote())
    assert status["started_ms"] > first_status["started_ms"]  # a new incarnation
    assert ray.get(handle.__ray_call__.remote(lambda self: gc.get_freeze_count())) > 10_000
    assert sub.restarts_seen == 1
    stored = CandleStore(store_root).read_table("binance", SYMBOL, "1m")
    times = stored.column("open_time").cast(pa.int64()).to_pylist()
    truth = sim.closed_candles(SYMBOL, "1m", times[0], times[-1] + STEP)
    assert stored.select(["open_time", "close"]).equals(truth.select(["open_time", "close"]))
    assert seen == times[: len(seen)] and seen == sorted(set(seen))  # in order, once each, nothing skipped
    assert len(seen) >= 5
    ray.kill(handle)


def test_actor_rejects_unknown_symbols(ray_session: None, make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator([SYMBOL], speed=300.0)
    config = FeedConfig(symbols=("NOPE/USDT",), url=sim.url, store=str(store_root), shard="bad")
    handle = start_feed(config, max_restarts=0)
    with pytest.raises(ray.exceptions.RayTaskError, match="valid: BTC/USDT"):
        ray.get(handle.ready.remote(), timeout=60)
    ray.kill(handle)
