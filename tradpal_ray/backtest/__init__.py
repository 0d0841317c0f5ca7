"""Backtesting: a pure numba engine (no Ray), strategies by reference, metrics, in-process sweeps.

Defaults reproduce backtesting.py trade for trade (see ``engine`` for the exact contract).
``sweep`` is the unit of work a sweep run calls for one symbol and chunk of combinations
(see :mod:`tradpal_ray.runs`). Names load on first use, so importing this package (or a
light submodule such as ``strategies``) does not pull in numba.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "data": ("Bars", "load_bars", "load_store_bars", "prepare_bars"),
    "engine": ("EXIT_REASONS", "BacktestConfig", "BacktestResult", "backtest", "run_signals"),
    "grid": ("param_grid", "parse_grid", "parse_params", "sample_params", "strategy_combos"),
    "indicators": ("cached", "cross_above", "cross_below", "ema", "indicator_cache", "rolling_std", "rsi", "sma"),
    "metrics": ("Metric", "derive_metrics", "metric", "metric_names", "metrics", "register_metric", "unregister_metric"),
    "strategies": ("Param", "Strategy", "get_strategy", "strategies", "strategy", "strategy_from_function"),
    "_references": ("StrategyRef", "load_strategy_paths", "resolve_strategy", "strategy_ref"),
    "sweep": ("rank", "sweep"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tradpal_ray.backtest' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tradpal_ray.backtest.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(_WHERE)


__all__ = sorted(_WHERE)
