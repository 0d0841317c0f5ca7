"""Overfitting statistics of a sweep: the Deflated Sharpe Ratio and the Probability of Backtest Overfitting.

Pure numpy on plain arrays (no Ray, no scipy): the inputs are what a sweep stores, the
trials' Sharpe ratios and their daily returns (rows: days, columns: trials).

- :func:`deflated_sharpe_ratio` (Bailey & López de Prado 2014): the probability that the
  best result's true Sharpe ratio beats the maximum Sharpe ratio that ``N`` trials without
  any skill would be expected to reach by luck.
- :func:`probability_of_backtest_overfitting` (Bailey, Borwein, López de Prado & Zhu 2017):
  combinatorially symmetric cross-validation (CSCV); how often the in-sample best trial
  ranks at or below the median out of sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from statistics import NormalDist

import numpy as np

from tradpal_ray.errors import ConfigError

EULER_GAMMA = 0.5772156649015329
NOISE_FLOOR = 1e-12
"""A standard deviation at or below this is no dispersion: the rule of the backtest metrics
(``tradpal_ray.backtest.metrics.NOISE_FLOOR``, not imported: that package loads numba)."""
SIGNIFICANT_DSR = 0.95
"""The paper's threshold: a DSR above it rejects "the best is only the luckiest of N trials"."""
MAX_PARTITIONS = 20
"""C(20, 10) = 184,756 splits; the number of splits grows about 4x for every 2 more partitions."""
SPLIT_CELLS = 1 << 18
"""Splits x trials evaluated at once by the CSCV (a few MB per array: bounded memory, cache-sized)."""

_NORMAL = NormalDist()
TrialMetric = Callable[[np.ndarray], np.ndarray]
"""A performance measure of every column of a (rows x trials) returns matrix: one value per trial."""


def sharpe_ratio(returns: np.ndarray) -> np.ndarray:
    """Per-period Sharpe ratio of each column: mean / std (ddof 1) of its finite values.

    Not annualised (multiply by sqrt(periods per year) for that). NaN for a column with
    fewer than 2 finite values or without dispersion (a standard deviation at or below
    :data:`NOISE_FLOOR`, e.g. a strategy that never traded).
    """
    matrix = np.asarray(returns, dtype=np.float64)
    finite = np.isfinite(matrix)
    count = finite.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, matrix, 0.0).sum(axis=0) / count
    centred = np.where(finite, matrix - mean, 0.0)
    total = centred.sum(axis=0)
    return _sharpe_from_moments(count, total, (centred * centred).sum(axis=0), mean, np.empty_like(total))


@dataclass(frozen=True)
class DeflatedSharpe:
    """The Deflated Sharpe Ratio of a sweep's best result, with what it was computed from.

    Sharpe ratios here are annualised (per-period ones times sqrt(``periods_per_year``));
    ``skew`` and ``kurtosis`` are of the best result's per-period returns.
    """

    dsr: float
    """Probability that the best's true Sharpe ratio exceeds ``expected_max_sharpe``."""
    psr: float
    """Probabilistic Sharpe ratio against 0: probability that the best's true Sharpe ratio is
    positive, as if it had been the only trial (no correction for the selection)."""
    sharpe: float
    """The best result's Sharpe ratio, from its returns."""
    expected_max_sharpe: float
    """The maximum Sharpe ratio expected from ``n_trials`` trials whose true Sharpe is 0."""
    trial_sharpe_std: float
    """Standard deviation (ddof 1) of the trials' Sharpe ratios (0 with a single trial)."""
    n_trials: int
    """Trials with a defined Sharpe ratio (the others never varied: they carry no information)."""
    n_periods: int
    """Finite returns of the best result (the paper's T)."""
    skew: float
    kurtosis: float
    """Non-excess kurtosis (3 for normal returns)."""
    periods_per_year: float

    @property
    def significant(self) -> bool:
        """DSR above :data:`SIGNIFICANT_DSR` (0.95)."""
        return self.dsr > SIGNIFICANT_DSR

    def reading(self) -> str:
        """One line saying what the DSR means for this sweep."""
        if math.isnan(self.dsr):
            return "DSR undefined: the best result's returns have no dispersion"
        head = f"DSR {self.dsr:.2f}: the best Sharpe {self.sharpe:.2f}"
        luck = f"{self.expected_max_sharpe:.2f} the best of {self.n_trials:,} skill-less trials would reach by luck"
        if self.significant:
            return f"{head} beats the {luck}, with {self.dsr:.0%} confidence"
        return f"{head} is not significantly above the {luck} (needs DSR > {SIGNIFICANT_DSR})"


