"""The simulator's trading side: signed REST endpoints, the user data stream, matching, trading faults.

Thin aiohttp shells over :class:`~tradpal_ray.sim._account.Account` (the rules) and
:mod:`~tradpal_ray.sim._signing` (the auth checks). The user data stream is served both ways
Binance offers it: the WebSocket API (``userDataStream.subscribe.signature`` on the stream
endpoint, which is what ccxt.pro's ``watch_orders`` / ``watch_balance`` use for spot) and the
listenKey (``POST/PUT/DELETE /api/v3/userDataStream``, then ``/ws/<listenKey>``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tradpal_ray.log import get_logger
from tradpal_ray.sim import _trade_wire as tw
from tradpal_ray.sim import wire
from tradpal_ray.sim._account import Account, Balance, Execution, Fill, Order, OrderRequest
from tradpal_ray.sim._errors import TOO_MANY_ORDERS, UNKNOWN_LISTEN_KEY, ApiError, missing
from tradpal_ray.sim._signing import Credentials, check_api_key, verify_signed, verify_ws_signed
from tradpal_ray.sim.faults import Fault
from tradpal_ray.sim.market import SymbolSpec
from tradpal_ray.sim.stream import Connection, StreamHub

log = get_logger(__name__)

MAX_TRADES = 1000


@dataclass(frozen=True)
class AccountSnapshot:
    """The simulator's record of the account: balances, every order and every fill, in order."""

    balances: dict[str, Balance]
    orders: list[Order]
    fills: list[Fill]


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.") from None


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


