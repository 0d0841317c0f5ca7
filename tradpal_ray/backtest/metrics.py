"""The metric registry: every statistic a backtest reports, defined once.

Everything else is generated from this registry at call time: the numba kernel's stats row
(:data:`KERNEL_STATS`), the ranking direction of a sweep, CLI/report headers and the API's
accepted metrics. A metric is either computed by the kernel (``derive=None``, one of
:data:`KERNEL_STATS`) or *derived*: computed afterwards, vectorised over the columns of a
whole results table, from other metrics (see :func:`derive_metrics`). Register your own
derived metric with :func:`register_metric`; it then shows up wherever metrics are listed.

Risk ratios follow empyrical / quantstats (checked against ``empyrical-reloaded`` in the
tests): returns are *daily*, from the equity at the last bar of each UTC calendar day (the
first day only sets the base), and annualised with ``periods_per_year`` (365 for markets that
trade every day, 252 for weekday markets). A ratio is undefined (NaN), never +-inf or a huge
number, when its denominator is zero or lost in float rounding: see :data:`MAX_RATIO`.

This module imports neither numba nor numpy at import time, so listing metrics is instant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

MAX_RATIO = 1e4
"""Largest |numerator / denominator| a ratio may have before annualisation. Beyond it the
denominator (a volatility, a downside deviation, a drawdown) is float rounding on an equity
curve without real dispersion, e.g. a steady line, so the ratio is reported as NaN."""
NOISE_FLOOR = 1e-12
"""Denominators at or below this (daily-return dispersion, drawdown fraction) count as zero."""


@dataclass(frozen=True)
class Metric:
    """One statistic: its column name, short header, one-line definition and ranking direction."""

    name: str
    """Column name in results, e.g. ``max_drawdown_pct``."""
    label: str
    """Short header for tables, e.g. ``max dd %``."""
    description: str
    """One-line definition."""
    higher_is_better: bool = True
    headline: bool = False
    """Shown in summary tables (trades, return %, max dd %, win %, sharpe ...)."""
    integer: bool = False
    """A count (an int64 column), e.g. ``trades``."""
    derive: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None
    """None: computed by the numba kernel (the name is in :data:`KERNEL_STATS`). Otherwise a
    vectorised function of other metrics' columns (arrays over a whole results table)."""


def ratio(numerator: Any, denominator: Any) -> np.ndarray:
    """``numerator / denominator`` elementwise; NaN where the ratio is undefined.

    Undefined: a denominator at or below :data:`NOISE_FLOOR`, a ratio above
    :data:`MAX_RATIO` in magnitude, or any non-finite input. The kernel applies the same rule.
    """
    import numpy as np

    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = num / den
        ok = (den > NOISE_FLOOR) & (np.abs(num) <= MAX_RATIO * den)
    return np.where(ok & np.isfinite(out), out, np.nan)


