"""The exchange simulator against the real, unmodified ccxt / ccxt.pro binance clients.

Live tests run the clock at 600x (a 1m candle closes every 0.1 s) and wait on conditions
with deadlines; raw aiohttp WebSocket clients look at the exact frames.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import ccxt
import numpy as np
import orjson
import pandas as pd
import pytest

from tradpal_ray.market.schema import to_ms
from tradpal_ray.sim import create_exchange

MINUTE = 60_000
DEADLINE_S = 10.0


def run(coro_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run an async test body in a fresh loop."""
    return asyncio.run(coro_fn(*args))


async def with_exchange(url: str, body: Callable[[Any], Awaitable[Any]], **client: Any) -> Any:
    """Create a ccxt.pro client (REST and WS) in this loop, run ``body(exchange)``, always close it.
    ``client`` goes to ``create_exchange`` (e.g. ``api_key=..., secret=...`` to trade)."""
    exchange = create_exchange("binance", url=url, pro=True, **client)
    try:
        return await body(exchange)
    finally:
        await exchange.close()


async def until(
    condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def handled_until_now(exchange: Any) -> None:
    """Ping each of ``exchange``'s WebSockets and wait for the pongs: every frame the server sent
    before them has been handled by then (frames on one connection arrive in order)."""
    clients = list(exchange.clients.values())
    before = [client.lastPong for client in clients]
    for client in clients:
        await client.connection.ping()
    await until(lambda: all(client.lastPong != last for client, last in zip(clients, before, strict=True)), "the pongs")


class RawClient:
    """A bare aiohttp WebSocket client on the combined stream (pings surface as messages)."""

    def __init__(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse
    ) -> None:
        self.session, self.ws = session, ws

    @classmethod
    async def connect(cls, url: str, *streams: str) -> RawClient:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(
            url.replace("http://", "ws://") + "/stream/ws/0", autoping=False
        )
        client = cls(session, ws)
        if streams:
            await client.send({"method": "SUBSCRIBE", "params": list(streams), "id": 1})
            assert await client.next_json(lambda m: m.get("id") == 1) == {
                "result": None,
                "id": 1,
            }
        return client

    async def send(self, payload: Any) -> None:
        await self.ws.send_str(
            payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        )

    async def next_text(self, timeout: float = DEADLINE_S) -> str:
        """The next text frame (answering the server's pings on the way)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if msg.type is aiohttp.WSMsgType.PING:
                await self.ws.pong(msg.data)
            elif msg.type is aiohttp.WSMsgType.TEXT:
                return msg.data
            elif msg.type is not aiohttp.WSMsgType.PONG:
                raise AssertionError(f"unexpected {msg.type}")

    async def next_json(
        self,
        match: Callable[[dict], bool] = lambda _m: True,
        timeout: float = DEADLINE_S,
    ) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = orjson.loads(
                await self.next_text(max(0.01, deadline - time.monotonic()))
            )
            if match(message):
                return message

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def truth_rows(
    sim: Any, symbol: str, timeframe: str, start: int, end: int
) -> list[list[float]]:
    """The simulator's closed candles as ccxt rows ``[t, o, h, l, c, v]``."""
    frame = sim.closed_candles(symbol, timeframe, start, end).to_pandas()
    ms = frame["open_time"].dt.as_unit("ms").astype("int64").tolist()
    return [
        [t, *row]
        for t, row in zip(
            ms, frame[["open", "high", "low", "close", "volume"]].to_numpy().tolist()
        )
    ]


# -- REST -------------------------------------------------------------------------------------


def test_load_markets_lists_every_symbol(make_simulator: Any) -> None:
    sim = make_simulator(["BTC/USDT", "ETH/USDT", "DOGE/USDT", "ETH/BTC"])

    async def body(ex: Any) -> None:
        markets = await ex.load_markets()
        assert set(markets) == {"BTC/USDT", "ETH/USDT", "DOGE/USDT", "ETH/BTC"}
        btc = markets["BTC/USDT"]
        assert (btc["id"], btc["base"], btc["quote"], btc["spot"], btc["active"]) == (
            "BTCUSDT",
            "BTC",
            "USDT",
            True,
            True,
        )
        assert btc["precision"]["price"] == 0.01 and btc["precision"]["amount"] == 1e-05
        assert (await ex.fetch_time()) >= to_ms("2024-03-01")

    run(with_exchange, sim.url, body)


def test_fetch_ohlcv_three_pages_equal_truth(simulator: Any) -> None:
    since = to_ms("2024-02-20")

    async def body(ex: Any) -> list[list[float]]:
        rows: list[list[float]] = []
        cursor = since
        for _ in range(3):
            page = await ex.fetch_ohlcv("BTC/USDT", "1m", since=cursor, limit=1000)
            assert len(page) == 1000
            rows += page
            cursor = page[-1][0] + MINUTE
        return rows

    rows = run(with_exchange, simulator.url, body)
    times = np.array([r[0] for r in rows])
    assert times[0] == since and np.all(
        np.diff(times) == MINUTE
    )  # contiguous across pages
    assert rows == truth_rows(simulator, "BTC/USDT", "1m", since, since + 3000 * MINUTE)


def test_higher_timeframes_aggregate_the_minutes(simulator: Any) -> None:
    since = to_ms("2024-02-27T03:00")

    async def body(ex: Any) -> tuple[list, list, list]:
        minutes = await ex.fetch_ohlcv("ETH/USDT", "1m", since=since, limit=1000)
        fives = await ex.fetch_ohlcv("ETH/USDT", "5m", since=since, limit=200)
        hours = await ex.fetch_ohlcv("ETH/USDT", "1h", since=since, limit=16)
        return minutes, fives, hours

    minutes, fives, hours = run(with_exchange, simulator.url, body)
    frame = pd.DataFrame(minutes, columns=["t", "o", "h", "l", "c", "v"])
    frame.index = pd.to_datetime(frame["t"], unit="ms")
    for rows, rule in ((fives, "5min"), (hours, "1h")):
        expected = frame.resample(rule).agg(
            {"o": "first", "h": "max", "l": "min", "c": "last", "v": "sum"}
        )
        got = pd.DataFrame(rows, columns=["t", "o", "h", "l", "c", "v"])
        expected = expected.iloc[: len(got)]  # 1000 minutes end inside the 17th hour
        assert len(got) in (200, 16) and np.array_equal(
            got["t"], expected.index.as_unit("ms").asi8
        )
        assert np.array_equal(
            got[["o", "h", "l", "c"]].to_numpy(),
            expected[["o", "h", "l", "c"]].to_numpy(),
        )
        assert np.allclose(
            got["v"].to_numpy(), expected["v"].to_numpy(), rtol=1e-12
        )  # exact in decimal; float sums
    one_day = simulator.closed_candles(
        "ETH/USDT", "1d", to_ms("2024-02-10"), to_ms("2024-02-11")
    ).to_pandas()
    day_hours = simulator.closed_candles(
        "ETH/USDT", "4h", to_ms("2024-02-10"), to_ms("2024-02-11")
    ).to_pandas()
    assert (
        one_day["high"].iloc[0] == day_hours["high"].max()
        and one_day["close"].iloc[0] == day_hours["close"].iloc[-1]
    )


def test_agg_trades_agree_with_candles(simulator: Any) -> None:
    since = to_ms("2024-02-28T10:00")

    async def body(ex: Any) -> tuple[list, list]:
        trades = await ex.fetch_trades("BTC/USDT", since=since, limit=1000)
        candles = await ex.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=60)
        return trades, candles

    trades, candles = run(with_exchange, simulator.url, body)
    ids = [int(t["id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # sequential aggTrade ids
    frame = pd.DataFrame(
        {
            "t": [t["timestamp"] for t in trades],
            "p": [t["price"] for t in trades],
            "q": [t["amount"] for t in trades],
        }
    )
    frame = frame[
        frame["t"] < frame["t"].iloc[-1] // MINUTE * MINUTE
    ]  # whole minutes only
    minutes = frame.groupby(frame["t"] // MINUTE * MINUTE).agg(
        o=("p", "first"),
        h=("p", "max"),
        l=("p", "min"),
        c=("p", "last"),
        v=("q", "sum"),
    )
    assert len(minutes) >= 5
    by_time = {row[0]: row for row in candles}
    for t, row in minutes.iterrows():
        assert [row.o, row.h, row.l, row.c] == by_time[t][1:5]
        assert row.v == pytest.approx(by_time[t][5], rel=1e-12)


def test_rest_serves_forming_candle_last_and_nothing_in_the_future(
    simulator: Any,
) -> None:
    async def body(ex: Any) -> tuple[int, list, int]:
        before = simulator.now_ms()
        rows = await ex.fetch_ohlcv("BTC/USDT", "1m", limit=5)
        future = await ex.fetch_ohlcv(
            "BTC/USDT", "1m", since=simulator.now_ms() + 3_600_000, limit=5
        )
        return before, rows, len(future)

    before, rows, future = run(with_exchange, simulator.url, body)
    after = simulator.now_ms()
    assert future == 0 and len(rows) == 5
    assert (
        before // MINUTE * MINUTE <= rows[-1][0] <= after
    )  # the forming candle is the last row
    assert [r[0] for r in rows] == [rows[0][0] + i * MINUTE for i in range(5)]


def test_rest_errors_have_binance_shape(simulator: Any) -> None:
    async def body() -> None:
        async with aiohttp.ClientSession(simulator.url) as http:
            cases = [
                ("/api/v3/klines?symbol=NOPEUSDT&interval=1m", -1121),
                ("/api/v3/klines?symbol=BTCUSDT&interval=7m", -1120),
                ("/api/v3/klines?interval=1m", -1102),
                ("/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=5000", -1130),
                ("/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=abc", -1100),
            ]
            for path, code in cases:
                async with http.get(path) as response:
                    assert response.status == 400, path
                    assert (await response.json())["code"] == code
            async with http.get("/api/v3/ticker/24hr") as response:
                tickers = await response.json()
                assert {t["symbol"] for t in tickers} == {"BTCUSDT", "ETHUSDT"}
                assert all(
                    float(t["highPrice"]) >= float(t["lowPrice"]) > 0 for t in tickers
                )

    run(body)

    async def bad_symbol(ex: Any) -> None:
        await ex.load_markets()
        with pytest.raises(ccxt.BadSymbol):
            await ex.fetch_ohlcv("XRP/USDT", "1m")

    run(with_exchange, simulator.url, bad_symbol)


# -- WebSocket --------------------------------------------------------------------------------


def test_watch_ohlcv_and_watch_trades(simulator: Any) -> None:
    async def body(ex: Any) -> None:
        seen_times: set[int] = set()
        while len(seen_times) < 3:  # the forming candle moves on: several minutes seen
            for row in await asyncio.wait_for(
                ex.watch_ohlcv("BTC/USDT", "1m"), DEADLINE_S
            ):
                assert (
                    row[2] >= max(row[1], row[4])
                    and row[3] <= min(row[1], row[4])
                    and row[5] > 0
                )
                seen_times.add(row[0])
        trades = await asyncio.wait_for(ex.watch_trades("ETH/USDT"), DEADLINE_S)
        assert trades and all(
            t["symbol"] == "ETH/USDT" and t["price"] > 0 and t["amount"] > 0
            for t in trades
        )
        assert max(t["timestamp"] for t in trades) <= simulator.now_ms()

    run(with_exchange, simulator.url, body)
    stats = simulator.stats()
    assert stats["messages_sent"]["kline"] > 0 and stats["messages_sent"]["trade"] > 0
    assert stats["connections"]["total"] == 2


def test_closed_candles_over_ws_equal_rest(simulator: Any) -> None:
    async def body() -> None:
        client = await RawClient.connect(
            simulator.url, "btcusdt@kline_1m", "btcusdt@kline_5m"
        )
        finals: dict[str, list[dict]] = {"1m": [], "5m": []}
        updates = 0
        while len(finals["5m"]) < 2:
            event = await client.next_json()
            assert event["e"] == "kline" and event["s"] == "BTCUSDT"
            if event["k"]["x"]:
                finals[event["k"]["i"]].append(event["k"])
            else:
                updates += 1
        await client.close()
        assert updates > 0 and len(finals["1m"]) >= 5
        async with aiohttp.ClientSession(simulator.url) as http:
            for interval, klines in finals.items():
                params = {
                    "symbol": "BTCUSDT",
                    "interval": interval,
                    "startTime": klines[0]["t"],
                    "limit": len(klines),
                }
                async with http.get("/api/v3/klines", params=params) as response:
                    rows = await response.json()
                assert [
                    [
                        k["t"],
                        k["o"],
                        k["h"],
                        k["l"],
                        k["c"],
                        k["v"],
                        k["T"],
                        k["q"],
                        k["n"],
                    ]
                    for k in klines
                ] == [r[:9] for r in rows]
                assert all(k["L"] - k["f"] + 1 == k["n"] for k in klines)

    run(body)


def test_a_closing_kline_goes_out_at_the_close_not_with_the_next_update(make_simulator: Any) -> None:
    # Updates every 5 wall seconds (600 simulated seconds); a 1m candle closes every 0.5 s of wall time.
    sim = make_simulator(["BTC/USDT"], speed=120.0, emit_interval=5.0)

    async def body() -> list[int]:
        client = await RawClient.connect(sim.url, "btcusdt@kline_1m")
        closing = [await client.next_json(lambda m: m["k"]["x"]) for _ in range(3)]
        await client.close()
        return [event["E"] - event["k"]["T"] for event in closing]  # simulated ms from the close to the event

    delays = run(body)
    # With the next periodic update a close would be up to 600,000 simulated ms late; at the close, it is
    # a few ms of wall time late (0.5 s allowed: 60,000 simulated ms).
    assert all(0 < d <= 60_000 for d in delays), delays


def test_bad_client_frames_get_error_replies_and_connection_survives(
    simulator: Any,
) -> None:
    async def body() -> None:
        client = await RawClient.connect(simulator.url)
        await client.send("this is not json")
        assert await client.next_json() == {
            "error": {"code": 2, "msg": "Invalid JSON: 'this is not json'"},
            "id": None,
        }
        await client.send({"method": "FROBNICATE", "id": 5})
        reply = await client.next_json()
        assert reply["id"] == 5 and reply["error"]["code"] == 2
        await client.send({"method": "SUBSCRIBE", "params": ["nosuch@trade"], "id": 6})
        assert (await client.next_json())["error"]["code"] == 2
        await client.send(
            {
                "method": "SUBSCRIBE",
                "params": ["ethusdt@trade", "ethusdt@kline_1h"],
                "id": 7,
            }
        )
        assert await client.next_json(lambda m: m.get("id") == 7) == {
            "result": None,
            "id": 7,
        }
        await client.send(
            {"method": "UNSUBSCRIBE", "params": ["ethusdt@trade"], "id": 8}
        )
        await client.next_json(lambda m: m.get("id") == 8)
        await client.send({"method": "LIST_SUBSCRIPTIONS", "id": 9})
        assert await client.next_json(lambda m: m.get("id") == 9) == {
            "result": ["ethusdt@kline_1h"],
            "id": 9,
        }
        await client.close()

    run(body)
    assert simulator.stats()["messages_sent"]["error"] == 3


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["close", "abort"])
def test_close_and_abort_fail_the_pending_watch(simulator: Any, kind: str) -> None:
    async def body(ex: Any) -> None:
        await asyncio.wait_for(ex.watch_ohlcv("BTC/USDT", "1m"), DEADLINE_S)
        simulator.inject("stall")  # no data from here on
        await handled_until_now(ex)  # nor a frame sent just before the stall: the next watch surely stays pending
        pending = asyncio.ensure_future(ex.watch_ohlcv("BTC/USDT", "1m"))
        deadline = time.monotonic() + DEADLINE_S
        while not any(client.futures for client in ex.clients.values()):
            assert time.monotonic() < deadline and not pending.done()
            await asyncio.sleep(0.001)
        simulator.inject(kind)
        with pytest.raises(ccxt.NetworkError):
            await asyncio.wait_for(pending, DEADLINE_S)
        simulator.inject("clear")
        rows = await asyncio.wait_for(ex.watch_ohlcv("BTC/USDT", "1m"), DEADLINE_S)  # a new watch redials
        assert rows

    run(with_exchange, simulator.url, body)
    assert simulator.stats()["faults"]["served"][kind] == 1


@pytest.mark.parametrize("kind", ["stall", "freeze"])
def test_stall_and_freeze_stop_data_but_keep_the_connection(
    make_simulator: Any, kind: str
) -> None:
    sim = make_simulator(["BTC/USDT"], ping_interval=0.2)

    async def body() -> None:
        client = await RawClient.connect(sim.url, "btcusdt@trade")
        await client.next_json()
        sim.inject(kind)
        received_after = sim.stats()["messages_sent"].get("trade", 0)
        # frames already on the wire drain within a moment; then nothing but (for stall) pings
        kinds: list[aiohttp.WSMsgType] = []
        await client.ws.ping(b"client")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                msg = await client.ws.receive(timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            kinds.append(msg.type)
            if msg.type is aiohttp.WSMsgType.PING:
                await client.ws.pong(msg.data)  # or the server drops us as unresponsive
        assert not client.ws.closed
        assert (
            sim.stats()["messages_sent"].get("trade", 0) == received_after
        )  # the server sent no more data
        if kind == "stall":
            assert (
                aiohttp.WSMsgType.PONG in kinds and aiohttp.WSMsgType.PING in kinds
            )  # keepalive still works
        else:
            assert (
                aiohttp.WSMsgType.PONG not in kinds
                and aiohttp.WSMsgType.PING not in kinds
            )
        sim.inject("clear")
        assert (await client.next_json())["e"] == "trade"  # data flows again
        await client.close()

    run(body)
    assert sim.stats()["faults"]["served"][kind] > 0


def test_stall_is_silent_for_a_ccxt_watch(simulator: Any) -> None:
    async def body(ex: Any) -> None:
        await asyncio.wait_for(ex.watch_trades("BTC/USDT"), DEADLINE_S)
        simulator.inject("stall", duration=30)
        with pytest.raises(TimeoutError):
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:  # drain what was in flight, then silence
                await asyncio.wait_for(ex.watch_trades("BTC/USDT"), 1.0)
        assert all(not client.connection.closed for client in ex.clients.values())

    run(with_exchange, simulator.url, body)


def test_malformed_frame_reaches_a_raw_client(simulator: Any) -> None:
    async def body() -> None:
        client = await RawClient.connect(simulator.url, "btcusdt@kline_1m")
        simulator.inject("malformed")
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            text = await client.next_text()
            try:
                orjson.loads(text)
            except orjson.JSONDecodeError:
                break
        else:
            raise AssertionError("no malformed frame")
        await client.close()

    run(body)
    assert simulator.stats()["faults"]["served"]["malformed"] == 1


@pytest.mark.parametrize("kind", ["duplicate", "out_of_order"])
def test_duplicate_and_out_of_order_klines(simulator: Any, kind: str) -> None:
    async def body() -> None:
        client = await RawClient.connect(simulator.url, "btcusdt@kline_1m")
        previous_text, previous_key = await client.next_text(), None
        simulator.inject(kind)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            text = await client.next_text()
            event = orjson.loads(text)
            key = (event["E"], event["k"]["t"], event["k"]["n"])
            if kind == "duplicate" and text == previous_text:
                break
            if (
                kind == "out_of_order"
                and previous_key is not None
                and key < previous_key
            ):
                break
            assert text != previous_text and (
                previous_key is None or key > previous_key
            )  # normally in order
            previous_text, previous_key = text, key
        else:
            raise AssertionError(f"no {kind} kline seen")
        await client.close()

    run(body)
    assert simulator.stats()["faults"]["served"][kind] == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ccxt.DDoSProtection),
        (418, ccxt.DDoSProtection),
        (503, ccxt.ExchangeNotAvailable),
        (500, ccxt.ExchangeNotAvailable),
    ],
)
def test_rest_error_maps_to_ccxt_errors(
    simulator: Any, status: int, error: type
) -> None:
    async def body(ex: Any) -> None:
        await ex.load_markets()
        simulator.inject("rest_error", status=status, count=2, retry_after=7)
        with pytest.raises(error):
            await ex.fetch_ohlcv("BTC/USDT", "1m", limit=3)
        async with (
            aiohttp.ClientSession(simulator.url) as http,
            http.get("/api/v3/ping") as response,
        ):
            assert response.status == status and response.headers["Retry-After"] == "7"
        assert (
            len(await ex.fetch_ohlcv("BTC/USDT", "1m", limit=3)) == 3
        )  # only the next two calls fail

    run(with_exchange, simulator.url, body)
    assert simulator.stats()["faults"]["served"]["rest_error"] == 2


