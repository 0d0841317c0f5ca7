"""The simulator's aiohttp server: Binance spot REST + combined WebSocket stream on one port.

Also serves the control endpoints ``POST/DELETE /__sim/fault``, ``GET /__sim/stats`` and
``GET /__sim/account``, and one simulated spot account (see :mod:`tradpal_ray.sim._trading`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, Self

import orjson
import pyarrow as pa
from aiohttp import web

from tradpal_ray.errors import ConfigError
from tradpal_ray.log import get_logger
from tradpal_ray.market.schema import TIMEFRAMES, to_ms
from tradpal_ray.sim import wire
from tradpal_ray.sim._account import DEFAULT_FEE_RATE, Account, parse_balances
from tradpal_ray.sim._errors import ApiError
from tradpal_ray.sim._signing import DEFAULT_API_KEY, DEFAULT_API_SECRET, Credentials
from tradpal_ray.sim._trading import AccountSnapshot, TradingApi
from tradpal_ray.sim.faults import FAULT_PARAMS, Fault, FaultState, parse_fault
from tradpal_ray.sim.market import (
    MarketSource,
    MarketView,
    SymbolSpec,
    Trades,
    parse_symbol,
)
from tradpal_ray.sim.stream import MALFORMED_FRAME, SimClock, StreamHub, start_for_run
from tradpal_ray.sim.synthetic import SyntheticSource, WalkParams

log = get_logger(__name__)

FAULT_CONNECTION_KINDS = frozenset(k for k, params in FAULT_PARAMS.items() if "connection" in params)
"""Fault kinds aimed at WebSocket connections."""
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
_REST_ERROR_BODIES = {
    418: (
        wire.error_body(-1003, "Way too many requests; IP banned until later."),
        "application/json",
    ),
    429: (
        wire.error_body(
            -1003,
            "Too many requests; current limit is 6000 request weight per 1 MINUTE.",
        ),
        "application/json",
    ),
}


class BadRequest(ApiError):
    """A REST call Binance would answer with HTTP 400 and ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(code, msg, status=400)


