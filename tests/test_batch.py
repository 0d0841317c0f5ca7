"""Batch signals: every built-in's batch function equals its per-combination function, bit for bit.

A sweep takes the batch path when the strategy has one; these properties make that path a
pure speed-up: same entries and exits for any grid, and identical sweep statistics.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np
import pandas as pd
import pytest
from backtesting.test import GOOG
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tradpal_ray.backtest import BacktestConfig, Bars, ema, get_strategy, prepare_bars, sma, strategy, sweep
from tradpal_ray.backtest.strategies import Param
from tradpal_ray.errors import ConfigError

sweep_module = importlib.import_module("tradpal_ray.backtest.sweep")  # the package attribute is the function

CONFIG = BacktestConfig(periods_per_year=252)
LEVEL = st.one_of(st.sampled_from([0.0, 50.0, 100.0]), st.floats(0.0, 100.0).map(lambda v: round(v, 2)))
"""RSI levels, with the edges: RSI is exactly 0 or 100 after a run of falls or rises."""


def _pair(lo: int, hi: int) -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(lo, hi), st.integers(lo + 1, hi + 40)).filter(lambda p: p[0] < p[1])


COMBOS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "sma_cross": _pair(1, 60).map(lambda p: {"fast": p[0], "slow": p[1]}),
    "ema_cross": _pair(1, 60).map(lambda p: {"fast": p[0], "slow": p[1]}),
    "macd": st.tuples(_pair(1, 30), st.integers(1, 20)).map(
        lambda t: {"fast": t[0][0], "slow": t[0][1], "signal": t[1]}
    ),
    "rsi_reversion": st.tuples(st.integers(2, 50), LEVEL, LEVEL).filter(lambda t: t[1] < t[2]).map(
        lambda t: {"window": t[0], "lower": t[1], "upper": t[2]}
    ),
    "bollinger_breakout": st.tuples(st.integers(2, 60), st.one_of(st.just(0.0), st.floats(0.0, 4.0).map(lambda v: round(v, 3)))).map(
        lambda t: {"window": t[0], "k": t[1]}
    ),
}


def walk(n: int, seed: int) -> Bars:
    """A random walk of hourly bars (open near the previous close), validated."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.002, n))
    index = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    frame = pd.DataFrame(
        {"open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
         "close": close, "volume": 1.0},
        index=index,
    )
    return prepare_bars(frame)


GOOG_BARS = prepare_bars(GOOG)


def per_combination(name: str) -> Any:
    """The built-in without its batch function: sweeps then call it once per combination."""
    return dataclasses.replace(get_strategy(name), batch=None)


