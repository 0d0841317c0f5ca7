"""StatsService over a real redis-server: hits, invalidation, single-flight, Redis failures."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pandas as pd
import pyarrow as pa
import pytest
from redis_fixtures import run_id

from tradpal_ray.errors import StoreError
from tradpal_ray.log import redact
from tradpal_ray.stats import NotFound, StatsService
from tradpal_ray.stats.local_redis import RedisProcess, free_port
from tradpal_ray.stats.queries import TRADES_SCHEMA, StatsQueries
from tradpal_ray.stats.service import conform_table, decode_table, encode_table, hide_paths, schema_fits

R1, R2 = run_id(1), run_id(2)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def started(store: Path, redis_url: str | None, **options: Any) -> StatsService:
    options.setdefault("warm_up", False)
    service = StatsService(store, redis_url, metrics=None, **options)
    await service.start()
    return service


async def until(condition: Callable[[], Awaitable[Any]], timeout: float = 5.0, what: str = "condition") -> Any:
    """Await ``condition()`` until truthy, polling; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := await condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def outcomes(service: StatsService, kind: str) -> dict[str, int]:
    return orjson.loads(service.cache_stats())["by_kind"].get(kind, {})


def test_miss_then_hit_returns_the_stored_bytes(store_root: Path, make_run: Callable[..., Any], redis_url: str,
                                                redis_server: RedisProcess) -> None:
    make_run(store_root, R1)

    async def scenario() -> None:
        service = await started(store_root, redis_url)
        try:
            first = await service.leaderboard(R1, "return_pct", 3)
            second = await service.leaderboard(R1, "return_pct", 3)
            assert first == second and len(orjson.loads(first)["results"]) == 3
            assert outcomes(service, "leaderboard") == {"miss": 1, "hit": 1}
            with redis_server.client() as client:
                [key] = client.keys("tradpal:stats:*:leaderboard:*")
                assert client.get(key) == first and 0 < client.ttl(key) <= service.ttls["leaderboard"]
                [table_key] = client.keys("tradpal:stats:*:results:*")
                assert client.get(table_key)[:4] == b"\xff\xff\xff\xff"  # an Arrow IPC stream, not JSON
            other = await service.leaderboard(R1, "return_pct", 4)  # new key, shared results table
            assert len(orjson.loads(other)["results"]) == 4
            assert outcomes(service, "results") == {"miss": 1, "hit": 1}
            stats = orjson.loads(service.cache_stats())
            assert stats["redis"]["available"] and stats["latency"]["redis_get"]["count"] >= 3
            with pytest.raises(NotFound):
                await service.leaderboard("nope")
        finally:
            await service.close()

    run(scenario())


def test_a_new_or_updated_run_is_visible_within_a_second(store_root: Path, make_run: Callable[..., Any], redis_url: str) -> None:
    make_run(store_root, R1)

    async def scenario() -> None:
        service = await started(store_root, redis_url)
        try:
            assert [r["run_id"] for r in orjson.loads(await service.runs())] == [R1]
            assert orjson.loads(await service.runs()) and outcomes(service, "runs")["hit"] == 1
            await asyncio.to_thread(make_run, store_root, R2, created_at="2025-01-01T00:00:00+00:00", seed=5)
            landed = time.monotonic()

            async def visible() -> bool:
                return [r["run_id"] for r in orjson.loads(await service.runs())] == [R2, R1]

            await until(visible, timeout=1.0, what="the new run in /runs")
            assert time.monotonic() - landed < 1.0
            trades_before = orjson.loads(await service.trade_counts("all"))["all"]
            assert trades_before > 0
        finally:
            await service.close()

    run(scenario())


def test_warm_up_fills_the_hot_keys_at_start(store_root: Path, make_run: Callable[..., Any], redis_url: str) -> None:
    make_run(store_root, R1)

    async def scenario() -> None:
        service = await started(store_root, redis_url, warm_up=True)
        try:
            queries = {"leaderboard": lambda: service.leaderboard(R1), "run": lambda: service.run(R1),
                       "trade_stats": service.trade_stats, "runs": service.runs, "coverage": service.coverage}
            for kind, query in queries.items():
                async def hit(kind: str = kind, query: Callable[[], Awaitable[bytes]] = query) -> bool:
                    await query()
                    return bool(outcomes(service, kind).get("hit"))

                await until(hit, what=f"a {kind} hit")
                assert outcomes(service, kind)["miss"] == 1  # computed once, by the warm-up
        finally:
            await service.close()

    run(scenario())


