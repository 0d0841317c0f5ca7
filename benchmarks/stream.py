"""Live feed benchmark: ingest rate, end-to-end latency and memory of one feed actor, next to bare readers.

* Ingest (messages/s): one FeedActor (native connector, then ccxt connector) against a bare
  aiohttp + orjson reader and a bare ccxt.pro ``watch_trades`` loop, all reading the same
  stream: the simulator's own trade frames (``wire.trade_frames`` of its synthetic market,
  unique ids) replayed at line rate by a server in its own process, because the live
  simulator cannot emit faster than ~60k frames/s here and would measure itself. Rates per
  wall second and per CPU second of the reading process (the actor's includes Ray's threads).
  The bare readers run on uvloop, the event loop Ray gives async actors.
* Memory: resident set of the native actor over 1M messages, after a warm-up of at least
  250k messages and 3 seconds: the object-store pages the actor writes its batches into
  count in its RSS and grow until they plateau at the ring's bytes plus about one second of
  publishing (the raylet frees unreferenced objects in 1 s batches), about 2 s in. RSS is
  the peak of samples over a quarter second at each end (batch building makes it swing by
  a few MB between flushes); private (anonymous) and object-store (shared) parts are shown.
* Latency: the live simulator at speed 1 (its trade ``E`` is wall time) at 1k and 10k trades/s;
  receipt time in a consumer (driver process, batches pulled from the object store) minus ``E``.

Prints one JSON object; about 2 minutes on 2 cores.

    .venv/bin/python benchmarks/stream.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
import orjson
import uvloop
from _serving import send_paced, serve_forever, spawn

SYMBOL = "BTC/USDT"
FRAMES = 4_000_000
COUNTED = 1_000_000
"""Messages timed for the bare aiohttp reader and the native actor (after a 50k warm-up)."""
WARM_UP_FOR_MEMORY = (250_000, 3.0)
"""Messages and seconds the native actor streams before its memory window opens."""


# -- the replay server (own process) -------------------------------------------------------------


def _serve_replay(ports: Any) -> None:
    """REST enough for ccxt (exchangeInfo, empty klines) + a WS blasting simulator trade frames."""
    from aiohttp import WSMsgType, web

    from tradpal_ray.sim import SyntheticSource, wire
    from tradpal_ray.sim.market import Trades
    from tradpal_ray.sim.synthetic import WalkParams

    source = SyntheticSource([SYMBOL], params=WalkParams(trades_per_minute=100_000))
    spec = source.specs()[SYMBOL]
    parts, total, open_ms = [], 0, source.genesis_ms
    while total < FRAMES:
        trades = source.bar_trades(SYMBOL, open_ms)
        parts.append(trades)
        total += len(trades)
        open_ms += 60_000
    frames = wire.trade_frames(spec, Trades.concat(parts))[:FRAMES]

    async def info(request: web.Request) -> web.Response:
        body = {"timezone": "UTC", "serverTime": 0, "rateLimits": [], "symbols": [wire.exchange_symbol(spec)]}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def klines(request: web.Request) -> web.Response:
        return web.Response(body=b"[]", content_type="application/json")

    async def server_time(request: web.Request) -> web.Response:  # the feeds read the exchange's clock
        return web.Response(body=orjson.dumps({"serverTime": int(time.time() * 1000)}), content_type="application/json")

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        msg = await ws.receive()
        params = orjson.loads(msg.data).get("params", []) if msg.type is WSMsgType.TEXT else []
        if not any(p.endswith("@trade") for p in params):
            async for _ in ws:  # a kline-only connection (ccxt's): stays quiet
                pass
            return ws
        try:
            await send_paced(ws, request.transport, frames)
            async for _ in ws:
                pass
        except (ConnectionError, RuntimeError):
            pass
        return ws

    serve_forever([("/api/v3/exchangeInfo", info), ("/api/v3/klines", klines), ("/api/v3/time", server_time),
                   ("/stream/ws", stream), ("/stream/ws/{tail:.*}", stream)], ports)


def _serve_simulator(ports: Any, trades_per_minute: float) -> None:
    from tradpal_ray.sim import ExchangeSimulator
    from tradpal_ray.sim.runner import new_event_loop

    async def main() -> None:
        sim = ExchangeSimulator([SYMBOL], speed=1.0, trades_per_minute=trades_per_minute, emit_interval=0.005)
        await sim.start()
        ports.put(sim.port)
        await asyncio.Event().wait()

    new_event_loop().run_until_complete(main())


def _spawn(target: Any, *args: Any) -> tuple[Any, str]:
    proc, port = spawn(target, *args)
    return proc, f"http://127.0.0.1:{port}"


# -- bare peers (own process each) -------------------------------------------------------------------


def _bare_aiohttp(url: str, seconds: float, out: Any) -> None:
    import aiohttp
    from aiohttp import WSMsgType

    async def main() -> dict[str, float]:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url.replace("http", "ws") + "/stream/ws", max_msg_size=0)
            await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}).decode())
            loads, receive = orjson.loads, ws.receive
            for _ in range(50_000):  # warm-up
                loads((await receive()).data)
            n, wall, cpu = 0, time.perf_counter(), time.process_time()
            while n < COUNTED:  # a fixed count: the replayed stream is finite
                msg = await receive()
                if msg.type is not WSMsgType.TEXT:
                    break
                loads(msg.data)
                n += 1
            return {"messages": n, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}

    out.put(uvloop.run(main()))


def _bare_ccxt(url: str, seconds: float, out: Any) -> None:
    from tradpal_ray.market.exchange import create_exchange

    async def main() -> dict[str, float]:
        ex = create_exchange("binance", url=url, pro=True)
        try:
            await ex.load_markets()
            seen = 0
            while seen < 50_000:  # warm-up
                seen += len(await ex.watch_trades(SYMBOL))
            n, wall, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - wall < seconds:
                n += len(await ex.watch_trades(SYMBOL))
            return {"messages": n, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        finally:
            await ex.close()

    out.put(uvloop.run(main()))


def _run_peer(target: Any, url: str, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(url, seconds, out), daemon=True)
    proc.start()
    try:
        return _rates(out.get(timeout=seconds + 120))
    finally:
        proc.join(10)


def _rates(run: dict[str, float]) -> dict[str, float]:
    return {"messages": int(run["messages"]), "msg_per_s": round(run["messages"] / run["wall_s"]),
            "msg_per_cpu_s": round(run["messages"] / max(run["cpu_s"], 1e-9))}


# -- the feed actor ------------------------------------------------------------------------------------


def _rss(pid: int) -> dict[str, float]:
    """Resident set of ``pid`` in MB: total, private (anonymous) and shared memory (the object store's pages)."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssShmem"):
                fields[name] = int(value.split()[0]) / 1024
    return {"rss_mb": fields["VmRSS"], "private_mb": fields["RssAnon"], "object_store_pages_mb": fields["RssShmem"]}


def _peak_rss(pid: int, seconds: float = 0.25) -> dict[str, float]:
    """The sample with the highest RSS over ``seconds`` (one every 5 ms), rounded."""
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(_rss(pid))
        time.sleep(0.005)
    return {key: round(value, 1) for key, value in max(samples, key=lambda s: s["rss_mb"]).items()}


def _actor_ingest(url: str, connector: str, seconds: float, memory: bool) -> dict[str, Any]:
    """One feed actor on the replay stream: its rate (and RSS growth over 1M messages)."""
    import psutil
    import ray

    from tradpal_ray.feeds import FeedConfig, start_feed

    config = FeedConfig(symbols=(SYMBOL,), timeframes=("1m",), url=url, connector=connector, shard=f"bench-{connector}",
                        stale_after=1e6)
    handle = start_feed(config, max_restarts=0)
    try:
        ray.get(handle.ready.remote())
        streaming_since = time.monotonic()
        pid = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))
        proc = psutil.Process(pid)

        def trades() -> int:
            status = ray.get(handle.status.remote())
            return next(s["messages"] for s in status["streams"] if s["stream"] == "trade")

        def wait_until(count: int, timeout: float = 120.0) -> None:
            deadline = time.monotonic() + timeout
            while trades() < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{connector} actor stuck below {count} messages")
                time.sleep(0.05)

        wait_until(50_000 if connector == "native" else 20_000)
        rss_early = _rss(pid)["rss_mb"]
        if memory:  # let the working set (batch buffers, ring, object-store pages) reach steady state first
            wait_until(WARM_UP_FOR_MEMORY[0])
            time.sleep(max(0.0, streaming_since + WARM_UP_FOR_MEMORY[1] - time.monotonic()))
            start = _peak_rss(pid)
        n0, cpu0, wall0 = trades(), sum(proc.cpu_times()[:2]), time.perf_counter()
        if memory:  # native: a fixed count (1M, also the memory window); ccxt sees too few of the frames for that
            wait_until(n0 + COUNTED)
        else:
            time.sleep(seconds)
        n1, cpu1, wall1 = trades(), sum(proc.cpu_times()[:2]), time.perf_counter()
        result: dict[str, Any] = _rates({"messages": n1 - n0, "wall_s": wall1 - wall0, "cpu_s": cpu1 - cpu0})
        if memory:
            end = _peak_rss(pid)
            result["memory"] = {"messages": n1 - n0, "warm_up_messages": n0, "rss_after_50k_mb": round(rss_early, 1),
                                "start": start, "end": end, "growth_mb": round(end["rss_mb"] - start["rss_mb"], 1)}
        return result
    finally:
        ray.get(handle.stop.remote())
        ray.kill(handle)