def deflated_sharpe_ratio(
    trial_sharpes: np.ndarray, best_returns: np.ndarray, *, periods_per_year: float
) -> DeflatedSharpe:
    """Deflated Sharpe Ratio of the best of a sweep's trials (Bailey & López de Prado 2014).

    ``trial_sharpes``: every trial's Sharpe ratio, *annualised* with ``periods_per_year``
    (as the results' ``sharpe`` column is; pass ``periods_per_year=1`` for per-period ones);
    NaN entries (trials without dispersion) are left out. ``best_returns``: the best trial's
    *per-period* returns (daily, as its Sharpe ratio was computed from); NaN ones are left out.

    Computed per period, as in the paper: SR0 = sqrt(V) * ((1 - g) * Z^-1(1 - 1/N) + g *
    Z^-1(1 - 1/(N e))) with V the variance of the trials' Sharpe ratios and g Euler's
    constant; DSR = Z((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurtosis - 1) / 4 * SR^2)).
    ConfigError when there is nothing to compute it from; NaN when the best's returns have
    no dispersion.
    """
    if not periods_per_year > 0:
        raise ConfigError(f"periods per year must be positive, got {periods_per_year}")
    sharpes = _vector(trial_sharpes, "trial Sharpe ratios")
    sharpes = sharpes[np.isfinite(sharpes)] / math.sqrt(periods_per_year)
    if not len(sharpes):
        raise ConfigError("no trial has a Sharpe ratio: the deflated Sharpe ratio needs at least one")
    returns = _vector(best_returns, "best returns")
    returns = returns[np.isfinite(returns)]
    if len(returns) < 2:
        raise ConfigError(
            f"the best result has {len(returns)} finite returns: the deflated Sharpe ratio needs 2 or more")
    n_trials = len(sharpes)
    trial_std = float(np.std(sharpes, ddof=1)) if n_trials > 1 else 0.0
    expected_max = trial_std * _expected_max_of_standard_normals(n_trials)
    sharpe = float(sharpe_ratio(returns[:, None])[0])
    centred = returns - returns.mean()
    m2 = float(np.mean(centred**2))
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = float(np.mean(centred**3) / m2**1.5)
        kurtosis = float(np.mean(centred**4) / m2**2)
    root = math.sqrt(periods_per_year)
    return DeflatedSharpe(
        dsr=_probabilistic_sharpe(sharpe, expected_max, len(returns), skew, kurtosis),
        psr=_probabilistic_sharpe(sharpe, 0.0, len(returns), skew, kurtosis),
        sharpe=sharpe * root,
        expected_max_sharpe=expected_max * root,
        trial_sharpe_std=trial_std * root,
        n_trials=n_trials,
        n_periods=len(returns),
        skew=skew,
        kurtosis=kurtosis,
        periods_per_year=float(periods_per_year),
    )


@dataclass(frozen=True, eq=False)
class PBO:
    """The Probability of Backtest Overfitting of a sweep, by CSCV, with its per-split details.

    Splits are every choice of ``n_partitions / 2`` of the row partitions as in-sample (the
    rest out of sample), in :func:`itertools.combinations` order; per-split arrays are
    read-only and NaN where the split has no defined in-sample best or out-of-sample value.
    """

    pbo: float
    """Share of splits whose logit is <= 0: the in-sample best at or below the median out of sample."""
    logits: np.ndarray
    """Per split: log(w / (1 - w)), w = out-of-sample rank of the in-sample best / (trials + 1)."""
    best_trials: np.ndarray
    """Per split: column index of the in-sample best (-1 when no trial has a defined metric)."""
    in_sample: np.ndarray
    """Per split: the in-sample best's metric in sample."""
    out_of_sample: np.ndarray
    """Per split: the same trial's metric out of sample."""
    n_partitions: int
    n_trials: int
    n_rows: int

    @property
    def n_splits(self) -> int:
        """C(n_partitions, n_partitions / 2): 12,870 with the default 16 partitions."""
        return len(self.logits)

    @property
    def probability_of_loss(self) -> float:
        """Share of splits whose in-sample best has a negative metric out of sample."""
        defined = self.out_of_sample[np.isfinite(self.out_of_sample)]
        return float(np.mean(defined < 0)) if len(defined) else math.nan

    def reading(self) -> str:
        """One line saying what the PBO means for this sweep."""
        if math.isnan(self.pbo):
            return "PBO undefined: no split has an in-sample best with a defined out-of-sample value"
        if self.pbo > 0.5:
            return f"PBO {self.pbo:.2f}: the in-sample best is more likely than not below median out of sample"
        return (f"PBO {self.pbo:.2f}: the in-sample best stays above median out of sample "
                f"in {1 - self.pbo:.0%} of {self.n_splits:,} splits")


