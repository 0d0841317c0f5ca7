"""Deflated Sharpe Ratio and Probability of Backtest Overfitting against independent references.

References: vectorbt's ``deflated_sharpe_ratio`` (returns accessor) for the DSR, and a
straightforward CSCV written here from Bailey, Borwein, López de Prado & Zhu (2017), loops
and all, for the PBO. Real data: the daily returns of a real sma_cross grid on backtesting.py's
GOOG (daily bars, 252 periods per year) and EURUSD (hourly bars, equity at each UTC day's
last bar). Synthetic cases with a known answer: pure noise, and a planted edge.
"""

from __future__ import annotations

import math
import subprocess
import sys
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import vectorbt  # noqa: F401  (registers the .vbt accessor this file checks against)
from backtesting.test import EURUSD, GOOG
from scipy.stats import rankdata

from tradpal_ray.backtest import backtest, metrics, prepare_bars, strategy_combos
from tradpal_ray.errors import ConfigError
from tradpal_ray.validation import (
    PBO,
    _overfit,
    deflated_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)

GRID = {"fast": list(range(5, 55, 5)), "slow": list(range(20, 220, 20))}


def grid_daily_returns(data: pd.DataFrame) -> pd.DataFrame:
    """Daily returns (rows: days, columns: combinations) of every sma_cross combination of GRID
    that traded, from each backtest's equity at the last bar of each UTC day."""
    day_end = prepare_bars(data).day_end
    columns = {}
    for params in strategy_combos("sma_cross", GRID):
        equity = backtest(data, "sma_cross", params).equity
        returns = equity[day_end].pct_change().iloc[1:]
        if returns.std() > 0:
            columns[f"{params['fast']}/{params['slow']}"] = returns
    return pd.DataFrame(columns)


@pytest.fixture(scope="module")
def goog_returns() -> pd.DataFrame:
    return grid_daily_returns(GOOG)


@pytest.fixture(scope="module")
def eurusd_returns() -> pd.DataFrame:
    return grid_daily_returns(EURUSD)