def test_fifty_concurrent_cold_requests_compute_once(store_root: Path, make_run: Callable[..., Any], redis_url: str) -> None:
    make_run(store_root, R1)

    async def scenario() -> None:
        service = await started(store_root, redis_url)
        try:
            payloads = await asyncio.gather(*(service.leaderboard(R1, "sortino", 5) for _ in range(50)))
            assert len(set(payloads)) == 1
            counts = outcomes(service, "leaderboard")
            assert counts.get("miss") == 1 and sum(counts.values()) == 50
            latency = orjson.loads(service.cache_stats())["latency"]
            assert latency["compute_leaderboard"]["count"] == 1 and latency["compute_results"]["count"] == 1
        finally:
            await service.close()

    run(scenario())


def test_redis_killed_then_restarted(store_root: Path, make_run: Callable[..., Any],
                                     make_redis: Callable[..., RedisProcess]) -> None:
    make_run(store_root, R1)
    server = make_redis()

    async def scenario() -> None:
        service = await started(store_root, server.url, timeout=0.2, retry_after=0.2)
        try:
            expected = await service.leaderboard(R1)
            assert await service.leaderboard(R1) == expected and outcomes(service, "leaderboard")["hit"] == 1
            await asyncio.to_thread(server.kill)
            for _ in range(5):  # answered from the stores, never an error
                assert await service.leaderboard(R1) == expected
                assert orjson.loads(await service.trade_stats())["closed"] > 0
            stats = orjson.loads(service.cache_stats())
            assert stats["degraded"] >= 5 and stats["errors"] and not stats["redis"]["available"]
            assert (await service.readiness())["redis"] is False
            await asyncio.to_thread(server.start)  # same port

            async def hit_again() -> bool:
                before = outcomes(service, "leaderboard").get("hit", 0)
                await service.leaderboard(R1)
                return outcomes(service, "leaderboard").get("hit", 0) > before

            await until(hit_again, timeout=5.0, what="cache hits after Redis came back")
            assert (await service.readiness())["ready"] is True
        finally:
            await service.close()

    run(scenario())


def test_slow_redis_is_bypassed_within_the_timeout(store_root: Path, make_run: Callable[..., Any],
                                                   make_redis: Callable[..., RedisProcess]) -> None:
    make_run(store_root, R1)
    server = make_redis()

    async def scenario() -> None:
        service = await started(store_root, server.url, timeout=0.1, retry_after=5.0)
        try:
            expected = await service.runs()
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)  # frozen: connections open, no replies
            try:
                before = time.perf_counter()
                assert await service.runs() == expected  # one timeout (0.1 s), then from the store
                assert time.perf_counter() - before < 1.0 and not service.cache.available
                before = time.perf_counter()
                assert await service.runs() == expected  # in the back-off: Redis skipped
                assert time.perf_counter() - before < 0.1
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert orjson.loads(service.cache_stats())["errors"] == {"get": 1}
        finally:
            await service.close()

    run(scenario())


def test_a_corrupt_cached_value_is_a_miss(store_root: Path, make_run: Callable[..., Any], redis_url: str,
                                          redis_server: RedisProcess) -> None:
    make_run(store_root, R1)

    async def scenario() -> None:
        service = await started(store_root, redis_url)
        try:
            good_board, good_runs = await service.leaderboard(R1), await service.runs()
            with redis_server.client() as client:
                for key in client.keys("tradpal:stats:*"):
                    client.set(key, b"\x80\x04not json, not arrow")  # e.g. a pickle header
            assert await service.leaderboard(R1) == good_board and await service.runs() == good_runs
            assert outcomes(service, "leaderboard")["invalid"] == 1 and outcomes(service, "runs")["invalid"] == 1
            with redis_server.client() as client:
                [key] = client.keys("tradpal:stats:*:runs:*")
                assert client.get(key) == good_runs  # repaired
        finally:
            await service.close()

    run(scenario())