def probability_of_backtest_overfitting(
    returns: np.ndarray, *, partitions: int = 16, metric: TrialMetric = sharpe_ratio
) -> PBO:
    """PBO by combinatorially symmetric cross-validation (Bailey, Borwein, López de Prado & Zhu 2017).

    ``returns``: (rows x trials), e.g. days x result ids; NaN cells are left out of the
    metric. The rows are cut into ``partitions`` contiguous blocks (sizes differing by at
    most one row, as :func:`numpy.array_split`); every half of the blocks is in turn the
    in-sample set and the other half the out-of-sample set. Per split, the trial with the
    best in-sample ``metric`` is ranked out of sample (rank 1 = worst, ties averaged, among
    trials with a defined value), w = rank / (those trials + 1), logit = log(w / (1 - w));
    PBO is the share of logits <= 0.

    ``metric`` maps a (rows x trials) matrix to one value per trial, higher is better. The
    default, the per-period :func:`sharpe_ratio`, is computed from per-block sums for all
    splits at once; any other metric is called twice per split. ConfigError for fewer than
    2 trials, an odd number of partitions or one outside 2..20 (20 make 184,756 splits),
    fewer rows than partitions, or a metric that does not give one value per trial.
    """
    matrix = np.asarray(returns, dtype=np.float64)
    if matrix.ndim != 2:
        raise ConfigError(f"returns must be a (rows x trials) matrix, got {matrix.ndim} dimension(s)")
    rows, trials = matrix.shape
    if not 2 <= partitions <= MAX_PARTITIONS or partitions % 2:
        raise ConfigError(f"partitions must be an even number from 2 to {MAX_PARTITIONS}, got {partitions}")
    if rows < partitions:
        raise ConfigError(
            f"{rows} rows of returns cannot make {partitions} partitions: use fewer partitions or more days")
    if trials < 2:
        raise ConfigError(f"overfitting needs at least 2 trials to choose from, got {trials}")
    chosen = np.array(list(combinations(range(partitions), partitions // 2)))
    masks = np.zeros((len(chosen), partitions), dtype=np.bool_)  # split i: its in-sample blocks
    masks[np.arange(len(chosen))[:, None], chosen] = True
    half = len(masks) // 2  # split i's complement is split n - 1 - i (lexicographic order)
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.empty(rows), partitions)])
    if metric is sharpe_ratio:
        split_metrics = _moment_metrics(matrix, bounds)
    else:
        split_metrics = _called_metrics(matrix, bounds, metric)
    logits = np.full(len(masks), np.nan)
    best = np.full(len(masks), -1, dtype=np.int64)
    in_sample = np.full(len(masks), np.nan)
    out_of_sample = np.full(len(masks), np.nan)
    step = max(1, SPLIT_CELLS // trials)
    for start in range(0, half, step):
        first = np.arange(start, min(start + step, half))
        complement = len(masks) - 1 - first
        metric_in, metric_out = split_metrics(masks[first])
        for target, ranked_in, ranked_out in ((first, metric_in, metric_out), (complement, metric_out, metric_in)):
            logits[target], best[target], in_sample[target], out_of_sample[target] = _rank_in_sample_best(
                ranked_in, ranked_out)
    for array in (logits, best, in_sample, out_of_sample):
        array.setflags(write=False)
    defined = logits[np.isfinite(logits)]
    return PBO(
        pbo=float(np.mean(defined <= 0)) if len(defined) else math.nan,
        logits=logits, best_trials=best, in_sample=in_sample, out_of_sample=out_of_sample,
        n_partitions=partitions, n_trials=trials, n_rows=rows,
    )


def _vector(values: np.ndarray, what: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    if vector.ndim != 1:
        raise ConfigError(f"{what} must be one-dimensional, got {vector.ndim} dimension(s)")
    return vector


def _expected_max_of_standard_normals(n_trials: int) -> float:
    """E[max of n iid N(0, 1)], the paper's approximation; 0 for a single trial (nothing to deflate)."""
    if n_trials < 2:
        return 0.0
    return ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / n_trials)
            + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (n_trials * math.e)))


def _probabilistic_sharpe(sharpe: float, benchmark: float, periods: int, skew: float, kurtosis: float) -> float:
    """P(true Sharpe > benchmark), all per period; NaN when undefined."""
    variance = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if not (variance > 0 and math.isfinite(sharpe)):
        return math.nan
    return _NORMAL.cdf((sharpe - benchmark) * math.sqrt(periods - 1) / math.sqrt(variance))


