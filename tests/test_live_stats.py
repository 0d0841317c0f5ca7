"""Live statistics over the trade ledger (SQLite and a real PostgreSQL): the SQL aggregates, the
/live/* endpoints of the stats app (uvicorn, real Redis) cached and fresh on the very next
request after a fill, answers from the database when Redis is killed, and the page's traders view
in a real headless Chromium."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
from http_server import Server
from test_page import attribute, browse, chromium  # noqa: F401  (the chromium fixture)

from tradpal_ray.errors import ConfigError
from tradpal_ray.serve import build_app
from tradpal_ray.stats import StatsService
from tradpal_ray.stats._live import daily_stats, trade_counts, trader_equity, traders_view
from tradpal_ray.stats.local_redis import RedisProcess
from tradpal_ray.stats.queries import NotFound
from tradpal_ray.trading import Fill, Ledger, LiveCacheNotifier, Order, client_order_id
from tradpal_ray.trading._changes import generation_key, live_prefix

DAY = 86_400_000
D1 = 1_717_200_000_000 - 1_717_200_000_000 % DAY  # 2024-06-01 00:00 UTC


def round_trip(ledger: Ledger, trader: str, symbol: str, t_ms: int, entry: float, exit_: float, units: float = 1.0,
               reason: str = "signal") -> None:
    """A long round trip: a buy at ``t_ms`` and a sell an hour later (fees 0.1 % each side)."""
    for side, price, at, why in (("buy", entry, t_ms, "signal"), ("sell", exit_, t_ms + 3_600_000, reason)):
        cid = client_order_id(trader, symbol, at, side)
        ledger.record_order(Order(trader=trader, client_order_id=cid, symbol=symbol, side=side, units=units,
                                  bar_time_ms=at, reason=why, created_ms=at))
        ledger.record_fill(Fill(trader, cid, f"{cid}:0", symbol, side, units, price, units * price * 0.001, at))


def populate(ledger: Ledger) -> None:
    """Two traders over two days: a's three closed trades and an open one; b's one closed trade."""
    ledger.upsert_trader("a", {"strategy": "sma_cross"}, "running")
    ledger.upsert_trader("b", {"strategy": "rsi"}, "running")
    round_trip(ledger, "a", "BTC/USDT", D1 + 3_600_000, 100.0, 110.0)
    round_trip(ledger, "a", "BTC/USDT", D1 + 5 * 3_600_000, 110.0, 105.0, reason="stop_loss")
    round_trip(ledger, "a", "ETH/USDT", D1 + DAY + 3_600_000, 50.0, 60.0, units=2.0)
    round_trip(ledger, "b", "BTC/USDT", D1 + DAY + 7_200_000, 100.0, 99.0)
    cid = client_order_id("a", "BTC/USDT", D1 + 2 * DAY, "buy")
    ledger.record_fill(Fill("a", cid, f"{cid}:0", "BTC/USDT", "buy", 0.5, 120.0, 0.06, D1 + 2 * DAY))
    ledger.record_equity("a", D1, 10_000.0, 10_000.0)
    ledger.record_equity("a", D1 + DAY, 10_020.0, 10_020.0)
    ledger.record_event("a", "decision", {"bar_time_ms": D1 + DAY, "latency_ms": 4.25, "action": "buy"}, time_ms=D1 + DAY)
    ledger.record_event("a", "decision", {"bar_time_ms": D1 + 2 * DAY, "latency_ms": 2.5, "action": "hold"},
                        time_ms=D1 + 2 * DAY)
    ledger.record_event("a", "divergence", {"trades": 1, "return_pct": -0.4}, time_ms=D1 + 2 * DAY)
    ledger.set_status("b", "halted", "max daily loss")


def test_live_queries(make_ledger: Callable[..., Ledger]) -> None:
    ledger = make_ledger()
    populate(ledger)
    assert trade_counts(ledger) == {"status": "all", "trader": None, "count": 5, "all": 5, "open": 1, "closed": 4}
    assert trade_counts(ledger, "closed", "a")["count"] == 3 and trade_counts(ledger, "open", "b")["count"] == 0
    with pytest.raises(ConfigError):
        trade_counts(ledger, "pending")

    days = daily_stats(ledger)
    closed = pd.concat([ledger.closed_trades("a"), ledger.closed_trades("b")])
    by_day = closed.groupby(closed.exit_time.dt.strftime("%Y-%m-%d"))
    assert [d["day"] for d in days] == ["2024-06-01", "2024-06-02"] == list(by_day.groups)
    for row, (_, group) in zip(days, by_day, strict=True):
        assert row["trades"] == len(group) and row["wins"] == int((group.pnl > 0).sum())
        assert row["win_rate_pct"] == pytest.approx(100 * (group.pnl > 0).mean())
        assert row["pnl"] == pytest.approx(group.pnl.sum()) and row["best"] == pytest.approx(group.pnl.max())
        assert row["fees"] == pytest.approx((group.entry_fee + group.exit_fee).sum()) and row["worst"] == pytest.approx(group.pnl.min())
    assert daily_stats(ledger, day="2024-06-02", trader="b") == [
        {**daily_stats(ledger, day="2024-06-02", trader="b")[0], "trades": 1, "wins": 0, "win_rate_pct": 0.0}]
    assert daily_stats(ledger, day="2024-06-05") == []
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        daily_stats(ledger, day="2024-02-30")

    view = traders_view(ledger)
    a, b = view["traders"]
    assert (a["name"], a["status"], b["status"], b["reason"]) == ("a", "running", "halted", "max daily loss")
    assert [(p["symbol"], p["units"]) for p in a["positions"]] == [("BTC/USDT", 0.5), ("ETH/USDT", 0.0)]
    assert a["realized_pnl"] == pytest.approx(ledger.closed_trades("a").pnl.sum())
    assert a["equity"] == {"time_ms": D1 + DAY, "equity": 10_020.0, "cash": 10_020.0} and b["equity"] is None
    assert a["trades"] == {"all": 4, "open": 1, "closed": 3}
    assert a["last_decision"]["latency_ms"] == 2.5 and a["last_decision"]["time_ms"] == D1 + 2 * DAY
    assert a["divergence"] == {"time_ms": D1 + 2 * DAY, "trades": 1, "return_pct": -0.4} and b["divergence"] is None
    fills = view["recent_fills"]
    assert len(fills) == 9 and fills[0]["time_ms"] == D1 + 2 * DAY and fills[0]["units"] == 0.5
    assert [f["time_ms"] for f in fills] == sorted((f["time_ms"] for f in fills), reverse=True)

    assert trader_equity(ledger, "a") == {"trader": "a", "time_ms": [D1, D1 + DAY], "equity": [10_000.0, 10_020.0],
                                          "cash": [10_000.0, 10_020.0]}
    assert trader_equity(ledger, "b")["equity"] == []
    with pytest.raises(NotFound):
        trader_equity(ledger, "nobody")


@pytest.fixture
def live_site(backend_url: str | None, store_root: Path, make_redis: Callable[..., RedisProcess]) -> Iterator[dict[str, Any]]:
    """The app over this test's ledger with a private Redis; a writer ledger that notifies the cache."""
    from tradpal_ray.trading import open_ledger

    redis = make_redis()
    service = StatsService(store_root, redis.url, db_url=backend_url, retry_after=0.2)
    ledger = open_ledger(backend_url, store_root)
    ledger.on_change = LiveCacheNotifier(redis.url, ledger.identity)
    with Server(build_app(service, require_key=False)) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        yield {"http": http, "ledger": ledger, "redis": redis, "service": service, "url": server.url}
    ledger.on_change.close()
    ledger.close()