def test_latency_delays_rest_and_ws(simulator: Any) -> None:
    async def body(ex: Any) -> tuple[float, float]:
        await ex.load_markets()
        started = time.monotonic()
        await ex.fetch_time()
        fast = time.monotonic() - started
        simulator.inject("latency", ms=300)
        started = time.monotonic()
        await ex.fetch_time()
        return fast, time.monotonic() - started

    fast, slow = run(with_exchange, simulator.url, body)
    assert slow >= 0.3 > fast

    async def ws_lag() -> float:
        client = await RawClient.connect(simulator.url, "btcusdt@trade")
        lags = []
        for _ in range(20):
            event = await client.next_json()
            lags.append(simulator.now_ms() - event["E"])
        await client.close()
        return min(lags[5:])

    lag_sim_ms = run(ws_lag)
    assert (
        lag_sim_ms >= 0.25 * 600 * 1000
    )  # 300 ms real at 600x, minus scheduling slack
    simulator.inject("clear")
    assert simulator.stats()["faults"]["served"]["latency"] >= 2


def test_fault_endpoint_over_http(simulator: Any) -> None:
    async def body() -> None:
        client = await RawClient.connect(simulator.url, "ethusdt@trade")
        async with aiohttp.ClientSession(simulator.url) as http:
            for payload, words in [
                (b"{nope", "not JSON"),
                (b'{"kind": "explode"}', "unknown fault kind"),
                (b'{"kind": "close", "ms": 3}', "does not take ms"),
            ]:
                async with http.post("/__sim/fault", data=payload) as response:
                    assert (
                        response.status == 400
                        and words in (await response.json())["error"]
                    )
            connection = (await (await http.get("/__sim/stats")).json())["connections"][
                "ids"
            ][0]
            async with http.post(
                "/__sim/fault", json={"kind": "close", "connection": connection}
            ) as response:
                assert (await response.json()) == {
                    "kind": "close",
                    "connections": [connection],
                }
            msg = await client.ws.receive(timeout=DEADLINE_S)
            while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.PING):
                msg = await client.ws.receive(timeout=DEADLINE_S)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            async with http.post("/__sim/fault", json={"kind": "stall"}) as response:
                assert response.status == 200
            async with http.delete("/__sim/fault") as response:
                assert (await response.json()) == {"kind": "clear"}
            stats = await (await http.get("/__sim/stats")).json()
        await client.close()
        assert stats["faults"]["injected"] == {"close": 1, "stall": 1}
        assert (
            stats["rest_requests"]["total"] == 0
        )  # control calls are not exchange traffic
        assert (
            stats["subscriptions"]["total"] == 0 and stats["connections"]["open"] == 0
        )

    run(body)


