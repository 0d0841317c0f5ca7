"""In-process parameter sweep: many combinations per numba call, shared indicators.

:func:`sweep` is the unit of work of a distributed sweep: a Ray task calls it for one
symbol and one chunk of combinations (pass the chunk as a list of parameter dicts, e.g.
from :func:`~tradpal_ray.backtest.grid.strategy_combos`), then the driver concatenates the
frames and calls :func:`rank`. Statistics are identical to :func:`backtest` per combination.
A strategy with a batch function (every built-in) builds a chunk's signals in one call;
any other is called once per combination.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tradpal_ray.backtest.data import Bars, prepare_bars, slice_bars
from tradpal_ray.backtest.engine import BacktestConfig, day_index, simulate_many
from tradpal_ray.backtest.grid import strategy_combos
from tradpal_ray.backtest.indicators import indicator_cache
from tradpal_ray.backtest.metrics import KERNEL_STATS, metric, metric_columns
from tradpal_ray.backtest.strategies import BatchSignals, Strategy, get_strategy
from tradpal_ray.errors import ConfigError

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
    warmup: int = 0,
) -> pd.DataFrame:
    """Backtest ``strategy`` for every combination; one row each: parameters then every metric.

    ``grid`` is a spec (name -> values, expanded with the strategy's rules by
    :func:`~tradpal_ray.backtest.grid.strategy_combos`) or an explicit list of parameter
    dicts (each validated; a bad one is a ConfigError). Rows keep the combination order
    unless ``rank_by`` names a statistic to sort by (best first). The first ``warmup`` bars
    only warm the indicators up: trading starts flat at bar ``warmup`` and the statistics
    cover the bars from there (a walk-forward window with its look-back before it).
    """
    frame, _ = _sweep(bars, strategy, grid, config, drop_bad=drop_bad, daily_returns=False, warmup=warmup)
    return rank(frame, rank_by) if rank_by else frame


def sweep_returns(
    bars: pd.DataFrame | Bars,
    strategy: str | Strategy,
    grid: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    config: BacktestConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`sweep`'s rows (in combination order) and each combination's daily returns.

    The returns frame has one row per UTC day (:func:`~tradpal_ray.backtest.engine.day_index`)
    and one column per combination, in row order: what the Sharpe ratio, the deflated Sharpe
    ratio and the probability of backtest overfitting are computed from.
    """
    frame, returns = _sweep(bars, strategy, grid, config, drop_bad=False, daily_returns=True)
    return frame, returns


def _sweep(
    bars: pd.DataFrame | Bars,
    strategy: str | Strategy,
    grid: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    config: BacktestConfig | None,
    *,
    drop_bad: bool,
    daily_returns: bool,
    warmup: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    bars = prepare_bars(bars, drop_bad=drop_bad)
    strat = get_strategy(strategy)
    config = config or BacktestConfig()
    if isinstance(grid, Mapping):
        combos = strategy_combos(strat, grid)
    else:
        combos = list(grid)
    n = len(bars)
    resolved = [strat.resolve(c, n_bars=n) for c in combos]
    params = {name: np.array([values[name] for values in resolved]) for name in strat.params}
    stats = np.empty((len(resolved), len(KERNEL_STATS)))
    traded = slice_bars(bars, warmup) if warmup else bars
    days = day_index(traded) if daily_returns else None
    returns = np.zeros((len(resolved), len(days))) if days is not None else np.empty((0, 0))
    chunk = max(1, SIGNAL_BYTES // (2 * n))
    with indicator_cache(bars.open, bars.high, bars.low, bars.close, bars.volume):
        for start in range(0, len(resolved), chunk):
            stop = min(start + chunk, len(resolved))
            if strat.batch:
                part = {name: values[start:stop] for name, values in params.items()}
                entries, exits = _batch_signals(strat.name, strat.batch, bars, part, stop - start)
            else:
                entries, exits = _each_signals(strat, bars, resolved[start:stop])
            if warmup:
                entries, exits = np.ascontiguousarray(entries[:, warmup:]), np.ascontiguousarray(exits[:, warmup:])
            stats[start:stop] = simulate_many(
                traded.open, traded.high, traded.low, traded.close, traded.day_end, entries, exits, *config.kernel_args(),
                returns[start:stop] if days is not None else returns,
            )
    columns: dict[str, Any] = dict(params)
    columns.update(metric_columns(stats))
    frame = pd.DataFrame(columns)
    if days is None:
        return frame, None
    return frame, pd.DataFrame(returns.T, index=days, columns=pd.RangeIndex(len(resolved)))


def _each_signals(strat: Strategy, bars: Bars, part: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """2-D entries and exits of ``part`` by calling the strategy once per combination."""
    entries = np.empty((len(part), len(bars)), dtype=np.bool_)
    exits = np.empty((len(part), len(bars)), dtype=np.bool_)
    for j, values in enumerate(part):
        entries[j], exits[j] = strat.signals(bars, values)
    return entries, exits


def _batch_signals(
    name: str, batch: BatchSignals, bars: Bars, params: dict[str, np.ndarray], combos: int
) -> tuple[np.ndarray, np.ndarray]:
    """2-D entries and exits of ``combos`` combinations from a strategy's batch function, checked for shape."""
    shape = (combos, len(bars))
    out = []
    for label, array in zip(("entries", "exits"), batch(bars, params)):
        array = np.ascontiguousarray(np.asarray(array, dtype=np.bool_))
        if array.shape != shape:
            raise ConfigError(f"strategy {name} batch returned {label} of shape {array.shape}, expected {shape}")
        out.append(array)
    return out[0], out[1]


def rank(results: pd.DataFrame, by: str, *, ascending: bool | None = None) -> pd.DataFrame:
    """Sort sweep rows best first by metric ``by`` (NaN last), in its registered direction (ConfigError if unknown)."""
    if ascending is None:
        ascending = not metric(by).higher_is_better
    return results.sort_values(by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