def _json(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class ExchangeSimulator:
    """A local Binance spot exchange that unmodified ccxt / ccxt.pro clients talk to.

    ``symbols`` are unified ("BTC/USDT"); market data comes from ``source`` (default: the
    deterministic synthetic walk seeded by ``seed``). The clock starts at ``start`` (default:
    early enough to run an hour at ``speed``; a replay starts at its first candle) and runs
    ``speed`` times real time, never ahead of the wall clock. Call :meth:`start` / :meth:`stop` in one loop.
    The account starts with ``balances`` (``"USDT=10000,BTC=0"`` or a mapping; default 10000
    USDT), pays ``fee_rate`` (default 0.001) of the notional per fill, and accepts the ``api_key`` /
    ``api_secret`` pair (default: :data:`~tradpal_ray.sim._signing.DEFAULT_API_KEY` and its secret).
    """

    def __init__(
        self,
        symbols: Iterable[str] | None = None,
        *,
        seed: int = 7,
        speed: float = 1.0,
        start: int | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        source: MarketSource | None = None,
        ping_interval: float = 20.0,
        genesis: int | str | None = None,
        trades_per_minute: float = 30.0,
        emit_interval: float = 0.05,
        balances: str | Mapping[str, object] | None = None,
        fee_rate: float | str | Decimal | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
    ) -> None:
        if not speed > 0:
            raise ConfigError(f"speed must be positive, got {speed!r}")
        if not ping_interval > 0 or not emit_interval > 0:
            raise ConfigError("ping_interval and emit_interval must be positive")
        if source is None:
            if not symbols:
                raise ConfigError(
                    "give symbols to simulate (e.g. BTC/USDT) or a replay source"
                )
            source = SyntheticSource(
                symbols,
                seed=seed,
                genesis=genesis,
                params=WalkParams(trades_per_minute=trades_per_minute),
            )
        self.view = MarketView(source)
        if symbols is not None:
            unknown = {f"{b}/{q}" for b, q in map(parse_symbol, symbols)} - set(
                self.view.specs
            )
            if unknown:
                raise ConfigError(
                    f"symbol(s) {', '.join(sorted(unknown))} not served by the source"
                )
        start_ms = to_ms(start) if start is not None else start_for_run(speed)
        if start_ms > time.time() * 1000:
            raise ConfigError("the simulator's clock never runs ahead of the wall clock: give a start in the past")
        if start is None and all(source.end_ms(s) is not None for s in self.view.specs):
            start_ms = min(
                source.first_ms(s) for s in self.view.specs
            )  # replay: play from the beginning
        self.clock = SimClock(start_ms, speed)
        self.faults = FaultState()
        self.hub = StreamHub(
            self.view,
            self.clock,
            self.faults,
            ping_interval=ping_interval,
            emit_interval=emit_interval,
        )
        api_key = DEFAULT_API_KEY if api_key is None else api_key
        api_secret = DEFAULT_API_SECRET if api_secret is None else api_secret
        if not api_key or not api_secret:
            raise ConfigError("the simulator's API key and secret must not be empty")
        self.trading = TradingApi(
            self.hub,
            Account(self.view.specs.values(), parse_balances(balances), DEFAULT_FEE_RATE if fee_rate is None else fee_rate),
            Credentials(api_key, api_secret),
        )
        self.host, self.port = host, port
        self.rest_requests: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._emitter: asyncio.Task | None = None
        self._matcher: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (the WebSocket is ``ws://.../stream/ws``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def symbols(self) -> list[str]:
        """Simulated unified symbols."""
        return list(self.view.specs)

    async def start(self) -> str:
        """Bind the port, start the clock and the stream; returns :attr:`url`."""
        app = web.Application(middlewares=[self._rest_middleware])
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/klines", self._klines)
        app.router.add_get("/api/v3/aggTrades", self._agg_trades)
        app.router.add_get("/api/v3/trades", self._trades)
        app.router.add_get("/api/v3/ticker/24hr", self._ticker)
        app.router.add_get("/stream/ws", self.hub.serve)
        app.router.add_get("/stream/ws/{tail:.*}", self.hub.serve)
        app.router.add_post("/__sim/fault", self._post_fault)
        app.router.add_delete("/__sim/fault", self._delete_fault)
        app.router.add_get("/__sim/stats", self._stats)
        self.trading.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[
            1
        ]  # the real port when port=0
        self.clock.start()
        self.hub.cursor = dict.fromkeys(self.hub.cursor, self.clock.now_ms())
        self._emitter = asyncio.create_task(self.hub.run())
        self.trading.start()
        self._matcher = asyncio.create_task(self.trading.run())
        log.info(
            "sim.started",
            url=self.url,
            symbols=",".join(self.symbols),
            speed=self.clock.speed,
        )
        return self.url

    async def stop(self) -> None:
        """Close every connection and release the port."""
        for task in (self._emitter, self._matcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._emitter = self._matcher = None
        await self.hub.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        log.info("sim.stopped", url=self.url)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- truth, clock, faults, stats -----------------------------------------------------------

    def now_ms(self) -> int:
        """Current simulated time in ms."""
        return self.clock.now_ms()

    def closed_candles(
        self, symbol: str, timeframe: str, start_ms: int | str, end_ms: int | str
    ) -> pa.Table:
        """The closed candles in ``[start_ms, end_ms)`` as CANDLE_SCHEMA (exchange "binance")."""
        start, end = to_ms(start_ms), to_ms(end_ms)
        bars = self.view.closed_candles(symbol, timeframe, start, end, self.now_ms())
        return self.view.table(symbol, timeframe, bars)

    def account(self) -> AccountSnapshot:
        """The simulator's record of the account: balances, orders and fills."""
        return self.trading.snapshot()

    def inject(self, kind: str, **params: Any) -> dict[str, Any]:
        """Inject a fault (see :mod:`tradpal_ray.sim.faults`); returns what it was applied to."""
        fault = parse_fault({"kind": kind, **params})
        return self._apply(fault)

    def _apply(self, fault: Fault) -> dict[str, Any]:
        if fault.kind == "clear":
            self.faults.clear()
            for conn in self.hub.connections.values():
                conn.duplicates = conn.reorders = 0
            return {"kind": "clear"}
        self.faults.arm(fault)
        if fault.kind == "user_stream_drop":
            dropped = self.trading.drop_user_streams()
            log.info("sim.fault", kind=fault.kind, connections=dropped)
            return {"kind": fault.kind, "connections": dropped}
        targets = (
            self.hub.targets(fault.connection) if fault.kind in FAULT_CONNECTION_KINDS else []
        )
        for conn in targets:
            if fault.kind == "close":
                self.faults.served["close"] += 1
                self._spawn(conn.ws.close(code=1000, message=b"simulated close"))
            elif fault.kind == "abort":
                self.faults.served["abort"] += 1
                conn.abort()
            elif fault.kind == "malformed":
                self.faults.served["malformed"] += 1
                conn.send("malformed", [(fault.text or MALFORMED_FRAME).encode()])
            elif fault.kind == "duplicate":
                conn.duplicates += fault.count
            elif fault.kind == "out_of_order":
                conn.reorders += fault.count
        log.info("sim.fault", kind=fault.kind, connections=[c.id for c in targets])
        return {"kind": fault.kind, "connections": [conn.id for conn in targets]}

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def stats(self) -> dict[str, Any]:
        """Messages sent by type, connections, subscriptions, REST requests, faults."""
        return {
            "now_ms": self.now_ms(),
            **self.hub.stats(),
            "rest_requests": {
                "total": sum(self.rest_requests.values()),
                **dict(self.rest_requests),
            },
            "faults": {
                "injected": dict(self.faults.injected),
                "served": dict(self.faults.served),
            },
        }

    # -- REST ----------------------------------------------------------------------------------

    @web.middleware
    async def _rest_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        self.rest_requests[request.path] += 1
        delay = self.faults.latency()
        if delay > 0:
            self.faults.served["latency"] += 1
            await asyncio.sleep(delay)
        fault = self.faults.take_rest_error()
        if fault is not None:
            body, content_type = _REST_ERROR_BODIES.get(
                fault.status, (b"Service Unavailable", "text/plain")
            )
            return web.Response(
                body=body,
                status=fault.status,
                content_type=content_type,
                headers={"Retry-After": str(fault.retry_after)},
            )
        try:
            return await handler(request)
        except ApiError as exc:
            return web.Response(
                body=wire.error_body(exc.code, exc.msg),
                status=exc.status,
                content_type="application/json",
                headers=None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)},
            )
        except ConfigError as exc:
            return web.Response(
                body=wire.error_body(-1130, str(exc)),
                status=400,
                content_type="application/json",
            )

    def _symbol(self, request: web.Request) -> SymbolSpec:
        sid = request.query.get("symbol")
        if not sid:
            raise BadRequest(
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        spec = self.view.by_id.get(sid.upper())
        if spec is None:
            raise BadRequest(-1121, "Invalid symbol.")
        return spec

    @staticmethod
    def _int(
        request: web.Request,
        name: str,
        default: int | None = None,
        lo: int | None = None,
        hi: int | None = None,
    ) -> int | None:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(
                -1100,
                f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
            ) from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise BadRequest(
                -1130,
                f"Invalid data sent for a parameter: {name}={value} (allowed {lo}..{hi}).",
            )
        return value

    async def _ping(self, request: web.Request) -> web.Response:
        return _json({})

    async def _time(self, request: web.Request) -> web.Response:
        return _json({"serverTime": self.now_ms()})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": [
                    wire.exchange_symbol(spec) for spec in self.view.specs.values()
                ],
            }
        )

    async def _klines(self, request: web.Request) -> web.Response:
        spec = self._symbol(request)
        interval = request.query.get("interval")
        if interval not in TIMEFRAMES:
            raise BadRequest(-1120, "Invalid interval.")
        limit = self._int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        start = self._int(request, "startTime", lo=0)
        end = self._int(request, "endTime", lo=0)
        now = self.now_ms()
        period = TIMEFRAMES[interval]
        if start is not None:
            stop = (
                start + limit * period
                if end is None
                else min(end + 1, start + limit * period)
            )
            bars = self.view.candles(spec.symbol, interval, start, stop, now)
            bars = bars.take(slice(0, limit))
        else:
            bars = self.view.latest_candles(spec.symbol, interval, limit, now, end)
        return _json(wire.kline_rows(spec, period, bars))

    def _trade_window(self, request: web.Request, spec: SymbolSpec) -> Trades:
        limit = self._int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        if request.query.get("fromId"):
            raise BadRequest(
                -1101,
                "fromId is not supported by the simulator; use startTime/endTime.",
            )
        start = self._int(request, "startTime", lo=0)
        end = self._int(request, "endTime", lo=0)
        now = self.now_ms()
        if start is None and end is None:
            return self.view.recent_trades(spec.symbol, limit, now)
        if start is None:
            start = end - 3_600_000
        if end is None:
            end = start + 3_600_000
        if end < start or end - start > 3_600_000:
            raise BadRequest(-1127, "More than 1 hours between startTime and endTime.")
        return self.view.trades(spec.symbol, start, end + 1, now, limit)

    async def _agg_trades(self, request: web.Request) -> web.Response:
        spec = self._symbol(request)
        trades = self._trade_window(request, spec)
        return _json(wire.agg_trade_rows(spec, trades))

    async def _trades(self, request: web.Request) -> web.Response:
        spec = self._symbol(request)
        limit = self._int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        return _json(
            wire.trade_rows(
                spec, self.view.recent_trades(spec.symbol, limit, self.now_ms())
            )
        )

    async def _ticker(self, request: web.Request) -> web.Response:
        now = self.now_ms()
        specs = (
            [self._symbol(request)]
            if "symbol" in request.query
            else list(self.view.specs.values())
        )
        tickers = []
        for spec in specs:
            base = self.view.source.base_ms(spec.symbol)
            day = self.view.candles(
                spec.symbol, _timeframe_of(base), now - 86_400_000 + 1, now + 1, now
            )
            last = self.view.recent_trades(spec.symbol, 1, now)
            tickers.append(
                wire.ticker_24h(spec, day, now, int(last.q[-1]) if len(last) else 0)
            )
        return _json(tickers[0] if "symbol" in request.query else tickers)

    # -- control -------------------------------------------------------------------------------

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            fault = parse_fault(body)
        except orjson.JSONDecodeError as exc:
            return _json({"error": f"fault body is not JSON: {exc}"}, status=400)
        except ConfigError as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(self._apply(fault))

    async def _delete_fault(self, request: web.Request) -> web.Response:
        return _json(self._apply(Fault("clear")))

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(self.stats())


def _timeframe_of(period_ms: int) -> str:
    return next(name for name, ms in TIMEFRAMES.items() if ms == period_ms)
