"""WebSocket throughput of the exchange simulator to one client, next to a trivial server's.

Ours: the simulator in its own process as a firehose (high trade rate at high speed), one
bare aiohttp client subscribed to ``btcusdt@trade`` counting frames. Peer (the ceiling): a
trivial aiohttp server in its own process replaying pre-encoded trade frames in a loop, read
by the same client. Prints one JSON object; runs in about 20 s.

    .venv/bin/python benchmarks/sim.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import orjson
from _serving import send_paced, serve_forever, spawn
from aiohttp import WSMsgType, web

SYMBOL = "BTC/USDT"
TRADES_PER_MINUTE = 60_000
SPEED = (
    600.0  # 600 simulated minutes of 60k trades per real minute: ~600k trades/s offered
)


def _serve_simulator(ports: Any) -> None:
    from tradpal_ray.sim import ExchangeSimulator
    from tradpal_ray.sim.runner import new_event_loop

    async def main() -> None:
        sim = ExchangeSimulator(
            [SYMBOL],
            speed=SPEED,
            trades_per_minute=TRADES_PER_MINUTE,
            start="2024-03-01",
        )
        await sim.start()
        ports.put(sim.port)
        await asyncio.Event().wait()

    new_event_loop().run_until_complete(main())


def _serve_replayer(ports: Any) -> None:
    """The ceiling: send the same pre-encoded frames forever, as fast as the socket takes them."""
    from tradpal_ray.sim import SyntheticSource, wire

    source = SyntheticSource([SYMBOL])
    frames = wire.trade_frames(
        source.specs()[SYMBOL], source.bar_trades(SYMBOL, source.genesis_ms)
    )
    frames = (frames * (10_000 // len(frames) + 1))[:10_000]

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the SUBSCRIBE frame
        try:
            while not ws.closed:
                await send_paced(ws, request.transport, frames)
        except (ConnectionError, RuntimeError):
            pass
        return ws

    serve_forever([("/stream/ws/{tail:.*}", stream)], ports)


async def _read_rate(
    port: int, seconds: float, warmup: float = 1.0
) -> dict[str, float]:
    """Messages/s one bare aiohttp client receives (after a warm-up), and a parse check."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"ws://127.0.0.1:{port}/stream/ws/0", max_msg_size=0
        )
        await ws.send_str(
            orjson.dumps(
                {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}
            ).decode()
        )
        count, started, last = 0, None, None
        begin = time.monotonic()
        while True:
            msg = await ws.receive()
            if msg.type is not WSMsgType.TEXT:
                raise RuntimeError(f"stream ended: {msg.type}")
            now = time.monotonic()
            if started is None:
                if now - begin >= warmup:
                    started = now
                    last = msg.data
                continue
            count += 1
            if now - started >= seconds:
                last = msg.data
                break
        # no close handshake: the replayer never reads; leaving the session drops the socket
        event = orjson.loads(last)
        assert event.get("e") == "trade", event
        return {
            "messages_per_s": round(count / (time.monotonic() - started)),
            "messages": count,
        }


def _measure(target: Any, seconds: float) -> dict[str, float]:
    proc, port = spawn(target)
    try:
        return asyncio.run(_read_rate(port, seconds))
    finally:
        proc.terminate()
        proc.join(10)


def main() -> None:
    """Run both measurements and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="measurement window per server"
    )
    args = parser.parse_args()
    ours = _measure(_serve_simulator, args.seconds)
    ceiling = _measure(_serve_replayer, args.seconds)
    print(
        json.dumps(
            {
                "benchmark": "sim_ws_throughput_one_client",
                "simulator": {
                    **ours,
                    "trades_per_minute": TRADES_PER_MINUTE,
                    "speed": SPEED,
                },
                "ceiling_trivial_aiohttp_replayer": ceiling,
                "ratio": round(ours["messages_per_s"] / ceiling["messages_per_s"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
