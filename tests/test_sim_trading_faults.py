"""Trading faults of the simulator, seen through the real ccxt client: what the client gets,
and that the simulator's own record of the account stays right (nothing lost, nothing doubled).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import ccxt
import pytest
from test_sim import until, with_exchange
from test_sim_trading import KEYS, listeners

ORDER = ("BTC/USDT", "market", "buy", 0.001)


@pytest.fixture
def exchange_sim(make_simulator: Any) -> Any:
    """A BTC/USDT simulator at 600x; its account holds 10000 USDT."""
    return make_simulator(["BTC/USDT"], seed=11, balances="USDT=10000")


def trade(sim: Any, body: Any) -> Any:
    return asyncio.run(with_exchange(sim.url, body, **KEYS))


async def inject_over_http(sim: Any, fault: dict[str, Any]) -> dict[str, Any]:
    """Inject a fault the way an outside process would: ``POST /__sim/fault``."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.url}/__sim/fault", json=fault) as response:
            assert response.status == 200
            return await response.json()


def test_reject_answers_with_the_given_binance_code(exchange_sim: Any) -> None:
    async def body(ex: Any) -> dict:
        await inject_over_http(exchange_sim, {"kind": "reject"})  # default: -2010 insufficient balance
        with pytest.raises(ccxt.InsufficientFunds, match="insufficient balance"):
            await ex.create_order(*ORDER)
        exchange_sim.inject("reject", code=-1013, msg="Filter failure: LOT_SIZE")
        with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
            await ex.create_order(*ORDER)
        return await ex.create_order(*ORDER)  # the fault was used up

    placed = trade(exchange_sim, body)
    record = exchange_sim.account()
    assert [o.order_id for o in record.orders] == [int(placed["id"])] and len(record.fills) == 1
    assert exchange_sim.stats()["faults"]["served"]["reject"] == 2


@pytest.mark.parametrize(
    ("status", "error"), [(None, ccxt.ExchangeNotAvailable), (503, ccxt.ExchangeNotAvailable)], ids=["dropped", "503"]
)
def test_accepted_order_with_lost_response_is_found_and_never_doubled(
    exchange_sim: Any, status: int | None, error: type[Exception]
) -> None:
    params = {"clientOrderId": "trader-a:1709251200000:buy"}

    async def body(ex: Any) -> tuple[dict, str]:
        exchange_sim.inject("lose_response", **({} if status is None else {"status": status}))
        with pytest.raises(error):
            await ex.create_order(*ORDER, params=params)
        # the client does not know; asking by its own client order id finds the order, filled
        found = await ex.fetch_order(None, "BTC/USDT", params={"origClientOrderId": params["clientOrderId"]})
        # and resending the same order is refused, so a retry never trades twice
        with pytest.raises(ccxt.InvalidOrder) as duplicate:
            await ex.create_order(*ORDER, params=params)
        async with aiohttp.ClientSession() as http, http.get(f"{exchange_sim.url}/__sim/account") as response:
            record = await response.json()  # the simulator's record, as an outside process reads it
        assert [(o["clientOrderId"], o["status"]) for o in record["orders"]] == [(params["clientOrderId"], "FILLED")]
        assert len(record["trades"]) == 1 and record["balances"]["BTC"]["free"] == "0.00100000"
        return found, str(duplicate.value)

    found, duplicate = trade(exchange_sim, body)
    assert found["status"] == "closed" and found["clientOrderId"] == params["clientOrderId"] and found["filled"] == 0.001
    assert "Duplicate order sent." in duplicate
    record = exchange_sim.account()
    assert len(record.orders) == 1 and len(record.fills) == 1 and record.fills[0].order_id == int(found["id"])
    assert exchange_sim.stats()["faults"]["served"]["lose_response"] == 1


def test_order_rate_limit_is_429_with_retry_after(exchange_sim: Any) -> None:
    async def body(ex: Any) -> tuple[str, dict]:
        exchange_sim.inject("order_rate_limit", retry_after=7)
        # ccxt's binance raises DDoSProtection for any HTTP 429 before it reads the -1015 body
        with pytest.raises(ccxt.DDoSProtection, match="-1015") as info:
            await ex.create_order(*ORDER)
        headers = {k.lower(): v for k, v in ex.last_response_headers.items()}
        assert ex.last_http_response and headers["retry-after"] == "7"
        return str(info.value), await ex.create_order(*ORDER)

    message, placed = trade(exchange_sim, body)
    assert "Too many new orders" in message
    assert [o.order_id for o in exchange_sim.account().orders] == [int(placed["id"])]


def test_user_stream_drop_fails_the_watch_and_a_new_watch_resubscribes(exchange_sim: Any) -> None:
    async def body(ex: Any) -> list:
        watching = asyncio.ensure_future(ex.watch_orders("BTC/USDT"))
        await until(lambda: listeners(exchange_sim), "user stream subscription")
        dropped = exchange_sim.inject("user_stream_drop")
        assert len(dropped["connections"]) == 1 and listeners(exchange_sim) == 0
        with pytest.raises(ccxt.NetworkError):
            await asyncio.wait_for(watching, 10)
        # the next watch dials again and subscribes again; events flow
        watching = asyncio.ensure_future(ex.watch_orders("BTC/USDT"))
        await until(lambda: listeners(exchange_sim), "user stream subscription again")
        await ex.create_order(*ORDER, params={"clientOrderId": "after-drop"})
        return list(await asyncio.wait_for(watching, 10))

    orders = trade(exchange_sim, body)
    assert orders[0]["clientOrderId"] == "after-drop"
    assert exchange_sim.stats()["faults"]["served"]["user_stream_drop"] == 1
