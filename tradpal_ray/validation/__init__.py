"""Validation of strategies and sweep results: overfitting statistics, look-ahead and warm-up checks.

The overfitting statistics need numpy only and load with the package; the look-ahead check
(which runs strategies, so loads the engine) loads on first use of one of its names.
"""

from __future__ import annotations

import importlib
from typing import Any

from tradpal_ray.validation._overfit import (
    PBO,
    DeflatedSharpe,
    deflated_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)

_LOOKAHEAD = ("LookaheadBar", "LookaheadReport", "WarmupProbe", "check_executor", "check_strategy")


def __getattr__(name: str) -> Any:
    if name in _LOOKAHEAD:
        return getattr(importlib.import_module("tradpal_ray.validation._lookahead"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PBO",
    "DeflatedSharpe",
    "LookaheadBar",
    "LookaheadReport",
    "WarmupProbe",
    "check_executor",
    "check_strategy",
    "deflated_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "sharpe_ratio",
]
