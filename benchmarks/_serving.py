"""Servers the benchmarks run in their own processes: start, pace WebSocket frames, report the port;
and timing of HTTP requests against them (cache hit vs miss)."""

from __future__ import annotations

import asyncio
import http.client
import multiprocessing as mp
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import WSMsgType, web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def serve_forever(routes: Iterable[tuple[str, Handler]], ports: Any) -> None:
    """Serve GET ``routes`` on a free 127.0.0.1 port in this process (uvloop); put the port on ``ports``."""
    from tradpal_ray.sim.runner import new_event_loop

    async def main() -> None:
        app = web.Application()
        for path, handler in routes:
            app.router.add_get(path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.put(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    new_event_loop().run_until_complete(main())


async def send_paced(ws: web.WebSocketResponse, transport: Any, frames: Iterable[bytes]) -> None:
    """Send pre-encoded text frames as fast as the socket takes them (at most 4 MiB buffered)."""
    for frame in frames:
        await ws.send_frame(frame, WSMsgType.TEXT)
        while transport.get_write_buffer_size() > 4 << 20:
            await asyncio.sleep(0.001)


def spawn(target: Callable[..., None], *args: Any) -> tuple[Any, int]:
    """Run ``target(ports, *args)`` in a fresh process; (the process, the port it reported)."""
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=target, args=(ports, *args), daemon=True)
    proc.start()
    return proc, ports.get(timeout=120)


def timed_get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> float:
    """Milliseconds of one GET over a keep-alive connection, body read; AssertionError unless 200."""
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status == 200, body[:300]
    return elapsed


def speedup(hits: list[float], misses: list[float]) -> dict[str, float]:
    """Median hit and miss latencies (ms) and how many times faster the hit is."""
    hit, miss = statistics.median(hits), statistics.median(misses)
    return {"hit_p50_ms": round(hit, 3), "miss_p50_ms": round(miss, 3), "speedup": round(miss / hit, 1)}


def stop_serve_and(procs: Iterable[Any]) -> None:
    """Shut Serve and Ray down, then terminate and reap ``procs`` (redis-server, peers)."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
