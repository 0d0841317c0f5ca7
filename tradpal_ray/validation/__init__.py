"""Validation of sweep results: overfitting statistics (and look-ahead checks of strategies)."""

from tradpal_ray.validation._overfit import (
    PBO,
    DeflatedSharpe,
    deflated_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)

__all__ = [
    "PBO",
    "DeflatedSharpe",
    "deflated_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "sharpe_ratio",
]
