"""Sharpe, Sortino, CAGR and Calmar against empyrical-reloaded, and their sanity on degenerate curves.

The references: ``empyrical`` (empyrical-reloaded) on the daily returns of our own equity curve
(equity at the last bar of each UTC day, ``pct_change``), on real GOOG daily bars (252 periods
per year) and on the simulator's deterministic BTC/USDT walk (365), daily and hourly bars.
"""

from __future__ import annotations

import math

import empyrical
import numpy as np
import pandas as pd
import pytest
from backtesting.test import GOOG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradpal_ray.backtest import BacktestConfig, backtest, metric, prepare_bars, run_signals, sweep
from tradpal_ray.backtest.engine import _ratio
from tradpal_ray.backtest.metrics import MAX_RATIO, ratio
from tradpal_ray.sim import SyntheticSource
from tradpal_ray.sim.market import aggregate

REL = 1e-9
DAY_MS = 86_400_000


def synthetic_btc(period_ms: int, days: int = 400) -> pd.DataFrame:
    """The simulator's deterministic BTC/USDT minute walk (seed 7) aggregated to ``period_ms`` bars."""
    source = SyntheticSource(["BTC/USDT"], seed=7)
    spec = source.specs()["BTC/USDT"]
    bars = aggregate(source.bars("BTC/USDT", source.genesis_ms, source.genesis_ms + days * DAY_MS), period_ms)
    scale = 10.0**spec.price_decimals
    frame = pd.DataFrame({name: getattr(bars, short) / scale for name, short in
                          (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"))})
    frame["volume"] = bars.v.astype(float)
    frame.index = pd.to_datetime(bars.t, unit="ms", utc=True)
    return frame


@pytest.fixture(scope="module")
def btc_daily() -> pd.DataFrame:
    return synthetic_btc(DAY_MS)


@pytest.fixture(scope="module")
def btc_hourly() -> pd.DataFrame:
    return synthetic_btc(3_600_000, days=120)


def daily_returns(equity: pd.Series, data: pd.DataFrame) -> pd.Series:
    """Returns of the equity at each UTC day's last bar, as empyrical wants them."""
    day_end = prepare_bars(data).day_end
    return equity[day_end].pct_change().dropna()


def assert_matches_empyrical(stats: dict, returns: pd.Series, ppy: int) -> None:
    assert len(returns) > 100
    assert stats["sharpe"] == pytest.approx(empyrical.sharpe_ratio(returns, annualization=ppy), rel=REL)
    assert stats["sortino"] == pytest.approx(empyrical.sortino_ratio(returns, annualization=ppy), rel=REL)
    assert stats["cagr_pct"] == pytest.approx(empyrical.annual_return(returns, annualization=ppy) * 100, rel=REL)


@pytest.mark.parametrize(("fast", "slow", "direction"), [(10, 30, "long"), (20, 50, "long"), (10, 30, "longshort")])
def test_goog_ratios_equal_empyrical(fast: int, slow: int, direction: str) -> None:
    config = BacktestConfig(periods_per_year=252, direction=direction)
    result = backtest(GOOG, "sma_cross", {"fast": fast, "slow": slow}, config)
    returns = daily_returns(result.equity, GOOG)
    assert_matches_empyrical(result.stats, returns, 252)
    # Daily bars: our bar-by-bar drawdown is empyrical's, so Calmar is empyrical's too.
    assert result.stats["calmar"] == pytest.approx(empyrical.calmar_ratio(returns, annualization=252), rel=REL)


@pytest.mark.parametrize(("strategy", "params"), [("sma_cross", {"fast": 5, "slow": 20}), ("rsi_reversion", {"window": 5, "lower": 40.0, "upper": 60.0})])
def test_crypto_daily_ratios_equal_empyrical(btc_daily: pd.DataFrame, strategy: str, params: dict) -> None:
    result = backtest(btc_daily, strategy, params, BacktestConfig(size_unit=1e-8))
    assert result.stats["trades"] > 3
    returns = daily_returns(result.equity, btc_daily)
    assert_matches_empyrical(result.stats, returns, 365)
    assert result.stats["calmar"] == pytest.approx(empyrical.calmar_ratio(returns, annualization=365), rel=REL)


def test_intraday_ratios_use_daily_returns(btc_hourly: pd.DataFrame) -> None:
    """Hourly bars: Sharpe/Sortino/CAGR still come from daily equity; the drawdown sees every bar."""
    result = backtest(btc_hourly, "sma_cross", {"fast": 12, "slow": 48}, BacktestConfig(size_unit=1e-8))
    assert result.stats["trades"] > 10
    returns = daily_returns(result.equity, btc_hourly)
    assert len(returns) == 119  # 120 UTC days: the first one only sets the base
    assert_matches_empyrical(result.stats, returns, 365)
    intrabar_dd = result.stats["max_drawdown_pct"] / 100
    assert intrabar_dd >= -empyrical.max_drawdown(returns)
    assert result.stats["calmar"] == pytest.approx(empyrical.annual_return(returns, annualization=365) / intrabar_dd, rel=REL)


def test_sweep_reports_the_same_ratios_as_single_backtests(btc_daily: pd.DataFrame) -> None:
    grid = {"fast": [3, 5, 8], "slow": [20, 40]}
    config = BacktestConfig(size_unit=1e-8)
    for row in sweep(btc_daily, "sma_cross", grid, config).itertuples(index=False):
        single = backtest(btc_daily, "sma_cross", {"fast": row.fast, "slow": row.slow}, config).stats
        for name in ("sharpe", "sortino", "cagr_pct", "calmar"):
            assert getattr(row, name) == pytest.approx(single[name], rel=1e-12, nan_ok=True)


# --- degenerate equity curves ------------------------------------------------------------------

RATIOS = ("sharpe", "sortino", "calmar", "profit_factor")


def curve_bars(kind: str, days: int, per_day: int, scale: float, seed: int) -> tuple[pd.DataFrame, str]:
    """Bars whose held position makes a degenerate equity curve of ``kind``; and the direction to hold."""
    n = days * per_day
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    if kind == "flat":
        close = np.full(n, 100.0)
    elif kind == "tiny_noise":
        close = 100.0 * (1 + scale * rng.standard_normal(n))
    elif kind == "steady_growth":  # a straight compounding line: only float rounding varies
        close = 100.0 * (1 + scale) ** t
    elif kind == "steady_growth_noise":
        close = 100.0 * (1 + scale) ** t * (1 + 1e-12 * rng.standard_normal(n))
    elif kind == "crash":  # a long loses almost everything
        close = 100.0 * np.geomspace(1, 1e-9, n)
    else:  # "squeeze": a short is wiped out (liquidated at equity 0)
        close = 100.0 * np.geomspace(1, 1e3, n)
    close = np.maximum(close, 1e-12)
    open_ = np.r_[close[0], close[:-1]]
    index = pd.date_range("2024-01-01", periods=n, freq=pd.Timedelta(days=1) / per_day, tz="UTC")
    frame = pd.DataFrame({"open": open_, "high": np.maximum(open_, close), "low": np.minimum(open_, close),
                          "close": close, "volume": 1.0}, index=index)
    return frame, "longshort" if kind == "squeeze" else "long"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["flat", "tiny_noise", "steady_growth", "steady_growth_noise", "crash", "squeeze"]),
    days=st.integers(1, 40),
    per_day=st.sampled_from([1, 24]),
    scale=st.sampled_from([1e-15, 1e-12, 1e-9, 1e-6, 1e-3, 0.05]),
    seed=st.integers(0, 1000),
    fee=st.sampled_from([0.0, 0.001]),
    ppy=st.sampled_from([252.0, 365.0]),
    trade_every=st.sampled_from([0, 3, 7]),
)
def test_no_statistic_is_infinite_or_absurd_on_degenerate_curves(
    kind: str, days: int, per_day: int, scale: float, seed: int, fee: float, ppy: float, trade_every: int
) -> None:
    data, direction = curve_bars(kind, days, per_day, scale, seed)
    n = len(data)
    entries = np.zeros(n, dtype=bool)
    exits = np.zeros(n, dtype=bool)
    opener = exits if direction == "longshort" else entries
    opener[0] = True
    if trade_every and direction == "long":  # round trips too, so trade statistics exist
        exits[trade_every::trade_every * 2] = True
        entries[trade_every * 2::trade_every * 2] = True
    config = BacktestConfig(fee=fee, size_unit=1e-8, direction=direction, periods_per_year=ppy)
    stats = run_signals(data, entries, exits, config).stats
    for name, value in stats.items():
        assert not math.isinf(value), (name, value)
    for name in RATIOS:
        assert math.isnan(stats[name]) or abs(stats[name]) < 1e6, (name, stats[name])
    if days < 3:  # under two daily returns
        assert math.isnan(stats["sharpe"]) and math.isnan(stats["sortino"])
    if kind in ("flat", "steady_growth") and fee == 0 and not trade_every:
        # no dispersion but float rounding: undefined, never the 1e14 of a near-zero volatility
        assert math.isnan(stats["sharpe"]) and math.isnan(stats["sortino"])
    if kind == "squeeze" and n > 1:  # wiped out: -100 %, or undefined when it happened on the base day
        assert stats["final_equity"] == 0
        assert math.isnan(stats["cagr_pct"]) or stats["cagr_pct"] == -100


def test_one_day_has_no_daily_return_so_no_ratio_and_no_cagr() -> None:
    data, _ = curve_bars("steady_growth", 1, 24, 1e-3, 0)
    entries = np.zeros(len(data), dtype=bool)
    entries[0] = True
    stats = run_signals(data, entries, np.zeros(len(data), dtype=bool), BacktestConfig(fee=0)).stats
    assert stats["return_pct"] > 0
    for name in ("sharpe", "sortino", "cagr_pct", "calmar"):
        assert math.isnan(stats[name]), name


@settings(max_examples=300, deadline=None)
@given(
    num=st.floats(allow_nan=True, allow_infinity=True, width=64),
    den=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
def test_kernel_and_registry_share_one_ratio_rule(num: float, den: float) -> None:
    """The njit scalar rule and the vectorised one used by derived metrics never disagree."""
    ours = float(ratio(num, den))
    kernel = _ratio(num, den)
    assert (math.isnan(ours) and math.isnan(kernel)) or ours == kernel
    assert math.isnan(ours) or abs(ours) <= MAX_RATIO


def test_profit_factor_without_losers_is_undefined_as_in_backtesting_py() -> None:
    data, _ = curve_bars("steady_growth", 10, 1, 0.01, 0)
    entries = np.zeros(len(data), dtype=bool)
    exits = np.zeros(len(data), dtype=bool)
    entries[0], exits[5] = True, True
    stats = run_signals(data, entries, exits, BacktestConfig(fee=0)).stats
    assert stats["trades"] == 1 and stats["win_rate_pct"] == 100
    assert math.isnan(stats["profit_factor"])
    assert metric("profit_factor").higher_is_better
