"""Numba loops that turn shared indicator rows into 2-D (combinations x bars) signals.

Used by the batch strategies in :mod:`tradpal_ray.backtest._batch`: indicators are computed
once per distinct window into the rows of a 2-D array, and each combination ``j`` picks its
rows by index. The comparisons are the very ones :func:`~tradpal_ray.backtest.indicators.cross_above`
and plain ``<``/``>`` make (NaN compares False), so the signals are bit-identical to the
per-combination strategy functions. Imported lazily: loading numba costs ~0.3 s.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def crossings(
    a: np.ndarray, a_row: np.ndarray, b: np.ndarray, b_row: np.ndarray, above: np.ndarray, below: np.ndarray
) -> None:
    """``above[j] = cross_above(a[a_row[j]], b[b_row[j]])`` and ``below[j]`` = its ``cross_below``."""
    k, n = above.shape
    for j in range(k):
        x = a[a_row[j]]
        y = b[b_row[j]]
        above[j, 0] = False
        below[j, 0] = False
        was_below = x[0] < y[0]
        was_above = x[0] > y[0]
        for i in range(1, n):
            is_below = x[i] < y[i]
            is_above = x[i] > y[i]
            above[j, i] = was_below and is_above
            below[j, i] = was_above and is_below
            was_below = is_below
            was_above = is_above


@njit(cache=True)
def band_breakouts(
    close: np.ndarray, mid: np.ndarray, width: np.ndarray, row: np.ndarray, k: np.ndarray,
    entries: np.ndarray, exits: np.ndarray,
) -> None:
    """Entries: ``close`` crosses above ``mid + k[j] * width`` (rows ``row[j]``); exits: it crosses below ``mid``."""
    n_combos, n = entries.shape
    for j in range(n_combos):
        m = mid[row[j]]
        w = width[row[j]]
        scale = k[j]
        entries[j, 0] = False
        exits[j, 0] = False
        was_under_band = close[0] < m[0] + scale * w[0]
        was_over_mid = close[0] > m[0]
        for i in range(1, n):
            upper = m[i] + scale * w[i]
            entries[j, i] = was_under_band and close[i] > upper
            exits[j, i] = was_over_mid and close[i] < m[i]
            was_under_band = close[i] < upper
            was_over_mid = close[i] > m[i]


@njit(cache=True)
def level_signals(
    x: np.ndarray, row: np.ndarray, lower: np.ndarray, upper: np.ndarray, entries: np.ndarray, exits: np.ndarray
) -> None:
    """``entries[j] = x[row[j]] < lower[j]``, ``exits[j] = x[row[j]] > upper[j]`` (NaN: neither)."""
    k, n = entries.shape
    for j in range(k):
        values = x[row[j]]
        low = lower[j]
        high = upper[j]
        for i in range(n):
            entries[j, i] = values[i] < low
            exits[j, i] = values[i] > high