def _latency(url: str, connector: str, seconds: float) -> dict[str, Any]:
    """p50/p99 of consumer receipt minus the simulator's trade event time, through the object store."""
    import ray

    from tradpal_ray.feeds import FeedConfig, start_feed, subscribe_trades

    config = FeedConfig(symbols=(SYMBOL,), timeframes=("1m",), url=url, connector=connector, shard=f"lat-{connector}")
    handle = start_feed(config, max_restarts=0)

    async def consume() -> tuple[list[np.ndarray], int]:
        lat: list[np.ndarray] = []
        count = 0
        sub = subscribe_trades(handle, SYMBOL, poll_timeout=1.0)
        started = time.monotonic()
        async for batch in sub:
            now_ms = time.time() * 1000.0
            if time.monotonic() - started > 1.0:  # warm-up
                lat.append(now_ms - batch.column("event_time").cast("int64").to_numpy())
                count += batch.num_rows
            if time.monotonic() - started > 1.0 + seconds:
                return lat, count

    try:
        ray.get(handle.ready.remote())
        lat, count = asyncio.run(consume())
    finally:
        ray.get(handle.stop.remote())
        ray.kill(handle)
    values = np.concatenate(lat)
    return {"messages": count, "msg_per_s": round(count / seconds), "p50_ms": round(float(np.percentile(values, 50)), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1), "max_ms": round(float(values.max()), 1)}