@pytest.mark.parametrize("name", sorted(COMBOS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_batch_signals_equal_per_combination_signals(name: str, data: st.DataObject) -> None:
    strat = get_strategy(name)
    assert strat.batch is not None
    bars = data.draw(st.one_of(st.just(GOOG_BARS), st.builds(walk, st.integers(150, 400), st.integers(0, 10_000))))
    combos = data.draw(st.lists(COMBOS[name], min_size=1, max_size=12))
    resolved = [strat.resolve(c, n_bars=len(bars)) for c in combos]
    params = {p: np.array([values[p] for values in resolved]) for p in strat.params}
    entries, exits = strat.batch(bars, params)
    assert entries.shape == exits.shape == (len(combos), len(bars))
    for j, values in enumerate(resolved):
        one_entries, one_exits = strat.signals(bars, values)
        assert np.array_equal(entries[j], one_entries), (values, np.flatnonzero(entries[j] != one_entries))
        assert np.array_equal(exits[j], one_exits), (values, np.flatnonzero(exits[j] != one_exits))


@pytest.mark.parametrize("name", sorted(COMBOS))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_batch_sweep_stats_are_bit_identical(name: str, data: st.DataObject) -> None:
    bars = data.draw(st.builds(walk, st.integers(200, 500), st.integers(0, 10_000)))
    combos = data.draw(st.lists(COMBOS[name], min_size=1, max_size=20))
    batched = sweep(bars, name, combos, CONFIG)
    single = sweep(bars, per_combination(name), combos, CONFIG)
    pd.testing.assert_frame_equal(batched, single, check_exact=True)


def test_batch_path_keeps_the_chunk_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk never holds more combinations than SIGNAL_BYTES allows."""
    bars = walk(400, 1)
    grid = {"fast": [3, 5, 8, 13], "slow": [10, 20, 40]}
    whole = sweep(bars, "sma_cross", grid, CONFIG)
    seen: list[int] = []
    builtin = get_strategy("sma_cross")

    def counting(bars: Bars, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        seen.append(len(params["fast"]))
        assert builtin.batch is not None
        return builtin.batch(bars, params)

    monkeypatch.setattr(sweep_module, "SIGNAL_BYTES", 5 * 2 * len(bars))  # five combinations a chunk
    chunked = sweep(bars, dataclasses.replace(builtin, batch=counting), grid, CONFIG)
    pd.testing.assert_frame_equal(whole, chunked, check_exact=True)
    assert seen == [5, 5, 1] and len(whole) == 11


def test_a_user_batch_function_is_used_and_checked() -> None:
    bars = walk(300, 2)

    def level_batch(bars: Bars, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        above = bars.close[None, :] > params["level"][:, None]
        return above, ~above

    @strategy("close_above_level_batch", level=Param(float, 100.0, min=0.0), batch=level_batch)
    def close_above_level_batch(bars: Bars, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Long above a level, out below it."""
        return bars.close > level, bars.close <= level

    strat = get_strategy("close_above_level_batch")
    assert strat.batch is level_batch
    levels = [float(v) for v in np.quantile(bars.close, [0.2, 0.5, 0.8])]
    batched = sweep(bars, strat, {"level": levels}, CONFIG)
    pd.testing.assert_frame_equal(batched, sweep(bars, dataclasses.replace(strat, batch=None), {"level": levels}, CONFIG))

    def wrong_shape(bars: Bars, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(bars), dtype=bool), np.zeros(len(bars), dtype=bool)

    with pytest.raises(ConfigError, match=r"batch returned entries of shape \(300,\), expected \(3, 300\)"):
        sweep(bars, dataclasses.replace(strat, batch=wrong_shape), {"level": levels}, CONFIG)


VALUES = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.5, np.nan, 1e300, -1e300, 1e-300]),
)


def same_bits(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Equal values, NaN where NaN, and the same sign on every number (0.0 vs -0.0)."""
    numbers = ~np.isnan(theirs)
    return np.array_equal(ours, theirs, equal_nan=True) and np.array_equal(
        np.signbit(ours[numbers]), np.signbit(theirs[numbers])
    )


@settings(max_examples=300, deadline=None)
@given(values=st.lists(VALUES, max_size=80), window=st.integers(0, 30))
def test_sma_is_pandas_rolling_mean_bit_for_bit(values: list[float], window: int) -> None:
    """Runs of equal values, NaN gaps, signed zeros, huge magnitudes: the same bits as pandas."""
    array = np.array(values, dtype=np.float64)
    assert same_bits(sma(array, window), pd.Series(array).rolling(window).mean().to_numpy())
    with pytest.raises(ValueError, match="window must be an integer 0 or greater"):
        sma(array, -1)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(VALUES, max_size=80), span=st.integers(1, 30))
@example(values=[1.0, np.nan, 2.0, 3.0, np.nan, np.nan, 5.0, 1.0], span=3)
def test_ema_is_pandas_ewm_mean_bit_for_bit(values: list[float], span: int) -> None:
    """The same inputs through ``ewm(span, adjust=False, min_periods=span)``, span 3 (pandas' com == 1 case) included."""
    array = np.array(values, dtype=np.float64)
    theirs = pd.Series(array).ewm(span=span, adjust=False, min_periods=span).mean().to_numpy()
    assert same_bits(ema(array, span), theirs)
    with pytest.raises(ValueError, match="span must satisfy"):
        ema(array, 0)