def _sharpe_from_moments(
    count: np.ndarray, total: np.ndarray, squares: np.ndarray, shift: np.ndarray, scratch: np.ndarray
) -> np.ndarray:
    """mean / std (ddof 1) from the count, sum and sum of squares of values minus ``shift``.

    Shifted (centred) sums keep the variance exact when the mean is large against the
    dispersion. NaN with under 2 values or a standard deviation at or below NOISE_FLOOR.
    In place, no temporary the size of ``total`` (the CSCV's hot loop): ``total`` becomes
    the result, ``squares`` and ``scratch`` (same shape) are overwritten.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        np.multiply(total, 1 / count, out=total)  # reciprocals: per split, not per cell, when no cell is NaN
        np.multiply(total, total, out=scratch)
        np.multiply(scratch, count, out=scratch)
        np.subtract(squares, scratch, out=squares)
        np.multiply(squares, 1 / (count - 1), out=squares)
        std = np.sqrt(squares, out=squares)
        np.add(total, shift, out=total)
        np.divide(total, std, out=total)
    np.putmask(total, std <= NOISE_FLOOR, np.nan)
    return total


SplitMetrics = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Boolean (splits x partitions) in-sample masks -> (in-sample, out-of-sample) metrics, (splits x trials) each."""


def _moment_metrics(matrix: np.ndarray, bounds: np.ndarray) -> SplitMetrics:
    """The per-period Sharpe ratio of every split from per-partition counts, sums and sums of squares."""
    finite = np.isfinite(matrix)
    complete = bool(finite.all())  # the common case: every trial has every row, counts are per split only
    centred = np.where(finite, matrix, 0.0)
    count = finite.sum(axis=0)
    shift = centred.sum(axis=0) / np.maximum(count, 1)
    centred -= shift
    if not complete:
        np.putmask(centred, ~finite, 0.0)
    starts = bounds[:-1]
    part_total = np.add.reduceat(centred, starts, axis=0)
    part_squares = np.add.reduceat(np.square(centred, out=centred), starts, axis=0)
    all_total, all_squares = part_total.sum(axis=0), part_squares.sum(axis=0)
    if complete:
        part_count = np.diff(bounds).astype(np.float64)[:, None]
        all_count = np.float64(len(matrix))
    else:
        part_count = np.add.reduceat(finite, starts, axis=0).astype(np.float64)
        all_count = part_count.sum(axis=0)
    buffers = np.empty((5, max(1, SPLIT_CELLS // matrix.shape[1]), matrix.shape[1]))

    def split_metrics(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weights = masks.astype(np.float64)
        total_in, squares_in, total_out, squares_out, scratch = buffers[:, : len(masks)]
        np.matmul(weights, part_total, out=total_in)
        np.matmul(weights, part_squares, out=squares_in)
        np.subtract(all_total, total_in, out=total_out)
        np.subtract(all_squares, squares_in, out=squares_out)
        count_in = weights @ part_count
        return (_sharpe_from_moments(count_in, total_in, squares_in, shift, scratch),
                _sharpe_from_moments(all_count - count_in, total_out, squares_out, shift, scratch))

    return split_metrics


def _called_metrics(matrix: np.ndarray, bounds: np.ndarray, metric: TrialMetric) -> SplitMetrics:
    """Any metric, called on the in-sample and the out-of-sample rows of each split."""
    blocks = [np.arange(start, stop) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]

    def split_metrics(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        def measure(mask: np.ndarray) -> np.ndarray:
            rows = np.concatenate([block for block, chosen in zip(blocks, mask, strict=True) if chosen])
            values = np.asarray(metric(matrix[rows]), dtype=np.float64)
            if values.shape != (matrix.shape[1],):
                raise ConfigError(
                    f"the metric must give one value per trial ({matrix.shape[1]}), got shape {values.shape}")
            return values

        return np.array([measure(mask) for mask in masks]), np.array([measure(~mask) for mask in masks])

    return split_metrics


def _rank_in_sample_best(
    metric_in: np.ndarray, metric_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per split (row): (logit, best trial, its in-sample and its out-of-sample metric).

    The in-sample best is the first trial with the highest defined in-sample metric; its
    out-of-sample rank averages ties and counts only trials with a defined value there.
    """
    rows = np.arange(len(metric_in))
    best = np.fmax(metric_in, -np.inf).argmax(axis=1)
    best_in = metric_in[rows, best]
    best_out = metric_out[rows, best][:, None]
    below = np.count_nonzero(metric_out < best_out, axis=1)
    tied = np.count_nonzero(metric_out == best_out, axis=1)
    defined = metric_out.shape[1] - np.count_nonzero(np.isnan(metric_out), axis=1)
    share = (below + (tied + 1) / 2) / (defined + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        logit = np.log(share / (1 - share))
    best_out = best_out[:, 0]
    logit[np.isnan(best_in) | np.isnan(best_out)] = np.nan
    best[np.isnan(best_in)] = -1
    return logit, best, best_in, best_out
