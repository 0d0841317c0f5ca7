"""``tradpal-ray trade``: live equals backtest end to end, restarts, and clean errors.

The simulator replays a recorded series (backtesting.py's GOOG prices as 1-minute candles)
into a feed actor; a paper trader actor follows it; its closed trades in the ledger are
exactly those of ``tradpal-ray backtest --json --trades`` on the candles the store holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from backtesting.test import GOOG
from test_metrics import scrape_until
from test_runs import wait_until

from tradpal_ray.market import CandleStore

SYMBOL = "GOOG/USDT"
STRATEGY_ARGS = ("--strategy", "sma_cross", "--param", "fast=5", "--param", "slow=20")
COST_ARGS = ("--direction", "longshort", "--stop-loss", "0.03", "--take-profit", "0.06", "--fee", "0.001",
             "--slippage-bps", "2")


def replay_frame() -> pd.DataFrame:
    """GOOG's daily OHLCV as consecutive 1-minute candles of GOOG/USDT (a recorded, real-shaped series)."""
    frame = GOOG.rename(columns=str.lower).reset_index(drop=True)
    frame.insert(0, "open_time", pd.date_range("2024-03-01", periods=len(frame), freq="1min", tz="UTC"))
    frame.insert(0, "timeframe", "1m")
    frame.insert(0, "symbol", SYMBOL)
    return frame


@pytest.fixture
def replay_sim(make_simulator: Any) -> Any:
    from tradpal_ray.sim import ReplaySource

    return make_simulator(None, source=ReplaySource(replay_frame()), speed=600.0)  # 10 candles a second


