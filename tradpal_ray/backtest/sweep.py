"""In-process parameter sweep: many combinations per numba call, shared indicators.

:func:`sweep` is the unit of work of a distributed sweep: a Ray task calls it for one
symbol and one chunk of combinations (pass the chunk as a list of parameter dicts, e.g.
from :func:`~tradpal_ray.backtest.grid.strategy_combos`), then the driver concatenates the
frames and calls :func:`rank`. Statistics are identical to :func:`backtest` per combination.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tradpal_ray.backtest.data import Bars, prepare_bars
from tradpal_ray.backtest.engine import BacktestConfig, simulate_many
from tradpal_ray.backtest.grid import strategy_combos
from tradpal_ray.backtest.indicators import indicator_cache
from tradpal_ray.backtest.metrics import KERNEL_STATS, metric, metric_columns
from tradpal_ray.backtest.strategies import Strategy, get_strategy

SIGNAL_BYTES = 64 * 1024 * 1024
"""Upper bound on the 2-D entry + exit arrays built per kernel call (combinations are chunked)."""


def sweep(
    bars: pd.DataFrame | Bars,
    strategy: str | Strategy,
    grid: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    config: BacktestConfig | None = None,
    *,
    rank_by: str | None = None,
    drop_bad: bool = False,
) -> pd.DataFrame:
    """Backtest ``strategy`` for every combination; one row each: parameters then every metric.

    ``grid`` is a spec (name -> values, expanded with the strategy's rules by
    :func:`~tradpal_ray.backtest.grid.strategy_combos`) or an explicit list of parameter
    dicts (each validated; a bad one is a ConfigError). Rows keep the combination order
    unless ``rank_by`` names a statistic to sort by (best first).
    """
    bars = prepare_bars(bars, drop_bad=drop_bad)
    strat = get_strategy(strategy)
    config = config or BacktestConfig()
    if isinstance(grid, Mapping):
        combos = strategy_combos(strat, grid)
    else:
        combos = list(grid)
    resolved = [strat.resolve(c, n_bars=len(bars)) for c in combos]
    n = len(bars)
    stats = np.empty((len(resolved), len(KERNEL_STATS)))
    chunk = max(1, SIGNAL_BYTES // (2 * n))
    with indicator_cache(bars.open, bars.high, bars.low, bars.close, bars.volume):
        for start in range(0, len(resolved), chunk):
            part = resolved[start : start + chunk]
            entries = np.empty((len(part), n), dtype=np.bool_)
            exits = np.empty((len(part), n), dtype=np.bool_)
            for j, values in enumerate(part):
                entries[j], exits[j] = strat.signals(bars, values)
            stats[start : start + len(part)] = simulate_many(
                bars.open, bars.high, bars.low, bars.close, bars.day_end, entries, exits, *config.kernel_args()
            )
    columns: dict[str, Any] = {name: [values[name] for values in resolved] for name in strat.params}
    columns.update(metric_columns(stats))
    frame = pd.DataFrame(columns)
    return rank(frame, rank_by) if rank_by else frame


def rank(results: pd.DataFrame, by: str, *, ascending: bool | None = None) -> pd.DataFrame:
    """Sort sweep rows best first by metric ``by`` (NaN last), in its registered direction (ConfigError if unknown)."""
    if ascending is None:
        ascending = not metric(by).higher_is_better
    return results.sort_values(by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
