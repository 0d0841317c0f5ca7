"""Strategies: plain functions from bars and parameters to boolean entry/exit arrays.

A strategy sees the whole :class:`~tradpal_ray.backtest.data.Bars` but must decide signal
``i`` from bars ``0..i`` only (the indicators here are causal). Register one with
:func:`strategy`, declaring each parameter's type, default and limits; the engine then
validates user parameters with clear :class:`~tradpal_ray.errors.ConfigError` messages::

    from tradpal_ray.backtest import Param, cross_above, cross_below, sma, strategy

    @strategy(n=Param(int, 20, min=2, window=True))
    def close_sma_cross(bars, n):
        \"\"\"Long when the close crosses above its n-bar SMA, out when it crosses below.\"\"\"
        mean = sma(bars.close, n)
        return cross_above(bars.close, mean), cross_below(bars.close, mean)

    backtest(frame, "close_sma_cross", {"n": 50})

Use the indicators from :mod:`tradpal_ray.backtest.indicators` (or wrap your own with
``@cached``) so that a sweep computes each distinct window once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tradpal_ray.backtest import _batch
from tradpal_ray.backtest.indicators import (
    cross_above,
    cross_below,
    ema,
    rolling_std,
    rsi,
    sma,
)
from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    from tradpal_ray.backtest.data import Bars

Signals = tuple[np.ndarray, np.ndarray]
TOO_LONG = "window longer than the series"
TOO_SHORT = "too short for a signal after warm-up"
"""Why a parameter combination does not fit the data (see :meth:`Strategy.unfit`)."""
BatchSignals = Callable[["Bars", dict[str, np.ndarray]], Signals]
"""Parameter arrays (one value per combination) in, 2-D (combinations x bars) entries and exits out."""
Rule = tuple[Callable[[Mapping[str, Any]], bool], str]


@dataclass(frozen=True)
class Param:
    """A strategy parameter: its type (int or float), default and inclusive limits.

    ``window=True`` marks a look-back length: it must not exceed the number of bars.
    """

    type: type
    default: int | float
    min: float | None = None
    max: float | None = None
    window: bool = False
    help: str = ""

    def coerce(self, name: str, value: Any) -> int | float:
        """``value`` as this parameter's type, within its limits, or a ConfigError."""
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"parameter {name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"parameter {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"parameter {name} must be finite, got {value}")
        if self.type is int:
            if float(value) != int(value):
                raise ConfigError(f"parameter {name} must be an integer, got {value}")
            value = int(value)
        else:
            value = float(value)
        if self.min is not None and value < self.min:
            raise ConfigError(f"parameter {name} must be >= {self.min:g}, got {value}")
        if self.max is not None and value > self.max:
            raise ConfigError(f"parameter {name} must be <= {self.max:g}, got {value}")
        return value


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its function, declared parameters and cross-parameter rules."""

    name: str
    func: Callable[..., Signals]
    params: dict[str, Param]
    rules: tuple[Rule, ...] = ()
    doc: str = ""
    origin: str = ""
    """Where it was defined, ``module:qualname (file:line)``: named in duplicate-name errors."""
    batch: BatchSignals | None = None
    """Optional: the signals of many combinations at once, bit-identical to ``func``; sweeps use it."""

    def resolve(self, given: Mapping[str, Any], *, n_bars: int | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``given``, coerced and checked; ConfigError on any problem.

        With ``n_bars``, a window parameter longer than the series is an error too.
        """
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ConfigError(
                f"unknown parameter {', '.join(unknown)} for strategy {self.name}; "
                f"valid: {', '.join(self.params) or 'none'}"
            )
        values = {name: p.coerce(name, given.get(name, p.default)) for name, p in self.params.items()}
        for check, message in self.rules:
            if not check(values):
                raise ConfigError(f"{self.name}: {message} (got {_show(values)})")
        if n_bars is not None and values and (
            problem := next((f"{n}={values[n]} needs at least {values[n]} bars, got {n_bars}"
                             for n, p in self.params.items() if p.window and values[n] > n_bars), None)
        ):
            raise ConfigError(f"{self.name}: {problem}")
        return values

    def unfit(self, values: Mapping[str, Any], n_bars: int) -> str | None:
        """Why ``values`` cannot trade on ``n_bars`` bars (:data:`TOO_LONG` or :data:`TOO_SHORT`), or None.

        A window of ``w`` bars gives its first value at bar ``w - 1``, a crossover one bar
        later, and its fill one bar after that: ``w > n_bars - 2`` leaves no bar to trade.
        """
        longest = max((values[name] for name, p in self.params.items() if p.window), default=0)
        if longest > n_bars:
            return TOO_LONG
        if longest > n_bars - 2:
            return TOO_SHORT
        return None

    def window_problem(self, values: Mapping[str, Any], n_bars: int) -> str | None:
        """:meth:`unfit` as a sentence naming the parameter, or None."""
        reason = self.unfit(values, n_bars)
        if reason is None:
            return None
        name = max((n for n, p in self.params.items() if p.window), key=lambda n: values[n])
        return f"{reason}: {name}={values[name]} on {n_bars} bars"

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: name, doc line, origin and each parameter's type, default and limits."""
        return {
            "name": self.name,
            "doc": self.doc.splitlines()[0] if self.doc else "",
            "origin": self.origin,
            "params": {
                name: {"type": p.type.__name__, "default": p.default, "min": p.min, "max": p.max,
                       "window": p.window, "help": p.help}
                for name, p in self.params.items()
            },
        }

    def allows(self, values: Mapping[str, Any]) -> bool:
        """True when ``values`` (all parameters, already typed) satisfies the strategy's rules."""
        return all(check(values) for check, _ in self.rules)

    def signals(self, bars: Bars, values: Mapping[str, Any]) -> Signals:
        """Entry and exit arrays for resolved ``values``, checked for shape."""
        entries, exits = self.func(bars, **values)
        n = len(bars)
        out = []
        for label, array in (("entries", entries), ("exits", exits)):
            array = np.ascontiguousarray(np.asarray(array, dtype=np.bool_))
            if array.shape != (n,):
                raise ConfigError(f"strategy {self.name} returned {label} of shape {array.shape}, expected ({n},)")
            out.append(array)
        return out[0], out[1]