def _calmar(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    return ratio(columns["cagr_pct"] / 100.0, columns["max_drawdown_pct"] / 100.0)


_BUILTIN: tuple[Metric, ...] = (
    Metric("trades", "trades", "number of closed trades (a position still open at the end is not counted)",
           headline=True, integer=True),
    Metric("final_equity", "final equity", "cash plus the open position marked to the last close, without exit fee"),
    Metric("return_pct", "return %", "final equity / starting cash - 1, in percent", headline=True),
    Metric("cagr_pct", "cagr %",
           "compound annual growth of the daily equity: (last / first day-end equity)^(ppy / daily returns) - 1, "
           "in percent (empyrical's annual_return)"),
    Metric("max_drawdown_pct", "max dd %",
           "max over bars of 1 - equity / running max of equity, in percent (>= 0; intrabar closes included)",
           higher_is_better=False, headline=True),
    Metric("win_rate_pct", "win %", "closed trades with PnL > 0 / closed trades, in percent (NaN without trades)",
           headline=True),
    Metric("profit_factor", "profit factor",
           "sum of winning PnL / |sum of losing PnL| (NaN without losing trades, as in backtesting.py, "
           "or with losses under 1/10,000 of the wins)"),
    Metric("expectancy", "expectancy", "mean PnL of the closed trades, in cash (NaN without trades)"),
    Metric("sharpe", "sharpe",
           "mean / standard deviation (ddof 1) of daily returns * sqrt(periods per year), as empyrical and "
           "quantstats compute it (NaN with under 2 daily returns or no dispersion)", headline=True),
    Metric("sortino", "sortino",
           "mean daily return * ppy / (sqrt(mean(min(r, 0)^2)) * sqrt(ppy)), empyrical's definition "
           "(NaN without losing days)"),
    Metric("exposure_pct", "exposure %", "bars from each trade's entry bar to its exit bar (or the last bar) / all bars, in percent"),
    Metric("fees", "fees", "fees paid, entry and exit, including the open position's entry fee", higher_is_better=False),
    Metric("best_trade_pct", "best trade %", "best closed trade's return on its entry notional, in percent"),
    Metric("worst_trade_pct", "worst trade %", "worst closed trade's return on its entry notional, in percent"),
    Metric("unfilled_entries", "unfilled", "entry signals not filled because not one size unit was affordable",
           higher_is_better=False, integer=True),
    Metric("sqn", "sqn",
           "system quality number: sqrt(closed trades) * mean / standard deviation (ddof 1) of trade PnL, as "
           "backtesting.py computes it (NaN under 2 closed trades or without dispersion)"),
    Metric("calmar", "calmar",
           "cagr % / max drawdown % (empyrical's Calmar, with the bar-by-bar drawdown shown beside it; "
           "NaN without drawdown)", derive=_calmar),
)

KERNEL_STATS: tuple[str, ...] = tuple(m.name for m in _BUILTIN if m.derive is None)
"""The fixed order of the kernel's stats row. ``engine.simulate`` writes it by these positions
(numba's cache keys on engine.py alone: touch engine.py when you change this order)."""

_registry: dict[str, Metric] = {m.name: m for m in _BUILTIN}


def register_metric(m: Metric) -> Metric:
    """Add a derived metric; it appears in every listing, ranking and results table from now on.

    ConfigError when the name is taken (naming the registered metric) or when ``derive`` is
    missing (only the kernel computes metrics without one).
    """
    existing = _registry.get(m.name)
    if existing is not None:
        raise ConfigError(f"metric {m.name!r} is already registered ({existing.label}: {existing.description})")
    if m.derive is None:
        raise ConfigError(f"metric {m.name!r} needs a derive function: only built-in metrics come from the kernel")
    _registry[m.name] = m
    return m


def unregister_metric(name: str) -> None:
    """Remove a metric added with :func:`register_metric`; built-in metrics cannot be removed."""
    if any(m.name == name for m in _BUILTIN):
        raise ConfigError(f"metric {name!r} is built in and cannot be unregistered")
    metric(name)
    del _registry[name]


def metrics() -> tuple[Metric, ...]:
    """Every metric: the kernel's in :data:`KERNEL_STATS` order, then derived ones in registration order."""
    ordered = sorted(_registry.values(), key=lambda m: m.derive is not None)  # stable: keeps each group's order
    return tuple(ordered)


def metric(name: str) -> Metric:
    """The metric called ``name``; ConfigError listing the valid names otherwise."""
    try:
        return _registry[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; choose one of {', '.join(metric_names())}") from None


def metric_names() -> tuple[str, ...]:
    """Names of :func:`metrics`, in the same order."""
    return tuple(m.name for m in metrics())


def derive_metrics(columns: Mapping[str, Any], *, skip_missing: bool = False) -> dict[str, np.ndarray]:
    """``columns`` plus every derived metric missing from them, as float arrays (non-finite -> NaN).

    Derived metrics are computed in registration order, so one may use another registered
    before it. ConfigError names a derived metric whose inputs are missing (left out instead
    with ``skip_missing``).
    """
    import numpy as np

    out: dict[str, Any] = dict(columns)
    for m in metrics():
        if m.derive is None or m.name in out:
            continue
        try:
            with np.errstate(all="ignore"):  # x/0 and friends become NaN below
                values = np.asarray(m.derive(out), dtype=np.float64)
        except KeyError as exc:
            if skip_missing:  # e.g. a run written before one of its inputs existed
                continue
            raise ConfigError(f"metric {m.name!r} needs column {exc.args[0]!r}, which the results lack") from None
        out[m.name] = np.where(np.isfinite(values), values, np.nan)
    return out


def metric_columns(kernel_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric's column from kernel stats rows (shape ``(n, len(KERNEL_STATS))``).

    The kernel's columns plus the derived ones, in :func:`metrics` order; counts as int64.
    """
    import numpy as np

    columns = derive_metrics({name: kernel_rows[:, k] for k, name in enumerate(KERNEL_STATS)})
    return {m.name: columns[m.name].astype(np.int64) if m.integer else columns[m.name] for m in metrics()}