class TradingApi:
    """Signed endpoints, matching loop and user streams of one simulated account."""

    def __init__(
        self,
        hub: StreamHub,
        account: Account,
        credentials: Credentials,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.hub, self.view, self.faults = hub, hub.view, hub.faults
        self.now_ms = hub.clock.now_ms  # market time: orders, fills and events are stamped with it
        self.wall_ms = wall_ms  # request freshness (timestamp / recvWindow) is checked against it
        self.account, self.credentials = account, credentials
        self.listen_keys: set[str] = set()
        self.listeners: dict[int, tuple[Connection, int | None]] = {}  # connection id -> (conn, subscriptionId)
        self._next_subscription = 0
        self._match_cursor: dict[str, int] = {}
        hub.api_handler = self._ws_api
        hub.on_open = self._on_open

    def add_routes(self, app: web.Application) -> None:
        """Register the trading endpoints."""
        router = app.router
        router.add_post("/api/v3/order", self._new_order)
        router.add_get("/api/v3/order", self._get_order)
        router.add_delete("/api/v3/order", self._cancel_order)
        router.add_get("/api/v3/openOrders", self._open_orders)
        router.add_get("/api/v3/account", self._account)
        router.add_get("/api/v3/myTrades", self._my_trades)
        for method in ("POST", "PUT", "DELETE"):
            router.add_route(method, "/api/v3/userDataStream", self._listen_key)
        router.add_get("/ws/{listen_key}", self._listen_key_ws)
        router.add_get("/__sim/account", self._snapshot_json)

    def start(self) -> None:
        """Match resting orders from now on (call once the clock runs)."""
        now = self.now_ms()
        self._match_cursor = dict.fromkeys(self.view.specs, now)

    async def run(self) -> None:
        """Match resting orders against the price path every ``emit_interval`` seconds, forever."""
        while True:
            try:
                self.settle()
            except Exception:
                log.exception("sim.match_failed")
            await asyncio.sleep(self.hub.emit_interval)

    def snapshot(self) -> AccountSnapshot:
        """Balances, orders and fills as they stand (after matching up to now)."""
        self.settle()
        return AccountSnapshot(dict(self.account.balances), list(self.account.orders.values()), list(self.account.fills))

    # -- matching and events ---------------------------------------------------------------------

    def settle(self) -> None:
        """Fill resting orders that the price path reached since the last call, and tell the streams."""
        now = self.now_ms()
        symbols = {self.account.specs[o.symbol].symbol for o in self.account.open_orders()}
        for symbol in self._match_cursor:
            start = self._match_cursor[symbol]
            self._match_cursor[symbol] = now
            if symbol in symbols and now > start:
                trades = self.view.trades(symbol, start + 1, now + 1, now)
                self._publish(self.account.match(self.view.specs[symbol].id, trades.t, trades.p))

    def last_price(self, spec: SymbolSpec, now_ms: int) -> int:
        """The price in ticks at ``now_ms``: the last trade of the price path at or before it."""
        trades = self.view.recent_trades(spec.symbol, 1, now_ms)
        if not len(trades):  # nothing has traded yet: no price to fill at
            raise ApiError(-1013, "Market is closed.")
        return int(trades.p[-1])

    def _publish(self, executions: list[Execution]) -> None:
        if not executions or not self.listeners:
            return
        # one executionReport per execution, then the balances they leave behind
        events = [tw.execution_report(execution, execution.time) for execution in executions]
        assets = {asset for e in executions for asset in self.account.assets(e.order.symbol)}
        events.append(tw.account_position(self.account.balances, assets, executions[-1].time))
        for cid, (conn, subscription) in list(self.listeners.items()):
            if conn.closed:
                del self.listeners[cid]
                continue
            frames = [
                orjson.dumps(event) if subscription is None else tw.ws_api_event(subscription, event)
                for event in events
            ]
            conn.send("user", frames)

    def drop_user_streams(self) -> list[int]:
        """The ``user_stream_drop`` fault: reset every user data stream connection."""
        dropped = []
        for cid, (conn, _) in list(self.listeners.items()):
            conn.abort()
            dropped.append(cid)
        self.listeners.clear()
        self.faults.served["user_stream_drop"] += 1
        return dropped

    # -- REST ------------------------------------------------------------------------------------

    async def _signed(self, request: web.Request) -> dict[str, str]:
        """The verified parameters of a SIGNED request (raw query + raw body), after matching to now."""
        query = request.raw_path.partition("?")[2]
        body = (await request.read()).decode("utf-8", "replace")
        params = verify_signed(self.credentials, request.headers.get("X-MBX-APIKEY"), query, body, self.wall_ms())
        self.settle()
        return params

    def _spec(self, params: Mapping[str, str]) -> SymbolSpec:
        if not params.get("symbol"):
            raise missing("symbol")
        return self.account.spec(params["symbol"])

    async def _new_order(self, request: web.Request) -> web.StreamResponse:
        params = await self._signed(request)
        order_request = OrderRequest.from_params(params, client_order_id=f"sim-{secrets.token_hex(8)}")
        spec = self.account.spec(order_request.symbol)
        fault = self.faults.take_order_fault()
        if fault is not None and fault.kind != "lose_response":
            raise _fault_error(fault)
        now = self.now_ms()
        executions = self.account.place(order_request, self.last_price(spec, now), now)
        self._publish(executions)
        order = self.account.orders[executions[0].order.order_id]
        log.info("sim.order", symbol=spec.symbol, side=order.side, type=order.type, status=order.status,
                 order_id=order.order_id, client_order_id=order.client_order_id)  # fmt: skip
        if fault is not None:
            return _lose_response(request, fault)
        return _json(tw.new_order_response(order, order_request.response_type))

    def _find(self, params: Mapping[str, str]) -> Order:
        spec = self._spec(params)
        return self.account.find(spec.id, _int_param(params, "orderId"), params.get("origClientOrderId") or None)

    async def _get_order(self, request: web.Request) -> web.Response:
        return _json(tw.order_row(self._find(await self._signed(request))))

    async def _cancel_order(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        spec = self._spec(params)
        execution = self.account.cancel(
            spec.id,
            _int_param(params, "orderId"),
            params.get("origClientOrderId") or None,
            params.get("newClientOrderId") or f"sim-cancel-{secrets.token_hex(8)}",
            self.now_ms(),
        )
        self._publish([execution])
        return _json(tw.cancel_response(execution.order))

    async def _open_orders(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        symbol = self._spec(params).id if params.get("symbol") else None
        return _json([tw.order_row(order) for order in self.account.open_orders(symbol)])

    async def _account(self, request: web.Request) -> web.Response:
        await self._signed(request)
        account = self.account
        return _json(tw.account_info(account.balances, account.fee_rate, account.update_time))

    async def _my_trades(self, request: web.Request) -> web.Response:
        params = await self._signed(request)
        spec = self._spec(params)
        limit = _int_param(params, "limit") or 500
        if not 1 <= limit <= MAX_TRADES:
            raise ApiError(-1130, f"Invalid data sent for a parameter: limit={limit} (allowed 1..{MAX_TRADES}).")
        start, end, from_id = (_int_param(params, name) for name in ("startTime", "endTime", "fromId"))
        fills = [
            fill
            for fill in self.account.trades(spec.id, _int_param(params, "orderId"))
            if (start is None or fill.time >= start) and (end is None or fill.time <= end)
            and (from_id is None or fill.id >= from_id)
        ]
        fills = fills[:limit] if from_id is not None or start is not None else fills[-limit:]
        return _json([tw.my_trade_row(fill) for fill in fills])

    # -- user data stream --------------------------------------------------------------------------

    async def _listen_key(self, request: web.Request) -> web.Response:
        check_api_key(self.credentials, request.headers.get("X-MBX-APIKEY"))
        if request.method == "POST":
            key = secrets.token_urlsafe(45)[:60]
            self.listen_keys.add(key)
            return _json({"listenKey": key})
        body = (await request.read()).decode("utf-8", "replace")
        key = request.query.get("listenKey") or dict(
            part.partition("=")[::2] for part in body.split("&") if part
        ).get("listenKey")
        if not key:
            raise missing("listenKey")
        if key not in self.listen_keys:
            raise UNKNOWN_LISTEN_KEY.error()
        if request.method == "DELETE":
            self.listen_keys.discard(key)
            for cid, (conn, _) in list(self.listeners.items()):
                if conn.path.rstrip("/").endswith(key):
                    self._spawn_close(conn)
                    del self.listeners[cid]
        return _json({})

    async def _listen_key_ws(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["listen_key"] not in self.listen_keys:
            error = UNKNOWN_LISTEN_KEY
            return web.Response(body=wire.error_body(error.code, error.msg), status=400, content_type="application/json")
        return await self.hub.serve(request)

    def _on_open(self, conn: Connection, request: web.Request) -> None:
        tail = request.match_info.get("listen_key") or request.match_info.get("tail")
        if tail and tail in self.listen_keys:
            self.listeners[conn.id] = (conn, None)

    def _spawn_close(self, conn: Connection) -> None:
        task = asyncio.ensure_future(conn.ws.close(code=1000, message=b"listenKey deleted"))
        task.add_done_callback(lambda t: t.exception())

    def _ws_api(self, conn: Connection, request: dict[str, Any]) -> None:
        """Answer a WebSocket API request: subscribe to / unsubscribe from the user data stream."""
        request_id, method = request.get("id"), request.get("method")
        params = request.get("params") or {}
        try:
            if not isinstance(params, dict):
                raise ApiError(-1100, "Illegal characters found in parameter 'params'.")
            if method == "userDataStream.subscribe.signature":
                verify_ws_signed(self.credentials, params, self.wall_ms())
                subscription = self._next_subscription
                self._next_subscription += 1
                self.listeners[conn.id] = (conn, subscription)
                conn.send("result", [tw.ws_api_result(request_id, {"subscriptionId": subscription})])
            elif method == "userDataStream.unsubscribe":
                self.listeners.pop(conn.id, None)
                conn.send("result", [tw.ws_api_result(request_id, {})])
            else:
                raise ApiError(-1100, f"Unsupported WebSocket API method: {method!r}")
        except ApiError as exc:
            conn.send("error", [tw.ws_api_error(request_id, exc.status, exc.code, exc.msg)])

    async def _snapshot_json(self, request: web.Request) -> web.Response:
        snapshot = self.snapshot()
        return _json(
            {
                "balances": {a: {"free": tw.fmt(b.free), "locked": tw.fmt(b.locked)} for a, b in snapshot.balances.items()},
                "orders": [tw.order_row(order) for order in snapshot.orders],
                "trades": [tw.my_trade_row(fill) for fill in snapshot.fills],
            }
        )


def _fault_error(fault: Fault) -> ApiError:
    """The error a ``reject`` or ``order_rate_limit`` fault answers a new order with."""
    if fault.kind == "order_rate_limit":
        return TOO_MANY_ORDERS.error(retry_after=fault.retry_after)
    assert fault.code is not None and fault.msg is not None
    status = {-2014: 401, -2015: 401, -1003: 429, -1015: 429}.get(fault.code, 400)
    return ApiError(fault.code, fault.msg, status=status)


def _lose_response(request: web.Request, fault: Fault) -> web.StreamResponse:
    """Answer a placed order as if its response got lost: reset the connection, or a bare 5xx."""
    if not fault.status and request.transport is not None:
        request.transport.abort()  # the answer below is then never written (aiohttp drops it quietly)
    return web.Response(status=fault.status or 500)

