"""Stats API throughput and cache speed-up; prints one JSON object.

1. Requests/s and p50/p99 latency (wrk) at 1, 8 and 32 connections for a cache-hit
   endpoint (a 10,000-result run's leaderboard, top 10) through Ray Serve (HAProxy +
   throughput-optimized mode + the plain handler path) against the same FastAPI app under
   plain uvicorn (uvloop, httptools) in its own process: the limit. Both require the API key.
2. Leaderboard latency of that run on a cache hit versus a miss (Redis flushed and a new
   key each time: answered from the stores): over HTTP through Serve and through uvicorn
   (one keep-alive connection), and calling the StatsService in-process.

Targets: Serve >= 25% of uvicorn's requests/s and p99 <= 20 ms at 8 clients; hit >= 20x
faster than miss. Starts its own redis-server and Ray (not the tests'), cleans up.
Usage: ``python benchmarks/serve.py [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serving import speedup, stop_serve_and, timed_get

from tradpal_ray.stats.local_redis import free_port

API_KEY = "bench-key"
RUN_ID = "sma_cross-20240101T000000-0010a0"  # the shape new_run_id gives (the API refuses others)
RESULTS = 10_000
CLIENTS = (1, 8, 32)



def wait_http(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers={"X-API-Key": API_KEY}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def write_big_run(root: Path) -> None:
    """A run of 10,000 results (4 symbols x 2,500 parameter sets) with plausible statistics."""
    import numpy as np
    import pandas as pd

    from tradpal_ray.backtest.metrics import metrics
    from tradpal_ray.runs import RunManifest, RunStore, chunk_table

    store = RunStore(root)
    types = {"fast": "int", "slow": "int"}
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT"]
    fast, slow = np.meshgrid(np.arange(2, 52), np.arange(60, 110))
    rng = np.random.default_rng(0)
    per = RESULTS // len(symbols)
    for symbol in symbols:
        frame = pd.DataFrame({"fast": fast.ravel()[:per], "slow": slow.ravel()[:per]})
        for m in metrics():
            frame[m.name] = rng.normal(1, 1, per)
        frame["trades"] = rng.integers(0, 200, per)
        for chunk in range(0, per, 1000):
            part = frame.iloc[chunk : chunk + 1000].reset_index(drop=True)
            store.write_chunk(RUN_ID, symbol, chunk // 1000, chunk_table(RUN_ID, symbol, "sma_cross", part, types))
    store.write_manifest(RunManifest(run_id=RUN_ID, strategy="sma_cross", grid={"fast": [2, 51], "slow": [60, 109]},
                                     symbols=symbols, source="store", exchange="binance", timeframe="1h",
                                     combos=per, results=RESULTS, status="complete", param_types=types))


def wrk(url: str, clients: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--latency", "-H", f"X-API-Key: {API_KEY}", url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE).groups()  # type: ignore[union-attr]
        return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))),  # type: ignore[union-attr]
            "p50_ms": ms("50%"), "p99_ms": ms("99%"), "non_2xx": int(errors.group(1)) if errors else 0}


def hit_vs_miss_http(host: str, port: int, redis_port: int) -> dict[str, float]:
    """Leaderboard latency over HTTP (one keep-alive connection): hits, and misses after a flush."""
    import http.client

    import redis

    flush = redis.Redis(port=redis_port)
    conn = http.client.HTTPConnection(host, port, timeout=30)

    def timed(path: str) -> float:
        return timed_get(conn, path, {"X-API-Key": API_KEY})

    misses = []
    for k in range(15):
        flush.flushall()
        misses.append(timed(f"/runs/{RUN_ID}/leaderboard?top={20 + k}&metric=sortino"))
    timed(f"/runs/{RUN_ID}/leaderboard?top=10&metric=sortino")
    hits = [timed(f"/runs/{RUN_ID}/leaderboard?top=10&metric=sortino") for _ in range(500)]
    conn.close()
    return speedup(hits, misses)


def hit_vs_miss_service(store: Path, redis_url: str, redis_port: int) -> dict[str, float]:
    """The same, calling StatsService in-process (no HTTP): what the cache itself saves."""
    import asyncio

    import redis

    from tradpal_ray.stats import StatsService

    flush = redis.Redis(port=redis_port)

    async def measure() -> dict[str, float]:
        service = StatsService(store, redis_url, warm_up=False)
        await service.start()

        async def timed(top: int) -> float:
            started = time.perf_counter()
            await service.leaderboard(RUN_ID, "sortino", top)
            return (time.perf_counter() - started) * 1000

        misses = []
        for k in range(15):
            flush.flushall()
            misses.append(await timed(20 + k))
        await timed(10)
        hits = [await timed(10) for _ in range(500)]
        await service.close()
        return speedup(hits, misses)

    return asyncio.run(measure())


def peer(port: int, store: str, redis_url: str) -> None:
    """The limit: the same app under plain uvicorn (run in a child process)."""
    import uvicorn

    from tradpal_ray.serve import build_app
    from tradpal_ray.stats import StatsService

    app = build_app(StatsService(store, redis_url), require_key=True, api_keys=[API_KEY])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--peer", nargs=3, metavar=("PORT", "STORE", "REDIS_URL"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.peer:
        peer(int(opts.peer[0]), opts.peer[1], opts.peer[2])
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install -y wrk)")
    os.environ.update({"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                       "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "1",
                       "TRADPAL_API_KEYS": API_KEY, "TRADPAL_LOG_LEVEL": "WARNING"})
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from tradpal_ray.serve import app

    workdir = Path(tempfile.mkdtemp(prefix="tradpal-bench-serve-"))
    store = workdir / "store"
    write_big_run(store)
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs = [subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)]
    peer_port = free_port()
    procs.append(subprocess.Popen([sys.executable, __file__, "--peer", str(peer_port), str(store), redis_url]))
    path = f"/runs/{RUN_ID}/leaderboard?top=10"
    try:
        peer_url = f"http://127.0.0.1:{peer_port}"
        wait_http(peer_url + path)
        started = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve_port = 8000
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        serve.run(app({"store": str(store), "redis_url": redis_url, "max_ongoing_requests": 256, "num_cpus": 0}),
                  name="stats", route_prefix="/", logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False))
        serve_url = f"http://127.0.0.1:{serve_port}"
        wait_http(serve_url + path)
        serve_start_s = round(time.perf_counter() - started, 1)
        figures: dict[str, dict[str, dict[str, float]]] = {"serve": {}, "uvicorn": {}}
        for clients in CLIENTS:
            for name, base in (("uvicorn", peer_url), ("serve", serve_url)):
                wrk(base + path, clients, 1.0)  # warm the connections and the replica
                figures[name][f"c{clients}"] = wrk(base + path, clients, opts.seconds)
        cache = {"http_via_serve": hit_vs_miss_http("127.0.0.1", serve_port, redis_port),
                 "http_via_uvicorn": hit_vs_miss_http("127.0.0.1", peer_port, redis_port),
                 "in_process": hit_vs_miss_service(store, redis_url, redis_port)}
        ratio = figures["serve"]["c8"]["rps"] / figures["uvicorn"]["c8"]["rps"]
        result = {
            "benchmark": "serve", "endpoint": path, "seconds_per_point": opts.seconds, "serve_start_s": serve_start_s,
            "serve_mode": "HAProxy + RAY_SERVE_THROUGHPUT_OPTIMIZED, plain __call__ handler driving the FastAPI app",
            **figures,
            "serve_vs_uvicorn_rps_c8": round(ratio, 3),
            "leaderboard_10k": cache,
            "targets": {
                "rps_c8_at_least_25pct_of_uvicorn": ratio >= 0.25,
                "p99_c8_at_most_20ms": figures["serve"]["c8"]["p99_ms"] <= 20,
                "hit_at_least_20x_faster_than_miss_in_process": cache["in_process"]["speedup"] >= 20,
                "hit_at_least_20x_faster_than_miss_http_via_serve": cache["http_via_serve"]["speedup"] >= 20,
            },
        }
    finally:
        stop_serve_and(procs)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))  # after Ray's shutdown chatter, so it is the last line of stdout


if __name__ == "__main__":
    main()
