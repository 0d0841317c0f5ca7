"""The metric registry: one definition per metric, from which ordering, ranking and listings follow."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from backtesting.test import GOOG

from tradpal_ray.backtest import (
    KERNEL_STATS,
    BacktestConfig,
    Metric,
    backtest,
    derive_metrics,
    metric,
    metric_names,
    rank,
    register_metric,
    sweep,
    unregister_metric,
)
from tradpal_ray.backtest.metrics import metrics

metrics_module = sys.modules["tradpal_ray.backtest.metrics"]
from tradpal_ray.errors import ConfigError

GRID = {"fast": [5, 10, 20], "slow": [30, 50]}


@pytest.fixture
def return_per_trade() -> Iterator[Metric]:
    """A derived metric registered for one test, lower-is-better so ranking direction is visible."""
    added = register_metric(Metric(
        "loss_per_trade", "loss/trade", "negative return % per closed trade", higher_is_better=False,
        derive=lambda c: -c["return_pct"] / c["trades"],
    ))
    yield added
    unregister_metric(added.name)


def test_kernel_metrics_come_first_in_kernel_order_then_derived() -> None:
    names = metric_names()
    assert names[: len(KERNEL_STATS)] == KERNEL_STATS
    assert all(metric(n).derive is not None for n in names[len(KERNEL_STATS):])
    assert "calmar" in names and "cagr_pct" in KERNEL_STATS and "unfilled_entries" in KERNEL_STATS
    assert {m.name for m in metrics() if m.headline} == {"trades", "return_pct", "max_drawdown_pct", "win_rate_pct", "sharpe"}
    assert {m.name for m in metrics() if not m.higher_is_better} == {"max_drawdown_pct", "fees", "unfilled_entries"}


def test_a_metric_registered_later_appears_in_backtests_sweeps_and_ranking(return_per_trade: Metric) -> None:
    assert metric_names()[-1] == "loss_per_trade"
    single = backtest(GOOG, "sma_cross", {"fast": 10, "slow": 30}, BacktestConfig(periods_per_year=252)).stats
    assert single["loss_per_trade"] == pytest.approx(-single["return_pct"] / single["trades"])
    results = sweep(GOOG, "sma_cross", GRID, BacktestConfig(periods_per_year=252))
    assert list(results.columns[-2:]) == ["calmar", "loss_per_trade"]
    np.testing.assert_allclose(results.loss_per_trade, -results.return_pct / results.trades)
    assert rank(results, "loss_per_trade").loss_per_trade.is_monotonic_increasing  # lower is better
    assert rank(results, "calmar").calmar.is_monotonic_decreasing


def test_registry_refuses_duplicates_kernel_metrics_and_unknown_names(return_per_trade: Metric) -> None:
    with pytest.raises(ConfigError, match=r"'sharpe' is already registered \(sharpe: mean / standard deviation"):
        register_metric(Metric("sharpe", "s", "mine", derive=lambda c: c["return_pct"]))
    with pytest.raises(ConfigError, match="'loss_per_trade' is already registered"):
        register_metric(return_per_trade)
    with pytest.raises(ConfigError, match="needs a derive function"):
        register_metric(Metric("omega", "omega", "not computed by anything"))
    for built_in in ("trades", "sharpe", "calmar"):
        with pytest.raises(ConfigError, match="built in"):
            unregister_metric(built_in)
    with pytest.raises(ConfigError, match=r"unknown metric 'luck'; choose one of trades, final_equity, .*loss_per_trade"):
        metric("luck")
    with pytest.raises(ConfigError, match="unknown metric 'luck'"):
        unregister_metric("luck")
    with pytest.raises(ConfigError, match="unknown metric 'luck'"):
        rank(sweep(GOOG, "sma_cross", {"fast": [5], "slow": [30]}), "luck")


def test_derive_metrics_is_nan_safe_and_never_inf() -> None:
    columns = {
        "cagr_pct": np.array([10.0, 10.0, 0.0, np.nan, 5.0, 1e300]),
        "max_drawdown_pct": np.array([5.0, 0.0, 0.0, 3.0, 1e-20, 1e-300]),
    }
    out = derive_metrics(columns)
    assert out["calmar"][0] == 2.0
    assert np.isnan(out["calmar"][1:]).all()  # no drawdown, 0/0, NaN in, noise-level drawdown, overflow
    assert set(out) == {"cagr_pct", "max_drawdown_pct", "calmar"} and out["cagr_pct"] is columns["cagr_pct"]
    assert derive_metrics({**columns, "calmar": np.array([7.0])})["calmar"][0] == 7.0  # present: kept
    with pytest.raises(ConfigError, match="metric 'calmar' needs column 'max_drawdown_pct'"):
        derive_metrics({"cagr_pct": np.array([1.0])})


def test_derived_metrics_with_infinities_become_nan(return_per_trade: Metric) -> None:
    out = derive_metrics({"return_pct": np.array([5.0, 5.0]), "trades": np.array([0.0, 2.0]),
                          "cagr_pct": np.array([1.0, 1.0]), "max_drawdown_pct": np.array([1.0, 1.0])})
    assert math.isnan(out["loss_per_trade"][0]) and out["loss_per_trade"][1] == -2.5


def test_listing_metrics_imports_neither_numpy_nor_numba() -> None:
    code = ("import sys, importlib.util; spec = importlib.util.spec_from_file_location('m', "
            f"{metrics_module.__file__!r}); m = importlib.util.module_from_spec(spec); sys.modules['m'] = m; "
            "spec.loader.exec_module(m); "
            "names = m.metric_names(); print(len(names), 'numpy' in sys.modules, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(metric_names())), "False", "False"]
