"""Faults while trading: nothing lost, nothing doubled.

Real Ray, the simulator with the unmodified ccxt client, real ledgers (SQLite; PostgreSQL
where the case is the database), a real redis-server. After each fault: no order twice at
the exchange (the simulator's own record of the account), every exchange trade in the
ledger id for id, positions equal to the exchange's balances; a paper trader's trades still
equal ``tradpal-ray backtest`` on the candles the store holds, every closed candle processed once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from http_server import Server
from test_runs import wait_until
from test_trade_cli import (
    SYMBOL,
    assert_same_trades,
    closed_backtest_trades,
    replay_frame,
    replay_sim,  # noqa: F401  (the fixture)
)

from tradpal_ray.backtest import BacktestConfig
from tradpal_ray.market import CandleStore
from tradpal_ray.sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, ReplaySource
from tradpal_ray.trading import Ledger, open_ledger
from tradpal_ray.trading._session import TraderSpec

KEYS = (DEFAULT_API_KEY, DEFAULT_API_SECRET)
START_QUOTE = 10_000.0
PAPER_CONFIG = BacktestConfig(direction="longshort", stop_loss=0.03, take_profit=0.06, fee=0.001, slippage_bps=2)
"""The paper traders' costs: those of ``test_trade_cli``'s COST_ARGS (the backtest ``closed_backtest_trades`` runs)."""
ALWAYS_LONG = '''
import numpy as np


def always_long(bars):
    """In from the first candle on, never out: a trader with exactly one buy."""
    return np.ones(len(bars.close), dtype=bool), np.zeros(len(bars.close), dtype=bool)
'''


@pytest.fixture
def exchange_sim(make_simulator: Any) -> Any:
    """The recorded GOOG series replayed at 600x (10 candles a second); the account holds 10,000 USDT."""
    return make_simulator(None, source=ReplaySource(replay_frame()), speed=600.0, balances=f"USDT={START_QUOTE:.0f}")


def paper_spec(name: str, store: Path, url: str) -> TraderSpec:
    return TraderSpec(name=name, strategy="sma_cross", symbols=(SYMBOL,), timeframe="1m", store=str(store),
                      params={"fast": 5, "slow": 20}, exchange_url=url, config=PAPER_CONFIG)


def assert_books_match_the_exchange(ledger: Ledger, trader: str, account: Any) -> None:
    """No order twice at the exchange, its trades in the ledger id for id (nothing lost, nothing more),
    the position equal to the base balance, the quote balance equal to the ledger's cash flows, no order left open."""
    client_ids = [order.client_order_id for order in account.orders]
    assert len(client_ids) == len(set(client_ids)), client_ids
    by_order = {order.order_id: order.client_order_id for order in account.orders}
    fills = ledger.tables["fills"]
    rows = ledger.read(lambda c: c.execute(sa.select(fills).where(fills.c.trader == trader)).all())
    assert sorted((r.fill_id, r.client_order_id, r.units, r.price, r.fee) for r in rows) == sorted(
        (str(f.id), by_order[f.order_id], float(f.qty), float(f.price), float(f.commission)) for f in account.fills)
    base = SYMBOL.split("/")[0]
    held = account.balances.get(base)
    assert ledger.position(trader, SYMBOL).units == pytest.approx(0.0 if held is None else float(held.free + held.locked),
                                                                  abs=1e-9)
    quote = START_QUOTE + sum((-1 if r.side == "buy" else 1) * r.units * r.price - r.fee for r in rows)
    assert float(account.balances["USDT"].free + account.balances["USDT"].locked) == pytest.approx(quote, abs=1e-6)
    assert not ledger.open_orders(trader)


def trader_status(handle: Any) -> dict[str, Any] | None:
    """The trader actor's status, or None while it is down (between a crash and its restart)."""
    import ray

    try:
        return ray.get(handle.status(), timeout=10)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