def test_bad_fault_from_python_raises(simulator: Any) -> None:
    from tradpal_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown fault kind"):
        simulator.inject("meltdown")


# -- replay, actor, CLI -----------------------------------------------------------------------


def _hourly(symbol: str, hours: int, start: str = "2024-06-01") -> pd.DataFrame:
    rng = np.random.default_rng(5)
    close = np.round(50 + np.cumsum(rng.normal(0, 0.3, hours)), 2)
    open_ = np.concatenate(([50.0], close[:-1]))
    return pd.DataFrame(
        {
            "symbol": symbol,
            "timeframe": "1h",
            "open_time": pd.date_range(start, periods=hours, freq="1h", tz="UTC"),
            "open": open_,
            "high": np.maximum(open_, close) + 0.25,
            "low": np.minimum(open_, close) - 0.25,
            "close": close,
            "volume": np.round(rng.uniform(1, 100, hours), 3),
        }
    )


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_replay_file_serves_recorded_candles(
    make_simulator: Any, tmp_path: Any, fmt: str
) -> None:
    from tradpal_ray.sim import open_replay

    frame = _hourly("LINK/USDT", 72)
    path = tmp_path / f"candles.{fmt}"
    frame.to_parquet(path) if fmt == "parquet" else frame.assign(
        open_time=frame["open_time"].astype(str)
    ).to_csv(path, index=False)
    sim = make_simulator(
        None, source=open_replay([path]), start="2024-06-03T12:00", speed=60
    )

    async def body(ex: Any) -> tuple[list, list]:
        hours = await ex.fetch_ohlcv(
            "LINK/USDT", "1h", since=to_ms("2024-06-01"), limit=100
        )
        four = await ex.fetch_ohlcv(
            "LINK/USDT", "4h", since=to_ms("2024-06-01"), limit=100
        )
        return hours, four

    hours, four = run(with_exchange, sim.url, body)
    assert len(hours) == 61  # 60 closed hours + the forming one; nothing past the clock
    expected = (
        frame[["open", "high", "low", "close", "volume"]].to_numpy()[:60].tolist()
    )
    assert [row[1:] for row in hours[:60]] == expected
    assert four[0][2] == max(r[2] for r in hours[:4]) and four[0][5] == pytest.approx(
        sum(r[5] for r in hours[:4])
    )