def reference_pbo(returns: np.ndarray, partitions: int) -> tuple[float, np.ndarray]:
    """CSCV as the paper's steps read, one split at a time: (PBO, logits in combinations order)."""
    blocks = np.array_split(np.arange(len(returns)), partitions)
    logits = []
    for chosen in combinations(range(partitions), partitions // 2):
        train = returns[np.concatenate([blocks[b] for b in chosen])]
        test = returns[np.concatenate([blocks[b] for b in range(partitions) if b not in chosen])]
        best = int(np.argmax(train.mean(axis=0) / train.std(axis=0, ddof=1)))
        # rank 1 = worst out of sample, ties get the average of their ranks
        rank = rankdata(test.mean(axis=0) / test.std(axis=0, ddof=1))[best]
        relative = rank / (returns.shape[1] + 1)
        logits.append(math.log(relative / (1 - relative)))
    logits_array = np.array(logits)
    return float(np.mean(logits_array <= 0)), logits_array


# --- real data against the references -------------------------------------------------------


@pytest.mark.parametrize("data_name", ["goog", "eurusd"])
def test_dsr_matches_vectorbt_on_a_real_grid(data_name: str, request: pytest.FixtureRequest) -> None:
    returns = request.getfixturevalue(f"{data_name}_returns")
    assert returns.shape[1] > 40
    accessor = returns.vbt.returns(freq="1D", year_freq="252 days")
    reference = accessor.deflated_sharpe_ratio()
    trial_sharpes = accessor.sharpe_ratio()
    best = trial_sharpes.idxmax()

    ours = deflated_sharpe_ratio(trial_sharpes.to_numpy(), returns[best].to_numpy(), periods_per_year=252)

    assert ours.dsr == pytest.approx(reference[best], rel=1e-9, abs=1e-12)
    assert ours.sharpe == pytest.approx(trial_sharpes[best], rel=1e-9)
    assert ours.n_trials == returns.shape[1]
    assert ours.n_periods == len(returns)
    assert 0 < ours.dsr < ours.psr <= 1  # deflation can only lower the probability


def test_trial_sharpes_from_the_backtests_give_the_same_dsr(goog_returns: pd.DataFrame) -> None:
    """The sweep's own annualised ``sharpe`` column is a valid input (same convention as vectorbt's)."""
    combos = [dict(zip(("fast", "slow"), map(int, name.split("/")), strict=True)) for name in goog_returns]
    ours_sharpes = np.array([backtest(GOOG, "sma_cross", params).stats["sharpe"] for params in combos])
    ours_sharpes = ours_sharpes * math.sqrt(252 / 365)  # the backtest annualises with 365 by default
    best = int(np.argmax(ours_sharpes))
    from_stats = deflated_sharpe_ratio(ours_sharpes, goog_returns.iloc[:, best].to_numpy(), periods_per_year=252)
    reference = goog_returns.vbt.returns(freq="1D", year_freq="252 days").deflated_sharpe_ratio()
    assert from_stats.dsr == pytest.approx(reference.iloc[best], rel=1e-9)


@pytest.mark.parametrize(("data_name", "partitions"), [("goog", 12), ("eurusd", 16)])
def test_pbo_matches_the_paper_cscv_on_a_real_grid(data_name: str, partitions: int,
                                                   request: pytest.FixtureRequest) -> None:
    returns = request.getfixturevalue(f"{data_name}_returns").to_numpy()
    expected_pbo, expected_logits = reference_pbo(returns, partitions)

    ours = probability_of_backtest_overfitting(returns, partitions=partitions)

    assert ours.n_splits == math.comb(partitions, partitions // 2)
    np.testing.assert_allclose(ours.logits, expected_logits, rtol=1e-9)
    assert ours.pbo == expected_pbo
    assert ours.n_trials == returns.shape[1] and ours.n_rows == len(returns)


def test_pbo_ranks_ties_as_the_paper_with_identical_trials(goog_returns: pd.DataFrame) -> None:
    """Grid points with the same trades have the same returns: the out-of-sample rank of the chosen
    trial averages its ties (as ``rankdata``), identical to the reference."""
    returns = goog_returns.to_numpy()
    with_twins = np.column_stack([returns, returns[:, ::2]])
    expected_pbo, expected_logits = reference_pbo(with_twins, 8)
    ours = probability_of_backtest_overfitting(with_twins, partitions=8)
    np.testing.assert_allclose(ours.logits, expected_logits, rtol=1e-9)
    assert ours.pbo == expected_pbo


def test_an_in_sample_best_exactly_at_the_median_counts_as_overfit() -> None:
    """The paper counts logit <= 0: a chosen trial exactly at the out-of-sample median is overfit."""
    wiggle = np.tile([0.01, -0.01], 50)  # the same dispersion for every trial: Sharpe follows the mean
    means = {"a": (0.003, 0.002), "b": (0.001, 0.003), "c": (0.002, 0.001)}  # (first half, second half)
    returns = np.column_stack([np.concatenate([wiggle + first, wiggle + second]) for first, second in means.values()])
    result = probability_of_backtest_overfitting(returns, partitions=2)
    # first half in sample: a is best, its second-half rank is 2 of 3, w = 2/4, logit 0 (overfit);
    # second half in sample: b is best, its first-half rank is 1 of 3 (overfit)
    np.testing.assert_array_equal(result.best_trials, [0, 1])
    np.testing.assert_allclose(result.logits, [0.0, math.log(1 / 3)], atol=1e-12)
    assert result.pbo == 1.0


def test_pbo_with_any_metric_matches_the_fast_sharpe_path(goog_returns: pd.DataFrame) -> None:
    """A user metric goes through the generic path (called per split): same answer as the moments path,
    NaN cells included."""
    returns = goog_returns.to_numpy().copy()
    returns[::37, ::3] = np.nan
    fast = probability_of_backtest_overfitting(returns, partitions=8)
    called = probability_of_backtest_overfitting(returns, partitions=8, metric=lambda rows: sharpe_ratio(rows))
    np.testing.assert_allclose(fast.logits, called.logits, rtol=1e-9)
    np.testing.assert_array_equal(fast.best_trials, called.best_trials)
    np.testing.assert_allclose(fast.out_of_sample, called.out_of_sample, rtol=1e-9)
    assert fast.pbo == called.pbo
    assert np.isfinite(fast.logits).all()


def test_the_validation_package_stays_light_and_shares_the_metrics_noise_floor() -> None:
    """CLI paths import it: numpy only (no numba, pandas or scipy), and the same "no dispersion" rule
    as the backtest's Sharpe ratio."""
    code = ("import sys, tradpal_ray.validation as v; "
            "print(sorted(m for m in ('numba', 'pandas', 'scipy', 'ray') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    assert _overfit.NOISE_FLOOR == metrics.NOISE_FLOOR


def test_sharpe_ratio_is_mean_over_std_of_the_finite_values() -> None:
    rng = np.random.default_rng(3)
    returns = rng.normal(0.001, 0.01, (50, 3)) + 5.0  # a large mean against the dispersion: centring matters
    returns[4, 1] = np.nan
    expected = [np.mean(col[np.isfinite(col)]) / np.std(col[np.isfinite(col)], ddof=1) for col in returns.T]
    np.testing.assert_allclose(sharpe_ratio(returns), expected, rtol=1e-9)


# --- synthetic cases with a known answer ----------------------------------------------------


def test_pure_noise_is_not_significant_and_overfits_half_the_time() -> None:
    """Trials with no skill at all: the best's naive PSR says "significant", the DSR does not; the
    in-sample best lands below the out-of-sample median about half the time (PBO ~ 0.5 on average)."""
    pbos, dsrs, psrs = [], [], []
    for seed in range(12):
        noise = np.random.default_rng(seed).normal(0.0, 0.01, (600, 100))
        sharpes = sharpe_ratio(noise) * math.sqrt(365)
        best = deflated_sharpe_ratio(sharpes, noise[:, np.argmax(sharpes)], periods_per_year=365)
        pbos.append(probability_of_backtest_overfitting(noise, partitions=10).pbo)
        dsrs.append(best.dsr)
        psrs.append(best.psr)
    assert 0.4 <= np.mean(pbos) <= 0.65
    assert max(dsrs) < 0.95 and 0.25 <= np.mean(dsrs) <= 0.65  # the best is about what luck alone gives
    assert min(psrs) > 0.95  # without deflation every one of these would pass for skill


def test_a_planted_edge_is_found_and_trusted() -> None:
    rng = np.random.default_rng(11)
    returns = rng.normal(0.0, 0.01, (1000, 200))
    returns[:, 17] += 0.003  # a real daily Sharpe of 0.3 (5.7 a year)
    sharpes = sharpe_ratio(returns) * math.sqrt(365)
    assert int(np.argmax(sharpes)) == 17

    dsr = deflated_sharpe_ratio(sharpes, returns[:, 17], periods_per_year=365)
    pbo = probability_of_backtest_overfitting(returns)

    assert dsr.dsr > 0.99 and dsr.significant
    assert dsr.sharpe > dsr.expected_max_sharpe > 0
    assert pbo.pbo < 0.05
    assert np.mean(pbo.best_trials == 17) > 0.9
    assert pbo.probability_of_loss < 0.05
    assert dsr.reading().startswith(f"DSR {dsr.dsr:.2f}: the best Sharpe {dsr.sharpe:.2f} beats the")
    assert pbo.reading() == (f"PBO {pbo.pbo:.2f}: the in-sample best stays above median out of sample "
                             f"in {1 - pbo.pbo:.0%} of 12,870 splits")


def test_a_reversing_edge_reads_as_overfit() -> None:
    """Trials good in the first half and bad in the second (and vice versa): the in-sample best is
    always below median out of sample."""
    rng = np.random.default_rng(5)
    returns = rng.normal(0.0, 0.01, (400, 20))
    returns[:200, :10] += 0.004
    returns[200:, :10] -= 0.004
    pbo = probability_of_backtest_overfitting(returns, partitions=2)
    assert pbo.pbo == 1.0
    assert pbo.reading() == "PBO 1.00: the in-sample best is more likely than not below median out of sample"


def test_one_trial_has_nothing_to_deflate() -> None:
    returns = np.random.default_rng(2).normal(0.001, 0.01, 300)
    sharpe = float(sharpe_ratio(returns[:, None])[0]) * math.sqrt(252)
    result = deflated_sharpe_ratio(np.array([sharpe, np.nan]), returns, periods_per_year=252)
    assert result.n_trials == 1 and result.expected_max_sharpe == 0.0
    assert result.dsr == result.psr


# --- edge cases: a clear ConfigError or NaN, never a crash ----------------------------------


@pytest.mark.parametrize(
    ("shape", "partitions", "message"),
    [
        ((15, 5), 16, "15 rows of returns cannot make 16 partitions"),
        ((100, 5), 7, "partitions must be an even number from 2 to 20, got 7"),
        ((100, 5), 0, "partitions must be an even number from 2 to 20, got 0"),
        ((100, 5), 22, "partitions must be an even number from 2 to 20, got 22"),
        ((100, 1), 16, "at least 2 trials"),
        ((100,), 16, "returns must be a (rows x trials) matrix"),
    ],
)
def test_pbo_refuses_what_it_cannot_split(shape: tuple[int, ...], partitions: int, message: str) -> None:
    returns = np.random.default_rng(0).normal(0, 0.01, shape)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        probability_of_backtest_overfitting(returns, partitions=partitions)


def test_pbo_refuses_a_metric_without_one_value_per_trial() -> None:
    returns = np.random.default_rng(0).normal(0, 0.01, (40, 5))
    with pytest.raises(ConfigError, match=r"the metric must give one value per trial \(5\), got shape \(\)"):
        probability_of_backtest_overfitting(returns, partitions=4, metric=lambda rows: float(rows.mean()))


def test_pbo_leaves_constant_and_nan_columns_out() -> None:
    rng = np.random.default_rng(9)
    returns = rng.normal(0.0, 0.01, (320, 30))
    returns[:, 17] += 0.003
    with_junk = np.column_stack([returns, np.zeros(320), np.full(320, 0.001), np.full(320, np.nan)])
    clean = probability_of_backtest_overfitting(returns, partitions=8)
    junk = probability_of_backtest_overfitting(with_junk, partitions=8)
    np.testing.assert_array_equal(junk.best_trials, clean.best_trials)
    np.testing.assert_allclose(junk.logits, clean.logits, rtol=1e-12)  # ranked among the 30 defined trials
    assert junk.pbo == clean.pbo and junk.n_trials == 33


def test_pbo_with_no_defined_metric_is_nan_not_a_crash() -> None:
    flat = np.column_stack([np.zeros(64), np.full(64, 0.002), np.full(64, np.nan)])
    result = probability_of_backtest_overfitting(flat, partitions=4)
    assert math.isnan(result.pbo) and np.isnan(result.logits).all()
    assert (result.best_trials == -1).all()
    assert math.isnan(result.probability_of_loss)
    assert result.reading().startswith("PBO undefined")


def test_pbo_results_are_read_only() -> None:
    result = probability_of_backtest_overfitting(np.random.default_rng(1).normal(0, 0.01, (40, 4)), partitions=4)
    assert isinstance(result, PBO)
    with pytest.raises(ValueError, match="read-only"):
        result.logits[0] = 0.0


def test_dsr_of_a_flat_best_is_nan_with_a_reading() -> None:
    result = deflated_sharpe_ratio(np.array([0.5, 1.0, 1.5]), np.full(100, 0.001), periods_per_year=365)
    assert math.isnan(result.dsr) and math.isnan(result.psr) and math.isnan(result.sharpe)
    assert not result.significant
    assert result.reading() == "DSR undefined: the best result's returns have no dispersion"


@pytest.mark.parametrize(
    ("trial_sharpes", "best_returns", "periods_per_year", "message"),
    [
        ([np.nan, np.nan], [0.01, -0.01, 0.02], 365, "no trial has a Sharpe ratio"),
        ([1.0, 2.0], [0.01, np.nan], 365, "the best result has 1 finite returns"),
        ([1.0, 2.0], [0.01, -0.01, 0.02], 0, "periods per year must be positive"),
        ([[1.0, 2.0]], [0.01, -0.01, 0.02], 365, "trial Sharpe ratios must be one-dimensional"),
    ],
)
def test_dsr_refuses_what_it_cannot_compute(trial_sharpes: list, best_returns: list, periods_per_year: float,
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        deflated_sharpe_ratio(np.array(trial_sharpes), np.array(best_returns), periods_per_year=periods_per_year)