def test_password_urls_work_and_never_reach_logs_or_stats(store_root: Path, make_run: Callable[..., Any],
                                                          make_redis: Callable[..., RedisProcess], tmp_path: Path) -> None:
    make_run(store_root, R1)
    server = make_redis(password="pw-Sup3r-secret")

    async def scenario() -> None:
        service = await started(store_root, server.url)
        try:
            await service.runs()
            await service.runs()
            stats = service.cache_stats()
            assert outcomes(service, "runs")["hit"] == 1 and b"pw-Sup3r-secret" not in stats and b":***@" in stats
        finally:
            await service.close()

    run(scenario())
    # A separate process with logging at INFO: a wrong port makes the cache log that Redis is down.
    dead = f"rediss://:pw-Sup3r-secret@127.0.0.1:{free_port()}/0?ssl_password=tls-Key-pass&ssl_cert_reqs=none"
    script = (
        "import asyncio, sys\n"
        "from tradpal_ray.stats import StatsService\n"
        "async def main():\n"
        "    s = StatsService(sys.argv[1], sys.argv[2], warm_runs=0)\n"
        "    await s.start(); await s.runs(); await s.readiness(); sys.stdout.buffer.write(s.cache_stats())\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "TRADPAL_LOG_LEVEL": "INFO"}
    out = subprocess.run([sys.executable, "-c", script, str(store_root), dead], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    assert "stats.cache.down" in out.stderr and ":***@127.0.0.1" in out.stderr and "ssl_password=***" in out.stderr
    assert "ssl_password=***&ssl_cert_reqs=none" in orjson.loads(out.stdout)["redis"]["url"]  # /cache/stats
    assert "pw-Sup3r-secret" not in out.stderr + out.stdout and "tls-Key-pass" not in out.stderr + out.stdout


def test_every_secret_url_parameter_is_masked() -> None:
    url = ("rediss://u:pw@cache:6380/0?ssl_password=a1&ssl_ca_certs=/etc/ca.pem&token=a2&Secret=a3&api_key=a4"
           "&access_key=a5;auth=a6&db=1&credentials=a7&X-Amz-Signature=a8&passwd=a9#frag")
    masked = redact(f"error connecting to {url}: refused")
    assert not re.search(r"a[1-9]\b|:pw@", masked), masked
    assert "ssl_ca_certs=/etc/ca.pem" in masked and "&db=1&" in masked and "u:***@cache:6380/0?ssl_password=***" in masked
    assert redact("redis://cache:6379/0?db=2&ssl=true") == "redis://cache:6379/0?db=2&ssl=true"


def test_store_errors_reach_clients_without_paths(tmp_path: Path) -> None:
    store = tmp_path / "private-dir" / "store"
    store.mkdir(parents=True)
    (store / "runs").write_text("not a directory")

    async def scenario() -> None:
        service = await started(store, None)
        try:
            state = await service.readiness()
            assert not state["store"] and "<store>/runs" in state["store_error"], state
            assert "private-dir" not in state["store_error"] and str(tmp_path) not in state["store_error"]
        finally:
            await service.close()

    run(scenario())
    roots = (str(store), "s3://bucket/prefix", "bucket/prefix")
    assert hide_paths(f"cannot read {store}/runs/x/manifest.json", roots) == "cannot read <store>/runs/x/manifest.json"
    assert hide_paths("cannot read s3://bucket/prefix/runs/x", roots) == "cannot read <store>/runs/x"
    assert hide_paths("open '/etc/tradpal/other.parquet' failed: BTC/USDT 1h", roots) == \
        "open '<path>' failed: BTC/USDT 1h"


def test_tls_redis(store_root: Path, make_run: Callable[..., Any], make_redis: Callable[..., RedisProcess]) -> None:
    make_run(store_root, R1)
    server = make_redis(tls=True, password="tls-pw")
    assert server.url.startswith("rediss://")

    async def scenario() -> None:
        # A TLS handshake on a loaded machine can take longer than the 100 ms default: this test is about TLS.
        service = await started(store_root, server.url, timeout=2.0)
        try:
            assert await service.runs() == await service.runs()
            assert outcomes(service, "runs") == {"miss": 1, "hit": 1} and (await service.readiness())["ready"]
        finally:
            await service.close()

    run(scenario())


def test_without_redis_at_all_everything_is_answered(store_root: Path, make_run: Callable[..., Any]) -> None:
    make_run(store_root, R1)

    async def scenario() -> None:
        service = await started(store_root, None)
        try:
            assert orjson.loads(await service.run(R1))["run_id"] == R1
            assert outcomes(service, "run") == {"degraded": 1}
            assert (await service.readiness()) == {"ready": False, "store": True, "redis": False}
        finally:
            await service.close()

    run(scenario())


def test_a_cached_table_of_another_schema_is_a_miss(store_root: Path, make_run: Callable[..., Any], redis_url: str,
                                                    redis_server: RedisProcess) -> None:
    """A valid Arrow table with the wrong columns (or types) under a results or trades key used to
    give 500s until it expired: now it is an ``invalid`` miss and the key is repaired."""
    make_run(store_root, R1)
    results_schema = StatsQueries(store_root).results_schema(R1)
    queries = {"run": lambda s: s.run(R1), "leaderboard": lambda s: s.leaderboard(R1),
               "trade_counts": lambda s: s.trade_counts(), "trade_stats": lambda s: s.trade_stats()}
    impostors = [pa.table({"unrelated": [1, 2]}),
                 results_schema.remove(results_schema.get_field_index("sharpe")).empty_table(),  # a column short
                 pa.table({name: pa.array([], pa.int32()) for name in {*results_schema.names, *TRADES_SCHEMA.names}})]

    async def scenario() -> None:
        service = await started(store_root, redis_url)
        try:
            fresh = {kind: await query(service) for kind, query in queries.items()}
            for impostor in impostors:
                with redis_server.client() as client:
                    client.delete(*client.keys("tradpal:stats:*:run:*"), *client.keys("tradpal:stats:*:leaderboard:*"),
                                  *client.keys("tradpal:stats:*:trade_*"))  # the answers are recomputed from the tables
                    for key in client.keys("tradpal:stats:*:results:*") + client.keys("tradpal:stats:*:trades:*"):
                        client.set(key, encode_table(impostor))
                assert {kind: await query(service) for kind, query in queries.items()} == fresh
            assert outcomes(service, "results")["invalid"] == 3 and outcomes(service, "trades")["invalid"] == 3
            with redis_server.client() as client:
                [results_key] = client.keys("tradpal:stats:*:results:*")
                assert schema_fits(decode_table(client.get(results_key)).schema, results_schema)  # repaired
        finally:
            await service.close()

    run(scenario())


def test_schema_fits_and_conform_table() -> None:
    expected = pa.schema([("symbol", pa.string()), ("trades", pa.int64())])
    assert schema_fits(pa.schema([("x", pa.int8()), ("trades", pa.int64()), ("symbol", pa.string())]), expected)
    assert not schema_fits(pa.schema([("symbol", pa.string())]), expected)  # a column missing
    assert not schema_fits(pa.schema([("symbol", pa.large_string()), ("trades", pa.int64())]), expected)  # a type differs
    stored = pa.table({"symbol": pa.array(["BTC/USDT"]).dictionary_encode(), "trades": pa.array([3], pa.int32()),
                       "extra": [1.5]})
    conformed = conform_table(stored, expected)
    assert schema_fits(conformed.schema, expected) and conformed.column_names == ["symbol", "trades", "extra"]
    assert conformed.to_pylist() == [{"symbol": "BTC/USDT", "trades": 3, "extra": 1.5}]
    assert schema_fits(conform_table(pa.table({}), expected).schema, expected)  # a run without results yet
    with pytest.raises(StoreError, match="'trades'"):
        conform_table(pa.table({"symbol": ["BTC/USDT"]}), expected)
    with pytest.raises(StoreError, match="'trades'"):
        conform_table(pa.table({"symbol": ["BTC/USDT"], "trades": ["many"]}), expected)


def test_ready_names_a_damaged_candle_series_and_stays_ready(store_root: Path, redis_url: str) -> None:
    """Issue 11: one truncated candle file left /ready saying nothing while listings failed."""
    from tradpal_ray.market.schema import candles_table
    from tradpal_ray.market.store import CandleStore

    frame = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.0},
                         index=pd.date_range("2024-01-01", periods=12, freq="5min", tz="UTC", name="time"))
    CandleStore(store_root).write(candles_table(frame, exchange="binance", symbol="ETH/USDT", timeframe="5m"))
    (bad,) = store_root.glob("candles/exchange=binance/timeframe=5m/symbol=ETH-USDT/*/*.parquet")
    bad.write_bytes(bad.read_bytes()[:100])

    async def scenario() -> None:
        service = await started(store_root, redis_url)
        try:
            state = await service.readiness()
            assert state["ready"] and state["store"]
            [line] = state["damaged_series"]
            assert line.startswith("binance ETH/USDT 5m: ") and bad.name in line and str(store_root) not in line
        finally:
            await service.close()

    run(scenario())
