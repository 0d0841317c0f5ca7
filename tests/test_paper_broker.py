"""The paper broker runs the engine's own per-bar steps: its fills are the backtest's, bar for bar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from backtesting.test import GOOG

from tradpal_ray.backtest import BacktestConfig, run_signals
from tradpal_ray.backtest.engine import NO_CHANGE, next_target
from tradpal_ray.trading._paper import Candle, PaperBroker, trades_frame
from tradpal_ray.trading._session import candles_of

FRAME = GOOG.rename(columns=str.lower)
CONFIGS = {
    "long": BacktestConfig(),
    "longshort_stops": BacktestConfig(direction="longshort", stop_loss=0.03, take_profit=0.06, slippage_bps=5),
    "notional_units": BacktestConfig(size_notional=2_500.0, size_unit=0.01, fee=0.002, stop_loss=0.02),
}


def run_broker(broker: PaperBroker, bars: list[Candle], entries: np.ndarray, exits: np.ndarray,
               direction: int) -> PaperBroker:
    target = NO_CHANGE
    for i, candle in enumerate(bars):
        broker.on_candle(target, candle)
        target = next_target(broker.units, bool(entries[i]), bool(exits[i]), direction) if not broker.dead else NO_CHANGE
    return broker


def closed(trades: pd.DataFrame) -> pd.DataFrame:
    keep = trades[trades.exit_reason != "open"].drop(columns=["entry_bar", "exit_bar"]).reset_index(drop=True)
    keep["exit_reason"] = keep["exit_reason"].astype(str)
    return keep


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_broker_fills_random_signals_as_the_kernel(name: str) -> None:
    config = CONFIGS[name]
    rng = np.random.default_rng(7)
    n = len(FRAME)
    entries, exits = rng.random(n) < 0.05, rng.random(n) < 0.05
    expected = run_signals(FRAME, entries, exits, config)
    broker = run_broker(PaperBroker(config), candles_of(FRAME), entries, exits, int(config.direction == "longshort"))
    got = trades_frame(broker.trades)
    got["exit_reason"] = got["exit_reason"].astype(str)
    want = closed(expected.trades)
    assert len(want) > 20
    pd.testing.assert_frame_equal(got, want, check_exact=True, check_index_type=False)
    assert broker.equity == expected.equity.iloc[-1]
    assert broker.unfilled_entries == expected.stats["unfilled_entries"]
    if name == "longshort_stops":
        assert {"stop_loss", "take_profit", "signal"} <= set(got.exit_reason)


def test_entry_and_stop_in_one_candle_are_two_executions_in_order() -> None:
    broker = PaperBroker(BacktestConfig(stop_loss=0.05, fee=0.0))
    executions = broker.on_candle(1, Candle(0, 100.0, 101.0, 90.0, 92.0))
    assert [(e.side, e.opens, e.reason, e.price) for e in executions] == [
        ("buy", True, "signal", 100.0), ("sell", False, "stop_loss", 95.0)]
    assert broker.units == 0 and broker.trades[0].exit_reason == "stop_loss"


def test_reversal_closes_then_opens() -> None:
    broker = PaperBroker(BacktestConfig(direction="longshort", fee=0.0))
    broker.on_candle(1, Candle(0, 100.0, 100.0, 100.0, 100.0))
    executions = broker.on_candle(-1, Candle(1, 110.0, 110.0, 110.0, 110.0))
    assert [(e.side, e.opens, e.units) for e in executions] == [("sell", False, 99.0), ("sell", True, 99.0)]
    assert broker.units == -99.0 and broker.trades[-1].pnl == pytest.approx(990.0)


def test_resumed_broker_continues_as_the_one_that_never_stopped() -> None:
    config = CONFIGS["longshort_stops"]
    bars = candles_of(FRAME)
    rng = np.random.default_rng(3)
    entries, exits = rng.random(len(bars)) < 0.05, rng.random(len(bars)) < 0.05
    whole = run_broker(PaperBroker(config), bars, entries, exits, 1)
    cut = len(bars) // 2
    first = run_broker(PaperBroker(config), bars[:cut], entries, exits, 1)
    while first.units == 0:  # resume with a position held, the harder case
        first.on_candle(next_target(first.units, bool(entries[cut - 1]), bool(exits[cut - 1]), 1), bars[cut])
        cut += 1
    realized = sum(t.pnl for t in first.trades)
    resumed = PaperBroker.resume(config, units=first.units, entry_price=first.entry_price,
                                 entry_fee=first.entry_fee, entry_time_ms=first.entry_time_ms, realized_pnl=realized)
    assert resumed.cash == pytest.approx(first.cash, rel=1e-12)
    target = next_target(resumed.units, bool(entries[cut - 1]), bool(exits[cut - 1]), 1)
    for i in range(cut, len(bars)):
        resumed.on_candle(target, bars[i])
        target = next_target(resumed.units, bool(entries[i]), bool(exits[i]), 1)
    assert trades_frame(resumed.trades).equals(trades_frame(whole.trades[len(first.trades):]))
    assert resumed.equity == pytest.approx(whole.equity, rel=1e-12)

