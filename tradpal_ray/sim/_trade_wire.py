"""Binance spot trading wire shapes: order / account / myTrades REST rows and user-stream events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson

from tradpal_ray.sim._account import Balance, Execution, Fill, Order


def fmt(value: Decimal) -> str:
    """Binance's decimal string: 8 decimals, or every decimal when more are needed to be exact."""
    return f"{value:.8f}" if value == value.quantize(Decimal("0.00000001")) else format(value.normalize(), "f")


def order_row(order: Order) -> dict[str, Any]:
    """``GET /api/v3/order`` (and ``openOrders``) row."""
    return {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.client_order_id,
        "price": fmt(order.price),
        "origQty": fmt(order.orig_qty),
        "executedQty": fmt(order.executed_qty),
        "cummulativeQuoteQty": fmt(order.cumulative_quote_qty),
        "status": order.status,
        "timeInForce": order.time_in_force,
        "type": order.type,
        "side": order.side,
        "stopPrice": fmt(Decimal(0)),
        "icebergQty": fmt(Decimal(0)),
        "time": order.time,
        "updateTime": order.update_time,
        "isWorking": True,
        "workingTime": order.time,
        "origQuoteOrderQty": fmt(order.orig_quote_qty),
        "selfTradePreventionMode": "NONE",
    }


def fill_row(fill: Fill) -> dict[str, Any]:
    """One entry of a FULL new-order response's ``fills``."""
    return {
        "price": fmt(fill.price),
        "qty": fmt(fill.qty),
        "commission": fmt(fill.commission),
        "commissionAsset": fill.commission_asset,
        "tradeId": fill.id,
    }


def new_order_response(order: Order, response_type: str) -> dict[str, Any]:
    """``POST /api/v3/order`` answer for ``newOrderRespType`` ACK, RESULT or FULL."""
    ack = {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.client_order_id,
        "transactTime": order.update_time,
    }
    if response_type == "ACK":
        return ack
    row = order_row(order)
    result = {
        **ack,
        **{key: row[key] for key in ("price", "origQty", "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty",
                                     "status", "timeInForce", "type", "side", "workingTime", "selfTradePreventionMode")},
    }  # fmt: skip
    if response_type == "FULL":
        result["fills"] = [fill_row(fill) for fill in order.fills]
    return result


def cancel_response(order: Order) -> dict[str, Any]:
    """``DELETE /api/v3/order`` answer."""
    row = order_row(order)
    return {
        "symbol": order.symbol,
        "origClientOrderId": order.client_order_id,
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.cancel_client_order_id,
        "transactTime": order.update_time,
        **{key: row[key] for key in ("price", "origQty", "executedQty", "cummulativeQuoteQty", "status",
                                     "timeInForce", "type", "side", "origQuoteOrderQty", "selfTradePreventionMode")},
    }  # fmt: skip


def my_trade_row(fill: Fill) -> dict[str, Any]:
    """``GET /api/v3/myTrades`` row."""
    return {
        "symbol": fill.symbol,
        "id": fill.id,
        "orderId": fill.order_id,
        "orderListId": -1,
        "price": fmt(fill.price),
        "qty": fmt(fill.qty),
        "quoteQty": fmt(fill.quote_qty),
        "commission": fmt(fill.commission),
        "commissionAsset": fill.commission_asset,
        "time": fill.time,
        "isBuyer": fill.side == "BUY",
        "isMaker": fill.is_maker,
        "isBestMatch": True,
    }


def account_info(balances: Mapping[str, Balance], fee_rate: Decimal, update_time: int) -> dict[str, Any]:
    """``GET /api/v3/account`` answer."""
    rate = fmt(fee_rate)
    bps = int(fee_rate * 10000)
    return {
        "makerCommission": bps,
        "takerCommission": bps,
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {"maker": rate, "taker": rate, "buyer": fmt(Decimal(0)), "seller": fmt(Decimal(0))},
        "canTrade": True,
        "canWithdraw": False,
        "canDeposit": False,
        "brokered": False,
        "requireSelfTradePrevention": False,
        "preventSor": False,
        "updateTime": update_time,
        "accountType": "SPOT",
        "balances": [
            {"asset": asset, "free": fmt(balance.free), "locked": fmt(balance.locked)}
            for asset, balance in sorted(balances.items())
        ],
        "permissions": ["SPOT"],
        "uid": 1,
    }


def execution_report(execution: Execution, event_ms: int) -> dict[str, Any]:
    """User-stream ``executionReport`` event of one execution."""
    order, fill = execution.order, execution.fill
    zero = fmt(Decimal(0))
    return {
        "e": "executionReport", "E": event_ms, "s": order.symbol,
        "c": order.cancel_client_order_id if execution.kind == "CANCELED" else order.client_order_id,
        "S": order.side, "o": order.type, "f": order.time_in_force, "q": fmt(order.orig_qty),
        "p": fmt(order.price), "P": zero, "F": zero, "g": -1,
        "C": order.client_order_id if execution.kind == "CANCELED" else "",
        "x": execution.kind, "X": order.status, "r": "NONE", "i": order.order_id,
        "l": fmt(fill.qty) if fill else zero, "z": fmt(order.executed_qty),
        "L": fmt(fill.price) if fill else zero, "n": fmt(fill.commission) if fill else zero,
        "N": fill.commission_asset if fill else None, "T": execution.time, "t": fill.id if fill else -1,
        "v": 0, "I": 0, "w": order.is_open, "m": fill.is_maker if fill else False, "M": False,
        "O": order.time, "Z": fmt(order.cumulative_quote_qty), "Y": fmt(fill.quote_qty) if fill else zero,
        "Q": fmt(order.orig_quote_qty), "W": order.time, "V": "NONE",
    }  # fmt: skip


def account_position(balances: Mapping[str, Balance], assets: Iterable[str], event_ms: int) -> dict[str, Any]:
    """User-stream ``outboundAccountPosition`` event for the assets that changed."""
    return {
        "e": "outboundAccountPosition",
        "E": event_ms,
        "u": event_ms,
        "B": [{"a": a, "f": fmt(balances[a].free), "l": fmt(balances[a].locked)} for a in sorted(assets)],
    }


def ws_api_event(subscription_id: int, event: dict[str, Any]) -> bytes:
    """A user-data event as the WebSocket API wraps it for a subscription."""
    return orjson.dumps({"subscriptionId": subscription_id, "event": event})


def ws_api_result(request_id: Any, result: Any) -> bytes:
    """A successful WebSocket API response."""
    return orjson.dumps({"id": request_id, "status": 200, "result": result})


def ws_api_error(request_id: Any, status: int, code: int, msg: str) -> bytes:
    """A failed WebSocket API response."""
    return orjson.dumps({"id": request_id, "status": status, "error": {"code": code, "msg": msg}})
