"""Trading against the simulator: the pure rules (signing, account, matching) without a server,
then the real, unmodified ccxt / ccxt.pro binance clients against a simulator the test starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import ccxt
import numpy as np
import orjson
import pytest
from test_sim import until, with_exchange

from tradpal_ray.errors import ConfigError
from tradpal_ray.sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, create_exchange
from tradpal_ray.sim._account import Account, Balance, OrderRequest, parse_balances
from tradpal_ray.sim._errors import ApiError
from tradpal_ray.sim._signing import Credentials, sign, verify_signed, verify_ws_signed
from tradpal_ray.sim.faults import parse_fault
from tradpal_ray.sim.market import SymbolSpec

BTC = SymbolSpec("BTC/USDT", "BTC", "USDT", price_decimals=2, qty_decimals=5)
NOW = 1_709_251_200_000
KEYS = {"api_key": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET}
D = Decimal


def ticks(price: str) -> int:
    return int(D(price) * 100)


def order(side: str, kind: str = "MARKET", cid: str = "c1", **params: str) -> OrderRequest:
    base = {"symbol": "BTCUSDT", "side": side, "type": kind}
    if kind == "LIMIT":
        base["timeInForce"] = params.pop("timeInForce", "GTC")
    return OrderRequest.from_params({**base, **params, "newClientOrderId": cid}, client_order_id="unused")


def api_error(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    return info.value


# -- signing (pure) -----------------------------------------------------------------------------


def test_signed_request_rules() -> None:
    creds = Credentials()
    query = urlencode({"symbol": "BTCUSDT", "timestamp": NOW, "recvWindow": 5000})
    good = f"{query}&signature={sign(creds.api_secret, query)}"
    assert verify_signed(creds, DEFAULT_API_KEY, good, "", NOW + 10)["symbol"] == "BTCUSDT"
    # a POST signs the body; the query string (here empty) and the body are concatenated
    assert verify_signed(creds, DEFAULT_API_KEY, "", good, NOW)["recvWindow"] == "5000"
    wrong_key = api_error(verify_signed, creds, "other", good, "", NOW)
    assert (wrong_key.status, wrong_key.code) == (401, -2015)
    assert api_error(verify_signed, creds, None, good, "", NOW).code == -2015
    tampered = good.replace("BTCUSDT", "ETHUSDT")
    assert api_error(verify_signed, creds, DEFAULT_API_KEY, tampered, "", NOW).code == -1022
    other_secret = f"{query}&signature={sign('not-the-secret', query)}"
    assert api_error(verify_signed, creds, DEFAULT_API_KEY, other_secret, "", NOW).code == -1022
    stale = api_error(verify_signed, creds, DEFAULT_API_KEY, good, "", NOW + 5001)
    assert (stale.code, stale.msg) == (-1021, "Timestamp for this request is outside of the recvWindow.")
    assert api_error(verify_signed, creds, DEFAULT_API_KEY, good, "", NOW - 1000).code == -1021  # 1 s ahead
    unsigned = api_error(verify_signed, creds, DEFAULT_API_KEY, query, "", NOW)
    assert unsigned.code == -1102 and "signature" in unsigned.msg
    no_time = "symbol=BTCUSDT"
    assert api_error(verify_signed, creds, DEFAULT_API_KEY, f"{no_time}&signature={sign(creds.api_secret, no_time)}", "", NOW).code == -1102
    # the default recvWindow is 5000 ms
    bare = f"timestamp={NOW}"
    assert api_error(verify_signed, creds, DEFAULT_API_KEY, f"{bare}&signature={sign(creds.api_secret, bare)}", "", NOW + 5001).code == -1021


def test_ws_api_signature_is_over_sorted_params() -> None:
    creds = Credentials("k", "s")
    params: dict[str, Any] = {"timestamp": NOW, "apiKey": "k", "recvWindow": 10000}
    params["signature"] = sign("s", f"apiKey=k&recvWindow=10000&timestamp={NOW}")
    verify_ws_signed(creds, params, NOW)
    assert api_error(verify_ws_signed, creds, {**params, "timestamp": NOW + 1}, NOW).code == -1022
    assert api_error(verify_ws_signed, creds, {**params, "apiKey": "x"}, NOW).code == -2015
    assert "s" not in repr(Credentials("k", "s")).replace("Credentials", "")  # the secret never shows


# -- account (pure) -----------------------------------------------------------------------------


def test_market_orders_move_balances_by_notional_and_fee() -> None:
    account = Account([BTC], {"USDT": D(10000)})
    buy = account.place(order("BUY", quantity="0.01"), ticks("50000.00"), NOW)
    assert [e.kind for e in buy] == ["NEW", "TRADE"]
    fill = buy[-1].fill
    assert (fill.price, fill.qty, fill.quote_qty, fill.commission) == (D("50000"), D("0.01"), D("500"), D("0.5"))
    assert account.balances["USDT"].free == D(10000) - D(500) - D("0.5")
    assert account.balances["BTC"].free == D("0.01")
    account.place(order("SELL", cid="c2", quantity="0.004"), ticks("51234.57"), NOW + 1)
    notional = D("0.004") * D("51234.57")
    assert account.balances["USDT"].free == D("9499.5") + notional - (notional * D("0.001")).quantize(D("1e-8"))
    assert account.balances["BTC"].free == D("0.006")
    # quoteOrderQty spends that much quote, the quantity rounded down to the lot step
    spent = account.place(order("BUY", cid="c3", quoteOrderQty="100"), ticks("30000.00"), NOW + 2)[-1]
    assert spent.fill.qty == D("0.00333") and spent.order.orig_quote_qty == D(100)
    assert [f.id for f in account.trades("BTCUSDT")] == [1, 2, 3]


def test_refusals_use_binance_codes() -> None:
    account = Account([BTC], {"USDT": D(100)})
    price = ticks("50000.00")
    broke = api_error(account.place, order("BUY", quantity="0.002"), price, NOW)  # 100 + fee > 100
    assert (broke.code, broke.msg) == (-2010, "Account has insufficient balance for requested action.")
    assert api_error(account.place, order("SELL", quantity="0.001"), price, NOW).code == -2010
    assert api_error(account.place, order("BUY", quantity="0.000001"), price, NOW).msg == "Filter failure: LOT_SIZE"
    assert api_error(account.place, order("BUY", quantity="0.00001"), price, NOW).msg == "Filter failure: NOTIONAL"
    bad_price = api_error(account.place, order("BUY", "LIMIT", quantity="0.001", price="50000.001"), price, NOW)
    assert (bad_price.code, bad_price.msg) == (-1013, "Filter failure: PRICE_FILTER")
    account.place(order("BUY", quantity="0.001", cid="same"), price, NOW)
    duplicate = api_error(account.place, order("BUY", quantity="0.001", cid="same"), price, NOW)
    assert (duplicate.code, duplicate.msg) == (-2010, "Duplicate order sent.")
    assert len(account.fills) == 1 and not account.orders.keys() - {1}
    assert api_error(account.find, "BTCUSDT", 99).code == -2013
    assert api_error(account.cancel, "BTCUSDT", 1, None, "x", NOW).code == -2011  # filled: not cancelable
    assert api_error(OrderRequest.from_params, {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT"}, "c").code == -1102
    assert api_error(OrderRequest.from_params, {"symbol": "BTCUSDT", "side": "HOLD", "type": "MARKET"}, "c").code == -1117
    assert api_error(OrderRequest.from_params, {"symbol": "BTCUSDT", "side": "BUY", "type": "STOP"}, "c").code == -1116


def test_limit_orders_lock_funds_and_fill_when_the_path_crosses() -> None:
    account = Account([BTC], {"USDT": D(1000), "BTC": D("0.01")})
    buy = account.place(order("BUY", "LIMIT", cid="b", quantity="0.01", price="49000.00"), ticks("50000.00"), NOW)
    assert [e.kind for e in buy] == ["NEW"] and buy[0].order.is_open
    assert account.balances["USDT"] == Balance(D(1000) - D("490.49"), D("490.49"))
    account.place(order("SELL", "LIMIT", cid="s", quantity="0.01", price="52000.00"), ticks("50000.00"), NOW)
    assert account.balances["BTC"].locked == D("0.01") and [o.client_order_id for o in account.open_orders()] == ["b", "s"]
    # a path that never reaches either limit fills nothing
    assert account.match("BTCUSDT", np.array([NOW + 1, NOW + 2]), np.array([ticks("49000.01"), ticks("51999.99")])) == []
    # the buy fills at its limit, at the time of the first trade at or through it
    times = np.array([NOW + 10, NOW + 20, NOW + 30])
    filled = account.match("BTCUSDT", times, np.array([ticks("49500.00"), ticks("48999.00"), ticks("48000.00")]))
    assert [(e.kind, e.order.client_order_id, e.time, e.fill.price, e.fill.is_maker) for e in filled] == [
        ("TRADE", "b", NOW + 20, D(49000), True)
    ]
    assert account.balances["USDT"] == Balance(D(1000) - D("490.49"), D(0))
    assert account.balances["BTC"].free == D("0.01")
    canceled = account.cancel("BTCUSDT", None, "s", "cancel-1", NOW + 40)
    assert canceled.order.status == "CANCELED" and account.balances["BTC"] == Balance(D("0.02"), D(0))
    assert account.open_orders() == []
    # a marketable limit order fills at once at the current price; IOC that cannot fill expires
    taker = account.place(order("BUY", "LIMIT", cid="t", quantity="0.001", price="60000.00"), ticks("50000.00"), NOW)
    assert taker[-1].fill.price == D(50000) and not taker[-1].fill.is_maker
    ioc = account.place(order("BUY", "LIMIT", cid="i", quantity="0.001", price="40000.00", timeInForce="IOC"), ticks("50000.00"), NOW)
    assert [e.kind for e in ioc] == ["NEW", "EXPIRED"] and account.balances["USDT"].locked == 0


def test_balances_and_trading_faults_parse() -> None:
    assert parse_balances("USDT=10000, btc=0.5") == {"USDT": D(10000), "BTC": D("0.5")}
    for bad in ("USDT", "USDT=-1", "USDT=x", ""):
        with pytest.raises(ConfigError):
            parse_balances(bad)
    assert parse_fault({"kind": "reject"}).msg == "Account has insufficient balance for requested action."
    assert parse_fault({"kind": "reject", "code": -1013, "msg": "Filter failure: LOT_SIZE"}).code == -1013
    assert parse_fault({"kind": "lose_response"}).status == 0  # 0: drop the connection
    assert parse_fault({"kind": "lose_response", "status": 503, "count": 2}).count == 2
    for bad in ({"kind": "reject", "code": 5}, {"kind": "reject", "code": -9999}, {"kind": "lose_response", "status": 429},
                {"kind": "user_stream_drop", "count": 1}):  # fmt: skip
        with pytest.raises(ConfigError):
            parse_fault(bad)


# -- the real ccxt client against the simulator -----------------------------------------------------


def trade(sim: Any, body: Any, **client: Any) -> Any:
    """Run ``body(exchange)`` with a ccxt.pro client holding the simulator's default key pair."""
    return asyncio.run(with_exchange(sim.url, body, **{**KEYS, **client}))