def run_trade(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``tradpal-ray trade ARGS`` in a subprocess with its own private Ray."""
    env = {**os.environ, "TRADPAL_LOG_LEVEL": "WARNING"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "tradpal_ray.cli", "trade", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def closed_backtest_trades(run_cli: Any, store_root: Path) -> list[dict[str, Any]]:
    code, out, err = run_cli("backtest", "--store", str(store_root), "--symbol", SYMBOL, "--timeframe", "1m",
                             *STRATEGY_ARGS, *COST_ARGS, "--json", "--trades")
    assert code == 0, err
    return [t for t in json.loads(out)["trades"] if t["exit_reason"] != "open"]


def assert_same_trades(got: list[dict[str, Any]], want: list[dict[str, Any]], at_least: int = 3) -> None:
    """Same trades: times, reasons and units exactly; prices, fees, PnL to 1e-12 (the ledger sums in SQL)."""
    assert len(want) >= at_least, "the replay must trade"
    assert len(got) == len(want)
    exact = ("entry_time", "exit_time", "exit_reason", "units")
    for live, test in zip(got, want, strict=True):
        assert {k: live[k] for k in exact} == {k: test[k] for k in exact}
        assert {k: live[k] for k in test if k not in exact} == pytest.approx(
            {k: test[k] for k in test if k not in exact}, rel=1e-12)


def test_trader_on_a_replayed_feed_equals_backtest_on_the_stored_candles(replay_sim: Any, store_root: Path,
                                                                         run_cli: Any) -> None:
    done = run_trade("start", "--name", "e2e", *STRATEGY_ARGS, *COST_ARGS, "--symbols", SYMBOL, "--timeframe", "1m",
                     "--exchange-url", replay_sim.url, "--store", str(store_root), "--duration", "25", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(done.stdout)[0]
    stored = CandleStore(store_root).read("binance", SYMBOL, "1m")
    assert final["status"] == "stopped" and final["candles"] == len(stored) > 100
    code, out, err = run_cli("trade", "export", "e2e", "--store", str(store_root), "--json")
    assert code == 0, err
    assert_same_trades(json.loads(out)["trades"], closed_backtest_trades(run_cli, store_root))
    code, out, _ = run_cli("trade", "list", "--store", str(store_root), "--json")
    listed = {row["name"]: row for row in json.loads(out)}
    assert listed["e2e"]["status"] == "stopped" and listed["e2e"]["closed_trades"] >= 3
    assert listed["e2e"]["host"].startswith("traders:")  # the host actor that ran it


def test_a_killed_trader_actor_restarts_and_rebuilds_from_the_ledger(ray_session: None, replay_sim: Any,
                                                                    store_root: Path, run_cli: Any) -> None:
    import ray

    from tradpal_ray.backtest import BacktestConfig
    from tradpal_ray.trading import open_ledger
    from tradpal_ray.trading._session import TraderSpec
    from tradpal_ray.trading.actor import ensure_feed, start_trader, stop_trader

    spec = TraderSpec(name="phoenix", strategy="sma_cross", symbols=(SYMBOL,), timeframe="1m", store=str(store_root),
                      params={"fast": 5, "slow": 20}, exchange_url=replay_sim.url,
                      config=BacktestConfig(direction="longshort", stop_loss=0.03, take_profit=0.06, slippage_bps=2))
    instance = "t-restart"
    handle = start_trader(spec, instance=instance)
    twin = TraderSpec(name="twin", strategy="ema_cross", symbols=(SYMBOL,), timeframe="1m", store=str(store_root),
                      exchange_url=replay_sim.url)
    twin_handle = start_trader(twin, instance=instance)
    assert twin_handle.host._actor_id == handle.host._actor_id  # paper traders share a host process
    ray.get([handle.ready(), twin_handle.ready()])
    feed = ensure_feed(spec, instance)
    ray.get(feed.ready.remote())
    assert ensure_feed(twin, instance)._actor_id == feed._actor_id  # traders of the same series share its feed

    def wait_status(done: Any, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = ray.get(handle.status(), timeout=10)
            except ray.exceptions.RayActorError:  # between the crash and the restart
                continue
            if done(status):
                return status
            time.sleep(0.2)  # polling the actor's status until the condition holds
        raise AssertionError(f"no such trader status within {timeout} s")

    before = wait_status(lambda s: s["candles"] >= 40)
    assert not before["restarted"]
    ray.kill(handle.host, no_restart=False)  # a crash: Ray restarts its host, which rebuilds it from the ledger and store
    after = wait_status(lambda s: s["restarted"] and s["candles"] >= 20)  # candles counted since the restart
    assert after["status"] == "running"
    twin_after = ray.get(twin_handle.status())  # the host rebuilt every trader it ran, from the ledger
    assert twin_after["restarted"] and twin_after["status"] == "running" and twin_after["candles"] >= 1
    ledger = open_ledger(None, str(store_root))  # three round trips: what the comparison with backtest asks for
    wait_until(lambda: len(ledger.closed_trades("phoenix")) >= 3, 60, "three closed trades")
    ray.get(feed.stop.remote())
    ray.kill(feed)
    final = stop_trader(instance, "phoenix", flatten=False)
    assert final["status"] == "stopped"
    assert stop_trader(instance, "twin", flatten=False)["status"] == "stopped"
    stored = [int(t) for t in CandleStore(store_root).read("binance", SYMBOL, "1m").index.as_unit("ms").asi8]
    decided = sorted(e.detail["time_ms"] for e in ledger.events("twin", kind="decision"))
    assert decided == stored[stored.index(decided[0]):]  # across the crash: every candle once
    code, out, err = run_cli("trade", "export", "phoenix", "--store", str(store_root), "--json")
    assert code == 0, err
    assert_same_trades(json.loads(out)["trades"], closed_backtest_trades(run_cli, store_root))


def test_user_mistakes_are_one_error_line(run_cli: Any, store_root: Path) -> None:
    code, _, err = run_cli("trade", "start", "--name", "x", "--store", str(store_root))
    assert code == 2 and err.strip() == "error: --symbols is empty; give e.g. --symbols BTC/USDT"
    code, _, err = run_cli("trade", "start", "--name", "bad name", "--symbols", SYMBOL, "--store", str(store_root))
    assert code == 2 and err.startswith("error: trader name 'bad name'") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("trade", "start", "--name", "x", "--symbols", SYMBOL, "--broker", "moon", "--store",
                           str(store_root))
    assert code == 2 and "unknown broker 'moon'; valid: paper" in err
    code, _, err = run_cli("trade", "start", "--name", "x", "--symbols", SYMBOL, "--broker", "exchange", "--store",
                           str(store_root))
    assert code == 2 and err.startswith("error: --broker exchange on the real binance trades real money: add --live")
    code, _, err = run_cli("trade", "start", "--name", "x", "--symbols", SYMBOL, "--broker", "exchange", "--live",
                           "--direction", "longshort", "--store", str(store_root))
    assert code == 2 and "the exchange broker trades spot: --direction long only" in err
    code, _, err = run_cli("trade", "export", "nobody", "--store", str(store_root), "--json")
    assert code == 2 and err.startswith("error: no ledger in")
    code, _, err = run_cli("trade", "start", "--from-run", "nope", "--store", str(store_root))
    assert code == 2 and err.startswith("error: unknown run 'nope'")


BUILTINS = ("sma_cross", "ema_cross", "rsi_reversion", "bollinger_breakout", "macd")


def test_every_builtin_long_and_longshort_on_one_replayed_feed_equals_backtest(ray_session: None, replay_sim: Any,
                                                                               store_root: Path, run_cli: Any) -> None:
    import ray

    from tradpal_ray.backtest import BacktestConfig
    from tradpal_ray.trading import open_ledger
    from tradpal_ray.trading._session import TraderSpec
    from tradpal_ray.trading.actor import ensure_feed, start_trader, stop_trader

    instance = "t-all"
    specs = [TraderSpec(name=f"{strategy}-{direction}", strategy=strategy, symbols=(SYMBOL,), timeframe="1m",
                        store=str(store_root), exchange_url=replay_sim.url,
                        config=BacktestConfig(direction=direction, stop_loss=0.03, take_profit=0.06, slippage_bps=2))
             for strategy in BUILTINS for direction in ("long", "longshort")]
    handles = [start_trader(spec, instance=instance, per_host=3) for spec in specs]
    ray.get([handle.ready() for handle in handles])
    assert len({h.host._actor_id for h in handles}) == 4  # ten traders, three a host
    feed = ensure_feed(specs[0], instance)  # one feed for all ten
    deadline = time.monotonic() + 120
    while min(s["candles"] for s in ray.get([h.status() for h in handles])) < 30:
        assert time.monotonic() < deadline, "the traders saw too few candles"
        time.sleep(0.5)  # polling the traders' status until each has seen enough candles
    # a trader joining a host whose follow of the feed already runs trades every candle from its start on
    late = dataclasses.replace(specs[0], name="late")
    late_handle = start_trader(late, instance=instance, per_host=3)
    ray.get(late_handle.ready())
    while min(s["candles"] for s in ray.get([h.status() for h in [*handles, late_handle]])) < 150:
        assert time.monotonic() < deadline, "the traders saw too few candles"
        time.sleep(0.5)
    names = {"ray_tradpal_trader_decisions_total", "ray_tradpal_trader_dispatch_ms_count", "ray_tradpal_traders"}
    while (found := scrape_until(names))["ray_tradpal_trader_decisions_total"] < 11 * 30 or found["ray_tradpal_traders"] < 11:
        assert time.monotonic() < deadline + 60, f"the hosts' metrics never reached the export port: {found}"
        time.sleep(1.0)  # polling an exporter that flushes every few seconds
    ray.get(feed.stop.remote())
    ray.kill(feed)
    assert stop_trader(instance, "late", flatten=False)["status"] == "stopped"
    stored = [int(t) for t in CandleStore(store_root).read("binance", SYMBOL, "1m").index.as_unit("ms").asi8]
    decided = sorted(e.detail["time_ms"] for e in open_ledger(None, str(store_root)).events("late", kind="decision"))
    assert len(decided) >= 100 and decided == stored[stored.index(decided[0]):]  # none missed, none twice, to the end
    total = 0
    for spec in specs:
        assert stop_trader(instance, spec.name, flatten=False)["status"] == "stopped"
        code, out, err = run_cli("trade", "export", spec.name, "--store", str(store_root), "--json")
        assert code == 0, err
        got = json.loads(out)["trades"]
        code, out, err = run_cli("backtest", "--store", str(store_root), "--symbol", SYMBOL, "--timeframe", "1m",
                                 "--strategy", spec.strategy, "--direction", spec.config.direction, "--stop-loss", "0.03",
                                 "--take-profit", "0.06", "--slippage-bps", "2", "--json", "--trades")
        assert code == 0, err
        want = [t for t in json.loads(out)["trades"] if t["exit_reason"] != "open"]
        assert len(got) == len(want), spec.name
        if want:
            assert_same_trades(got, want, at_least=0)
        total += len(want)
    assert total >= 20


def test_exchange_broker_on_the_simulator_ledger_equals_the_accounts_record(ray_session: None, make_simulator: Any,
                                                                             store_root: Path) -> None:
    import ray
    import sqlalchemy as sa

    from tradpal_ray.backtest import BacktestConfig
    from tradpal_ray.sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, ReplaySource
    from tradpal_ray.trading import open_ledger
    from tradpal_ray.trading._session import TraderSpec
    from tradpal_ray.trading.actor import ensure_feed, start_trader, stop_trader

    sim = make_simulator(None, source=ReplaySource(replay_frame()), speed=600.0, balances="USDT=10000")
    spec = TraderSpec(name="ex1", strategy="sma_cross", symbols=(SYMBOL,), timeframe="1m", store=str(store_root),
                      params={"fast": 5, "slow": 20}, exchange_url=sim.url, broker="exchange",
                      config=BacktestConfig(stop_loss=0.03, take_profit=0.06))
    instance = "t-exchange"
    handle = start_trader(spec, instance=instance, credentials=(DEFAULT_API_KEY, DEFAULT_API_SECRET))
    ray.get(handle.ready())
    feed = ensure_feed(spec, instance)
    deadline = time.monotonic() + 120
    while (status := ray.get(handle.status()))["candles"] < 150:
        assert time.monotonic() < deadline and status["status"] == "running", status
        time.sleep(0.5)  # polling the trader's status until it has seen enough candles
    ray.get(feed.stop.remote())
    ray.kill(feed)
    final = stop_trader(instance, "ex1", flatten=True)
    assert final["status"] == "stopped" and final["symbols"][SYMBOL]["units"] == 0
    account = sim.account()
    ledger = open_ledger(None, str(store_root))
    fills = ledger.tables["fills"]
    rows = ledger.read(lambda c: c.execute(sa.select(fills).where(fills.c.trader == "ex1").order_by(fills.c.time_ms,
                                                                                                     fills.c.fill_id)).all())
    client_ids = {o.order_id: o.client_order_id for o in account.orders}
    assert len(account.fills) >= 4 and len(rows) == len(account.fills)  # order for order, nothing doubled or lost
    for row, fill in zip(rows, account.fills, strict=True):
        assert (row.fill_id, row.client_order_id, row.side, row.units, row.price, row.fee) == (
            str(fill.id), client_ids[fill.order_id], fill.side.lower(), float(fill.qty), float(fill.price),
            float(fill.commission))
    quote = 10_000 + sum((-1 if r.side == "buy" else 1) * r.units * r.price - r.fee for r in rows)
    assert float(account.balances["USDT"].free + account.balances["USDT"].locked) == pytest.approx(quote, abs=1e-6)
    assert float(account.balances.get("GOOG", type(account.balances["USDT"])(0)).free) == 0
    assert not ledger.open_orders("ex1")


def test_an_order_sent_but_not_recorded_is_reconciled_once(make_simulator: Any, store_root: Path) -> None:
    from tradpal_ray.market.exchange import create_exchange
    from tradpal_ray.sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, ReplaySource
    from tradpal_ray.trading import Order, client_order_id, open_ledger
    from tradpal_ray.trading._exchange import ExchangeBroker, ExchangeTrader
    from tradpal_ray.trading._risk import RiskGuard, RiskLimits
    from tradpal_ray.trading._trader import TraderCore

    sim = make_simulator(None, source=ReplaySource(replay_frame()), speed=600.0, balances="USDT=10000")
    client = create_exchange("binance", url=sim.url, api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET)
    ledger = open_ledger(None, str(store_root))
    ledger.upsert_trader("rec", {}, "running")
    cid = client_order_id("rec", SYMBOL, 1_709_251_200_000, "buy")
    order = Order(trader="rec", client_order_id=cid, symbol=SYMBOL, side="buy", units=3.0, bar_time_ms=1_709_251_200_000,
                  created_ms=1)
    ledger.record_order(order)
    client.create_order(SYMBOL, "market", "buy", 3.0, params={"newClientOrderId": cid})  # then the trader died
    assert ledger.fill_count("rec") == 0 and ledger.open_orders("rec")
    trader = ExchangeTrader(TraderCore("rec", SYMBOL, "1m", "sma_cross"), ExchangeBroker(client), ledger,
                            RiskGuard(RiskLimits()))
    assert trader.reconcile() == 1 and trader.reconcile() == 0
    account = sim.account()
    assert ledger.fill_count("rec") == len(account.fills) == 1 and not ledger.open_orders("rec")
    assert ledger.position("rec", SYMBOL).units == 3.0 == float(account.fills[0].qty)
    trader.send("buy", 3.0, 1_709_251_200_000, "signal")  # a retry under the same id: refused, looked up, not doubled
    assert len(sim.account().fills) == 1 and ledger.fill_count("rec") == 1