def test_replay_dataframe_streams_candles_live(make_simulator: Any) -> None:
    from tradpal_ray.sim import ReplaySource

    frame = _hourly("SOL/USDT", 30)
    sim = make_simulator(
        None, source=ReplaySource(frame), speed=36_000
    )  # one hour per 0.1 s, from the first bar

    async def body() -> list[dict]:
        client = await RawClient.connect(sim.url, "solusdt@kline_1h")
        finals = [(await client.next_json(lambda m: m["k"]["x"]))["k"] for _ in range(3)]
        await client.close()
        return finals

    finals = run(body)
    for k in finals:
        row = frame[
            frame["open_time"] == pd.Timestamp(k["t"], unit="ms", tz="UTC")
        ].iloc[0]
        assert [float(k[x]) for x in "ohlcv"] == [
            row.open,
            row.high,
            row.low,
            row.close,
            row.volume,
        ]


def test_simulator_actor(ray_session: None) -> None:
    import ray

    from tradpal_ray.sim import SimulatorActor

    actor = SimulatorActor.remote(["BTC/USDT"], speed=600, start="2024-03-01")
    url = ray.get(actor.start.remote())
    try:
        exchange = create_exchange("binance", url=url)
        candles = exchange.fetch_ohlcv(
            "BTC/USDT", "1h", since=to_ms("2024-02-29"), limit=5
        )
        truth = ray.get(
            actor.closed_candles.remote(
                "BTC/USDT", "1h", to_ms("2024-02-29"), to_ms("2024-02-29T05:00")
            )
        )
        assert [row[4] for row in candles] == truth["close"].to_pylist()
        assert ray.get(actor.stats.remote())["rest_requests"]["/api/v3/klines"] == 1
    finally:
        ray.get(actor.stop.remote())
        ray.kill(actor)


def test_cli_runs_until_interrupted_and_rejects_bad_symbols() -> None:
    cli = [str(Path(sys.executable).with_name("tradpal-ray"))]
    env = {**os.environ, "TRADPAL_LOG_LEVEL": "WARNING"}
    bad = subprocess.run(
        [*cli, "sim", "--symbols", "BTC/USDT,bogus"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (
        bad.returncode == 2
        and "malformed symbol 'bogus'" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )
    proc = subprocess.Popen(
        [*cli, "sim", "--port", "0", "--symbols", "BTC/USDT", "--speed", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        async def ping() -> int:
            async with (
                aiohttp.ClientSession() as http,
                http.get(url + "/api/v3/ping") as response,
            ):
                return response.status

        assert run(ping) == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
