"""Backtesting: a pure numba engine (no Ray), strategies by reference, metrics, in-process sweeps.

Defaults reproduce backtesting.py trade for trade (see ``engine`` for the exact contract).
``sweep`` is the unit of work a sweep run calls for one symbol and chunk of combinations
(see :mod:`tradpal_ray.runs`). Strategies are named by reference (:class:`StrategyRef`):
a registered name, ``module.path:function`` or ``path/to/file.py:function``.
"""

from tradpal_ray.backtest._references import StrategyRef, load_strategy_paths, resolve_strategy, strategy_ref
from tradpal_ray.backtest.data import Bars, load_bars, load_store_bars, prepare_bars
from tradpal_ray.backtest.engine import (
    EXIT_REASONS,
    BacktestConfig,
    BacktestResult,
    backtest,
    run_signals,
)
from tradpal_ray.backtest.grid import (
    param_grid,
    parse_grid,
    parse_params,
    sample_params,
    strategy_combos,
)
from tradpal_ray.backtest.indicators import (
    cached,
    cross_above,
    cross_below,
    ema,
    indicator_cache,
    rolling_std,
    rsi,
    sma,
)
from tradpal_ray.backtest.metrics import (
    KERNEL_STATS,
    Metric,
    derive_metrics,
    metric,
    metric_names,
    ratio,
    register_metric,
    unregister_metric,
)
from tradpal_ray.backtest.objectives import NAMED_OBJECTIVES, Objective, objective
from tradpal_ray.backtest.sizing import PositionSize, parse_size
from tradpal_ray.backtest.strategies import (
    Param,
    Strategy,
    get_strategy,
    strategies,
    strategy,
    strategy_from_function,
)
from tradpal_ray.backtest.sweep import rank, sweep, sweep_returns

__all__ = [
    "NAMED_OBJECTIVES",
    "Objective",
    "objective",
    "EXIT_REASONS",
    "KERNEL_STATS",
    "BacktestConfig",
    "BacktestResult",
    "Bars",
    "Metric",
    "Param",
    "PositionSize",
    "Strategy",
    "StrategyRef",
    "backtest",
    "cached",
    "cross_above",
    "cross_below",
    "derive_metrics",
    "ema",
    "get_strategy",
    "indicator_cache",
    "load_bars",
    "load_store_bars",
    "load_strategy_paths",
    "metric",
    "metric_names",
    "param_grid",
    "parse_grid",
    "parse_params",
    "parse_size",
    "prepare_bars",
    "rank",
    "ratio",
    "register_metric",
    "resolve_strategy",
    "rolling_std",
    "rsi",
    "run_signals",
    "sample_params",
    "sma",
    "strategies",
    "strategy",
    "strategy_combos",
    "strategy_from_function",
    "strategy_ref",
    "sweep",
    "sweep_returns",
    "unregister_metric",
]
