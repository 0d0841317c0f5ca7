"""Fidelity against backtesting.py 0.6.6 on its bundled real data, plus accounting properties.

The peer runs with the contract's defaults: ``Backtest(data, S, cash=10_000,
commission=0.001, trade_on_close=False, exclusive_orders=False, finalize_trades=False)``.
Peer results are computed once per module (backtesting.py is pure Python).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import EURUSD, GOOG, SMA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradpal_ray.backtest import BacktestConfig, backtest, run_signals, strategy_combos, sweep, sweep_returns

REL = 1e-9
GRID = {"fast": range(5, 51, 5), "slow": range(20, 201, 10)}
DATASETS = {"GOOG": GOOG, "EURUSD": EURUSD}
# backtesting.py annualises with 252 days when the data has no weekends (both sets here).
CONFIG = BacktestConfig(periods_per_year=252)


class SmaCrossLong(Strategy):
    """The contract's sma_cross written for backtesting.py: long-only, one position at a time."""

    fast = 10
    slow = 30

    def init(self) -> None:
        self.f = self.I(SMA, self.data.Close, self.fast)
        self.s = self.I(SMA, self.data.Close, self.slow)

    def next(self) -> None:
        if crossover(self.f, self.s):
            if not self.position:
                self.buy()
        elif crossover(self.s, self.f):
            self.position.close()


class SmaCrossReversal(SmaCrossLong):
    """backtesting.py's classic SmaCross: always in the market, long or short."""

    def next(self) -> None:
        if crossover(self.f, self.s):
            self.position.close()
            self.buy()
        elif crossover(self.s, self.f):
            self.position.close()
            self.sell()


def peer(data: pd.DataFrame, strat: type[Strategy] = SmaCrossLong, **params: int) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = Backtest(data, strat, cash=10_000, commission=0.001, trade_on_close=False,
                      exclusive_orders=False, finalize_trades=False)
        return bt.run(**params)


@pytest.fixture(scope="module")
def peer_grid() -> dict[str, dict[tuple[int, int], float]]:
    """Final equity of every grid combination on both datasets, from backtesting.py."""
    combos = strategy_combos("sma_cross", GRID)
    assert len(combos) == 174
    return {
        name: {(c["fast"], c["slow"]): float(peer(data, **c)["Equity Final [$]"]) for c in combos}
        for name, data in DATASETS.items()
    }


