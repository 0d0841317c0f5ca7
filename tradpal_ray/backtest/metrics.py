"""The statistics of a backtest: names, one-line definitions, and the risk-ratio kernel.

Sharpe and Sortino follow backtesting.py 0.6.6 (``backtesting/_stats.py``) exactly, so they
can be checked against it: returns are *daily* (the equity at the last bar of each UTC
calendar day, ``pct_change``), the mean is geometric and annualised with
``periods_per_year`` (365 for markets that trade every day, 252 for weekday markets;
backtesting.py picks one of the two from the data, we take it as a parameter, default 365).
vectorbt's per-bar arithmetic Sharpe is a different number by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numba import njit

from tradpal_ray.errors import ConfigError

METRICS: dict[str, str] = {
    "trades": "number of closed trades (a position still open at the end is not counted)",
    "final_equity": "cash plus the open position marked to the last close, without exit fee",
    "return_pct": "final equity / starting cash - 1, in percent",
    "max_drawdown_pct": "max over bars of 1 - equity / running max of equity, in percent (>= 0)",
    "win_rate_pct": "closed trades with PnL > 0 / closed trades, in percent (NaN without trades)",
    "profit_factor": "sum of winning PnL / |sum of losing PnL| (inf without losers, NaN without trades)",
    "expectancy": "mean PnL of the closed trades, in cash (NaN without trades)",
    "sharpe": "annualised geometric daily return / annualised daily volatility (backtesting.py's formula)",
    "sortino": "annualised geometric daily return / (RMS of negative daily returns * sqrt(periods_per_year))",
    "exposure_pct": "bars from each trade's entry bar to its exit bar (or the last bar) / all bars, in percent",
    "fees": "fees paid, entry and exit, including the open position's entry fee",
    "best_trade_pct": "best closed trade's return on its entry notional, in percent",
    "worst_trade_pct": "worst closed trade's return on its entry notional, in percent",
}
"""Every statistic the engine reports, in the order of :data:`STAT_NAMES`, with its definition."""

STAT_NAMES: tuple[str, ...] = tuple(METRICS)
N_STATS = len(STAT_NAMES)
KERNEL_STATS = STAT_NAMES

_LABELS = {"trades": "trades", "return_pct": "return %", "max_drawdown_pct": "max dd %", "win_rate_pct": "win %", "sharpe": "sharpe"}


@dataclass(frozen=True)
class Metric:
    """A statistic of a backtest (provisional registry; see h-metrics)."""

    name: str
    label: str
    description: str
    higher_is_better: bool = True
    headline: bool = False
    derive: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None


_REGISTRY: dict[str, Metric] = {
    name: Metric(name, _LABELS.get(name, name), text, name not in ("max_drawdown_pct", "fees"), name in _LABELS)
    for name, text in METRICS.items()
}


def metrics() -> tuple[Metric, ...]:
    return tuple(_REGISTRY.values())


def metric(name: str) -> Metric:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def metric_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def derive_metrics(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for m in _REGISTRY.values():
        if m.derive is not None and m.name not in columns:
            columns[m.name] = m.derive(columns)
    return columns


@njit(cache=True, error_model="numpy")
def daily_ratios(day_returns: np.ndarray, count: int, periods_per_year: float) -> tuple[float, float]:
    """(Sharpe, Sortino) of the first ``count`` daily returns, as backtesting.py computes them.

    gmean = exp(mean(log(1 + r))) - 1 (0 if some 1 + r <= 0); annual = (1 + gmean)^N - 1;
    vol = sqrt((var(r, ddof=1) + (1 + gmean)^2)^N - (1 + gmean)^(2N)); Sharpe = annual / vol
    (NaN if vol is 0); Sortino = annual / (sqrt(mean(min(r, 0)^2)) * sqrt(N)).
    """
    if count == 0:
        return math.nan, math.nan
    log_sum = 0.0
    total = 0.0
    downside = 0.0
    nonpositive = False
    for k in range(count):
        r = day_returns[k]
        g = 1.0 + r
        if g <= 0.0:
            nonpositive = True
        else:
            log_sum += math.log(g)
        total += r
        if r < 0.0:
            downside += r * r
    gmean = 0.0 if nonpositive else math.exp(log_sum / count) - 1.0
    n = periods_per_year
    annual = (1.0 + gmean) ** n - 1.0
    var = math.nan
    if count > 1:
        mean = total / count
        sq = 0.0
        for k in range(count):
            d = day_returns[k] - mean
            sq += d * d
        var = sq / (count - 1)
    vol = math.sqrt((var + (1.0 + gmean) ** 2) ** n - (1.0 + gmean) ** (2.0 * n)) * 100.0
    sharpe = annual * 100.0 / vol if vol != 0.0 else math.nan
    sortino = annual / (math.sqrt(downside / count) * math.sqrt(n))
    return sharpe, sortino
