"""Exchange stream connectors behind one interface: ccxt.pro (any exchange) and native Binance.

A connector's :meth:`Connector.run` dials, subscribes and feeds every event to a
:class:`FeedSink` until the connection ends (it raises then; it never reconnects by itself:
the feed supervises). Both produce the same thing: candle updates
``(symbol, timeframe, t, o, h, l, c, v, closed, event_ms)`` and trades appended to the sink's
:class:`~tradpal_ray.feeds.publish.TradeBuffer`. The feed cancels ``run`` when it goes stale;
``run`` then tears the connection down so the next ``run`` starts clean.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
import ccxt
import orjson
from aiohttp import WSMsgType

from tradpal_ray.errors import ConfigError
from tradpal_ray.feeds.publish import TradeBuffer
from tradpal_ray.log import get_logger
from tradpal_ray.market.exchange import create_exchange, protocol

log = get_logger(__name__)


class ConnectionLost(Exception):
    """The exchange closed or dropped the stream."""


class FeedSink(Protocol):
    """Where a connector delivers events."""

    trades: TradeBuffer

    def kline(self, symbol: str, timeframe: str, t: int, o: float, h: float, l: float, c: float,
              v: float, closed: bool | None, event_ms: int) -> None:
        """One candle update; ``closed`` None when the stream does not say."""


class Connector(Protocol):
    """One exchange stream connection (re-dialled by calling :meth:`run` again)."""

    name: str
    exchange_times: bool
    """Whether candle updates carry the exchange's event time (else the receipt time)."""
    last_message: float
    """Monotonic time of the last frame (or of the dial): what the staleness watchdog checks."""
    received: int
    """Data events received since the current :meth:`run` started."""
    malformed: int

    async def run(self, sink: FeedSink) -> None:
        """Dial, subscribe and deliver events until the connection ends (raises)."""

    async def close(self) -> None:
        """Release every resource."""


TRADE_PREFIX = '{"e":"trade"'
"""How every Binance trade event starts (its field order is fixed)."""


def _wall_ms() -> int:
    return int(time.time() * 1000)


class NativeBinanceConnector:
    """Binance spot stream over aiohttp + orjson: trades go straight into columnar lists.

    ``ids`` maps unified symbols to Binance ids (``BTC/USDT`` -> ``BTCUSDT``); ``ws_url`` is
    the raw stream endpoint (``wss://stream.binance.com:9443/ws``, or the simulator's).
    """

    name = "native"
    exchange_times = True

    def __init__(self, ws_url: str, ids: dict[str, str], timeframes: Sequence[str], trades: bool = True,
                 connect_timeout: float = 10.0) -> None:
        self.ws_url = ws_url
        self.unified = {sid: symbol for symbol, sid in ids.items()}
        self.streams = [f"{sid.lower()}@kline_{tf}" for sid in ids.values() for tf in timeframes]
        if trades:
            self.streams += [f"{sid.lower()}@trade" for sid in ids.values()]
        self.connect_timeout = connect_timeout
        self.last_message = time.monotonic()
        self.received = 0
        self.malformed = 0

    async def run(self, sink: FeedSink) -> None:
        """See :meth:`Connector.run`."""
        self.received = 0
        self.last_message = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            ws = await session.ws_connect(self.ws_url, autoping=True, max_msg_size=0,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
            await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": self.streams, "id": 1}).decode())
            await self._receive(ws, sink)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, sink: FeedSink) -> None:
        receive, loads, monotonic, text = ws.receive, orjson.loads, time.monotonic, WSMsgType.TEXT
        trades, kline, unified = sink.trades, sink.kline, self.unified
        while True:
            msg = await receive()
            if msg.type is not text:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    raise ConnectionLost(f"stream ended: {msg.type.name} {msg.extra or ''}".strip())
                continue
            now = self.last_message = monotonic()
            data = msg.data
            if data.startswith(TRADE_PREFIX):  # parsed in bulk at the flush (malformed ones dropped there)
                frames = trades.frames  # the buffer swaps its list at every flush
                if not frames:
                    trades.first_at = now
                frames.append(data)
                self.received += 1
                continue
            try:
                event = loads(data)
                if event.get("e") != "kline":
                    if "error" in event:
                        log.warning("feed.subscribe_error", error=str(event["error"])[:200])
                    continue
                k = event["k"]
                update = (unified[k["s"]], k["i"], int(k["t"]), float(k["o"]), float(k["h"]), float(k["l"]),
                          float(k["c"]), float(k["v"]), bool(k["x"]), int(event["E"]))
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
                self.malformed += 1
                continue
            kline(*update)  # outside the try: a fault of ours must not pass for a malformed frame
            self.received += 1

    async def close(self) -> None:
        """Nothing outlives :meth:`run` (its session closes with it)."""


