"""Indicators, the strategy registry and parameter checks, grids, and no look-ahead."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradpal_ray.backtest import (
    Param,
    backtest,
    cross_above,
    cross_below,
    get_strategy,
    indicator_cache,
    indicators,
    param_grid,
    parse_grid,
    parse_params,
    prepare_bars,
    sample_params,
    sma,
    strategies,
    strategy,
    strategy_combos,
)
from tradpal_ray.backtest.indicators import cached
from tradpal_ray.errors import ConfigError


def walk(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    index = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    return pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99, "close": close, "volume": 1.0}, index=index)


def test_sma_is_pandas_rolling_mean_bit_for_bit() -> None:
    close = walk(500).close.to_numpy()
    np.testing.assert_array_equal(sma(close, 7), pd.Series(close).rolling(7).mean().to_numpy())
    assert np.isnan(sma(close, 7)[:6]).all()


def test_crossover_is_strict_on_adjacent_bars_and_nan_is_no_signal() -> None:
    a = np.array([1.0, 2.0, 2.0, 3.0, np.nan, 5.0, 1.0])
    b = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    # 1->2 touches (not above), 2->3 starts from equal (not below): no strict cross anywhere up.
    assert cross_above(a, b).tolist() == [False] * 7
    assert cross_below(a, b).tolist() == [False] * 6 + [True]
    assert cross_above(np.array([1.0, 3.0]), 2.0).tolist() == [False, True]


def test_builtin_strategies_are_registered_and_run() -> None:
    assert {"sma_cross", "ema_cross", "rsi_reversion", "bollinger_breakout", "macd"} <= set(strategies())
    data = walk(600, seed=2)
    for name in ("sma_cross", "ema_cross", "rsi_reversion", "bollinger_breakout", "macd"):
        result = backtest(data, name)
        assert result.stats["trades"] > 0, name


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fats": 3}, "unknown parameter fats for strategy sma_cross; valid: fast, slow"),
        ({"fast": 30, "slow": 10}, "fast must be below slow"),
        ({"fast": 0}, "fast must be >= 1"),
        ({"fast": 2.5}, "fast must be an integer"),
    ],
)
def test_parameter_errors(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        backtest(walk(100), "sma_cross", params)


def test_unknown_strategy_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'nope'; known: .*sma_cross"):
        get_strategy("nope")


def test_a_user_strategy_is_a_plain_decorated_function() -> None:
    @strategy("test_close_sma", n=Param(int, 20, min=2, window=True))
    def close_sma(bars, n):
        mean = sma(bars.close, n)
        return cross_above(bars.close, mean), cross_below(bars.close, mean)

    data = walk(300, seed=4)
    result = backtest(data, "test_close_sma", {"n": 15})
    bars = prepare_bars(data)
    entries, _ = close_sma(bars, 15)
    assert result.trades.entry_bar.iloc[0] == int(np.argmax(entries)) + 1
    assert get_strategy("test_close_sma").resolve({}) == {"n": 20}


def test_indicator_cache_computes_each_window_once_for_bar_columns_only() -> None:
    close = walk(100).close.to_numpy()
    derived = close * 2
    with indicator_cache(close):
        assert sma(close, 5) is sma(close, 5)
        assert sma(close, 5) is not sma(close, 6)
        assert sma(derived, 5) is not sma(derived, 5)
    assert sma(close, 5) is not sma(close, 5)


def test_indicator_cache_never_mixes_up_functions_that_share_a_name(tmp_path: Path) -> None:
    close = walk(100).close.to_numpy()
    (tmp_path / "my_indicators.py").write_text(
        "import numpy as np\nfrom tradpal_ray.backtest.indicators import cached\n\n\n"
        "@cached\ndef sma(values, n):\n    return np.full(len(values), float(n))\n"
    )
    spec = importlib.util.spec_from_file_location("my_indicators", tmp_path / "my_indicators.py")
    user_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user_module)
    user_sma = user_module.sma  # a user's own module-level sma
    assert user_sma.__qualname__ == indicators.sma.__qualname__ == "sma"

    def scaled_by(k: float) -> Callable[[np.ndarray, int], np.ndarray]:
        @cached
        def scaled(values: np.ndarray, n: int) -> np.ndarray:
            return values * k

        return scaled

    with indicator_cache(close):
        builtin = indicators.sma(close, 5)
        assert np.array_equal(user_sma(close, 5), np.full(100, 5.0))
        assert indicators.sma(close, 5) is builtin  # still cached
        assert np.array_equal(scaled_by(2.0)(close, 5), close * 2.0)
        assert np.array_equal(scaled_by(3.0)(close, 5), close * 3.0)


def test_grid_syntax_and_the_174_combination_sweep() -> None:
    grid = parse_grid(["fast=5:50:5", "slow=20:200:10"])
    assert grid["fast"] == list(range(5, 51, 5)) and grid["slow"][-1] == 200
    assert len(strategy_combos("sma_cross", grid)) == 174
    assert len(param_grid(grid, lambda p: p["fast"] < p["slow"])) == 174
    assert parse_grid(["k=0.5:1.5:0.5", "n=5,10,20"]) == {"k": [0.5, 1.0, 1.5], "n": [5, 10, 20]}
    assert parse_params(["fast=10", "k=2.5"]) == {"fast": 10, "k": 2.5}
    for bad in (["fast"], ["fast=1:2"], ["fast=5:1:1"], ["fast=a:b:c"], ["fast=1", "fast=2"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        strategy_combos("sma_cross", {"fats": [1]})


def test_random_sampling_is_reproducible_distinct_and_valid() -> None:
    spec = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
    rule = get_strategy("sma_cross").allows
    picks = sample_params(spec, 30, seed=7, constraint=rule)
    assert picks == sample_params(spec, 30, seed=7, constraint=rule)
    assert picks != sample_params(spec, 30, seed=8, constraint=rule)
    assert len({(p["fast"], p["slow"]) for p in picks}) == 30
    assert all(p["fast"] < p["slow"] for p in picks)
    assert len(sample_params(spec, 1000, constraint=rule)) == 174
    assert len(strategy_combos("sma_cross", spec, samples=10, seed=1)) == 10


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    cut=st.integers(1, 199),
    name=st.sampled_from(["sma_cross", "ema_cross", "rsi_reversion", "bollinger_breakout", "macd"]),
)
def test_signals_use_no_future_bars(seed: int, cut: int, name: str) -> None:
    strat = get_strategy(name)
    data = walk(200, seed)
    params = strat.resolve({}, n_bars=200)
    full = strat.signals(prepare_bars(data), params)
    head = strat.signals(prepare_bars(data.iloc[:cut]), params)
    for whole, part in zip(full, head):
        np.testing.assert_array_equal(whole[:cut], part)