def listeners(sim: Any) -> int:
    """How many user data stream connections the simulator has."""
    return sim.call(lambda: len(sim.simulator.trading.listeners))


@pytest.fixture
def exchange_sim(make_simulator: Any) -> Any:
    """A BTC/USDT simulator at 600x whose account holds 10000 USDT and 0.1 BTC."""
    return make_simulator(["BTC/USDT"], seed=7, balances="USDT=10000,BTC=0.1")


def test_market_orders_balances_and_my_trades(exchange_sim: Any) -> None:
    async def body(ex: Any) -> tuple[dict, dict, dict, list]:
        before = await ex.fetch_balance()
        bought = await ex.create_order("BTC/USDT", "market", "buy", 0.01, params={"newClientOrderId": "buy-1"})
        sold = await ex.create_order("BTC/USDT", "market", "sell", 0.02)
        after = await ex.fetch_balance()
        by_id = await ex.fetch_order(bought["id"], "BTC/USDT")
        by_client = await ex.fetch_order(None, "BTC/USDT", params={"origClientOrderId": "buy-1"})
        assert by_id["id"] == by_client["id"] == bought["id"] and by_client["status"] == "closed"
        return before, after, {"buy": bought, "sell": sold}, await ex.fetch_my_trades("BTC/USDT")

    before, after, orders, trades = trade(exchange_sim, body)
    record = exchange_sim.account()
    buy, sell = record.fills
    assert orders["buy"]["clientOrderId"] == "buy-1" and orders["buy"]["status"] == "closed"
    assert orders["buy"]["average"] == float(buy.price) and orders["sell"]["filled"] == 0.02
    # balances move by exactly qty * price and the fee (in USDT, 0.1% of the notional)
    assert buy.quote_qty == D("0.01") * buy.price and buy.commission == (buy.quote_qty / 1000).quantize(D("1e-8"))
    usdt = D(before["info"]["balances"][1]["free"]) - buy.quote_qty - buy.commission + sell.quote_qty - sell.commission
    assert after["info"]["balances"] == [
        {"asset": "BTC", "free": "0.09000000", "locked": "0.00000000"},
        {"asset": "USDT", "free": f"{usdt:.8f}", "locked": "0.00000000"},
    ]
    assert (after["USDT"]["free"], after["BTC"]["free"]) == (float(usdt), 0.09)
    # myTrades is the simulator's record, fill for fill
    assert [(t["id"], t["order"], t["side"], t["price"], t["amount"], t["fee"]["cost"], t["timestamp"]) for t in trades] == [
        (str(f.id), str(f.order_id), f.side.lower(), float(f.price), float(f.qty), float(f.commission), f.time)
        for f in record.fills
    ]
    # market orders fill at the simulator's current price: its last trade at the fill's time
    for fill in record.fills:
        last = exchange_sim.call(exchange_sim.simulator.view.recent_trades, "BTC/USDT", 1, fill.time)
        assert fill.price == D(BTC.price(last.p[-1])) and not fill.is_maker


