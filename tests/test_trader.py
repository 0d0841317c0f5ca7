"""Proof that live equals backtest: candles fed one by one through a trader give backtest()'s trades.

The pure part: :class:`PaperTrader` (TraderCore + PaperBroker) on backtesting.py's GOOG and
EURUSD, every built-in strategy, long and longshort, with stop-loss and take-profit; then the
:class:`TraderSession` with its books in a real (SQLite) ledger: restart, risk halts, flatten,
the incubator. The Ray end to end is in ``test_trade_cli.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from backtesting.test import EURUSD, GOOG
from market_data import write_goog

from tradpal_ray.backtest import BacktestConfig, backtest, prepare_bars, strategies
from tradpal_ray.backtest.data import Bars
from tradpal_ray.backtest.engine import NO_CHANGE
from tradpal_ray.backtest.indicators import cached, cross_above, cross_below, sma
from tradpal_ray.backtest.strategies import strategy_from_function
from tradpal_ray.market import CandleStore, candles_table
from tradpal_ray.trading import Ledger, open_ledger
from tradpal_ray.trading._paper import Candle, trades_frame
from tradpal_ray.trading._risk import RiskGuard, RiskLimits
from tradpal_ray.trading._session import TraderSession, TraderSpec, candles_of
from tradpal_ray.trading._trader import PaperTrader, SharedSignals, TraderCore

BUILTINS = ("sma_cross", "ema_cross", "rsi_reversion", "bollinger_breakout", "macd")
FRAMES = {"GOOG": GOOG.rename(columns=str.lower), "EURUSD": EURUSD.rename(columns=str.lower)}
TIMEFRAMES = {"GOOG": "1d", "EURUSD": "1h"}


def closed_trades(result_trades: pd.DataFrame) -> pd.DataFrame:
    trades = result_trades[result_trades.exit_reason != "open"].drop(columns=["entry_bar", "exit_bar"])
    trades = trades.reset_index(drop=True)
    trades["exit_reason"] = trades["exit_reason"].astype(str)
    return trades


def feed(trader: PaperTrader, bars: list[Candle]) -> pd.DataFrame:
    for candle in bars:
        trader.on_candle(candle, now_ms=0)
    got = trades_frame(trader.broker.trades)
    got["exit_reason"] = got["exit_reason"].astype(str)
    return got


def test_the_builtins_are_all_covered() -> None:
    assert set(BUILTINS) <= set(strategies())


@pytest.mark.parametrize("data", ["GOOG", "EURUSD"])
@pytest.mark.parametrize("direction", ["long", "longshort"])
@pytest.mark.parametrize("strategy", BUILTINS)
def test_candle_by_candle_equals_backtest(strategy: str, direction: str, data: str) -> None:
    frame = FRAMES[data]
    config = BacktestConfig(direction=direction, stop_loss=0.04, take_profit=0.08, fee=0.001, slippage_bps=2,
                            size_unit=1.0 if data == "GOOG" else 0.01)
    expected = backtest(frame, strategy, {}, config)
    trader = PaperTrader.new(TraderCore("proof", "X/USDT", TIMEFRAMES[data], strategy, {}, config))
    assert trader.core.window < len(frame)  # a bounded window, not the whole history
    got = feed(trader, candles_of(frame))
    want = closed_trades(expected.trades)
    assert len(want) >= 3, "the case must trade"
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert trader.broker.equity == expected.equity.iloc[-1]
    held = expected.trades[expected.trades.exit_reason == "open"]
    assert trader.broker.units == (held.units.iloc[0] if len(held) else 0.0)


def test_a_repeated_candle_is_ignored() -> None:
    bars = candles_of(FRAMES["GOOG"])
    trader = PaperTrader.new(TraderCore("t", "X/USDT", "1d", "sma_cross", {}, BacktestConfig()))
    once = feed(trader, bars[:600])
    again = PaperTrader.new(TraderCore("t", "X/USDT", "1d", "sma_cross", {}, BacktestConfig()))
    for candle in bars[:600]:
        again.on_candle(candle, now_ms=0)
        again.on_candle(candle, now_ms=0)
    assert trades_frame(again.broker.trades).equals(trades_frame(trader.broker.trades)) and len(once) > 0


def test_the_signal_window_index_is_its_candles_times_across_gaps() -> None:
    seen: list[pd.DatetimeIndex] = []

    def spy(bars: Bars) -> tuple[np.ndarray, np.ndarray]:  # records the index the core hands the strategy
        seen.append(bars.index)
        return np.zeros(len(bars), dtype=bool), np.zeros(len(bars), dtype=bool)

    core = TraderCore("t", "X/USDT", "1m", strategy_from_function(spy), {}, BacktestConfig(), window=20)
    times = [60_000 * k for k in [*range(50), *range(53, 120), *range(400, 470)]]  # on the grid, two gaps
    for t in times:
        core.on_candle(Candle(t, 1.0, 1.0, 1.0, 1.0, 1.0), 0.0)
    assert len(seen) == len(times)
    for k, index in enumerate(seen):
        want = pd.DatetimeIndex(pd.to_datetime(times[max(0, k - 19):k + 1], unit="ms", utc=True), name="time")
        assert index.equals(want) and index.dtype == want.dtype and index.name == "time", k


def test_orders_have_deterministic_ids_for_the_fill_candle() -> None:
    bars = candles_of(FRAMES["GOOG"])
    ids = []
    for _ in range(2):
        trader = PaperTrader.new(TraderCore("det", "GOOG/USD", "1d", "sma_cross", {}, BacktestConfig()))
        ids.append([out.order.client_order_id for c in bars[:400] if (out := trader.on_candle(c, now_ms=0)).order])
    assert ids[0] == ids[1] and len(ids[0]) > 2 and len(set(ids[0])) == len(ids[0])
    assert ids[0][0].startswith("det-GOOGUSD-")


def test_warm_up_gives_signals_from_the_first_live_candle() -> None:
    frame = FRAMES["GOOG"]
    core = TraderCore("w", "X/USDT", "1d", "sma_cross", {"fast": 10, "slow": 30})
    core.warm_up(frame.iloc[:1000])
    entries, exits = strategies()["sma_cross"].signals(prepare_bars(frame), {"fast": 10, "slow": 30})
    for i, candle in enumerate(candles_of(frame.iloc[1000:1300]), start=1000):
        core.on_candle(candle, 0.0)
        assert core.signal() == (bool(entries[i]), bool(exits[i]))


def test_max_position_notional_halts_before_the_order() -> None:
    trader = PaperTrader.new(TraderCore("r", "X/USDT", "1d", "sma_cross", {}, BacktestConfig()),
                             RiskLimits(max_position_notional=5_000.0))
    outcomes = [trader.on_candle(c, now_ms=0) for c in candles_of(FRAMES["GOOG"])]
    halts = [o for o in outcomes if o.halt]
    assert halts and halts[0].halt.startswith("max position notional")
    assert trader.halted == halts[0].halt and not trader.broker.trades and trader.pending is None
    assert all(o.order is None for o in outcomes)


def test_max_daily_loss_halts_and_stops_ordering() -> None:
    guard = RiskGuard(RiskLimits(max_daily_loss=100.0))
    day = 86_400_000
    assert guard.check_equity(0, 10_000.0) is None
    assert guard.check_equity(60_000, 9_950.0) is None
    breach = guard.check_equity(120_000, 9_899.0)
    assert breach is not None and breach.startswith("max daily loss")
    assert guard.check_equity(day, 9_850.0) is None  # a new day starts at the previous equity (9,899)
    assert guard.check_equity(day + 60_000, 9_700.0) is not None


def test_max_orders_per_minute() -> None:
    guard = RiskGuard(RiskLimits(max_orders_per_minute=2))
    assert guard.check_order(0, 10.0) is None and guard.check_order(1_000, 10.0) is None
    assert (breach := guard.check_order(2_000, 10.0)) is not None and breach.startswith("max orders per minute")
    assert guard.check_order(61_000, 10.0) is None  # the first two left the 60 s window


def test_a_halted_trader_sends_nothing_more() -> None:
    bars = candles_of(FRAMES["GOOG"])
    trader = PaperTrader.new(TraderCore("h", "X/USDT", "1d", "sma_cross", {}, BacktestConfig()),
                             RiskLimits(max_orders_per_minute=1))
    outcomes = [trader.on_candle(c, now_ms=0) for c in bars]  # one wall-clock instant: the 2nd order breaches
    orders = [o.order for o in outcomes if o.order]
    assert len(orders) == 1 and trader.halted and trader.halted.startswith("max orders per minute")
    assert trader.pending is None or trader.pending is orders[0]


def above_window_mean(bars: Bars) -> tuple[np.ndarray, np.ndarray]:
    """In above the mean close of the whole window, out below: a signal that depends on every candle in the window."""
    mean = bars.close.mean()
    return bars.close > mean, bars.close < mean


def test_cores_sharing_signals_decide_as_each_alone() -> None:
    frame = FRAMES["GOOG"]
    bars = candles_of(frame.iloc[:1200])
    shared = SharedSignals()  # one host's: cores of several strategies, parameters and window lengths on one series
    window_mean = strategy_from_function(above_window_mean)
    setups = [(name, params, window) for name, params in (("sma_cross", {"fast": 10, "slow": 30}),
                                                          ("sma_cross", {"fast": 10, "slow": 40}),
                                                          ("sma_cross", {"fast": 10, "slow": 30}), ("ema_cross", {}),
                                                          ("macd", {}), (window_mean, {})) for window in (None, 600)]
    pairs = [(TraderCore("a", "X/USDT", "1d", name, params, window=window, shared=shared),
              TraderCore("b", "X/USDT", "1d", name, params, window=window)) for name, params, window in setups]
    late = (TraderCore("a", "X/USDT", "1d", window_mean, {}, shared=shared), TraderCore("b", "X/USDT", "1d", window_mean, {}))
    for core in late:  # joins at candle 700 with a shorter window: shares once its window holds the same candles
        core.warm_up(frame.iloc[400:700])
    # The same symbol and times on another exchange (other prices): its windows are never shared with the others.
    elsewhere = (TraderCore("a", "X/USDT", "1d", window_mean, {}, shared=shared), TraderCore("b", "X/USDT", "1d", window_mean, {}))
    decided = 0
    for k, candle in enumerate(bars):
        units = float(k % 3 - 1)  # long, flat and short in turn: entries and exits both count
        for together, alone in [*pairs, *([late] if k >= 700 else [])]:
            target = together.on_candle(candle, units)
            assert target == alone.on_candle(candle, units), (k, together.strategy.name, together.window)
            decided += target != NO_CHANGE
        there = dataclasses.replace(candle, close=candle.close + k * 0.5)
        assert elsewhere[0].on_candle(there, units) == elsewhere[1].on_candle(there, units), k
    assert decided > 100


def test_cores_sharing_signals_compute_each_indicator_and_signal_once_a_candle() -> None:
    calls: collections.Counter[object] = collections.Counter()

    @cached
    def counted_mean(values: np.ndarray, n: int) -> np.ndarray:
        calls[n] += 1
        return sma(values, n)

    def crossing(bars: Bars, fast: int = 5, slow: int = 20) -> tuple[np.ndarray, np.ndarray]:
        calls["strategy"] += 1
        f, s = counted_mean(bars.close, fast), counted_mean(bars.close, slow)
        return cross_above(f, s), cross_below(f, s)

    strat, shared = strategy_from_function(crossing), SharedSignals()
    cores = [TraderCore(f"c{i}", "X/USDT", "1d", strat, params, shared=shared)
             for i, params in enumerate(({"fast": 5, "slow": 20}, {"fast": 5, "slow": 20}, {"fast": 5, "slow": 30}))]
    for candle in candles_of(FRAMES["GOOG"].iloc[:50]):
        for core in cores:
            core.on_candle(candle, 0.0)
    assert calls == {"strategy": 100, 5: 50, 20: 50, 30: 50}  # the two equal cores: one signal; SMA(5): once for all

# ---------------------------------------------------------------- the session: books in the ledger (SQLite)
SESSION_CONFIG = BacktestConfig(direction="longshort", stop_loss=0.04, take_profit=0.08, slippage_bps=2)


def session_spec(root: str, name: str = "s1", **overrides: object) -> TraderSpec:
    values: dict[str, object] = {"name": name, "strategy": "sma_cross", "symbols": ("GOOG/USD",), "timeframe": "1d",
                                 "store": root, "params": {"fast": 10, "slow": 30}, "config": SESSION_CONFIG,
                                 "exchange": "test"}
    values.update(overrides)
    return TraderSpec(**values)  # type: ignore[arg-type]


def ledger_trades(ledger: Ledger, name: str) -> pd.DataFrame:
    got = ledger.closed_trades(name).drop(columns=["symbol"])
    got["exit_reason"] = got["exit_reason"].astype(str)
    return got


@pytest.fixture
def store(tmp_path: Path) -> str:
    """An empty candle store (and its SQLite ledger): a fresh trader has no warm-up, it trades every candle."""
    return str(tmp_path / "store")


def store_candles(root: str, frame: pd.DataFrame) -> None:
    CandleStore(root).write(candles_table(frame, exchange="test", symbol="GOOG/USD", timeframe="1d"))


def test_session_books_in_the_ledger_equal_backtest(store: str) -> None:
    ledger = open_ledger(None, store)
    spec = session_spec(store)
    session = TraderSession(spec, ledger)
    session.start()
    bars = candles_of(FRAMES["GOOG"])
    session.on_candles("GOOG/USD", bars)
    want = closed_trades(backtest(FRAMES["GOOG"], "sma_cross", spec.params, SESSION_CONFIG).trades)
    got = ledger_trades(ledger, "s1")
    assert len(want) > 20
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, check_dtype=False)
    assert ledger.fill_count("s1") == 2 * len(want) + int(session.traders["GOOG/USD"].broker.units != 0)
    assert ledger.equity("s1").iloc[-1] == session.traders["GOOG/USD"].broker.equity


def test_a_warm_started_trader_trades_only_new_candles(store: str) -> None:
    store_candles(store, FRAMES["GOOG"].iloc[:1000])
    session = TraderSession(session_spec(store, "w1"), open_ledger(None, store))
    session.start()
    assert session.candles == 0 and session.on_candles("GOOG/USD", candles_of(FRAMES["GOOG"].iloc[990:1010])) == 10


def test_a_restarted_session_resumes_from_the_ledger_and_trades_the_missed_candles(store: str) -> None:
    spec = session_spec(store, "r1")
    bars = candles_of(FRAMES["GOOG"])
    ledger = open_ledger(None, store)
    crashed = TraderSession(spec, ledger)
    crashed.start()
    crashed.on_candles("GOOG/USD", bars[:1200])
    store_candles(store, FRAMES["GOOG"].iloc[:1500])  # the feed kept storing while the trader was down
    restarted = TraderSession(spec, open_ledger(None, store))
    restarted.start()  # rebuilt from the ledger and the store; the 300 candles stored meanwhile are traded now
    assert restarted.candles == 300
    restarted.on_candles("GOOG/USD", bars[1200:])  # the first 300 of these are repeats: skipped
    assert restarted.candles == len(bars) - 1200
    want = closed_trades(backtest(FRAMES["GOOG"], "sma_cross", spec.params, SESSION_CONFIG).trades)
    pd.testing.assert_frame_equal(ledger_trades(ledger, "r1"), want, check_exact=False, rtol=1e-12, check_dtype=False)


def test_a_risk_breach_halts_with_the_reason_in_the_ledger(store: str) -> None:
    ledger = open_ledger(None, store)
    spec = session_spec(store, "h1", limits=RiskLimits(max_position_notional=5_000.0))
    session = TraderSession(spec, ledger)
    session.start()
    session.on_candles("GOOG/USD", candles_of(FRAMES["GOOG"]))
    record = {t.name: t for t in ledger.traders()}["h1"]
    assert record.status == "halted" and record.reason.startswith("max position notional")
    assert session.report()["status"] == "halted" and ledger.fill_count("h1") == 0
    assert ledger.events("h1", kind="halt")[0].detail["reason"] == record.reason


def test_stop_flatten_closes_at_the_last_close(store: str) -> None:
    ledger = open_ledger(None, store)
    spec = session_spec(store, "f1", config=BacktestConfig(fee=0.001))
    session = TraderSession(spec, ledger)
    session.start()
    bars = candles_of(FRAMES["GOOG"])
    held_at = next(i for i in range(100, len(bars)) if session.on_candles("GOOG/USD", [bars[i]]) and
                   session.traders["GOOG/USD"].broker.units)
    units = session.traders["GOOG/USD"].broker.units
    session.stop(flatten=True)
    last = ledger_trades(ledger, "f1").iloc[-1]
    assert last.exit_price == bars[held_at].close and last.exit_reason == "flatten" and last.units == units
    assert ledger.position("f1", "GOOG/USD").units == 0
    assert {t.name: t for t in ledger.traders()}["f1"].status == "stopped"


def test_incubator_specs_carry_the_best_results_and_their_backtest_figures(tmp_path: Path, run_cli: object) -> None:
    from tradpal_ray.runs import RunStore
    from tradpal_ray.trading._incubator import incubate

    root = write_goog(tmp_path / "inc", {"GOOG/USD": 1.0}, exchange="test")
    code, out, err = run_cli("sweep", "--store", root, "--exchange", "test", "--symbols", "GOOG/USD", "--timeframe", "1d",
                             "--grid", "fast=5,10,15", "--grid", "slow=20,30", "--metric", "return_pct", "--json",
                             "--executor", "local")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    specs = incubate(root, run_id, 2, limits=RiskLimits(), exchange="test", prefix="inc")
    best = RunStore(root).top(run_id, "return_pct", 2)
    assert [s.name for s in specs] == [f"inc-{run_id[-6:]}-1", f"inc-{run_id[-6:]}-2"]
    assert [s.params for s in specs] == [{"fast": int(r.fast), "slow": int(r.slow)} for r in best.itertuples()]
    assert specs[0].backtest["return_pct"] == best.return_pct.iloc[0] and specs[0].backtest["rank"] == 1
    # live on the candles the run backtested: no divergence at all
    session = TraderSession(dataclasses.replace(specs[0], store=str(tmp_path / "live")), open_ledger(None, str(tmp_path / "live")))
    session.start()
    session.on_candles("GOOG/USD", candles_of(FRAMES["GOOG"]))
    report = session.report()
    assert report["backtest"]["trades"] == best.trades.iloc[0]
    assert report["divergence"]["trades"] == 0 and abs(report["divergence"]["return_pct"]) < 1e-9
    assert session.ledger.events(specs[0].name, kind="divergence")[0].detail["trades"] <= 0


def test_incubator_takes_a_walk_forward_runs_latest_fold_choices(tmp_path: Path, run_cli: object) -> None:
    from tradpal_ray.runs import RunStore
    from tradpal_ray.trading._incubator import incubate

    root = write_goog(tmp_path / "wf", {"GOOG/USD": 1.0}, exchange="test")
    code, out, err = run_cli("walkforward", "--store", root, "--exchange", "test", "--symbols", "GOOG/USD",
                             "--timeframe", "1d", "--grid", "fast=5,10", "--grid", "slow=20,40", "--train", "360d",
                             "--test", "180d", "--executor", "local", "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    folds = RunStore(root).walkforward(run_id)["folds"].dropna(subset=["fast"]).sort_values("fold")
    specs = incubate(root, run_id, 1, limits=RiskLimits(), exchange="test")
    last = folds.iloc[-1]
    assert specs[0].params == {"fast": int(last.fast), "slow": int(last.slow)} and specs[0].symbols == ("GOOG/USD",)
    assert specs[0].backtest["trades"] == last.oos_trades and specs[0].backtest["return_pct"] == last.oos_return_pct