def assert_same_trades(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    closed = ours[ours.exit_reason != "open"].reset_index(drop=True)
    assert len(closed) == len(theirs) > 0
    assert (closed.entry_time.dt.tz_localize(None).to_numpy() == theirs.EntryTime.to_numpy()).all()
    assert (closed.exit_time.dt.tz_localize(None).to_numpy() == theirs.ExitTime.to_numpy()).all()
    np.testing.assert_array_equal(closed.entry_price, theirs.EntryPrice)
    np.testing.assert_array_equal(closed.exit_price, theirs.ExitPrice)
    np.testing.assert_array_equal(closed.units, theirs.Size)
    np.testing.assert_allclose(closed.pnl, theirs.PnL, rtol=REL, atol=1e-9)
    np.testing.assert_allclose(closed.return_pct, theirs.ReturnPct * 100, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", DATASETS)
def test_sma_cross_matches_backtesting_py_trade_for_trade(name: str) -> None:
    data = DATASETS[name]
    ours = backtest(data, "sma_cross", {"fast": 10, "slow": 30}, CONFIG)
    theirs = peer(data, fast=10, slow=30)
    assert_same_trades(ours.trades, theirs._trades)
    s = ours.stats
    assert s["trades"] == theirs["# Trades"]
    assert s["final_equity"] == pytest.approx(theirs["Equity Final [$]"], rel=REL)
    assert s["return_pct"] == pytest.approx(theirs["Return [%]"], rel=REL)
    assert s["max_drawdown_pct"] == pytest.approx(-theirs["Max. Drawdown [%]"], rel=REL)
    assert s["win_rate_pct"] == pytest.approx(theirs["Win Rate [%]"], rel=REL)
    assert s["sqn"] == pytest.approx(theirs["SQN"], rel=1e-9)
    # Sharpe/Sortino/CAGR/Calmar follow empyrical, not backtesting.py: see test_ratios.py.
    np.testing.assert_allclose(ours.equity.to_numpy(), theirs._equity_curve.Equity.to_numpy(), rtol=REL)


def test_exposure_matches_backtesting_py_when_the_last_trade_is_closed() -> None:
    """backtesting.py leaves a still-open position out of exposure; with none open we agree."""
    tenth_exit = backtest(EURUSD, "sma_cross", {"fast": 10, "slow": 30}, CONFIG).trades.exit_bar[9]
    data = EURUSD.iloc[: tenth_exit + 1]
    ours = backtest(data, "sma_cross", {"fast": 10, "slow": 30}, CONFIG)
    theirs = peer(data, fast=10, slow=30)
    assert (ours.trades.exit_reason != "open").all()
    assert ours.stats["exposure_pct"] == pytest.approx(theirs["Exposure Time [%]"], rel=REL)


def test_long_short_reversal_matches_backtesting_py() -> None:
    config = BacktestConfig(direction="longshort", periods_per_year=252)
    ours = backtest(GOOG, "sma_cross", {"fast": 10, "slow": 30}, config)
    theirs = peer(GOOG, SmaCrossReversal, fast=10, slow=30)
    assert (ours.trades.units < 0).any()
    assert_same_trades(ours.trades, theirs._trades)
    assert ours.stats["final_equity"] == pytest.approx(theirs["Equity Final [$]"], rel=REL)
    assert ours.stats["sqn"] == pytest.approx(theirs["SQN"], rel=1e-9)


@pytest.mark.parametrize("name", DATASETS)
def test_full_grid_final_equity_matches_backtesting_py(name: str, peer_grid: dict) -> None:
    results = sweep(DATASETS[name], "sma_cross", GRID, CONFIG)
    assert len(results) == 174
    expected = np.array([peer_grid[name][(f, s)] for f, s in zip(results.fast, results.slow)])
    np.testing.assert_allclose(results.final_equity.to_numpy(), expected, rtol=REL)


def test_sweep_stats_equal_single_backtests() -> None:
    results = sweep(GOOG, "sma_cross", GRID, CONFIG)
    for row in results.sample(25, random_state=1).itertuples(index=False):
        single = backtest(GOOG, "sma_cross", {"fast": row.fast, "slow": row.slow}, CONFIG).stats
        for name, value in single.items():
            got = getattr(row, name)
            assert got == value or (math.isnan(got) and math.isnan(value)), (row.fast, row.slow, name)


def test_sweep_daily_returns_are_each_backtests_daily_equity_returns() -> None:
    """The returns matrix (for DSR, PBO, CPCV) is the series each result's Sharpe comes from."""
    results, returns = sweep_returns(GOOG, "sma_cross", GRID, CONFIG)
    assert returns.shape == (len(GOOG.index.normalize().unique()) - 1, len(results))
    for j in (0, 50, 173):
        row = results.iloc[j]
        single = backtest(GOOG, "sma_cross", {"fast": row.fast, "slow": row.slow}, CONFIG)
        daily = single.equity.groupby(single.equity.index.normalize()).last().pct_change().dropna()
        np.testing.assert_allclose(returns[j].to_numpy(), daily.to_numpy(), rtol=1e-12, atol=1e-15)
        assert (returns.index == daily.index).all()
        mean, std = returns[j].mean(), returns[j].std(ddof=1)
        assert row.sharpe == pytest.approx(mean / std * math.sqrt(CONFIG.periods_per_year), rel=1e-9)


# --- properties on random walks -------------------------------------------------------------

def random_bars(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.005, n))
    wick = np.abs(rng.normal(0, 0.01, (2, n)))
    high = np.maximum(open_, close) * (1 + wick[0])
    low = np.minimum(open_, close) * (1 - wick[1])
    index = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1.0}, index=index)