def test_market_buy_by_cost_and_response_types(exchange_sim: Any) -> None:
    async def body(ex: Any) -> tuple[dict, dict, dict]:
        by_cost = await ex.create_market_buy_order_with_cost("BTC/USDT", 100)  # quoteOrderQty=100
        ack = await ex.create_order("BTC/USDT", "market", "sell", 0.001, params={"newOrderRespType": "ACK"})
        result = await ex.create_order("BTC/USDT", "market", "sell", 0.001, params={"newOrderRespType": "RESULT"})
        return by_cost, ack, result

    by_cost, ack, result = trade(exchange_sim, body)
    spent, *_ = exchange_sim.account().fills
    assert spent.qty == (D(100) / spent.price).quantize(D("0.00001"), rounding="ROUND_DOWN")
    assert spent.quote_qty <= 100 < spent.quote_qty + spent.price * D("0.00001")
    assert by_cost["info"]["origQuoteOrderQty"] == "100.00000000" and by_cost["cost"] == float(spent.quote_qty)
    assert set(ack["info"]) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    assert "fills" not in result["info"] and result["info"]["status"] == "FILLED" and "fills" in by_cost["info"]


def test_limit_orders_rest_cancel_and_fill(exchange_sim: Any) -> None:
    async def body(ex: Any) -> tuple[dict, dict, dict]:
        ticker_price = (await ex.fetch_ohlcv("BTC/USDT", "1m", limit=1))[-1][4]
        far = await ex.create_order("BTC/USDT", "limit", "buy", 0.01, round(ticker_price * 0.5, 2))
        assert far["status"] == "open"
        assert [o["id"] for o in await ex.fetch_open_orders("BTC/USDT")] == [far["id"]]
        locked = (await ex.fetch_balance())["USDT"]["used"]
        canceled = await ex.cancel_order(far["id"], "BTC/USDT")
        assert canceled["status"] == "canceled" and await ex.fetch_open_orders("BTC/USDT") == []
        assert (await ex.fetch_balance())["USDT"]["used"] == 0 and locked > 0
        for _ in range(5):  # at 600x a slow machine may see the price pass 0.3% before the order lands
            now_price = (await ex.fetch_trades("BTC/USDT", limit=1))[-1]["price"]
            near = await ex.create_order("BTC/USDT", "limit", "sell", 0.01, round(now_price * 1.003, 2))
            if near["status"] == "open":  # rests: above the price when placed
                break
        filled = await until_async(lambda: ex.fetch_order(near["id"], "BTC/USDT"), lambda o: o["status"] == "closed", "limit fill")
        return far, near, filled

    far, near, filled = trade(exchange_sim, body)
    record = exchange_sim.account()
    assert near["status"] == "open"
    assert [o.status for o in record.orders][:1] == ["CANCELED"] and {o.status for o in record.orders[1:]} == {"FILLED"}
    assert record.orders[-1].order_id == int(near["id"])
    fill = record.fills[-1]
    assert fill.is_maker and fill.price == D(str(near["price"])) and filled["average"] == near["price"]
    with pytest.raises(ccxt.OrderNotFound):
        trade(exchange_sim, lambda ex: ex.cancel_order(far["id"], "BTC/USDT"))  # canceled already: -2011