def wait_candles(handle: Any, count: int, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the trader has processed ``count`` candles (since its last start) and still runs; its status."""
    seen: dict[str, Any] = {}

    def enough() -> bool:
        seen["status"] = trader_status(handle)
        return seen["status"] is not None and seen["status"]["candles"] >= count

    wait_until(enough, timeout, f"{count} candles processed")
    assert seen["status"]["status"] == "running", seen["status"]
    return seen["status"]


def stop_all(feed: Any, instance: str, name: str, *, flatten: bool) -> dict[str, Any]:
    """Stop the feed (it stores every closed candle), then the trader (it trades them first); its final status."""
    import ray

    from tradpal_ray.trading.actor import stop_trader

    ray.get(feed.stop.remote())
    ray.kill(feed)
    return stop_trader(instance, name, flatten=flatten)


def assert_every_candle_once_and_backtest_trades(ledger: Ledger, name: str, store: Path, run_cli: Any,
                                                 db_url: str | None = None) -> None:
    """The store's candles are gapless, the trader decided on each exactly once, and its trades are the backtest's."""
    stored = [int(t) for t in CandleStore(store).read("binance", SYMBOL, "1m").index.as_unit("ms").asi8]
    assert len(stored) > 100 and all(later - earlier == 60_000 for earlier, later in itertools.pairwise(stored))
    assert sorted(event.detail["time_ms"] for event in ledger.events(name, kind="decision")) == stored
    code, out, err = run_cli("trade", "export", name, "--store", str(store), "--json", *(("--db-url", db_url) if db_url else ()))
    assert code == 0, err
    assert_same_trades(json.loads(out)["trades"], closed_backtest_trades(run_cli, store))


# ------------------------------------------------------------------ 1. the feed disconnects and freezes
def test_feed_disconnects_and_freezes_while_a_paper_trader_trades(ray_session: None, replay_sim: Any,  # noqa: F811
                                                                   store_root: Path, run_cli: Any) -> None:
    import ray

    from tradpal_ray.feeds.actor import start_feed
    from tradpal_ray.trading.actor import feed_config, start_trader

    spec = paper_spec("feedfault", store_root, replay_sim.url)
    instance = "t-feedfault"
    handle = start_trader(spec, instance=instance)
    ray.get(handle.ready())
    # the trader's own feed, with a 2 s watchdog so that a 3 s freeze is noticed and the stream redialled
    feed = start_feed(dataclasses.replace(feed_config(spec), stale_after=2.0), instance=instance, max_restarts=-1)
    ray.get(feed.ready.remote())
    processed = wait_candles(handle, 20)["candles"]
    for fault in ({"kind": "close"}, {"kind": "abort"}, {"kind": "freeze", "duration": 3.0}, {"kind": "close"}):
        served = replay_sim.stats()["faults"]["served"].get(fault["kind"], 0)
        wait_until(lambda: replay_sim.stats()["subscriptions"]["total"] > 0, 15, "the feed subscribed")
        applied = replay_sim.inject(**fault)
        if fault["kind"] != "freeze":
            assert applied["connections"], f"{fault['kind']} found no stream connection to act on"
        else:
            wait_until(lambda served=served: replay_sim.stats()["faults"]["served"].get("freeze", 0) > served, 15,
                       "the freeze to silence the stream")
        processed = wait_candles(handle, processed + 40)["candles"]  # trading resumed after the fault
    assert ray.get(feed.status.remote())["reconnects"] >= 4
    final = stop_all(feed, instance, "feedfault", flatten=False)
    assert final["status"] == "stopped"
    assert_every_candle_once_and_backtest_trades(open_ledger(None, str(store_root)), "feedfault", store_root, run_cli)


# ------------------------------------------------------------------ 2. SIGKILL with an order in flight
def test_a_trader_killed_between_sending_and_recording_reconciles_the_order_once(
        ray_session: None, exchange_sim: Any, store_root: Path, tmp_path: Path) -> None:
    import ray

    from tradpal_ray.trading.actor import ensure_feed, start_trader, stop_trader

    strategy = tmp_path / f"always_long_{tmp_path.name.replace('-', '_')}.py"
    strategy.write_text(ALWAYS_LONG)
    spec = TraderSpec(name="killed", strategy=f"{strategy}:always_long", symbols=(SYMBOL,), timeframe="1m",
                      store=str(store_root), exchange_url=exchange_sim.url, broker="exchange")
    instance = "t-sigkill"
    handle = start_trader(spec, instance=instance, credentials=KEYS)
    ray.get(handle.ready())
    pid = ray.get(handle.host.__ray_call__.remote(lambda actor: os.getpid()))
    # Every REST call answers 3 s late: the order lands, then the trader waits 3 s for its trades (and the fill).
    exchange_sim.inject("latency", ms=3000)
    feed = ensure_feed(spec, instance)
    wait_until(lambda: exchange_sim.account().orders, 90, "the trader's order at the exchange")
    ledger = open_ledger(None, str(store_root))
    sent = exchange_sim.account().orders[0].client_order_id
    assert ledger.fill_count("killed") == 0 and [o.client_order_id for o in ledger.open_orders("killed")] == [sent]
    os.kill(pid, signal.SIGKILL)  # sent, not recorded: the ledger has the order open and no fill
    exchange_sim.inject("clear")
    wait_until(lambda: (trader_status(handle) or {}).get("restarted") and ledger.fill_count("killed") == 1, 90,
               "the restarted trader to reconcile its order")
    wait_candles(handle, 30)  # it keeps trading (holding: no second buy)
    ray.get(feed.stop.remote())
    ray.kill(feed)
    final = stop_trader(instance, "killed", flatten=True)
    assert final["status"] == "stopped" and final["symbols"][SYMBOL]["units"] == 0
    account = exchange_sim.account()
    assert [o.side for o in account.orders] == ["BUY", "SELL"] and account.orders[0].client_order_id == sent
    assert_books_match_the_exchange(ledger, "killed", account)


# ------------------------------------------------------------------ 3. the answer to an order is lost
@pytest.mark.parametrize("fault", [{"kind": "lose_response"}, {"kind": "lose_response", "status": 503},
                                   {"kind": "order_rate_limit", "retry_after": 0}],
                         ids=["dropped", "503", "rate-limited"])
def test_an_order_whose_answer_is_lost_is_resent_under_its_id_and_recorded_once(exchange_sim: Any, store_root: Path,
                                                                                 fault: dict[str, Any]) -> None:
    trader, ledger = exchange_trader(exchange_sim, store_root, "lost")
    bar = exchange_sim.now_ms() // 60_000 * 60_000
    exchange_sim.inject(**fault)
    trader.send("buy", 1.0, bar, "signal", cost=1_000.0)  # the broker resends: a duplicate, looked up by client id
    exchange_sim.inject(**fault)
    trader.send("sell", trader.units(), bar + 60_000, "signal")
    assert exchange_sim.stats()["faults"]["served"][fault["kind"]] == 2
    account = exchange_sim.account()
    assert [o.side for o in account.orders] == ["BUY", "SELL"] and ledger.fill_count("lost") == len(account.fills) >= 2
    assert_books_match_the_exchange(ledger, "lost", account)


def exchange_trader(sim: Any, store: Path, name: str, recv_window_ms: int | None = None) -> tuple[Any, Ledger]:
    """An exchange trader of SYMBOL on the simulator (no Ray), its ledger the store's SQLite one."""
    from tradpal_ray.trading._exchange import ExchangeBroker, ExchangeTrader
    from tradpal_ray.trading._risk import RiskGuard, RiskLimits
    from tradpal_ray.trading._trader import TraderCore

    ledger = open_ledger(None, str(store))
    ledger.upsert_trader(name, {}, "running")
    broker = ExchangeBroker(account_client(sim, recv_window_ms))
    return ExchangeTrader(TraderCore(name, SYMBOL, "1m", "sma_cross"), broker, ledger, RiskGuard(RiskLimits())), ledger


def account_client(sim: Any, recv_window_ms: int | None = None) -> Any:
    """A sync ccxt client of the simulator's account, markets loaded."""
    from tradpal_ray.market.exchange import create_exchange

    client = create_exchange("binance", url=sim.url, api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET)
    if recv_window_ms is not None:
        client.options["recvWindow"] = recv_window_ms
    client.load_markets()
    return client


def test_an_order_still_on_its_way_at_a_restart_is_waited_for_not_cancelled(exchange_sim: Any, store_root: Path) -> None:
    """The trader died with its order delayed in the network: the restart's reconciliation does not find it yet,
    and waits until it can no longer arrive (the recvWindow) before calling it lost; it arrives and is recorded."""
    from tradpal_ray.trading import Order, client_order_id
    from tradpal_ray.trading._exchange import ExchangeBroker

    trader, ledger = exchange_trader(exchange_sim, store_root, "inflight", recv_window_ms=3_000)
    bar = exchange_sim.now_ms() // 60_000 * 60_000
    order = Order(trader="inflight", client_order_id=client_order_id("inflight", SYMBOL, bar, "buy"), symbol=SYMBOL,
                  side="buy", units=1.0, bar_time_ms=bar, created_ms=time.time_ns() // 1_000_000)
    ledger.record_order(order)
    dead = ExchangeBroker(account_client(exchange_sim, recv_window_ms=3_000))  # the trader that died, its request out
    exchange_sim.inject("latency", ms=1_500)
    sending = threading.Thread(target=dead.send, args=(order, 1_000.0))
    sending.start()
    wait_until(lambda: exchange_sim.stats()["faults"]["served"].get("latency", 0) >= 1, 10, "the order on its way")
    exchange_sim.inject("clear")  # only that request is late
    try:
        assert not exchange_sim.account().orders  # not there yet when the restarted trader asks
        assert trader.reconcile() == 1
    finally:
        sending.join()
    account = exchange_sim.account()
    assert len(account.orders) == 1 and ledger.fill_count("inflight") == len(account.fills) == 1
    assert_books_match_the_exchange(ledger, "inflight", account)


# ------------------------------------------------------------------ 4. PostgreSQL restarted while a trader writes
def test_postgres_restarted_while_a_trader_writes(ray_session: None, replay_sim: Any,  # noqa: F811
                                                  make_postgres: Any, store_root: Path, run_cli: Any) -> None:
    import ray

    from tradpal_ray.trading.actor import ensure_feed, start_trader

    server = make_postgres()
    url = server.create_database()
    spec = paper_spec("pgrestart", store_root, replay_sim.url)
    instance = "t-pgrestart"
    handle = start_trader(spec, instance=instance, ledger_url=url)
    ray.get(handle.ready())
    feed = ensure_feed(spec, instance)
    processed = wait_candles(handle, 40)["candles"]
    for _ in range(2):
        server.restart("immediate")  # a crash and a start: the trader's writes in between are retried
        processed = wait_candles(handle, processed + 50)["candles"]
    ledger = open_ledger(url, str(store_root))
    # Three round trips: what the comparison with backtest asks for (assert_same_trades' at_least)
    wait_until(lambda: ledger.fill_count("pgrestart") >= 6, 60, "six fills")
    final = stop_all(feed, instance, "pgrestart", flatten=False)
    assert final["status"] == "stopped"
    fills = ledger.tables["fills"]
    ids = ledger.read(lambda c: c.execute(sa.select(fills.c.fill_id).where(fills.c.trader == "pgrestart")).scalars().all())
    assert len(ids) == len(set(ids)) >= 6
    assert_every_candle_once_and_backtest_trades(ledger, "pgrestart", store_root, run_cli, db_url=url)


# ------------------------------------------------------------------ 5. Redis killed while traders trade
def test_redis_killed_while_traders_trade_and_the_api_is_queried(ray_session: None, replay_sim: Any,  # noqa: F811
                                                                 store_root: Path, make_redis: Any) -> None:
    import ray

    from tradpal_ray.serve import build_app
    from tradpal_ray.stats import StatsService
    from tradpal_ray.stats._live import trade_counts
    from tradpal_ray.trading.actor import ensure_feed, start_trader, stop_trader

    redis = make_redis()
    instance = "t-redis"
    specs = [dataclasses.replace(paper_spec(f"r{i}", store_root, replay_sim.url), params={"fast": 2, "slow": 5 + i})
             for i in range(2)]  # quick crosses: fills before and after the kill
    handles = [start_trader(spec, instance=instance, redis_url=redis.url) for spec in specs]
    ray.get([h.ready() for h in handles])
    feed = ensure_feed(specs[0], instance)
    paths = ("/live/trades/count", "/live/stats", "/live/traders", "/live/traders/r0/equity")
    answers: list[tuple[str, int]] = []
    done = threading.Event()
    service = StatsService(store_root, redis.url, retry_after=0.2)
    with Server(build_app(service, require_key=False)) as site, httpx.Client(base_url=site.url, timeout=10) as http:

        def query() -> None:
            while not done.is_set():
                for path in paths:
                    answers.append((path, http.get(path).status_code))

        querying = threading.Thread(target=query)
        querying.start()
        try:
            ledger = open_ledger(None, str(store_root))
            wait_until(lambda: ledger.fill_count() >= 2, 60, "fills before Redis dies")
            for _ in range(2):  # an actor's fill reaches the cached API at once (its ledger bumps the generation), not after the TTL
                seen = ledger.fill_count()
                wait_until(lambda: ledger.fill_count() > seen, 60, "a new fill")
                wait_until(lambda: http.get("/live/trades/count").json()["all"] == trade_counts(ledger)["all"], 1.0,
                           "the new fill in /live/trades/count within 1 s")
            before, fills = len(answers), ledger.fill_count()
            redis.kill()
            wait_until(lambda: ledger.fill_count() >= fills + 2, 60, "fills after Redis died")
            wait_until(lambda: len(answers) > before + 20, 30, "answers after Redis died")
        finally:
            done.set()
            querying.join()
        assert stop_all(feed, instance, "r0", flatten=False)["status"] == "stopped"
        assert stop_trader(instance, "r1", flatten=False)["status"] == "stopped"
        server_errors = [a for a in answers if a[1] >= 500]
        assert not server_errors and {code for _, code in answers} == {200}, server_errors[:5]
        counts = http.get("/live/trades/count").json()  # from the database: the fills of both traders, all of them
        assert counts == trade_counts(ledger) and counts["all"] >= 2
        assert http.get("/cache/stats").json()["by_kind"]["live_counts"].get("degraded", 0) >= 1


def test_a_trader_on_several_symbols_decides_each_candle_while_it_streams(ray_session: None, make_simulator: Any,
                                                                         store_root: Path) -> None:
    """Several subscriptions in one trader process read the same feed batches: every symbol's candles are
    decided live (not only by the catch-up at stop). A second fetch of a batch another subscription had
    released hung in Ray 2.60 and stalled one symbol after a few candles; the consumer now shares the fetch."""
    import ray

    from tradpal_ray.trading.actor import ensure_feed, start_trader, stop_trader

    symbols = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    sim = make_simulator(list(symbols), speed=60.0, emit_interval=0.01)  # a 1m candle a second, frames every 10 ms
    spec = TraderSpec(name="trio", strategy="sma_cross", symbols=symbols, timeframe="1m", store=str(store_root),
                      params={"fast": 5, "slow": 20}, exchange_url=sim.url)
    instance = "t-several"
    handle = start_trader(spec, instance=instance)
    ray.get(handle.ready())
    feed = ensure_feed(spec, instance)
    ray.get(feed.ready.remote())
    ledger = open_ledger(None, str(store_root))

    def decided() -> dict[str, int]:
        events = ledger.events("trio", "decision")
        return {symbol: sum(1 for e in events if e.detail["symbol"] == symbol) for symbol in symbols}

    wait_until(lambda: min(decided().values()) >= 12, 60, "a dozen live decisions on every symbol")
    ray.get(feed.stop.remote())
    ray.kill(feed)
    assert stop_trader(instance, "trio", flatten=False)["status"] == "stopped"