def main() -> None:
    """Run every measurement and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per reader")
    args = parser.parse_args()
    import ray

    os.environ.setdefault("TRADPAL_LOG_LEVEL", "WARNING")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    procs = []
    try:
        replay, url = _spawn(_serve_replay)
        procs.append(replay)
        ingest = {
            "bare_aiohttp_orjson": _run_peer(_bare_aiohttp, url, args.seconds),
            "native_actor": _actor_ingest(url, "native", args.seconds, memory=True),
            "bare_ccxt_pro": _run_peer(_bare_ccxt, url, args.seconds),
            "ccxt_actor": _actor_ingest(url, "ccxt", args.seconds, memory=False),
        }
        replay.terminate()
        latency = {}
        for per_s in (1_000, 10_000):
            sim, sim_url = _spawn(_serve_simulator, per_s * 60.0)
            procs.append(sim)
            latency[f"{per_s}_per_s"] = {c: _latency(sim_url, c, args.seconds) for c in ("native", "ccxt")}
            sim.terminate()
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(10)
        ray.shutdown()
    native, bare = ingest["native_actor"], ingest["bare_aiohttp_orjson"]
    ccxt_actor, bare_ccxt = ingest["ccxt_actor"], ingest["bare_ccxt_pro"]
    print(json.dumps({
        "benchmark": "feed_stream",
        "ingest": ingest,
        "ratios": {
            "native_vs_bare_aiohttp_wall": round(native["msg_per_s"] / bare["msg_per_s"], 3),
            "native_vs_bare_aiohttp_cpu": round(native["msg_per_cpu_s"] / bare["msg_per_cpu_s"], 3),
            "ccxt_actor_vs_bare_ccxt_wall": round(ccxt_actor["msg_per_s"] / bare_ccxt["msg_per_s"], 3),
            "ccxt_actor_vs_bare_ccxt_cpu": round(ccxt_actor["msg_per_cpu_s"] / bare_ccxt["msg_per_cpu_s"], 3),
        },
        "latency_sim_to_consumer": latency,
        "memory_native_actor_1m_messages": native.get("memory"),
        "targets": {"native_msg_per_s": 150_000, "native_vs_bare": 0.5, "ccxt_vs_bare_ccxt": 0.9,
                    "p99_ms_at_10k_per_s": 50, "rss_growth_mb": 10},
    }))


if __name__ == "__main__":
    main()