class CcxtConnector:
    """Any exchange through ccxt.pro ``watch_ohlcv_for_symbols`` / ``watch_trades_for_symbols``.

    ccxt drops the closed flag (updates carry ``closed=None``) and kline event times (the
    receipt time is used). Its receive loop can die silently on a malformed frame: when the
    feed cancels a stale :meth:`run`, every client is failed and the exchange closed, which
    is what makes the next watch dial again.
    """

    name = "ccxt"
    exchange_times = False

    def __init__(self, exchange: str, url: str | None, markets: dict[str, Any], symbols: Sequence[str],
                 timeframes: Sequence[str], trades: bool = True) -> None:
        self.exchange_id = exchange
        self.url = url
        self.markets = markets
        self.symbols = list(symbols)
        self.pairs = [[symbol, tf] for symbol in symbols for tf in timeframes]
        self.trades = trades
        self.client: Any = None
        self._last: dict[str, float] = {}
        self.received = 0
        self.malformed = 0

    @property
    def last_message(self) -> float:
        """The oldest "last message" over the watch loops (each is its own connection)."""
        return min(self._last.values()) if self._last else time.monotonic()

    async def run(self, sink: FeedSink) -> None:
        """See :meth:`Connector.run`."""
        if self.client is None:
            self.client = create_exchange(self.exchange_id, url=self.url, pro=True)
            self.client.set_markets(self.markets)
        self.received = 0
        now = time.monotonic()
        loops = {"ohlcv": self._watch_ohlcv(sink)}
        if self.trades:
            loops["trades"] = self._watch_trades(sink)
        self._last = dict.fromkeys(loops, now)
        tasks = [asyncio.create_task(coro) for coro in loops.values()]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
            raise ConnectionLost("watch loops ended")
        except ccxt.NetworkError as exc:
            raise ConnectionLost(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._reset()

    async def _reset(self) -> None:
        client = self.client
        for ws_client in list(client.clients.values()):
            ws_client.on_error(ccxt.NetworkError("feed reset"))
        await client.close()

    async def _watch_ohlcv(self, sink: FeedSink) -> None:
        watch, kline = self.client.watch_ohlcv_for_symbols, sink.kline
        while True:
            update = await watch(self.pairs)
            self._last["ohlcv"] = time.monotonic()
            event_ms = _wall_ms()
            for symbol, by_tf in update.items():
                for tf, rows in by_tf.items():
                    for t, o, h, l, c, v in rows:
                        kline(symbol, tf, int(t), o, h, l, c, v, None, event_ms)
                        self.received += 1

    async def _watch_trades(self, sink: FeedSink) -> None:
        watch, add = self.client.watch_trades_for_symbols, sink.trades.add_unified
        while True:
            trades = await watch(self.symbols)
            now = self._last["trades"] = time.monotonic()
            add(trades, now)  # parsed into columns at the flush, in one go
            self.received += len(trades)

    async def close(self) -> None:
        """Close the ccxt.pro client."""
        if self.client is not None:
            await self.client.close()
            self.client = None


def make_connector(kind: str, *, exchange: str, url: str | None, rest_client: Any, symbols: Sequence[str],
                   timeframes: Sequence[str], trades: bool) -> Connector:
    """The connector ``kind`` ("native" or "ccxt") for ``symbols``, using ``rest_client``'s loaded markets."""
    if kind == "ccxt":
        return CcxtConnector(exchange, url, rest_client.markets, symbols, timeframes, trades)
    if kind != "native" or protocol(exchange) != "binance":
        raise ConfigError(f"no connector {kind!r} for {exchange}; valid: ccxt (any exchange), native (binance)")
    ws = rest_client.urls["api"]["ws"]
    ws_url = ws["spot"] if isinstance(ws, dict) else ws
    ids = {symbol: rest_client.markets[symbol]["id"] for symbol in symbols}
    return NativeBinanceConnector(ws_url, ids, timeframes, trades)
