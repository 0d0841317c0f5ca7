"""Batch signals of the built-in strategies: a whole chunk of combinations in one go.

Each function takes the bars and one array per parameter (one value per combination) and
returns 2-D ``(combinations, bars)`` entry and exit arrays, bit-identical to calling the
strategy once per combination. Every distinct indicator window is computed once (through
the cached indicators, so also once per sweep) and the comparisons for all combinations
run in one numba loop (:mod:`tradpal_ray.backtest._signal_kernels`), which is what makes a
sweep's time the engine's time rather than Python's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from tradpal_ray.backtest.indicators import ema, rolling_std, rsi, sma

if TYPE_CHECKING:
    from tradpal_ray.backtest.data import Bars

Signals2D = tuple[np.ndarray, np.ndarray]
Indicator = Callable[[np.ndarray, int], np.ndarray]


def _rows(indicator: Indicator, values: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``indicator(values, w)`` for each distinct window as the rows of a 2-D array; each window's row index."""
    distinct, index = np.unique(windows, return_inverse=True)
    rows = np.empty((len(distinct), len(values)))
    for r, window in enumerate(distinct):
        rows[r] = indicator(values, int(window))
    return rows, index


def _empty(k: int, n: int) -> Signals2D:
    return np.empty((k, n), dtype=np.bool_), np.empty((k, n), dtype=np.bool_)


def _line_cross(indicator: Indicator, bars: Bars, fast: np.ndarray, slow: np.ndarray) -> Signals2D:
    """Crossings of ``indicator(fast)`` over ``indicator(slow)`` of the closes, per combination."""
    from tradpal_ray.backtest._signal_kernels import crossings

    k = len(fast)
    rows, index = _rows(indicator, bars.close, np.concatenate([fast, slow]))
    entries, exits = _empty(k, len(bars))
    crossings(rows, index[:k], rows, index[k:], entries, exits)
    return entries, exits


def sma_cross(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.sma_cross`."""
    return _line_cross(sma, bars, params["fast"], params["slow"])


def ema_cross(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.ema_cross`."""
    return _line_cross(ema, bars, params["fast"], params["slow"])


def rsi_reversion(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.rsi_reversion`."""
    from tradpal_ray.backtest._signal_kernels import level_signals

    rows, index = _rows(rsi, bars.close, params["window"])
    entries, exits = _empty(len(index), len(bars))
    level_signals(rows, index, params["lower"].astype(np.float64), params["upper"].astype(np.float64), entries, exits)
    return entries, exits


def bollinger_breakout(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.bollinger_breakout`."""
    from tradpal_ray.backtest._signal_kernels import band_breakouts

    mid, index = _rows(sma, bars.close, params["window"])
    width, _ = _rows(rolling_std, bars.close, params["window"])
    entries, exits = _empty(len(index), len(bars))
    band_breakouts(bars.close, mid, width, index, params["k"].astype(np.float64), entries, exits)
    return entries, exits


def macd(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.macd`: one MACD line per (fast, slow), one trigger per signal span."""
    from tradpal_ray.backtest._signal_kernels import crossings

    fast, slow, signal = params["fast"], params["slow"], params["signal"]
    k = len(fast)
    emas, ema_index = _rows(ema, bars.close, np.concatenate([fast, slow]))
    pairs, line_index = np.unique(ema_index.reshape(2, k).T, axis=0, return_inverse=True)
    lines = emas[pairs[:, 0]] - emas[pairs[:, 1]]
    triples, trigger_index = np.unique(np.column_stack([line_index, signal]), axis=0, return_inverse=True)
    triggers = np.empty((len(triples), len(bars)))
    for r, (line, span) in enumerate(triples):
        triggers[r] = ema(lines[line], int(span))
    entries, exits = _empty(k, len(bars))
    crossings(lines, line_index.reshape(-1), triggers, trigger_index.reshape(-1), entries, exits)
    return entries, exits