def counts(http: httpx.Client, kind: str) -> dict[str, int]:
    return http.get("/cache/stats").json()["by_kind"].get(kind, {})


def test_a_fill_is_visible_on_the_next_request(live_site: dict[str, Any]) -> None:
    http, ledger, redis = live_site["http"], live_site["ledger"], live_site["redis"]
    populate(ledger)
    first = http.get("/live/trades/count", params={"status": "closed"})
    assert first.status_code == 200 and first.json()["count"] == 4
    again = http.get("/live/trades/count", params={"status": "closed"})
    assert again.content == first.content and counts(http, "live_counts")["hit"] == 1
    with redis.client() as client:
        generation = client.get(live_prefix(ledger.identity) + generation_key("trades"))
        assert generation is not None and int(generation) >= 9  # one bump per fill so far

    round_trip(ledger, "b", "SOL/USDT", D1 + 3 * DAY, 10.0, 12.0)  # a new closed trade: the next request sees it
    assert http.get("/live/trades/count", params={"status": "closed"}).json()["count"] == 5
    assert http.get("/live/stats", params={"day": "2024-06-04"}).json()[0]["trades"] == 1
    traders = http.get("/live/traders").json()
    assert traders["recent_fills"][0]["symbol"] == "SOL/USDT"

    # Without the notice the cache would still answer the old count: the generation is what makes it fresh.
    quiet = type(ledger)(ledger.engine, ledger.identity)
    round_trip(quiet, "b", "SOL/USDT", D1 + 4 * DAY, 10.0, 11.0)
    assert http.get("/live/trades/count", params={"status": "closed"}).json()["count"] == 5
    ledger.record_fill(Fill("b", "x", "x:0", "SOL/USDT", "buy", 1.0, 10.0, 0.01, D1 + 5 * DAY))  # notifies
    assert http.get("/live/trades/count", params={"status": "closed"}).json() == {
        "status": "closed", "trader": None, "count": 6, "all": 8, "open": 2, "closed": 6}

    equity = http.get("/live/traders/a/equity").json()
    assert equity["equity"] == [10_000.0, 10_020.0]
    ledger.record_equity("a", D1 + 2 * DAY, 10_050.0, 0.0)
    assert http.get("/live/traders/a/equity").json()["equity"][-1] == 10_050.0
    assert http.get("/live/traders/nobody/equity").status_code == 404
    assert http.get("/live/traders/bad%20name/equity").status_code == 422
    assert http.get("/live/stats", params={"day": "2024-13-01"}).status_code == 422
    assert http.get("/live/stats", params={"day": "June"}).status_code == 422
    assert http.get("/live/trades/count", params={"status": "pending"}).status_code == 422
    assert "/live/traders/{name}/equity" in http.get("/openapi.json").json()["paths"]


