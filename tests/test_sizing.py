"""Position sizing (fraction of equity, quote notional), unaffordable units, and too-short data."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import EURUSD, GOOG, SMA

from tradpal_ray.backtest import BacktestConfig, PositionSize, backtest, parse_size, run_signals, sweep
from tradpal_ray.backtest.engine import sizing_warning
from tradpal_ray.errors import ConfigError

RunCli = Callable[..., tuple[int, str, str]]
REL = 1e-9


class SizedSmaCross(Strategy):
    """sma_cross for backtesting.py buying a fraction of equity: ``self.buy(size=size)``."""

    fast = 10
    slow = 30
    size = 0.5
    reverse = False

    def init(self) -> None:
        self.f = self.I(SMA, self.data.Close, self.fast)
        self.s = self.I(SMA, self.data.Close, self.slow)

    def next(self) -> None:
        if crossover(self.f, self.s):
            if self.reverse:
                self.position.close()
                self.buy(size=self.size)
            elif not self.position:
                self.buy(size=self.size)
        elif crossover(self.s, self.f):
            self.position.close()
            if self.reverse:
                self.sell(size=self.size)


def peer(data: pd.DataFrame, **params: object) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = Backtest(data, SizedSmaCross, cash=10_000, commission=0.001, finalize_trades=False)
        return bt.run(**params)


@pytest.mark.parametrize("text", ["0.5", " 0.5 ", "50%", ".5", "5e-1"])
def test_parse_size_fractions(text: str) -> None:
    assert parse_size(text) == PositionSize(size_fraction=0.5)


@pytest.mark.parametrize(("text", "notional"), [("500usd", 500.0), ("500 USDT", 500.0), ("2.5eur", 2.5), ("1e3usd", 1000.0)])
def test_parse_size_quote_amounts(text: str, notional: float) -> None:
    assert parse_size(text) == PositionSize(size_notional=notional)
    assert parse_size("1") == PositionSize() and PositionSize().describe() == "all-in"


@pytest.mark.parametrize(("text", "message"), [
    ("2", r"more than all of the equity; give a fraction in \(0, 1\], or a quote amount such as 2usd"),
    ("150%", "more than all of the equity; at most 100%"),
    ("0", "must be positive"),
    ("0usd", "must be positive"),
    ("-0.5", "fraction of equity in"),
    ("half", "fraction of equity in"),
    ("500$", "fraction of equity in"),
    ("", "fraction of equity in"),
])
def test_parse_size_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_size(text)


def test_config_validates_sizing_and_round_trips_as_a_dict() -> None:
    for bad in ({"size_fraction": 0}, {"size_fraction": 1.5}, {"size_notional": -5}, {"size_notional": float("inf")},
                {"size_fraction": 0.5, "size_notional": 500}):
        with pytest.raises(ConfigError):
            BacktestConfig(**bad)
    config = BacktestConfig(**parse_size("500usd")._asdict(), size_unit=1e-8)
    assert BacktestConfig(**asdict(config)) == config  # how a sweep's manifest carries it to workers


@pytest.mark.parametrize(("name", "size", "reverse"), [
    ("GOOG", 0.5, False), ("GOOG", 0.25, False), ("EURUSD", 0.5, False), ("GOOG", 0.5, True), ("EURUSD", 0.3, True),
])
def test_fraction_of_equity_matches_backtesting_py_trade_for_trade(name: str, size: float, reverse: bool) -> None:
    data = {"GOOG": GOOG, "EURUSD": EURUSD}[name]
    config = BacktestConfig(size_fraction=size, direction="longshort" if reverse else "long", periods_per_year=252)
    ours = backtest(data, "sma_cross", {"fast": 10, "slow": 30}, config)
    theirs = peer(data, size=size, reverse=reverse)
    closed = ours.trades[ours.trades.exit_reason != "open"].reset_index(drop=True)
    expected = theirs._trades
    assert len(closed) == len(expected) > 10
    np.testing.assert_array_equal(closed.units, expected.Size)
    np.testing.assert_array_equal(closed.entry_price, expected.EntryPrice)
    np.testing.assert_array_equal(closed.exit_price, expected.ExitPrice)
    np.testing.assert_allclose(closed.pnl, expected.PnL, rtol=REL)
    np.testing.assert_allclose(ours.equity.to_numpy(), theirs._equity_curve.Equity.to_numpy(), rtol=REL)
    assert ours.stats["final_equity"] == pytest.approx(theirs["Equity Final [$]"], rel=REL)
    all_in = backtest(data, "sma_cross", {"fast": 10, "slow": 30}, BacktestConfig(periods_per_year=252))
    assert abs(closed.units.iloc[0]) < abs(all_in.trades.units.iloc[0])


def bars(prices: list[float]) -> pd.DataFrame:
    index = pd.date_range("2024-01-01", periods=len(prices), freq="h", tz="UTC")
    p = np.asarray(prices, dtype=float)
    return pd.DataFrame({"open": p, "high": p, "low": p, "close": p, "volume": 1.0}, index=index)


def at(n: int, *indices: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(indices)] = True
    return out


def test_quote_notional_buys_that_much_fees_included_and_never_more_than_the_cash() -> None:
    data = bars([100, 100, 110, 120, 120, 120])
    fixed = run_signals(data, at(6, 0, 3), at(6, 2), BacktestConfig(size_notional=500)).trades
    assert list(fixed.units) == [4, 4]  # floor(500 / (100 * 1.001)) and floor(500 / (120 * 1.001))
    assert fixed.units.iloc[0] * 100 * 1.001 <= 500
    fine = run_signals(data, at(6, 0), at(6), BacktestConfig(size_notional=500, size_unit=1e-8)).trades
    assert fine.units.iloc[0] * 100 * 1.001 == pytest.approx(500, abs=1e-5)
    capped = run_signals(data, at(6, 0), at(6), BacktestConfig(size_notional=1e9)).trades
    all_in = run_signals(data, at(6, 0), at(6), BacktestConfig()).trades
    assert capped.units.iloc[0] == all_in.units.iloc[0] == 99


def test_unaffordable_units_are_counted_and_explained() -> None:
    data = bars([60_000, 60_000, 61_000, 62_000, 60_500, 60_000])
    config = BacktestConfig()  # size unit 1, cash 10,000: not one BTC affordable
    result = run_signals(data, at(6, 0, 3), at(6, 2), config)
    assert result.trades.empty and result.stats["trades"] == 0
    assert result.stats["unfilled_entries"] == 2
    (warning,) = result.warnings
    assert warning.startswith("0 trades: 2 entry signals not filled, no size unit affordable (size unit 1 at price ~60,250")
    assert "starting cash 10,000, all-in" in warning and "1e-8 for BTC" in warning
    assert result.to_dict()["warnings"] == [warning]
    fixed = run_signals(data, at(6, 0, 3), at(6, 2), BacktestConfig(size_unit=1e-8))
    assert fixed.stats["unfilled_entries"] == 0 and fixed.stats["trades"] == 1
    assert fixed.warnings == () and fixed.to_dict()["warnings"] == []
    pricey = GOOG.copy()
    pricey[["Open", "High", "Low", "Close"]] *= 100
    swept = sweep(pricey, "sma_cross", {"fast": [5, 10], "slow": [30]})
    assert swept.unfilled_entries.dtype == swept.trades.dtype == np.int64
    assert (swept.unfilled_entries > 0).all() and (swept.trades == 0).all()
    half = sizing_warning({"trades": 3, "unfilled_entries": 1}, BacktestConfig(size_notional=50))
    assert half is not None and half.startswith("1 entry signal not filled") and "50 quote per entry" in half


def test_too_short_data_gives_no_trades_and_a_warning_like_backtesting_py() -> None:
    short = GOOG.iloc[:20]
    result = backtest(short, "sma_cross", {"fast": 10, "slow": 30})
    assert result.stats["trades"] == 0 and result.trades.empty
    assert (result.equity == 10_000).all() and result.params == {"fast": 10, "slow": 30}
    assert result.warnings == ("0 trades: only 20 bars, too few for sma_cross (slow=30 needs 30)",)
    assert peer(short, size=0.5)["# Trades"] == 0
    both = backtest(GOOG.iloc[:8], "sma_cross", {"fast": 10, "slow": 30}).warnings
    assert both == ("0 trades: only 8 bars, too few for sma_cross (fast=10 needs 10, slow=30 needs 30)",)
    with pytest.raises(ConfigError, match="fast must be below slow"):  # a bad parameter is still an error
        backtest(short, "sma_cross", {"fast": 40, "slow": 30})


# --- the CLI ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def goog_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "goog.csv"
    GOOG.to_csv(path)
    return path


def test_cli_size_fraction_and_notional(goog_csv: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli("backtest", "--data", str(goog_csv), "--size", "0.5", "--json")
    assert code == 0
    doc = json.loads(out)
    expected = backtest(GOOG, "sma_cross", config=BacktestConfig(size_fraction=0.5))
    assert doc["config"]["size_fraction"] == 0.5 and doc["config"]["size_notional"] is None
    assert doc["stats"]["final_equity"] == pytest.approx(expected.stats["final_equity"], rel=1e-12)
    code, out, _ = run_cli("backtest", "--data", str(goog_csv), "--size", "2000usd", "--json", "--trades")
    doc = json.loads(out)
    assert code == 0 and doc["config"]["size_notional"] == 2000 and doc["warnings"] == []
    assert all(0 < t["units"] * t["entry_price"] <= 2000 for t in doc["trades"])


@pytest.mark.parametrize("command", ["backtest", "sweep"])
def test_cli_bad_size_is_one_error_line_and_exit_2(goog_csv: Path, run_cli: RunCli, command: str) -> None:
    grid = ["--grid", "fast=5,10", "--grid", "slow=30"] if command == "sweep" else []
    code, out, err = run_cli(command, "--data", str(goog_csv), *grid, "--size", "2")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: size '2' is more than all of the equity; give a fraction in (0, 1], or a quote amount such as 2usd"
    ]


def test_cli_prints_warnings_for_unaffordable_units_and_short_data(tmp_path: Path, run_cli: RunCli) -> None:
    pricey = GOOG.copy()
    pricey[["Open", "High", "Low", "Close"]] *= 100  # ~30,000-80,000 per share
    path = tmp_path / "pricey.csv"
    pricey.to_csv(path)
    code, out, err = run_cli("backtest", "--data", str(path), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["stats"]["trades"] == 0 and doc["stats"]["unfilled_entries"] > 0
    assert doc["warnings"][0].startswith("0 trades: ") and "size unit 1 at price ~" in doc["warnings"][0]
    assert "warning: 0 trades: " in err
    code, _, err = run_cli("backtest", "--data", str(path), "--since", "2013-02-01", "--param", "slow=60")
    assert code == 0
    assert "warning: 0 trades: only" in err and "bars, too few for sma_cross (slow=60 needs 60)" in " ".join(err.split())


def test_cli_sweep_passes_the_size_to_every_backtest(ray_session: None, goog_csv: Path, tmp_path: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli("sweep", "--store", str(tmp_path / "store"), "--data", str(goog_csv), "--grid", "fast=5,10",
                           "--grid", "slow=30", "--size", "0.25", "--top", "0", "--json")
    assert code == 0
    got = {row["params"]["fast"]: row["stats"]["final_equity"] for row in json.loads(out)["results"]}
    expected = sweep(GOOG, "sma_cross", {"fast": [5, 10], "slow": [30]}, BacktestConfig(size_fraction=0.25))
    assert got == pytest.approx(dict(zip(expected.fast, expected.final_equity)), rel=1e-12)
