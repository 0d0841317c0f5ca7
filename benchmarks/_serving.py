"""Servers the benchmarks run in their own processes: start, pace WebSocket frames, report the port."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
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
