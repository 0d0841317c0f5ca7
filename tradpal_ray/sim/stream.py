"""The live WebSocket side: the simulated clock, connections and the stream hub.

The hub runs one emission loop: every ``emit_interval`` seconds it takes the simulated time
window since the last tick and, per subscribed symbol, encodes the trades of that window
once, the kline events of every candle that closed in it (``"x": true``) and an update of
the forming candle if it traded. Frames go to per-connection queues drained by a writer
task, which is where stall, freeze, latency, duplicate and out-of-order faults bite.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from tradpal_ray.log import get_logger
from tradpal_ray.market.schema import TIMEFRAMES
from tradpal_ray.sim import wire
from tradpal_ray.sim.faults import FaultState
from tradpal_ray.sim.market import MarketView, SymbolSpec, floor_to

log = get_logger(__name__)

HIGH_WATER_BYTES = (
    4 << 20
)  # pause a writer while its socket buffer holds more than this
MAX_BACKLOG = (
    200_000  # frames queued for one connection before the emitter waits for it
)
SLOW_CONSUMER_S = 10.0  # ... and how long it waits before dropping that connection
CLOSE_MARGIN_S = 0.001
"""A tick due at a candle's close comes this long after it (on the simulated clock's rounding side)."""
MALFORMED_FRAME = '{"e":"kline","E":17000000000'  # truncated JSON


DEFAULT_RUN_S = 3600.0
"""A simulator started without a start time runs this long at full speed before it meets the wall clock."""


def start_for_run(speed: float, run_s: float = DEFAULT_RUN_S, now_ms: int | None = None) -> int:
    """The latest start (ms) at which a clock running ``speed`` times real time stays behind
    the wall clock for ``run_s`` seconds."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return now - int(run_s * max(speed - 1.0, 0.0) * 1000)


class SimClock:
    """Simulated time in ms: ``start_ms`` when started, running ``speed`` times real time, but
    never ahead of the wall clock: once it catches up it runs at real time. A simulated
    exchange dated in the future would store candles no real exchange has yet."""

    def __init__(self, start_ms: int, speed: float = 1.0) -> None:
        self.start_ms = int(start_ms)
        self.speed = float(speed)
        self._origin: float | None = None

    def start(self) -> None:
        """Let time run from now on."""
        self._origin = time.monotonic()

    def now_ms(self) -> int:
        """Current simulated time (``start_ms`` until started)."""
        if self._origin is None:
            return self.start_ms
        ahead = self.start_ms + int((time.monotonic() - self._origin) * self.speed * 1000.0)
        return min(ahead, int(time.time() * 1000))


@dataclass(frozen=True)
class Stream:
    """A parsed stream name: ``btcusdt@kline_1m``, ``btcusdt@trade``, ``btcusdt@aggTrade``."""

    name: str
    symbol: str
    kind: str  # "kline", "trade" or "aggTrade"
    timeframe: str | None = None


def parse_stream(name: Any, by_stream_id: dict[str, SymbolSpec]) -> Stream:
    """Parse a stream name; ValueError with Binance-like wording if it is not served."""
    if not isinstance(name, str) or "@" not in name:
        raise ValueError(f"Invalid stream name: {name!r}")
    sid, _, channel = name.partition("@")
    spec = by_stream_id.get(sid)
    if spec is None:
        raise ValueError(f"Invalid symbol in stream {name!r}")
    if channel in ("trade", "aggTrade"):
        return Stream(name, spec.symbol, channel)
    if channel.startswith("kline_") and channel[6:] in TIMEFRAMES:
        return Stream(name, spec.symbol, "kline", channel[6:])
    raise ValueError(
        f"Invalid stream {name!r}; served: <symbol>@trade, @aggTrade, @kline_<{'|'.join(TIMEFRAMES)}>"
    )