configs = st.builds(
    BacktestConfig,
    fee=st.sampled_from([0.0, 0.001, 0.0025]),
    size_unit=st.sampled_from([1.0, 0.01, 1e-8]),
    slippage_bps=st.sampled_from([0.0, 5.0]),
    direction=st.sampled_from(["long", "longshort"]),
    stop_loss=st.sampled_from([None, 0.02, 0.05]),
    take_profit=st.sampled_from([None, 0.03, 0.1]),
)
strategy_cases = st.sampled_from([
    ("sma_cross", {"fast": 3, "slow": 8}),
    ("ema_cross", {"fast": 4, "slow": 12}),
    ("rsi_reversion", {"window": 5, "lower": 40.0, "upper": 60.0}),
    ("bollinger_breakout", {"window": 10, "k": 1.0}),
    ("macd", {"fast": 3, "slow": 9, "signal": 4}),
])
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(seed=st.integers(0, 10_000), n=st.integers(60, 300), cut=st.integers(20, 59), case=strategy_cases, config=configs)
def test_appending_bars_never_changes_the_past(seed: int, n: int, cut: int, case: tuple, config: BacktestConfig) -> None:
    name, params = case
    bars = random_bars(seed, n)
    full = backtest(bars, name, params, config)
    head = backtest(bars.iloc[:cut], name, params, config)
    np.testing.assert_array_equal(head.equity.to_numpy(), full.equity.to_numpy()[:cut])
    closed = head.trades[head.trades.exit_reason != "open"]
    pd.testing.assert_frame_equal(closed, full.trades.iloc[: len(closed)])
    if len(closed) < len(head.trades):  # the open position was entered identically
        for column in ("entry_time", "entry_price", "units", "entry_fee"):
            assert head.trades[column].iloc[-1] == full.trades[column].iloc[len(closed)]


@PROPERTY
@given(seed=st.integers(0, 10_000), n=st.integers(30, 400), case=strategy_cases, config=configs)
def test_final_equity_is_cash_plus_closed_pnl_plus_open_mark(seed: int, n: int, case: tuple, config: BacktestConfig) -> None:
    name, params = case
    bars = random_bars(seed, n)
    result = backtest(bars, name, params, config)
    trades = result.trades
    closed = trades[trades.exit_reason != "open"]
    expected = config.cash + closed.pnl.sum()
    held = trades[trades.exit_reason == "open"]
    if len(held):
        row = held.iloc[0]
        expected += row.units * (bars.close.iloc[-1] - row.entry_price) - row.entry_fee
    assert result.stats["final_equity"] == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert result.stats["trades"] == len(closed)
    assert result.equity.iloc[-1] == result.stats["final_equity"]


class SignalsWithStop(Strategy):
    """Given entry/exit arrays; the stop is ``stop`` below the next open (the entry fill), exits by ``position.close()``."""

    entries: np.ndarray = np.zeros(0, dtype=bool)
    exits: np.ndarray = np.zeros(0, dtype=bool)
    opens: np.ndarray = np.zeros(0)
    stop = 0.05

    def init(self) -> None:
        pass

    def next(self) -> None:
        i = len(self.data) - 1
        if self.entries[i] and not self.position:
            self.buy(sl=self.opens[i + 1] * (1 - self.stop))
        elif self.exits[i]:
            self.position.close()


def test_exit_signal_fills_at_the_open_before_a_stop_in_the_same_bar_as_in_backtesting_py() -> None:
    """Bar 4 opens above the stop and trades through it: the exit decided at bar 3's close wins, at the open."""
    index = pd.date_range("2024-01-01", periods=7, freq="D")
    data = pd.DataFrame({"Open": [100, 100, 100, 101, 98, 90, 90], "High": [100, 101, 102, 102, 99, 91, 91],
                         "Low": [100, 99, 99, 97, 85, 89, 89], "Close": [100, 100, 101, 98, 90, 90, 90],
                         "Volume": 1.0}, index=index)
    entries = np.array([0, 1, 0, 0, 0, 0, 0], dtype=bool)
    exits = np.array([0, 0, 0, 1, 0, 0, 0], dtype=bool)
    ours = run_signals(data, entries, exits, BacktestConfig(stop_loss=0.05)).trades
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = Backtest(data, SignalsWithStop, cash=10_000, commission=0.001).run(
            entries=entries, exits=exits, opens=data.Open.to_numpy(dtype=float))._trades
    assert len(ours) == len(theirs) == 1
    assert data.Low.iloc[4] < ours.entry_price.iloc[0] * 0.95 < data.Open.iloc[4]  # the stop was inside bar 4
    assert (ours.exit_bar.iloc[0], ours.exit_reason.iloc[0]) == (4, "signal")
    assert ours.exit_price.iloc[0] == theirs.ExitPrice.iloc[0] == 98  # the open, not the 95 stop
    assert ours.units.iloc[0] == theirs.Size.iloc[0]
    assert ours.pnl.iloc[0] == pytest.approx(theirs.PnL.iloc[0], rel=REL)
