"""Binance wire shapes: REST rows and pre-encoded WebSocket frames (orjson bytes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from tradpal_ray.sim.market import Bars, SymbolSpec, Trades, fmt_decimal


def exchange_symbol(spec: SymbolSpec) -> dict[str, Any]:
    """One ``symbols[]`` entry of ``/api/v3/exchangeInfo`` with price/lot/notional filters."""
    tick = fmt_decimal(1, spec.price_decimals)
    step = fmt_decimal(1, spec.qty_decimals)
    return {
        "symbol": spec.id,
        "status": "TRADING",
        "baseAsset": spec.base,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "10000000",
                "tickSize": tick,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": step,
                "maxQty": "90000000",
                "stepSize": step,
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": "5",
                "applyMinToMarket": True,
                "maxNotional": "9000000",
            },
        ],
    }


def _quote_parts(spec: SymbolSpec, bars: Bars, i: int) -> tuple[str, str, str]:
    """Quote volume, taker-buy base and taker-buy quote volume of bar ``i`` (priced at its mid)."""
    mid = (int(bars.h[i]) + int(bars.l[i])) // 2
    volume = int(bars.v[i])
    return (
        spec.notional(volume, mid),
        spec.qty(volume // 2),
        spec.notional(volume // 2, mid),
    )


def kline_rows(spec: SymbolSpec, period_ms: int, bars: Bars) -> list[list[Any]]:
    """``/api/v3/klines`` rows: ``[t, o, h, l, c, v, T, q, n, V, Q, "0"]``."""
    rows = []
    for i in range(len(bars)):
        t = int(bars.t[i])
        quote, taker_base, taker_quote = _quote_parts(spec, bars, i)
        rows.append(
            [
                t, spec.price(bars.o[i]), spec.price(bars.h[i]), spec.price(bars.l[i]), spec.price(bars.c[i]),
                spec.qty(bars.v[i]), t + period_ms - 1, quote, int(bars.n[i]), taker_base, taker_quote, "0",
            ]
        )  # fmt: skip
    return rows


def kline_frames(
    spec: SymbolSpec,
    timeframe: str,
    period_ms: int,
    bars: Bars,
    closed: bool,
    event_ms: int,
) -> list[bytes]:
    """Kline stream events for ``bars`` (``"x": closed``)."""
    frames = []
    for i in range(len(bars)):
        t, n, first = int(bars.t[i]), int(bars.n[i]), int(bars.f[i])
        quote, taker_base, taker_quote = _quote_parts(spec, bars, i)
        kline = {
            "t": t, "T": t + period_ms - 1, "s": spec.id, "i": timeframe,
            "f": first if n else -1, "L": first + n - 1 if n else -1,
            "o": spec.price(bars.o[i]), "c": spec.price(bars.c[i]), "h": spec.price(bars.h[i]),
            "l": spec.price(bars.l[i]), "v": spec.qty(bars.v[i]), "n": n, "x": closed,
            "q": quote, "V": taker_base, "Q": taker_quote, "B": "0",
        }  # fmt: skip
        frames.append(
            orjson.dumps({"e": "kline", "E": event_ms, "s": spec.id, "k": kline})
        )
    return frames


def _trade_columns(
    spec: SymbolSpec, trades: Trades
) -> Iterator[tuple[int, int, str, str, bool]]:
    """Per trade: id, time, price string, quantity string, buyer-is-maker."""
    pd, qd = spec.price_decimals, spec.qty_decimals
    prices = [fmt_decimal(p, pd) for p in trades.p.tolist()]
    qtys = [fmt_decimal(q, qd) for q in trades.q.tolist()]
    return zip(trades.id.tolist(), trades.t.tolist(), prices, qtys, trades.m.tolist())


# The hot path (a firehose of trades) formats frames from a template: byte-identical to
# orjson.dumps of the event dict (a unit test checks) at a third of the cost and no garbage.
_TRADE = '{"e":"trade","E":%d,"s":"%s","t":%d,"p":"%s","q":"%s","T":%d,"m":%s,"M":true}'
_AGG_TRADE = '{"e":"aggTrade","E":%d,"s":"%s","a":%d,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}'
_JSON_BOOL = {True: "true", False: "false"}


def trade_frames(spec: SymbolSpec, trades: Trades) -> list[bytes]:
    """``<symbol>@trade`` stream events."""
    sid = spec.id
    return [
        (_TRADE % (t, sid, i, p, q, t, _JSON_BOOL[m])).encode()
        for i, t, p, q, m in _trade_columns(spec, trades)
    ]


def agg_trade_frames(spec: SymbolSpec, trades: Trades) -> list[bytes]:
    """``<symbol>@aggTrade`` stream events (one trade per aggregate)."""
    sid = spec.id
    return [
        (_AGG_TRADE % (t, sid, i, p, q, i, i, t, _JSON_BOOL[m])).encode()
        for i, t, p, q, m in _trade_columns(spec, trades)
    ]


def agg_trade_rows(spec: SymbolSpec, trades: Trades) -> list[dict[str, Any]]:
    """``/api/v3/aggTrades`` rows (one trade per aggregate, ids sequential)."""
    return [
        {"a": i, "p": p, "q": q, "f": i, "l": i, "T": t, "m": m, "M": True}
        for i, t, p, q, m in _trade_columns(spec, trades)
    ]


def trade_rows(spec: SymbolSpec, trades: Trades) -> list[dict[str, Any]]:
    """``/api/v3/trades`` rows."""
    return [
        {
            "id": i,
            "price": p,
            "qty": q,
            "quoteQty": spec.notional(qi, pi),
            "time": t,
            "isBuyerMaker": m,
            "isBestMatch": True,
        }
        for (i, t, p, q, m), pi, qi in zip(
            _trade_columns(spec, trades), trades.p.tolist(), trades.q.tolist()
        )
    ]


def ticker_24h(
    spec: SymbolSpec, day: Bars, now_ms: int, last_qty: int
) -> dict[str, Any]:
    """``/api/v3/ticker/24hr`` entry from the base bars of the last 24 hours."""
    if not len(day):
        zero = spec.price(0)
        return {"symbol": spec.id, "lastPrice": zero, "openPrice": zero, "highPrice": zero, "lowPrice": zero,
                "volume": spec.qty(0), "quoteVolume": "0", "count": 0, "openTime": now_ms, "closeTime": now_ms,
                "firstId": -1, "lastId": -1}  # fmt: skip
    open_, last = int(day.o[0]), int(day.c[-1])
    volume = int(day.v.sum())
    count = int(day.n.sum())
    traded = day.n > 0
    first = int(day.f[traded][0]) if traded.any() else -1
    change = last - open_
    return {
        "symbol": spec.id,
        "priceChange": spec.price(change),
        "priceChangePercent": f"{100.0 * change / open_:.3f}",
        "weightedAvgPrice": spec.price((int(day.h.max()) + int(day.l.min())) // 2),
        "prevClosePrice": spec.price(open_),
        "lastPrice": spec.price(last),
        "lastQty": spec.qty(last_qty),
        "bidPrice": spec.price(last - 1),
        "bidQty": spec.qty(1),
        "askPrice": spec.price(last),
        "askQty": spec.qty(1),
        "openPrice": spec.price(open_),
        "highPrice": spec.price(day.h.max()),
        "lowPrice": spec.price(day.l.min()),
        "volume": spec.qty(volume),
        "quoteVolume": spec.notional(volume, last),
        "openTime": now_ms - 86_400_000,
        "closeTime": now_ms,
        "firstId": first,
        "lastId": first + count - 1 if count else -1,
        "count": count,
    }


def error_body(code: int, msg: str) -> bytes:
    """Binance REST error body ``{"code": -1121, "msg": "Invalid symbol."}``."""
    return orjson.dumps({"code": code, "msg": msg})


def ws_result(request_id: Any, result: Any = None) -> bytes:
    """Reply to a stream control request."""
    return orjson.dumps({"result": result, "id": request_id})


def ws_error(request_id: Any, msg: str, code: int = 2) -> bytes:
    """Error reply to a bad client frame."""
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id})
