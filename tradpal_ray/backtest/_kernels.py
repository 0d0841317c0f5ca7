"""Numba loops behind the indicators and the batch signals of sweeps.

:func:`rolling_mean` and :func:`ewm_mean` are pandas' ``roll_mean`` (fixed window) and ``ewm``
(``adjust=False``) step for step, so ``sma`` and ``ema`` keep pandas' bits without its ~80 us
per call. The signal loops, used by the batch strategies in :mod:`tradpal_ray.backtest._batch`,
write one combination's entries and exits straight into a row of a sweep's 2-D arrays in one
pass over the shared indicator arrays (computed once per distinct window, never copied). Their
comparisons are the very ones :func:`~tradpal_ray.backtest.indicators.cross_above` and plain
``<``/``>`` make (NaN compares False), so the signals are bit-identical to the strategy
functions. Imported lazily: loading numba costs ~0.3 s.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def rolling_mean(values: np.ndarray, n: int) -> np.ndarray:
    """``pd.Series(values).rolling(n).mean()``, bit for bit: pandas' Kahan-compensated add and
    remove (separate compensations), its count of negatives that clamps a wrong-signed mean to
    0, and its run of equal values that returns the value itself (pandas GH#42064)."""
    out = np.empty(values.shape[0])
    if n < 1:  # an empty window: no mean anywhere
        out[:] = math.nan
        return out
    nobs = 0
    neg_ct = 0
    same_run = 0
    prev_value = math.nan
    total = 0.0
    add_comp = 0.0
    remove_comp = 0.0
    for i in range(values.shape[0]):
        if i == 0 or n == 1:  # pandas restarts when the window shares no bar with the previous one
            nobs = neg_ct = same_run = 0
            total = add_comp = remove_comp = 0.0
            prev_value = values[i]
        elif i >= n:
            old = values[i - n]
            if old == old:
                nobs -= 1
                y = -old - remove_comp
                t = total + y
                remove_comp = t - total - y
                total = t
                if np.signbit(old):
                    neg_ct -= 1
        val = values[i]
        if val == val:
            nobs += 1
            y = val - add_comp
            t = total + y
            add_comp = t - total - y
            total = t
            if np.signbit(val):
                neg_ct += 1
            if val == prev_value:
                same_run += 1
            else:
                same_run = 1
            prev_value = val
        if nobs >= n and nobs > 0:
            mean = total / nobs
            if same_run >= nobs:
                mean = prev_value
            elif neg_ct == 0 and mean < 0.0:
                mean = 0.0
            elif neg_ct == nobs and mean > 0.0:
                mean = 0.0
            out[i] = mean
        else:
            out[i] = math.nan
    return out


@njit(cache=True)
def ewm_mean(values: np.ndarray, com: float, min_periods: int) -> np.ndarray:
    """``pd.Series(values).ewm(com=com, adjust=False, min_periods=min_periods).mean()``, bit for
    bit: pandas' ``ewm`` loop (old weight reset to 1 after each observation, a value equal to
    the running mean left as it is, NaN gaps carried with a decaying weight, and its
    ``com == 1`` special case)."""
    out = np.empty(values.shape[0])
    if values.shape[0] == 0:
        return out
    alpha = 1.0 / (1.0 + com)
    old_wt_factor = 1.0 - alpha
    new_wt = alpha
    weighted = values[0]
    nobs = 1 if weighted == weighted else 0
    out[0] = weighted if nobs >= min_periods else math.nan
    old_wt = 1.0
    for i in range(1, values.shape[0]):
        cur = values[i]
        observed = cur == cur
        if observed:
            nobs += 1
        if weighted == weighted:
            old_wt *= old_wt_factor
            if observed:
                if weighted != cur:
                    if com == 1.0:  # pandas' quirk for irregular series, taken for span 3 too
                        new_wt = 1.0 - old_wt
                    weighted = old_wt * weighted + new_wt * cur
                    weighted /= old_wt + new_wt
                old_wt = 1.0
        elif observed:
            weighted = cur
        out[i] = weighted if nobs >= min_periods else math.nan
    return out


@njit(cache=True)
def crossings(a: np.ndarray, b: np.ndarray, above: np.ndarray, below: np.ndarray) -> None:
    """``above = cross_above(a, b)``, ``below = cross_below(a, b)``, written in place."""
    above[0] = False
    below[0] = False
    was_below = a[0] < b[0]
    was_above = a[0] > b[0]
    for i in range(1, a.shape[0]):
        is_below = a[i] < b[i]
        is_above = a[i] > b[i]
        above[i] = was_below and is_above
        below[i] = was_above and is_below
        was_below = is_below
        was_above = is_above


@njit(cache=True)
def band_breakouts(
    close: np.ndarray, mid: np.ndarray, width: np.ndarray, k: float, entries: np.ndarray, exits: np.ndarray
) -> None:
    """Entries: ``close`` crosses above ``mid + k * width``; exits: it crosses below ``mid``."""
    entries[0] = False
    exits[0] = False
    was_under_band = close[0] < mid[0] + k * width[0]
    was_over_mid = close[0] > mid[0]
    for i in range(1, close.shape[0]):
        upper = mid[i] + k * width[i]
        entries[i] = was_under_band and close[i] > upper
        exits[i] = was_over_mid and close[i] < mid[i]
        was_under_band = close[i] < upper
        was_over_mid = close[i] > mid[i]


@njit(cache=True)
def level_signals(x: np.ndarray, lower: float, upper: float, entries: np.ndarray, exits: np.ndarray) -> None:
    """``entries = x < lower``, ``exits = x > upper`` (NaN: neither), written in place."""
    for i in range(x.shape[0]):
        entries[i] = x[i] < lower
        exits[i] = x[i] > upper