class Connection:
    """One WebSocket client: its subscriptions, outgoing queue and one-shot fault state."""

    def __init__(
        self, cid: int, ws: web.WebSocketResponse, request: web.Request, hub: StreamHub
    ) -> None:
        self.id = cid
        self.ws = ws
        self.path = request.path
        self.transport = request.transport
        self.hub = hub
        self.streams: set[str] = set()
        self.queue: deque[tuple[float, str, list[bytes]]] = deque()
        self.backlog = 0
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()
        self.duplicates = 0
        self.reorders = 0
        self.held: bytes | None = None
        self.unanswered_since: float | None = (
            None  # first ping not yet answered by a pong
        )
        self.closed = False

    def send(self, kind: str, frames: list[bytes]) -> None:
        """Queue frames of one type (dropped while the connection is stalled or frozen)."""
        if self.closed or not frames:
            return
        faults = self.hub.faults
        if faults.silenced(self.id):
            faults.served["freeze" if faults.frozen(self.id) else "stall"] += len(
                frames
            )
            return
        if kind == "kline" and (
            self.duplicates or self.reorders or self.held is not None
        ):
            frames = self._disorder(frames)
        self.queue.append((asyncio.get_running_loop().time(), kind, frames))
        self.backlog += len(frames)
        self.drained.clear()
        self.wake.set()

    def _disorder(self, frames: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        served = self.hub.faults.served
        for frame in frames:
            if (
                self.held is not None
            ):  # the newer event first, then the held-back older one
                out += [frame, self.held]
                self.held = None
                served["out_of_order"] += 1
            elif self.reorders:
                self.reorders -= 1
                self.held = frame
            else:
                out.append(frame)
                if self.duplicates:
                    self.duplicates -= 1
                    out.append(frame)
                    served["duplicate"] += 1
        return out

    async def write_loop(self) -> None:
        """Drain the queue to the socket, honouring latency and stall/freeze faults."""
        loop = asyncio.get_running_loop()
        faults, sent = self.hub.faults, self.hub.sent
        ws, text = self.ws, WSMsgType.TEXT
        try:
            while not self.closed:
                await self.wake.wait()
                self.wake.clear()
                while self.queue:
                    stamp, kind, frames = self.queue.popleft()
                    self.backlog -= len(frames)
                    delay = stamp + faults.latency(self.id) - loop.time()
                    if delay > 0:
                        faults.served["latency"] += 1
                        await asyncio.sleep(delay)
                    if faults.silenced(self.id):
                        continue
                    for frame in frames:
                        await ws.send_frame(frame, text)
                    sent[kind] += len(frames)
                    while (
                        self.transport is not None
                        and self.transport.get_write_buffer_size() > HIGH_WATER_BYTES
                    ):
                        await asyncio.sleep(
                            0.001
                        )  # the client reads slower than we write
                        if self.transport.is_closing():
                            return
                self.drained.set()
        except (ConnectionError, RuntimeError):
            pass  # the peer went away; the receive loop cleans up
        finally:
            self.drained.set()

    def abort(self) -> None:
        """Reset the TCP connection (SO_LINGER 0, then close: the peer sees RST)."""
        self.closed = True
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.transport.abort()


class StreamHub:
    """Connections, subscriptions and the emission loop of the combined stream endpoint."""

    def __init__(
        self,
        view: MarketView,
        clock: SimClock,
        faults: FaultState,
        *,
        ping_interval: float = 20.0,
        emit_interval: float = 0.05,
        max_window_ms: int = 3_600_000,
    ) -> None:
        self.view = view
        self.clock = clock
        self.faults = faults
        self.ping_interval = ping_interval
        self.emit_interval = emit_interval
        self.max_window_ms = max_window_ms
        self.by_stream_id = {spec.stream: spec for spec in view.specs.values()}
        self.connections: dict[int, Connection] = {}
        self.subscribers: dict[str, set[Connection]] = {}
        self.streams: dict[str, Stream] = {}
        self._new_stream = asyncio.Event()
        self.total_connections = 0
        self.sent: Counter[str] = Counter()
        self.cursor = {symbol: clock.now_ms() for symbol in view.specs}
        # Set by the server: WebSocket API requests (dotted methods such as
        # ``userDataStream.subscribe.signature``) and a hook on every new connection.
        self.api_handler: Callable[[Connection, dict[str, Any]], None] | None = None
        self.on_open: Callable[[Connection, web.Request], None] | None = None

    # -- connections -------------------------------------------------------------------------

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        """Handle one WebSocket connection until it closes."""
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        self.total_connections += 1
        conn = Connection(self.total_connections, ws, request, self)
        self.connections[conn.id] = conn
        if self.on_open is not None:
            self.on_open(conn, request)
        tasks = [
            asyncio.create_task(conn.write_loop()),
            asyncio.create_task(self._ping_loop(conn)),
        ]
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self.handle_text(conn, msg.data)
                elif msg.type is WSMsgType.PING:
                    if self.faults.frozen(conn.id):
                        self.faults.served["freeze"] += 1
                    else:
                        await ws.pong(msg.data)
                elif msg.type is WSMsgType.PONG:
                    conn.unanswered_since = None
                elif msg.type is WSMsgType.BINARY:
                    conn.send(
                        "error",
                        [wire.ws_error(None, "Binary frames are not supported")],
                    )
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._forget(conn)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ws

    def _forget(self, conn: Connection) -> None:
        conn.closed = True
        conn.drained.set()
        self.connections.pop(conn.id, None)
        for name in conn.streams:
            self._unsubscribe(conn, name)
        conn.streams.clear()

    async def _ping_loop(self, conn: Connection) -> None:
        """Ping every ``ping_interval``; drop a client that leaves pings unanswered for three intervals."""
        while not conn.closed:
            await asyncio.sleep(self.ping_interval)
            if self.faults.frozen(conn.id):
                conn.unanswered_since = None  # we sent nothing, so nothing is owed
                continue
            now = time.monotonic()
            if (
                conn.unanswered_since is not None
                and now - conn.unanswered_since > 3 * self.ping_interval + 1.0
            ):
                await conn.ws.close(code=1008, message=b"pong timeout")
                return
            await conn.ws.ping(b"sim")
            self.sent["ping"] += 1
            if conn.unanswered_since is None:
                conn.unanswered_since = now

    def targets(self, connection: int | None) -> list[Connection]:
        """The connections a fault aims at (all open ones for None)."""
        if connection is None:
            return list(self.connections.values())
        return [self.connections[connection]] if connection in self.connections else []

    # -- control frames ----------------------------------------------------------------------

    def handle_text(self, conn: Connection, data: str) -> None:
        """Answer one client frame: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS or an error."""
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError:
            conn.send("error", [wire.ws_error(None, f"Invalid JSON: {data[:80]!r}")])
            return
        if not isinstance(request, dict):
            conn.send(
                "error",
                [wire.ws_error(None, "Invalid request: expected a JSON object")],
            )
            return
        request_id, method, params = (
            request.get("id"),
            request.get("method"),
            request.get("params", []),
        )
        if self.api_handler is not None and isinstance(method, str) and "." in method:
            self.api_handler(conn, request)
            return
        if method == "LIST_SUBSCRIPTIONS":
            conn.send("result", [wire.ws_result(request_id, sorted(conn.streams))])
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            conn.send(
                "error", [wire.ws_error(request_id, f"Unknown method: {method!r}")]
            )
            return
        if not isinstance(params, list):
            conn.send(
                "error",
                [wire.ws_error(request_id, "Invalid request: params must be a list")],
            )
            return
        try:
            streams = [parse_stream(name, self.by_stream_id) for name in params]
        except ValueError as exc:
            conn.send("error", [wire.ws_error(request_id, str(exc))])
            return
        for stream in streams:
            if method == "SUBSCRIBE":
                self.streams[stream.name] = stream
                self._new_stream.set()  # its candles' closes may come before the emitter's next tick
                self.subscribers.setdefault(stream.name, set()).add(conn)
                conn.streams.add(stream.name)
            elif stream.name in conn.streams:
                self._unsubscribe(conn, stream.name)
                conn.streams.discard(stream.name)
        conn.send("result", [wire.ws_result(request_id)])

    def _unsubscribe(self, conn: Connection, name: str) -> None:
        subscribers = self.subscribers.get(name)
        if subscribers is not None:
            subscribers.discard(conn)
            if not subscribers:
                del self.subscribers[name]
                del self.streams[name]

    # -- emission ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Emit market events forever, one tick every ``emit_interval`` seconds."""
        while True:
            started = time.monotonic()
            try:
                self.tick(self.clock.now_ms())
            except Exception:
                log.exception("sim.tick_failed")
            await self._wait_for_slow_clients()
            try:
                await asyncio.wait_for(self._new_stream.wait(), self._until_next_tick(started))
            except TimeoutError:
                pass
            self._new_stream.clear()

    def _until_next_tick(self, started: float) -> float:
        """Seconds to the next tick: ``emit_interval`` after the one at ``started``, or sooner, just
        after the next close of a subscribed candle (Binance pushes the closing kline at the
        close, not with the candle's next periodic update)."""
        wait = max(0.0, self.emit_interval - (time.monotonic() - started))
        steps = {TIMEFRAMES[s.timeframe] for s in self.streams.values() if s.kind == "kline" and s.timeframe}
        if steps:
            now = self.clock.now_ms()
            close = min((now // step + 1) * step for step in steps)
            wait = min(wait, (close - now) / (1000.0 * max(self.clock.speed, 1.0)) + CLOSE_MARGIN_S)
        return wait

    async def _wait_for_slow_clients(self) -> None:
        for conn in [c for c in self.connections.values() if c.backlog > MAX_BACKLOG]:
            try:
                await asyncio.wait_for(conn.drained.wait(), SLOW_CONSUMER_S)
            except TimeoutError:
                log.warning(
                    "sim.slow_consumer", connection=conn.id, backlog=conn.backlog
                )
                await conn.ws.close(code=1008, message=b"slow consumer")

    def tick(self, now_ms: int) -> None:
        """Send everything that happened since the last tick, up to ``now_ms``."""
        by_symbol: dict[str, list[Stream]] = {}
        for stream in self.streams.values():
            by_symbol.setdefault(stream.symbol, []).append(stream)
        for symbol in self.cursor:
            start = self.cursor[symbol]
            streams = by_symbol.get(symbol)
            if not streams:
                self.cursor[symbol] = now_ms
                continue
            end = min(now_ms, start + self.max_window_ms)
            if end > start:
                self._emit(symbol, streams, start, end)
                self.cursor[symbol] = end

    def _emit(
        self, symbol: str, streams: Iterable[Stream], start: int, end: int
    ) -> None:
        """Events of ``symbol`` for the simulated window ``(start, end]``."""
        spec = self.view.spec(symbol)
        trades = self.view.trades(symbol, start + 1, end + 1, end)
        for stream in streams:
            if stream.kind == "trade":
                frames = wire.trade_frames(spec, trades)
            elif stream.kind == "aggTrade":
                frames = wire.agg_trade_frames(spec, trades)
            else:
                frames = self._kline_frames(
                    spec, stream.timeframe, trades.t, start, end
                )
            for conn in self.subscribers.get(stream.name, ()):
                conn.send(stream.kind, frames)

    def _kline_frames(
        self, spec: SymbolSpec, timeframe: str, trade_times: Any, start: int, end: int
    ) -> list[bytes]:
        period = TIMEFRAMES[timeframe]
        view = self.view
        # candles whose close time T = t + period - 1 falls in (start, end]: final events
        closed = view.candles(
            spec.symbol, timeframe, start - period + 2, end - period + 2, end
        )
        frames = wire.kline_frames(spec, timeframe, period, closed, True, end)
        forming_open = floor_to(end, period)
        if (
            forming_open + period - 1 > end
            and len(trade_times)
            and trade_times[-1] >= forming_open
        ):
            forming = view.candles(
                spec.symbol, timeframe, forming_open, forming_open + period, end
            )
            frames += wire.kline_frames(spec, timeframe, period, forming, False, end)
        return frames

    def stats(self) -> dict[str, Any]:
        """Connections, subscriptions and messages sent by type."""
        return {
            "connections": {
                "open": len(self.connections),
                "total": self.total_connections,
                "ids": sorted(self.connections),
            },
            "subscriptions": {
                "total": sum(len(c.streams) for c in self.connections.values()),
                "streams": {
                    name: len(conns) for name, conns in sorted(self.subscribers.items())
                },
            },
            "messages_sent": dict(self.sent),
        }

    async def close_all(self) -> None:
        """Close every connection cleanly (server shutdown)."""
        for conn in list(self.connections.values()):
            await conn.ws.close(code=1001, message=b"server shutdown")