def test_answers_from_the_database_when_redis_is_killed(live_site: dict[str, Any]) -> None:
    http, ledger, redis = live_site["http"], live_site["ledger"], live_site["redis"]
    populate(ledger)
    assert http.get("/live/trades/count").json()["count"] == 5
    redis.kill()
    round_trip(ledger, "a", "SOL/USDT", D1 + 3 * DAY, 10.0, 12.0)  # the notice fails: the write does not
    for path in ("/live/trades/count", "/live/stats", "/live/traders", "/live/traders/a/equity"):
        response = http.get(path)
        assert response.status_code == 200, (path, response.text)
    assert http.get("/live/trades/count").json()["count"] == 6
    assert counts(http, "live_counts").get("degraded", 0) >= 1
    assert redis.url.split("@")[-1] in http.get("/cache/stats").json()["redis"]["url"]


def test_no_usable_ledger_is_a_clear_503_not_a_crash(redis_url: str, store_root: Path) -> None:
    service = StatsService(store_root, redis_url, db_url="mysql://u:db-secret-1@127.0.0.1:1/x")
    with Server(build_app(service, require_key=False)) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.get("/live/traders")
        assert http.get("/runs").status_code == 200  # the rest of the API is unaffected
    assert response.status_code == 503 and "PostgreSQL and SQLite" in response.json()["detail"]
    assert "db-secret-1" not in response.text


def test_page_shows_traders_and_recent_fills(chromium: str, live_site: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    populate(live_site["ledger"])
    dom = browse(chromium, f"{live_site['url']}/", tmp_path, "--dump-dom").stdout
    assert int(attribute(dom, "traders", "data-refreshes")) >= 2
    row = re.search(r'<tr data-trader="a">(.*?)</tr>', dom)
    assert row, dom[-3000:]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
    view = orjson.loads(live_site["http"].get("/live/traders").content)["traders"][0]
    assert cells[:3] == ["a", "running", "BTC/USDT 0.50 @ 120"]  # the page's number format: integers as they are
    assert cells[3] == f"{view['realized_pnl']:.2f}" and cells[5] == "3/1" and cells[7] == "2.50 ms"
    assert cells[8] == "trades 1, return_pct -0.40"
    assert re.search(r'<tr data-trader="b"><td>b</td><td class="bad" title="max daily loss">halted</td>', dom)
    assert len(re.findall(r'<tr data-fill-id="', dom)) == 9
