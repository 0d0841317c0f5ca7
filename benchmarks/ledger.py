"""The trading bot's own claim, measured: live trade count and daily statistics over a ledger of
1,000,000 fills in PostgreSQL, served over HTTP by the stats service under Ray Serve (HAProxy +
throughput-optimized mode, as benchmarks/serve.py), cache hit versus miss. Prints one JSON object.

Set-up: a private PostgreSQL (tests/pg_server.py) and redis-server; 1,000,000 fills (500,000
closed round trips of 20 traders on 10 symbols over a year) bulk-loaded with COPY into the
ledger's own tables, then ANALYZE. A miss is forced the way a fill forces it in production:
the ledger's ``trades`` generation is bumped in Redis (INCR) before the request, so the
answer is computed from PostgreSQL; a hit is the same request again. Each round measures
both endpoints (median of 300 hits, of 15 misses); ``--rounds`` rounds (default 3) give
min / median / max of the speed-up. Also the same through the service in-process (no HTTP).

Target: hit >= 20x faster than miss. Peer figure: the bot reported 30-60x (its own report;
the bot is not runnable here). Starts and removes everything it uses.
Usage: ``python benchmarks/ledger.py [--fills 1000000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the PostgreSQL helper of the tests
from _serving import speedup, stop_serve_and, timed_get  # noqa: E402
from pg_server import PostgresProcess  # noqa: E402

from tradpal_ray.stats.local_redis import free_port  # noqa: E402

DAY_MS = 86_400_000
START_MS = 1_704_067_200_000  # 2024-01-01
PATHS = {"trade_count": "/live/trades/count?status=closed", "daily_stats": "/live/stats"}
API_KEY = "bench-key"
PEER = {"source": "the trading bot's own report (not runnable here)", "speedup_min": 30, "speedup_max": 60}


def bulk_load(url: str, store: Path, fills: int) -> dict[str, Any]:
    """Create the ledger's schema and COPY ``fills`` fills (half entries, half exits) and their round trips."""
    import numpy as np
    import pandas as pd
    import psycopg

    from tradpal_ray.trading import open_ledger

    open_ledger(url, store).close()  # the schema, exactly as the ledger makes it
    trips = fills // 2
    rng = np.random.default_rng(0)
    trader = np.char.add("bot-", (np.arange(trips) % 20).astype(str))
    symbol = np.array([f"S{k}/USDT" for k in range(10)])[rng.integers(0, 10, trips)]
    entry_ms = START_MS + np.sort(rng.integers(0, 365 * DAY_MS, trips))
    exit_ms = entry_ms + rng.integers(60_000, 2 * DAY_MS, trips)
    units = np.round(rng.uniform(0.01, 2.0, trips), 4)
    entry_px = rng.uniform(50, 150, trips)
    exit_px = entry_px * np.exp(rng.normal(0, 0.02, trips))
    entry_fee, exit_fee = units * entry_px * 0.001, units * exit_px * 0.001
    pnl = units * (exit_px - entry_px) - entry_fee - exit_fee
    cid = np.char.add("c", np.arange(trips).astype(str))
    fills_frame = pd.DataFrame({
        "fill_id": np.concatenate([np.char.add(cid, "e:0"), np.char.add(cid, "x:0")]),
        "trader": np.concatenate([trader, trader]), "client_order_id": np.concatenate([np.char.add(cid, "e"), np.char.add(cid, "x")]),
        "symbol": np.concatenate([symbol, symbol]), "side": ["buy"] * trips + ["sell"] * trips,
        "units": np.concatenate([units, units]), "price": np.concatenate([entry_px, exit_px]),
        "fee": np.concatenate([entry_fee, exit_fee]), "time_ms": np.concatenate([entry_ms, exit_ms]),
    })
    trades_frame = pd.DataFrame({
        "trader": trader, "symbol": symbol, "entry_time_ms": entry_ms, "exit_time_ms": exit_ms, "entry_price": entry_px,
        "exit_price": exit_px, "units": units, "entry_fee": entry_fee, "exit_fee": exit_fee, "pnl": pnl,
        "return_pct": pnl / (units * entry_px) * 100, "exit_reason": "signal",
    })
    started = time.perf_counter()
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        for table, frame in (("fills", fills_frame), ("trades", trades_frame)):
            data = io.BytesIO()
            frame.to_csv(data, index=False, header=False)
            with connection.cursor().copy(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(data.getvalue())
        connection.commit()
        connection.autocommit = True
        connection.execute("VACUUM ANALYZE fills")
        connection.execute("VACUUM ANALYZE trades")
        counted = connection.execute("SELECT count(*) FROM fills").fetchone()[0]
    assert counted == fills, counted
    return {"fills": int(counted), "round_trips": trips, "load_s": round(time.perf_counter() - started, 1)}


def bump(redis_port: int, identity: str) -> Callable[[], None]:
    """What a fill does to the cache: INCR the ledger's trades generation."""
    import redis

    from tradpal_ray.trading._changes import generation_key, live_prefix

    client = redis.Redis(port=redis_port)
    key = live_prefix(identity) + generation_key("trades")
    return lambda: client.incr(key)


def over_http(port: int, path: str, invalidate: Callable[[], None]) -> dict[str, float]:
    """One keep-alive connection: 15 misses (generation bumped first), then 300 hits."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"X-API-Key": API_KEY}
    misses = []
    for _ in range(15):
        invalidate()
        misses.append(timed_get(conn, path, headers))
    hits = [timed_get(conn, path, headers) for _ in range(300)]
    conn.close()
    return speedup(hits, misses)


def in_process(store: Path, redis_url: str, db_url: str, invalidate: Callable[[], None]) -> dict[str, dict[str, float]]:
    """The same through StatsService called directly: what the cache saves without HTTP and Serve."""
    from tradpal_ray.stats import StatsService

    async def measure() -> dict[str, dict[str, float]]:
        service = StatsService(store, redis_url, db_url=db_url, warm_up=False)
        out = {}
        for name, call in (("trade_count", lambda: service.live_trade_counts("closed")), ("daily_stats", service.live_stats)):
            async def timed(call: Callable[[], Any] = call) -> float:
                started = time.perf_counter()
                await call()
                return (time.perf_counter() - started) * 1000

            misses = []
            for _ in range(15):
                invalidate()
                misses.append(await timed())
            out[name] = speedup([await timed() for _ in range(300)], misses)
        await service.close()
        return out

    return asyncio.run(measure())


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fills", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tradpal-bench-ledger-"))
    store = workdir / "store"
    store.mkdir()
    postgres = PostgresProcess().start()
    db_url = postgres.create_database()
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs = [subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(redis_port), "--bind",
                               "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)]
    os.environ.update({"TRADPAL_DB_URL": db_url, "TRADPAL_LOG_LEVEL": "WARNING", "TRADPAL_API_KEYS": API_KEY,
                       "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",  # as benchmarks/serve.py
                       "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "1"})
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from tradpal_ray.serve import app
    from tradpal_ray.trading import ledger_identity

    try:
        loaded = bulk_load(db_url, store, opts.fills)
        invalidate = bump(redis_port, ledger_identity(db_url, store))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        serve.run(app({"store": str(store), "redis_url": redis_url, "num_cpus": 0}), name="stats", route_prefix="/",
                  logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False))
        rounds = []
        for _ in range(opts.rounds):
            rounds.append({
                "http_via_serve": {name: over_http(serve_port, path, invalidate) for name, path in PATHS.items()},
                "in_process": in_process(store, redis_url, db_url, invalidate),
            })
        summary = {
            where: {name: spread([r[where][name]["speedup"] for r in rounds]) for name in PATHS}
            for where in ("http_via_serve", "in_process")
        }
        result = {
            "benchmark": "ledger", **loaded, "endpoints": PATHS, "rounds": rounds, "speedup": summary, "peer": PEER,
            "targets": {f"{name}_hit_at_least_20x_faster_via_serve": summary["http_via_serve"][name]["median"] >= 20
                        for name in PATHS},
        }
    finally:
        stop_serve_and(procs)
        postgres.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))  # after Ray's shutdown chatter, so it is the last line of stdout


if __name__ == "__main__":
    main()