async def until_async(fetch: Any, done: Any, what: str, timeout: float = 20.0) -> Any:
    """Await ``fetch()`` until ``done(result)``; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = await fetch()
        if done(result):
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_auth_and_order_errors_map_to_ccxt_exceptions(exchange_sim: Any) -> None:
    async def expect(error: type[Exception], call: Any, **client: Any) -> str:
        async def body(ex: Any) -> str:
            with pytest.raises(error) as info:
                await call(ex)
            return str(info.value)

        return await with_exchange(exchange_sim.url, body, **{**KEYS, **client})

    async def body() -> None:
        balance = lambda ex: ex.fetch_balance()  # noqa: E731
        assert "-2015" in await expect(ccxt.AuthenticationError, balance, api_key="someone-else")
        assert "-1022" in await expect(ccxt.AuthenticationError, balance, secret="wrong-secret")
        # a client clock 60 s behind (ccxt subtracts timeDifference from its timestamps): -1021
        assert "-1021" in await expect(ccxt.InvalidNonce, balance, options={"timeDifference": 60_000})
        too_much = lambda ex: ex.create_order("BTC/USDT", "market", "buy", 1.0)  # noqa: E731
        await expect(ccxt.InsufficientFunds, too_much)
        await expect(ccxt.OrderNotFound, lambda ex: ex.fetch_order("424242", "BTC/USDT"))
        # ccxt maps -1013 "Filter failure: NOTIONAL" to BadRequest (as for the real Binance)
        assert "NOTIONAL" in await expect(ccxt.BadRequest, lambda ex: ex.create_order("BTC/USDT", "market", "buy", 0.00001))

    asyncio.run(body())
    assert exchange_sim.account().orders == []  # nothing refused was placed


def test_duplicate_client_order_id_is_refused(exchange_sim: Any) -> None:
    async def body(ex: Any) -> str:
        await ex.create_order("BTC/USDT", "market", "buy", 0.001, params={"clientOrderId": "bar-7-buy"})
        with pytest.raises(ccxt.InvalidOrder) as info:
            await ex.create_order("BTC/USDT", "market", "buy", 0.001, params={"clientOrderId": "bar-7-buy"})
        return str(info.value)

    assert "Duplicate order sent." in trade(exchange_sim, body)
    assert len(exchange_sim.account().fills) == 1


def test_watch_orders_and_balance_receive_user_stream_events(exchange_sim: Any) -> None:
    async def body(ex: Any) -> tuple[list, dict, list]:
        watching = asyncio.ensure_future(ex.watch_orders("BTC/USDT"))
        await until(lambda: listeners(exchange_sim), "user stream subscription")
        balance = asyncio.ensure_future(ex.watch_balance())
        my_trades = asyncio.ensure_future(ex.watch_my_trades("BTC/USDT"))
        await ex.create_order("BTC/USDT", "market", "buy", 0.002, params={"clientOrderId": "watched"})
        orders = await asyncio.wait_for(watching, 10)
        seen = list(orders)
        while seen[-1]["status"] != "closed":
            seen = list(await asyncio.wait_for(ex.watch_orders("BTC/USDT"), 10))
        return seen, await asyncio.wait_for(balance, 10), await asyncio.wait_for(my_trades, 10)

    orders, balance, my_trades = trade(exchange_sim, body)
    fill = exchange_sim.account().fills[0]
    assert [(t["id"], t["order"], t["price"], t["amount"]) for t in my_trades] == [("1", "1", float(fill.price), 0.002)]
    last = orders[-1]
    assert (last["clientOrderId"], last["status"], last["filled"], last["average"], last["fee"]["cost"]) == (
        "watched", "closed", 0.002, float(fill.price), float(fill.commission)
    )
    assert [t["id"] for t in last["trades"]] == [str(fill.id)] and last["timestamp"] == fill.time
    assert balance["BTC"]["free"] == pytest.approx(0.102)


def test_listen_key_stream_sends_binance_events(exchange_sim: Any) -> None:
    async def body(ex: Any) -> tuple[dict, dict]:
        async with aiohttp.ClientSession(headers={"X-MBX-APIKEY": DEFAULT_API_KEY}) as http:
            async with http.post(f"{exchange_sim.url}/api/v3/userDataStream") as response:
                key = (await response.json())["listenKey"]
            async with http.put(f"{exchange_sim.url}/api/v3/userDataStream", data={"listenKey": key}) as response:
                assert response.status == 200
            async with http.put(f"{exchange_sim.url}/api/v3/userDataStream", data={"listenKey": "nope"}) as response:
                assert response.status == 400 and (await response.json())["code"] == -1125
            ws_base = exchange_sim.url.replace("http", "ws")
            ws = await http.ws_connect(f"{ws_base}/ws/{key}")
            # ccxt's own listenKey URL for spot is the stream base + "/" + key: served too
            under_stream = await http.ws_connect(f"{ws_base}/stream/ws/{key}")
            await until(lambda: listeners(exchange_sim) == 2, "both listeners")
            await ex.create_order("BTC/USDT", "market", "sell", 0.01, params={"clientOrderId": "raw"})
            events = [orjson.loads((await ws.receive(timeout=10)).data) for _ in range(3)]
            assert [orjson.loads((await under_stream.receive(timeout=10)).data) for _ in range(3)] == events
            assert [(e["e"], e.get("x")) for e in events] == [
                ("executionReport", "NEW"), ("executionReport", "TRADE"), ("outboundAccountPosition", None)
            ]
            await under_stream.close()
            async with http.delete(f"{exchange_sim.url}/api/v3/userDataStream", data={"listenKey": key}) as response:
                assert response.status == 200
            closed = await ws.receive(timeout=10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await ws.close()
            return events[-2], events[-1]

    report, position = trade(exchange_sim, body)
    fill = exchange_sim.account().fills[0]
    assert {k: report[k] for k in ("e", "s", "c", "S", "o", "x", "X", "l", "z", "L", "n", "N", "t", "T")} == {
        "e": "executionReport", "s": "BTCUSDT", "c": "raw", "S": "SELL", "o": "MARKET", "x": "TRADE", "X": "FILLED",
        "l": "0.01000000", "z": "0.01000000", "L": f"{fill.price:.8f}", "n": f"{fill.commission:.8f}", "N": "USDT",
        "t": fill.id, "T": fill.time,
    }  # fmt: skip
    balances = exchange_sim.account().balances
    assert position["e"] == "outboundAccountPosition" and position["B"] == [
        {"a": "BTC", "f": "0.09000000", "l": "0.00000000"},
        {"a": "USDT", "f": f"{balances['USDT'].free:.8f}", "l": "0.00000000"},
    ]


def test_cli_refuses_a_malformed_balance(run_cli: Any) -> None:
    code, _out, err = run_cli("sim", "--symbols", "BTC/USDT", "--port", "0", "--balance", "USDT=lots")
    assert code == 2 and err.startswith("error:") and "USDT=lots" in err and "Traceback" not in err


def test_cli_flags_set_the_account_and_its_keys() -> None:
    cli = [str(Path(sys.executable).with_name("tradpal-ray"))]
    flags = ["--balance", "USDT=500,BTC=0.25", "--fee", "0.002", "--api-key", "cli-key", "--api-secret", "cli-secret"]
    proc = subprocess.Popen(
        [*cli, "sim", "--port", "0", "--symbols", "BTC/USDT", "--speed", "60", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TRADPAL_LOG_LEVEL": "WARNING"},
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        exchange = create_exchange("sim", url=url, api_key="cli-key", secret="cli-secret")
        balance = exchange.fetch_balance()
        assert (balance["USDT"]["free"], balance["BTC"]["free"]) == (500.0, 0.25)
        assert balance["info"]["commissionRates"]["taker"] == "0.00200000"
        with pytest.raises(ccxt.AuthenticationError):
            create_exchange("sim", url=url, **KEYS).fetch_balance()  # the default pair is not accepted now
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()


def test_simulator_actor_trades_and_reports_its_account(ray_session: None) -> None:
    import ray

    from tradpal_ray.sim import SimulatorActor

    actor = SimulatorActor.remote(["BTC/USDT"], speed=600, start="2024-03-01", balances={"USDT": 1000})
    url = ray.get(actor.start.remote())
    try:
        exchange = create_exchange("sim", url=url, **KEYS)
        placed = exchange.create_order("BTC/USDT", "market", "buy", 0.001)
        record = ray.get(actor.account.remote())
        assert [(o.order_id, o.status) for o in record.orders] == [(int(placed["id"]), "FILLED")]
        fill = record.fills[0]
        assert record.balances["USDT"].free == 1000 - fill.quote_qty - fill.commission
    finally:
        ray.get(actor.stop.remote())
        ray.kill(actor)
