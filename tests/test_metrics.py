"""Our ray.util.metrics reach the node's Prometheus export port, as the dashboard reads them."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
import ray
from market_data import write_goog

from tradpal_ray.runs import SweepRequest, run_sweep


def scrape_until(names: set[str], timeout: float = 45.0, minimum: dict[str, float] | None = None) -> dict[str, float]:
    """Scrape every node's export port until each metric in ``names`` shows a sample (and reaches its
    ``minimum``: the exporter may flush a counter in parts); their summed values."""
    ports = [node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]]
    deadline = time.monotonic() + timeout
    found: dict[str, float] = {}
    while time.monotonic() < deadline:
        found = {}
        for port in ports:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            for line in text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if not line.startswith("#") and name in names:
                    found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        if names <= found.keys() and all(found[name] >= least for name, least in (minimum or {}).items()):
            return found
        time.sleep(1.0)  # polling an exporter that flushes every few seconds
    pytest.fail(f"metrics never exported in full: {sorted(names - found.keys())} missing, found {found}")


def test_sweep_metrics_are_exported(ray_session: None, tmp_path: pytest.TempPathFactory) -> None:
    write_goog(tmp_path, {"GOOG/USD": 1.0})
    request = SweepRequest(strategy="sma_cross", grid={"fast": [5, 10], "slow": [20, 30, 40]}, symbols=["GOOG/USD"],
                           exchange="test", timeframe="1d")
    run_sweep(request, store=str(tmp_path), keep_best=0, executor="ray")
    # At least this sweep's 6 backtests (the session's Ray counts other modules' sweeps too); fails after 45 s.
    scrape_until({"ray_tradpal_sweep_backtests_total", "ray_tradpal_sweep_chunk_seconds_count"},
                 minimum={"ray_tradpal_sweep_backtests_total": 6})


def test_feed_and_cache_metrics_are_exported(ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from ray import serve

    from tradpal_ray.config import load_settings
    from tradpal_ray.feeds import FeedConfig, start_feed
    from tradpal_ray.serve.launch import ServeOptions, deploy_stats, prepare_environment
    from tradpal_ray.sim import run_simulator
    from tradpal_ray.stats.local_redis import free_port

    with run_simulator(["BTC/USDT"], speed=120) as sim:
        feed = start_feed(FeedConfig(symbols=("BTC/USDT",), timeframes=("1m",), url=sim.url, store=str(tmp_path),
                                     shard="metrics"))
        try:
            ray.get(feed.ready.remote(), timeout=60)
            for name in ("TRADPAL_STORE", "TRADPAL_REDIS_URL"):  # prepare_environment exports these: restore after
                monkeypatch.setenv(name, "")
            options = prepare_environment(load_settings(store=str(tmp_path), redis_url="redis://127.0.0.1:1/0"),
                                          ServeOptions(port=free_port(), fast=False))
            url = deploy_stats(options, str(tmp_path), app="stats-metrics").url
            try:
                for _ in range(3):
                    assert httpx.get(f"{url}/runs", timeout=10).status_code == 200
                found = scrape_until({"ray_tradpal_feed_messages_total", "ray_tradpal_stats_cache_requests_total"})
            finally:
                serve.shutdown()
        finally:
            ray.get(feed.stop.remote(), timeout=60)
            ray.kill(feed)
    assert found["ray_tradpal_feed_messages_total"] > 0
    assert found["ray_tradpal_stats_cache_requests_total"] >= 3
