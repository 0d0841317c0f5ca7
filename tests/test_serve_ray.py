"""The stats app on real Ray Serve (the shared ``ray_session``), over HTTP. Started once per module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydantic
import pytest
from redis_fixtures import run_id, synthetic_bars, write_run

from tradpal_ray.serve import app
from tradpal_ray.stats.local_redis import RedisProcess, free_port, wait_for

R1, R2 = run_id(1), run_id(2)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-store")
    write_run(root, R1)
    return root


@pytest.fixture(scope="module")
def base_url(ray_session: None, store: Path, redis_server: RedisProcess) -> Iterator[str]:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app({"store": str(store), "redis_url": redis_server.url, "max_ongoing_requests": 64}),
                  name="stats", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


def test_endpoints_through_serve(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True  # loopback: no API key needed
    assert [r["run_id"] for r in client.get("/runs").json()] == [R1]
    board = client.get(f"/runs/{R1}/leaderboard", params={"top": 2, "metric": "profit_factor"})
    assert board.status_code == 200 and board.headers["content-type"] == "application/json"
    assert len(board.json()["results"]) == 2
    best = board.json()["results"][0]["result_id"]
    assert client.get(f"/runs/{R1}/results/{best}/equity").json()["result_id"] == best
    assert client.get(f"/runs/{run_id(99)}").status_code == 404 and client.get("/runs/nope").status_code == 422
    bad = client.get(f"/runs/{R1}/leaderboard", params={"top": -1})
    assert bad.status_code == 422 and "top" in bad.text
    assert client.get("/docs").status_code == 200


def test_cache_hits_and_a_new_run_through_serve(client: httpx.Client, store: Path) -> None:
    path, params = f"/runs/{R1}/leaderboard", {"metric": "sortino", "top": 3}
    first = client.get(path, params=params).content
    assert client.get(path, params=params).content == first
    assert client.get("/cache/stats").json()["by_kind"]["leaderboard"].get("hit", 0) >= 1
    write_run(store, R2, created_at="2025-01-01T00:00:00+00:00", seed=4)
    landed = time.monotonic()
    wait_for(lambda: [r["run_id"] for r in client.get("/runs").json()] == [R2, R1], timeout=1.5,
             what="the new run through Serve")
    assert time.monotonic() - landed < 1.5  # 1 s budget plus HTTP round trips on a busy CI box


def test_the_live_ledger_through_serve(client: httpx.Client, store: Path, redis_server: RedisProcess) -> None:
    """The replica reads the store's SQLite ledger; a writer's fill shows on the next request."""
    from tradpal_ray.trading import Fill, LiveCacheNotifier, open_ledger

    assert client.get("/live/trades/count").json()["count"] == 0
    ledger = open_ledger(None, store)
    ledger.on_change = LiveCacheNotifier(redis_server.url, ledger.identity)
    ledger.record_fill(Fill("t1", "o1", "o1:0", "BTC/USDT", "buy", 1.0, 100.0, 0.1, 1))
    assert client.get("/live/trades/count").json() == {"status": "all", "trader": None, "count": 1, "all": 1, "open": 1,
                                                       "closed": 0}
    ledger.close()


def test_a_sweep_run_by_ray_is_served(client: httpx.Client, store: Path, tmp_path: Path) -> None:
    from tradpal_ray.runs import SweepRequest, run_sweep

    data = tmp_path / "SYNTH.csv"
    synthetic_bars(9).to_csv(data)
    outcome = run_sweep(SweepRequest(strategy="sma_cross", grid={"fast": [5, 8], "slow": [20, 30]}, data_file=str(data)),
                        store=str(store), keep_best=1, executor="ray")
    run_id = outcome.run_id
    wait_for(lambda: client.get(f"/runs/{run_id}").json().get("status") == "complete", timeout=1.5,
             what="the finished sweep (the service saw it running, with no results yet)")
    board = client.get(f"/runs/{run_id}/leaderboard", params={"symbol": "SYNTH"}).json()
    assert board["total"] == 4 and board["results"][0]["symbol"] == "SYNTH"
    best = board["results"][0]["result_id"]
    assert client.get(f"/runs/{run_id}/results/{best}/equity").json()["equity"]["equity"]
    [synth] = client.get("/symbols/stats", params={"symbol": "SYNTH"}).json()
    assert synth["runs"] == 1 and synth["results"] == 4 and synth["exchange"] is None  # a data file, no exchange


def test_builder_rejects_unknown_arguments() -> None:
    with pytest.raises(pydantic.ValidationError, match="replicas"):
        app({"replicas": 2})


def test_cli_on_a_joined_cluster_removes_only_its_own_app(
    base_url: str, client: httpx.Client, store: Path, redis_server: RedisProcess
) -> None:
    """``tradpal-ray serve --replace`` joining the session's cluster: on Ctrl-C it deletes its
    ``stats-<instance>`` app, and another app on the same Serve keeps answering. Last in the
    module: it replaces the fixture's ``stats`` app."""
    import ray
    from ray import serve

    serve.run(app({"store": str(store), "redis_url": redis_server.url, "num_cpus": 0}), name="other",
              route_prefix="/other")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    env.pop("TRADPAL_API_KEYS", None)
    command = [sys.executable, "-m", "tradpal_ray.cli", "serve", "--store", str(store), "--redis-url", redis_server.url,
               "--replace"]  # the fixture's app holds "/": without --replace the CLI refuses to take it over
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as cli:
        try:
            # The CLI's console is stderr; the first line naming the URL or an error (EOF: "").
            seen = next((line for line in cli.stderr or () if "stats API on" in line or "Error" in line), "")
            assert "stats API on" in seen, seen
            assert client.get("/runs").status_code == 200  # Serve and the app's host both loopback: no key
            cli.send_signal(signal.SIGINT)
            cli.communicate(timeout=120)
        finally:
            if cli.poll() is None:
                cli.kill()
    assert client.get("/other/health").json() == {"status": "ok"}
    assert "stats" not in serve.status().applications and client.get("/runs").status_code == 404
