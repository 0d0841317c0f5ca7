"""Batch signals of the built-in strategies: a whole chunk of combinations in one go.

Each function takes the bars and one array per parameter (one value per combination) and
returns 2-D ``(combinations, bars)`` entry and exit arrays, bit-identical to calling the
strategy once per combination. Every distinct indicator window is computed once (through
the cached indicators, so also once per sweep, not per chunk), and each combination costs
one numba call that writes its row of signals in a single pass over the shared indicator
arrays (:mod:`tradpal_ray.backtest._kernels`): no per-combination temporaries, no
stacked copies, so a sweep's time is the engine's and its memory the signal arrays'.
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


def _by_window(indicator: Indicator, values: np.ndarray, windows: np.ndarray) -> dict[int, np.ndarray]:
    """``indicator(values, w)`` for each distinct window ``w`` (cached: once per sweep, not per chunk)."""
    return {int(w): indicator(values, int(w)) for w in np.unique(windows)}


def _empty(k: int, n: int) -> Signals2D:
    return np.empty((k, n), dtype=np.bool_), np.empty((k, n), dtype=np.bool_)


def _line_cross(indicator: Indicator, bars: Bars, fast: np.ndarray, slow: np.ndarray) -> Signals2D:
    """Crossings of ``indicator(fast)`` over ``indicator(slow)`` of the closes, per combination."""
    from tradpal_ray.backtest._kernels import crossings

    lines = _by_window(indicator, bars.close, np.concatenate([fast, slow]))
    entries, exits = _empty(len(fast), len(bars))
    for j, (f, s) in enumerate(zip(fast.tolist(), slow.tolist())):
        crossings(lines[f], lines[s], entries[j], exits[j])
    return entries, exits


def sma_cross(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.sma_cross`."""
    return _line_cross(sma, bars, params["fast"], params["slow"])


def ema_cross(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.ema_cross`."""
    return _line_cross(ema, bars, params["fast"], params["slow"])


def rsi_reversion(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.rsi_reversion`."""
    from tradpal_ray.backtest._kernels import level_signals

    window = params["window"]
    by_window = _by_window(rsi, bars.close, window)
    entries, exits = _empty(len(window), len(bars))
    for j, (w, lower, upper) in enumerate(zip(window.tolist(), params["lower"].tolist(), params["upper"].tolist())):
        level_signals(by_window[w], float(lower), float(upper), entries[j], exits[j])
    return entries, exits


def bollinger_breakout(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.bollinger_breakout`."""
    from tradpal_ray.backtest._kernels import band_breakouts

    window = params["window"]
    mid = _by_window(sma, bars.close, window)
    width = _by_window(rolling_std, bars.close, window)
    entries, exits = _empty(len(window), len(bars))
    for j, (w, k) in enumerate(zip(window.tolist(), params["k"].tolist())):
        band_breakouts(bars.close, mid[w], width[w], float(k), entries[j], exits[j])
    return entries, exits


def macd(bars: Bars, params: dict[str, np.ndarray]) -> Signals2D:
    """Batch :func:`~tradpal_ray.backtest.strategies.macd`: each EMA once; a MACD line kept while (fast, slow) repeats."""
    from tradpal_ray.backtest._kernels import crossings

    fast, slow = params["fast"], params["slow"]
    emas = _by_window(ema, bars.close, np.concatenate([fast, slow]))
    entries, exits = _empty(len(fast), len(bars))
    pair, line = None, np.empty(0)
    for j, (f, s, signal) in enumerate(zip(fast.tolist(), slow.tolist(), params["signal"].tolist())):
        if pair != (f, s):  # grids vary the last parameter fastest: consecutive combinations share a line
            pair, line = (f, s), emas[f] - emas[s]
        crossings(line, ema(line, signal), entries[j], exits[j])
    return entries, exits