_REGISTRY: dict[str, Strategy] = {}


def _show(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def strategy(
    name: str | None = None, *, rules: tuple[Rule, ...] = (), batch: BatchSignals | None = None, **params: Param
) -> Callable[[Callable[..., Signals]], Callable[..., Signals]]:
    """Register the decorated function as a strategy with parameters ``params``.

    ``rules`` are ``(predicate(values) -> bool, message)`` pairs across parameters, e.g.
    ``(lambda p: p["fast"] < p["slow"], "fast must be below slow")``. The function is
    returned unchanged, so it stays callable (and testable) as a plain function. ``batch``
    optionally computes many combinations' signals at once (see :attr:`Strategy.batch`).
    """

    def register(func: Callable[..., Signals]) -> Callable[..., Signals]:
        key = name or func.__name__
        found = Strategy(key, func, dict(params), tuple(rules), (func.__doc__ or "").strip(), _origin(func), batch)
        existing = _REGISTRY.get(key)
        if existing is not None and existing.origin != found.origin:
            raise ConfigError(f"strategy name {key!r} registered twice: at {existing.origin} and at {found.origin}")
        _REGISTRY[key] = found  # the same definition executed again (a module reloaded) replaces itself
        func.__tradpal_strategy__ = found  # type: ignore[attr-defined]
        return func

    return register


def _origin(func: Callable[..., Any]) -> str:
    code = getattr(func, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code else ""
    return f"{func.__module__}:{func.__qualname__}{where}"


def strategy_from_function(func: Callable[..., Signals]) -> Strategy:
    """A strategy for an undecorated function ``f(bars, **params)``: parameters from its defaults.

    Each parameter after ``bars`` needs an int or float default, which gives its type; a
    parameter whose name says it is a window (``window``, ``fast``, ``slow``, ``n``, ``*_window``,
    ``period``, ``span``) is checked against the series length.
    """
    params: dict[str, Param] = {}
    for index, (pname, p) in enumerate(inspect.signature(func).parameters.items()):
        if index == 0:
            continue
        default = p.default
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise ConfigError(
                f"strategy {func.__name__}: parameter {pname} needs an int or float default "
                "(or declare it with @strategy(...))"
            )
        is_window = isinstance(default, int) and (pname in _WINDOW_NAMES or pname.endswith("_window"))
        params[pname] = Param(type(default), default, min=1 if is_window else None, window=is_window)
    return Strategy(func.__name__, func, params, (), (func.__doc__ or "").strip(), _origin(func))


_WINDOW_NAMES = frozenset({"window", "fast", "slow", "n", "period", "span", "lookback", "signal"})


def registered(name: str) -> Strategy:
    """The strategy registered as ``name``; ConfigError listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; known: {', '.join(sorted(_REGISTRY))} "
            "(or give module.path:function or path/to/file.py:function)"
        ) from None


def get_strategy(name: Any) -> Strategy:
    """The strategy for a registered name, a reference (``module:func``, ``file.py:func``), or a Strategy."""
    if isinstance(name, Strategy):
        return name
    from tradpal_ray.backtest._references import resolve_strategy

    return resolve_strategy(name)


def strategies() -> dict[str, Strategy]:
    """All registered strategies by name."""
    return dict(_REGISTRY)


_FAST_BELOW_SLOW: Rule = (lambda p: p["fast"] < p["slow"], "fast must be below slow")


@strategy(
    fast=Param(int, 10, min=1, window=True, help="fast SMA window"),
    slow=Param(int, 30, min=2, window=True, help="slow SMA window"),
    rules=(_FAST_BELOW_SLOW,),
    batch=_batch.sma_cross,
)
def sma_cross(bars: Bars, fast: int, slow: int) -> Signals:
    """Long when SMA(fast) of closes crosses above SMA(slow); out when it crosses below."""
    f, s = sma(bars.close, fast), sma(bars.close, slow)
    return cross_above(f, s), cross_below(f, s)


@strategy(
    fast=Param(int, 12, min=1, window=True, help="fast EMA span"),
    slow=Param(int, 26, min=2, window=True, help="slow EMA span"),
    rules=(_FAST_BELOW_SLOW,),
    batch=_batch.ema_cross,
)
def ema_cross(bars: Bars, fast: int, slow: int) -> Signals:
    """Long when EMA(fast) crosses above EMA(slow); out when it crosses below."""
    f, s = ema(bars.close, fast), ema(bars.close, slow)
    return cross_above(f, s), cross_below(f, s)


@strategy(
    window=Param(int, 14, min=2, window=True, help="RSI period"),
    lower=Param(float, 30.0, min=0.0, max=100.0, help="oversold level: enter below it"),
    upper=Param(float, 70.0, min=0.0, max=100.0, help="overbought level: exit above it"),
    rules=((lambda p: p["lower"] < p["upper"], "lower must be below upper"),),
    batch=_batch.rsi_reversion,
)
def rsi_reversion(bars: Bars, window: int, lower: float, upper: float) -> Signals:
    """Mean reversion: long while RSI(window) is below ``lower``, out once it is above ``upper``."""
    r = rsi(bars.close, window)
    with np.errstate(invalid="ignore"):
        return r < lower, r > upper


@strategy(
    window=Param(int, 20, min=2, window=True, help="band window"),
    k=Param(float, 2.0, min=0.0, help="band width in standard deviations"),
    batch=_batch.bollinger_breakout,
)
def bollinger_breakout(bars: Bars, window: int, k: float) -> Signals:
    """Long when the close crosses above the upper band (SMA + k std); out below the SMA."""
    mid = sma(bars.close, window)
    upper = mid + k * rolling_std(bars.close, window)
    return cross_above(bars.close, upper), cross_below(bars.close, mid)


@strategy(
    fast=Param(int, 12, min=1, window=True, help="fast EMA span"),
    slow=Param(int, 26, min=2, window=True, help="slow EMA span"),
    signal=Param(int, 9, min=1, window=True, help="signal-line EMA span"),
    rules=(_FAST_BELOW_SLOW,),
    batch=_batch.macd,
)
def macd(bars: Bars, fast: int, slow: int, signal: int) -> Signals:
    """Long when MACD (EMA fast - EMA slow) crosses above its signal EMA; out when below."""
    line = ema(bars.close, fast) - ema(bars.close, slow)
    trigger = ema(line, signal)
    return cross_above(line, trigger), cross_below(line, trigger)
