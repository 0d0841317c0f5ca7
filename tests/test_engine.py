"""The engine's contract on small hand-built bars: fills, sizing, fees, stops, books, metrics."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tradpal_ray.backtest import (
    BacktestConfig,
    backtest,
    load_bars,
    prepare_bars,
    rank,
    run_signals,
    sweep,
)
from tradpal_ray.errors import ConfigError, DataError


def bars(open_, high=None, low=None, close=None, freq: str = "h") -> pd.DataFrame:
    open_ = np.asarray(open_, dtype=float)
    close = open_ if close is None else np.asarray(close, dtype=float)
    high = np.maximum(open_, close) if high is None else np.asarray(high, dtype=float)
    low = np.minimum(open_, close) if low is None else np.asarray(low, dtype=float)
    index = pd.date_range("2024-01-01", periods=len(open_), freq=freq, tz="UTC")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1.0}, index=index)


def signals(n: int, at: list[int]) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[at] = True
    return out


def test_signal_fills_at_next_open_with_all_in_floor_sizing() -> None:
    data = bars([100, 100, 110, 120, 130, 125])
    result = run_signals(data, signals(6, [1]), signals(6, [3]))
    trade = result.trades.iloc[0]
    assert (trade.entry_bar, trade.exit_bar) == (2, 4)
    assert (trade.entry_price, trade.exit_price) == (110, 130)
    assert trade.units == math.floor(10_000 / (110 * 1.001))  # 90
    assert trade.entry_fee == pytest.approx(90 * 110 * 0.001)
    assert trade.pnl == pytest.approx(90 * 20 - 90 * 110 * 0.001 - 90 * 130 * 0.001)
    assert trade.return_pct == pytest.approx(trade.pnl / (90 * 110) * 100)
    assert result.stats["trades"] == 1
    assert result.stats["final_equity"] == pytest.approx(10_000 + trade.pnl)


def test_last_bar_signal_never_fills_and_entries_in_a_position_are_ignored() -> None:
    data = bars([100, 101, 102, 103, 104])
    result = run_signals(data, signals(5, [0, 1, 2, 4]), signals(5, []))
    assert len(result.trades) == 1
    assert result.trades.entry_bar.iloc[0] == 1


def test_open_position_is_marked_to_last_close_and_not_counted() -> None:
    data = bars([100, 100, 100, 100], close=[100, 100, 100, 120])
    result = run_signals(data, signals(4, [0]), signals(4, []))
    trade = result.trades.iloc[0]
    assert trade.exit_reason == "open" and pd.isna(trade.exit_time)
    units = math.floor(10_000 / 100.1)
    assert result.stats["trades"] == 0
    assert math.isnan(result.stats["win_rate_pct"]) and math.isnan(result.stats["expectancy"])
    assert result.stats["final_equity"] == pytest.approx(10_000 - units * 100 * 0.001 + units * 20)
    assert trade.pnl == pytest.approx(units * 20 - units * 100 * 0.001)


def test_size_unit_and_zero_unit_orders() -> None:
    data = bars([100, 100, 100])
    fractional = run_signals(data, signals(3, [0]), signals(3, []), BacktestConfig(size_unit=1e-8))
    units = fractional.trades.units.iloc[0]
    assert units == pytest.approx(math.floor(10_000 / 100.1 / 1e-8) * 1e-8, rel=1e-12)
    assert units * 100 * 1.001 <= 10_000
    broke = run_signals(data, signals(3, [0]), signals(3, []), BacktestConfig(cash=50))
    assert broke.trades.empty and broke.stats["final_equity"] == 50


def test_slippage_moves_every_fill_against_the_trader() -> None:
    data = bars([100, 100, 100, 100])
    result = run_signals(data, signals(4, [0]), signals(4, [1]), BacktestConfig(slippage_bps=10, fee=0))
    trade = result.trades.iloc[0]
    assert trade.entry_price == pytest.approx(100.1)
    assert trade.exit_price == pytest.approx(99.9)
    assert trade.pnl == pytest.approx(trade.units * -0.2)


def test_conflicting_signals_on_one_bar_cancel() -> None:
    data = bars([100, 100, 100, 100])
    both = signals(4, [1])
    assert run_signals(data, both, both).trades.empty


@pytest.mark.parametrize(
    ("high", "low", "open_next", "reason", "price"),
    [
        (101, 94, 100, "stop_loss", 95.0),  # low crosses the 5 % stop: fill at the stop
        (101, 80, 90, "stop_loss", 90.0),  # gap through the stop: fill at the open
        (111, 94, 100, "stop_loss", 95.0),  # stop and target inside one bar: stop first
        (111, 99, 100, "take_profit", 110.0),  # target reached
        (125, 119, 120, "take_profit", 120.0),  # gap through the target: fill at the open
    ],
)
def test_stop_loss_and_take_profit(high: float, low: float, open_next: float, reason: str, price: float) -> None:
    data = bars([100, 100, 100, open_next, 100], high=[100, 100, 101, high, 100], low=[100, 100, 99, low, 100],
                close=[100, 100, 100, max(min(100, high), low), 100])
    config = BacktestConfig(fee=0, stop_loss=0.05, take_profit=0.10)
    trade = run_signals(data, signals(5, [1]), signals(5, []), config).trades.iloc[0]
    assert (trade.exit_reason, trade.exit_bar, trade.exit_price) == (reason, 3, pytest.approx(price))


def test_stop_is_checked_on_the_entry_bar() -> None:
    data = bars([100, 100, 100, 100], high=[100, 100, 100, 100], low=[100, 100, 90, 100], close=[100, 100, 99, 100])
    trade = run_signals(data, signals(4, [1]), signals(4, []), BacktestConfig(stop_loss=0.05)).trades.iloc[0]
    assert (trade.entry_bar, trade.exit_bar, trade.exit_price) == (2, 2, 95.0)


def test_long_short_reverses_and_shorts_profit_from_falls() -> None:
    data = bars([100, 100, 100, 80, 80, 90])
    config = BacktestConfig(cash=10_050, direction="longshort", fee=0)
    result = run_signals(data, signals(6, [3]), signals(6, [1]), config)
    short, long_ = result.trades.iloc[0], result.trades.iloc[1]
    assert short.units == -100 and short.entry_bar == 2 and short.exit_bar == 4
    assert short.pnl == pytest.approx(100 * 20)
    assert long_.units == math.floor(12_050 / 80) and long_.exit_reason == "open"


def test_short_wiped_out_is_liquidated_at_equity_zero() -> None:
    data = bars([100, 100, 100, 250, 260], close=[100, 100, 100, 250, 260])
    result = run_signals(data, signals(5, []), signals(5, [1]), BacktestConfig(direction="longshort", fee=0))
    assert result.trades.exit_reason.iloc[0] == "liquidation"
    assert (result.equity.iloc[3:] == 0).all()
    assert result.stats["final_equity"] == 0


def test_metrics_by_hand() -> None:
    # Two trades: +10 % (100 units) then -5 % (110 units), no fees, daily bars.
    data = bars([100, 100, 110, 110, 100, 95, 95], freq="D")
    result = run_signals(data, signals(7, [0, 3]), signals(7, [1, 4]), BacktestConfig(cash=10_050, fee=0))
    s = result.stats
    pnl = result.trades.pnl.to_numpy()
    assert pnl == pytest.approx([100 * 10, 110 * -5])
    assert s["trades"] == 2 and s["win_rate_pct"] == 50
    assert s["profit_factor"] == pytest.approx(1000 / 550)
    assert s["expectancy"] == pytest.approx(225)
    assert s["best_trade_pct"] == pytest.approx(10) and s["worst_trade_pct"] == pytest.approx(-5)
    equity = result.equity.to_numpy()
    assert s["max_drawdown_pct"] == pytest.approx((1 - 10_500 / 11_050) * 100)
    assert equity == pytest.approx([10_050, 10_050, 11_050, 11_050, 11_050, 10_500, 10_500])
    assert s["exposure_pct"] == pytest.approx(4 / 7 * 100)  # bars 1-2 and 4-5, entry to exit inclusive
    assert s["return_pct"] == pytest.approx((equity[-1] / 10_050 - 1) * 100)
    r = result.equity.pct_change().dropna()  # daily bars: one return per day
    assert s["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365), rel=1e-9)
    assert s["sortino"] == pytest.approx(r.mean() * 365 / (math.sqrt((r.clip(upper=0) ** 2).mean()) * math.sqrt(365)), rel=1e-9)
    assert s["cagr_pct"] == pytest.approx(((10_500 / 10_050) ** (365 / 6) - 1) * 100, rel=1e-9)
    assert s["calmar"] == pytest.approx(s["cagr_pct"] / s["max_drawdown_pct"], rel=1e-12)
    assert s["unfilled_entries"] == 0


def test_cash_exactly_divisible_buys_one_unit_less_like_backtesting_py() -> None:
    """backtesting.py sizes with 1 - eps of equity, so 10,000 / 100 buys 99 units, not 100."""
    data = bars([100, 100, 100])
    result = run_signals(data, signals(3, [0]), signals(3, []), BacktestConfig(fee=0))
    assert result.trades.units.iloc[0] == 99


def test_config_validation() -> None:
    for bad in ({"cash": 0}, {"fee": -0.1}, {"size_unit": 0}, {"direction": "sideways"}, {"stop_loss": 1.5}):
        with pytest.raises(ConfigError):
            BacktestConfig(**bad)


def test_bad_rows_raise_naming_the_row_or_are_dropped() -> None:
    data = bars([100, 101, 102, 103])
    data.iloc[2, data.columns.get_loc("high")] = 50.0  # high below open/close
    with pytest.raises(DataError, match="row 2"):
        prepare_bars(data)
    kept = prepare_bars(data, drop_bad=True)
    assert len(kept) == 3 and list(kept.close) == [100, 101, 103]


def test_time_must_strictly_increase() -> None:
    data = bars([100, 101, 102])
    data.index = data.index[[0, 1, 1]]
    with pytest.raises(DataError, match="row 2.*strictly increasing"):
        prepare_bars(data)


def test_no_bars_is_a_data_error_for_backtest_and_sweep(tmp_path) -> None:
    empty = bars([100.0])[:0]
    with pytest.raises(DataError, match="no bars"):
        backtest(empty)
    with pytest.raises(DataError, match="no bars"):
        sweep(empty, "sma_cross", {"fast": [3], "slow": [10]})
    with pytest.raises(DataError, match="no bars"):
        sweep(empty, "sma_cross", [])  # no combination to reject: the chunk size divided by 0 bars
    bars([100, 101]).to_csv(tmp_path / "two.csv")
    with pytest.raises(DataError, match="no bars in two.csv"):  # a --since after the last bar
        load_bars(tmp_path / "two.csv", since="2025-01-01")


def test_files_with_any_case_columns_and_a_time_column(tmp_path) -> None:
    frame = bars([100, 101, 102, 103])
    frame.columns = [c.upper() for c in frame.columns]
    frame.index.name = "Date"
    frame.reset_index().to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet")
    for name in ("a.csv", "a.parquet"):
        loaded = load_bars(tmp_path / name, since="2024-01-01T01:00", until="2024-01-01T03:00")
        assert list(loaded.close) == [101, 102]
        assert str(loaded.index.tz) == "UTC"
    frame.drop(columns=["VOLUME"]).to_csv(tmp_path / "b.csv")
    with pytest.raises(DataError, match="missing column.*volume"):
        load_bars(tmp_path / "b.csv")


def test_sweep_chunks_ranks_and_rejects_bad_combinations(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    data = bars(100 * np.exp(np.cumsum(rng.normal(0, 0.01, 400))))
    grid = {"fast": [3, 5, 8], "slow": [10, 20]}
    whole = sweep(data, "sma_cross", grid)
    sweep_module = importlib.import_module("tradpal_ray.backtest.sweep")  # the package attribute is the function
    monkeypatch.setattr(sweep_module, "SIGNAL_BYTES", 2 * 400 * 2)  # two combinations per kernel call
    chunked = sweep(data, "sma_cross", grid)
    pd.testing.assert_frame_equal(whole, chunked)
    ranked = rank(whole, "sharpe")
    assert ranked.sharpe.is_monotonic_decreasing
    assert rank(whole, "max_drawdown_pct").max_drawdown_pct.is_monotonic_increasing
    listed = sweep(data, "sma_cross", [{"fast": 3, "slow": 10}, {"fast": 8, "slow": 20}])
    assert listed[["fast", "slow"]].values.tolist() == [[3, 10], [8, 20]]
    with pytest.raises(ConfigError, match="fast must be below slow"):
        sweep(data, "sma_cross", [{"fast": 30, "slow": 10}])
    with pytest.raises(ConfigError, match="unknown metric .luck."):
        rank(whole, "luck")


def test_engine_imports_no_ray() -> None:
    code = "import sys, tradpal_ray.backtest; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
