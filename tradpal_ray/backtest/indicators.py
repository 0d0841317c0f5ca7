"""Causal indicators on float64 arrays: value ``i`` depends on inputs ``0..i`` only.

Semantics follow pandas so that results agree bit for bit with backtesting.py examples:
``sma`` is ``rolling(n).mean()`` (NaN until the window is full), ``ema`` is
``ewm(span=n, adjust=False)`` with the first ``n - 1`` values NaN. A comparison with NaN is
False, so a warming-up indicator never signals.

Sweeps call the same strategy function once per parameter combination; inside
:func:`indicator_cache` each distinct ``(indicator, bars column, arguments)`` is computed
once and reused (e.g. one SMA per window for a whole fast x slow grid).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import pandas as pd

F = TypeVar("F", bound=Callable[..., np.ndarray])

_Cache = tuple[frozenset[int], dict[tuple[Any, ...], np.ndarray]]
_CACHE: contextvars.ContextVar[_Cache | None] = contextvars.ContextVar("tradpal_indicator_cache", default=None)


@contextmanager
def indicator_cache(*inputs: np.ndarray, store: dict[tuple[Any, ...], np.ndarray] | None = None
                    ) -> Iterator[dict[tuple[Any, ...], np.ndarray]]:
    """Within this block, cached indicators of the ``inputs`` arrays are computed once per arguments.

    Only calls whose array arguments are all among ``inputs`` (the bars' columns, alive for
    the whole block) are memoized; an indicator of a derived array is computed each time,
    so the cache never grows with the number of parameter combinations. ``store``: the
    results of an earlier block on the same ``inputs`` (kept alive meanwhile), to reuse them.
    """
    store = {} if store is None else store
    token = _CACHE.set((frozenset(id(a) for a in inputs), store))
    try:
        yield store
    finally:
        _CACHE.reset(token)


def cached(func: F) -> F:
    """Memoize an indicator on (function, input array identity, other arguments) inside :func:`indicator_cache`."""

    @functools.wraps(func)
    def wrapper(*args: Any) -> np.ndarray:
        active = _CACHE.get()
        if active is None:
            return func(*args)
        inputs, store = active
        arrays = [id(a) for a in args if isinstance(a, np.ndarray)]
        if not all(i in inputs for i in arrays):
            return func(*args)
        # The function object itself, not its name: a user's ``sma`` or two closures of one
        # factory share a ``__qualname__`` but must never share results.
        key = (func, *(("#", id(a)) if isinstance(a, np.ndarray) else a for a in args))
        hit = store.get(key)
        if hit is None:
            hit = store[key] = func(*args)
        return hit

    return wrapper  # type: ignore[return-value]


@cached
def sma(values: np.ndarray, n: int) -> np.ndarray:
    """Simple moving average, exactly ``pd.Series(values).rolling(n).mean()``.

    pandas' own algorithm run in numba (:func:`~tradpal_ray.backtest._kernels.rolling_mean`):
    the same bits, ~6x faster on short series, where pandas' per-call overhead dominates.
    """
    from tradpal_ray.backtest._kernels import rolling_mean

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"window must be an integer 0 or greater, got {n!r}")
    return rolling_mean(np.ascontiguousarray(values, dtype=np.float64), int(n))


@cached
def rolling_std(values: np.ndarray, n: int) -> np.ndarray:
    """Population standard deviation over ``n`` bars (``rolling(n).std(ddof=0)``)."""
    return pd.Series(values, copy=False).rolling(n).std(ddof=0).to_numpy()


@cached
def ema(values: np.ndarray, n: int) -> np.ndarray:
    """Exponential moving average, ``ewm(span=n, adjust=False, min_periods=n).mean()``.

    Leading NaNs in ``values`` (e.g. an EMA of an EMA) are skipped, as pandas does: pandas'
    own loop run in numba (:func:`~tradpal_ray.backtest._kernels.ewm_mean`), the same bits.
    """
    from tradpal_ray.backtest._kernels import ewm_mean

    if n < 1:
        raise ValueError(f"span must satisfy: span >= 1, got {n!r}")
    return ewm_mean(np.ascontiguousarray(values, dtype=np.float64), (n - 1) / 2, max(int(n), 1))


@cached
def rsi(values: np.ndarray, n: int) -> np.ndarray:
    """Wilder's RSI in [0, 100]: smoothed gains / losses with ``alpha = 1/n``; NaN for ``n`` bars."""
    delta = pd.Series(values, copy=False).diff()
    gain = delta.clip(lower=0).ewm(alpha=1.0 / n, adjust=False, min_periods=n).mean()
    loss = (-delta).clip(lower=0).ewm(alpha=1.0 / n, adjust=False, min_periods=n).mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        # No losses in the window: gain / 0 = inf and 100 - 100 / inf = 100.
        return (100.0 - 100.0 / (1.0 + gain / loss)).to_numpy()


def cross_above(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """True at ``i`` when ``a[i-1] < b[i-1] and a[i] > b[i]`` (``backtesting.lib.crossover``).

    ``b`` may be a number (a level); NaN on either side at ``i-1`` or ``i`` is no signal.
    """
    if not isinstance(b, np.ndarray):
        b = np.full(len(a), b, dtype=np.float64)
    out = np.zeros(len(a), dtype=np.bool_)
    np.logical_and(a[:-1] < b[:-1], a[1:] > b[1:], out=out[1:])
    return out


def cross_below(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """True at ``i`` when ``a`` crosses strictly below ``b`` between bars ``i-1`` and ``i``."""
    if not isinstance(b, np.ndarray):
        b = np.full(len(a), b, dtype=np.float64)
    return cross_above(b, a)
