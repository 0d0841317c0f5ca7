"""The trader's pure core: closed candles in, the engine's position targets and orders out. No Ray.

:class:`TraderCore` keeps a bounded rolling window of closed candles and, on each new one,
computes the strategy's signals on that window and takes the last bar's: the same signal
``backtest()`` computes from the whole history, as long as the window covers the
strategy's warm-up (:func:`signal_window`). The target follows the engine's rule
(:func:`~tradpal_ray.backtest.engine.next_target`: signal on the close, entry/exit cancel,
long or longshort), to be filled at the next candle's open.

:class:`PaperTrader` joins a core, a :class:`~tradpal_ray.trading._paper.PaperBroker` and a
:class:`~tradpal_ray.trading._risk.RiskGuard`: one :meth:`PaperTrader.on_candle` per closed
candle gives the fills of the previous decision and the next order.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tradpal_ray.backtest.data import Bars
from tradpal_ray.backtest.engine import NO_CHANGE, BacktestConfig, next_target
from tradpal_ray.backtest.indicators import indicator_cache
from tradpal_ray.backtest.strategies import Strategy, get_strategy
from tradpal_ray.market.schema import timeframe_ms
from tradpal_ray.trading._models import client_order_id
from tradpal_ray.trading._paper import Candle, Execution, PaperBroker
from tradpal_ray.trading._risk import RiskGuard, RiskLimits

WINDOW_FACTOR = 10
"""The rolling window is this many times the longest window parameter ..."""
MIN_WINDOW = 500
"""... and at least this many candles: recursive indicators (EMA, RSI) then agree with the whole history."""
GRID_FACTOR = 4
"""The signal index is sliced from one built ahead for this many windows of candles on the timeframe's grid."""
_SIDE_OF_TARGET = {1: "buy", -1: "sell"}
_US_PER_MS = 1_000
_UTC_US = pd.DatetimeTZDtype("us", "UTC")  # the index dtype backtest() gives strategies; built without to_datetime (8x faster)


def signal_window(strat: Strategy, values: Mapping[str, Any]) -> int:
    """Candles kept to compute a signal: ``max(WINDOW_FACTOR x longest window, MIN_WINDOW)``.

    ``tradpal-ray check-strategy`` measures a strategy's real warm-up; pass a larger window
    to :class:`TraderCore` when it reports more.
    """
    longest = max((int(values[name]) for name, p in strat.params.items() if p.window), default=1)
    return max(WINDOW_FACTOR * longest, MIN_WINDOW)


@dataclass(frozen=True)
class OrderIntent:
    """An order the core decided on at a candle's close, to fill at the next candle's open."""

    client_order_id: str
    symbol: str
    side: str
    target: int
    """The position asked for: 1 long, -1 short, 0 flat."""
    bar_time_ms: int
    """Open time of the candle it is to fill in."""
    estimated_units: float
    """Units at the deciding candle's close price (the fill sizes at the open)."""


class TraderCore:
    """Strategy signals on a rolling window of closed candles, turned into position targets (see the module)."""

    def __init__(self, name: str, symbol: str, timeframe: str, strategy: str | Strategy,
                 params: Mapping[str, Any] | None = None, config: BacktestConfig | None = None,
                 *, window: int | None = None, shared: SharedSignals | None = None) -> None:
        self.name = name
        self.symbol = symbol
        self.step_ms = timeframe_ms(timeframe)
        self.strategy = get_strategy(strategy)
        self.params = self.strategy.resolve(params or {})
        self.config = config or BacktestConfig()
        self.window = window or signal_window(self.strategy, self.params)
        self.shared = shared
        """Where cores of one process share the newest candle's bars, indicators and signals (None: alone)."""
        self.signal_key = _signal_key(self.strategy, self.params)
        self._direction = 1 if self.config.direction == "longshort" else 0
        self._times = np.empty(0, dtype=np.int64)
        """Open times (ms) of the window's candles, then free room: the window is ``[:_size]``."""
        self._ohlcv = np.empty((5, 0))
        """OHLCV rows beside :attr:`_times`."""
        self._size = 0
        self._grid_ms = np.empty(0, dtype=np.int64)
        self._grid = pd.DatetimeIndex([], dtype=_UTC_US, name="time")

    @property
    def last_time_ms(self) -> int | None:
        """Open time of the newest candle seen."""
        return int(self._times[self._size - 1]) if self._size else None

    def warm_up(self, history: pd.DataFrame) -> None:
        """Take closed candles (an OHLCV frame indexed by UTC time, e.g. from the candle store) without deciding."""
        if not len(history):
            return
        times = history.index.as_unit("ms").asi8
        ohlcv = np.vstack([history[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close", "volume")])
        keep = times > (self.last_time_ms if self.last_time_ms is not None else np.iinfo(np.int64).min)
        self._append(times[keep], ohlcv[:, keep])

    def _append(self, times: np.ndarray, ohlcv: np.ndarray) -> None:
        """Add candles after the window, in place (see :meth:`_room`)."""
        start = self._room(len(times))
        self._times[start:start + len(times)] = times
        self._ohlcv[:, start:start + len(times)] = ohlcv
        self._size = start + len(times)

    def _append_one(self, candle: Candle) -> None:
        start = self._room(1)
        self._times[start] = candle.time_ms
        self._ohlcv[:, start] = (candle.open, candle.high, candle.low, candle.close, candle.volume)
        self._size = start + 1

    def _room(self, count: int) -> int:
        """Where ``count`` more candles go. When the buffer is full the newest ``window`` candles move to a
        new one of twice that: amortised O(1) per candle, and views handed out before (a shared
        window's bars) never change under their holder."""
        size = self._size
        if size + count > len(self._times):
            keep = min(size, self.window)
            room = max(2 * self.window, keep + count)
            moved_times, moved_ohlcv = np.empty(room, dtype=np.int64), np.empty((5, room))
            moved_times[:keep], moved_ohlcv[:, :keep] = self._times[size - keep:size], self._ohlcv[:, size - keep:size]
            self._times, self._ohlcv, self._size = moved_times, moved_ohlcv, keep
        return self._size

    def signal(self) -> tuple[bool, bool]:
        """(entry, exit) of the newest candle, computed on the window (or taken from :attr:`shared`)."""
        end = self._size
        start = max(end - self.window, 0)
        times, ohlcv = self._times[start:end], self._ohlcv[:, start:end]
        if self.shared is not None:
            return self.shared.signal(self, times, ohlcv)
        return self.evaluate(self.bars(times, ohlcv))

    def bars(self, times: np.ndarray, ohlcv: np.ndarray) -> Bars:
        """The strategy's view of a window: ``times`` (ms) and its OHLCV rows."""
        return Bars(index=self._index(times), open=np.ascontiguousarray(ohlcv[0]), high=np.ascontiguousarray(ohlcv[1]),
                    low=np.ascontiguousarray(ohlcv[2]), close=np.ascontiguousarray(ohlcv[3]),
                    volume=np.ascontiguousarray(ohlcv[4]), day_end=np.zeros(len(times), dtype=np.bool_))

    def evaluate(self, bars: Bars) -> tuple[bool, bool]:
        """(entry, exit) of the strategy on ``bars``' last bar."""
        entries, exits = self.strategy.signals(bars, self.params)
        return bool(entries[-1]), bool(exits[-1])

    def _index(self, times: np.ndarray) -> pd.DatetimeIndex:
        """The UTC index of ``times``: a slice of an index built ahead on the timeframe's grid while the
        candles follow it (slicing costs a third of building), else built for them."""
        k0, off = divmod(int(times[0]) - self._grid_ms[0], self.step_ms) if len(self._grid_ms) else (0, 1)
        if off == 0 and k0 >= 0 and np.array_equal(self._grid_ms[k0:k0 + len(times)], times):
            return self._grid[k0:k0 + len(times)]
        self._grid_ms = int(times[0]) + self.step_ms * np.arange(GRID_FACTOR * self.window, dtype=np.int64)
        self._grid = pd.DatetimeIndex((self._grid_ms * _US_PER_MS).view("M8[us]"), dtype=_UTC_US, name="time")
        if np.array_equal(self._grid_ms[:len(times)], times):
            return self._grid[:len(times)]
        return pd.DatetimeIndex((times * _US_PER_MS).view("M8[us]"), dtype=_UTC_US, name="time")  # a gap in the window

    def on_candle(self, candle: Candle, units: float) -> int:
        """The position target (-1, 0, 1 or NO_CHANGE) after this closed candle, holding ``units``."""
        if self.last_time_ms is not None and candle.time_ms <= self.last_time_ms:
            return NO_CHANGE  # already seen: exactly once, even if a source repeats it
        self._append_one(candle)
        return self.target(units)

    def target(self, units: float) -> int:
        """The position target the newest candle's signal asks for, holding ``units`` (the engine's rule)."""
        entry, exit_ = self.signal()
        return int(next_target(float(units), entry, exit_, self._direction))

    def order(self, target: int, candle: Candle, units: float, cash: float) -> OrderIntent | None:
        """The order that moves ``units`` to ``target`` at the next candle's open, or None when there is none.

        Its client order id is deterministic (trader, symbol, the candle it fills in, side), so
        a restarted trader decides the same order under the same id and it is recorded once.
        """
        if target == NO_CHANGE:
            return None
        side = _SIDE_OF_TARGET.get(target) or ("sell" if units > 0 else "buy")
        opening = 0.0 if target == 0 else estimate_units(self.config, cash, candle.close)
        fill_time = candle.time_ms + self.step_ms
        return OrderIntent(client_order_id(self.name, self.symbol, fill_time, side), self.symbol, side, target, fill_time,
                           abs(units) + opening)


def _signal_key(strat: Strategy, params: Mapping[str, Any]) -> Hashable | None:
    """What makes two cores' signals on the same bars equal: the strategy's function and parameter
    values (None when a value is unhashable: that core's signals are never shared)."""
    try:
        key = (strat.func, tuple(sorted(params.items())))
        hash(key)
    except TypeError:
        return None
    return key


@dataclass
class _SharedWindow:
    """One window's bars and what was computed on them for the newest candle."""

    times: np.ndarray
    ohlcv: np.ndarray
    bars: Bars
    indicators: dict[tuple[Any, ...], np.ndarray] = field(default_factory=dict)
    signals: dict[Hashable, tuple[bool, bool]] = field(default_factory=dict)


class SharedSignals:
    """The newest candle's signals, shared by the trader cores of one process (a trader host).

    Cores whose windows hold the same candles (same symbol, timeframe and length, compared
    bit for bit) evaluate the strategy on one :class:`Bars`: each cached indicator
    (:func:`~tradpal_ray.backtest.indicators.indicator_cache`) is computed once for all of
    them, and each (strategy, parameters) once. The results are those a core computes alone;
    only the work is shared. One entry per series and window length: the newest candle's.
    """

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int, int], _SharedWindow] = {}

    def signal(self, core: TraderCore, times: np.ndarray, ohlcv: np.ndarray) -> tuple[bool, bool]:
        """``core``'s (entry, exit) on its window ``times`` / ``ohlcv`` (see the class)."""
        key = (core.symbol, core.step_ms, len(times))
        window = self._windows.get(key)
        if window is None or not (window.times[-1] == times[-1] and window.times.tobytes() == times.tobytes()
                                  and window.ohlcv.tobytes() == ohlcv.tobytes()):  # bit for bit: cheaper than by value
            window = self._windows[key] = _SharedWindow(times, ohlcv, core.bars(times, ohlcv))
        found = window.signals.get(core.signal_key) if core.signal_key is not None else None
        if found is None:
            bars = window.bars
            with indicator_cache(bars.open, bars.high, bars.low, bars.close, bars.volume, store=window.indicators):
                found = core.evaluate(bars)
            if core.signal_key is not None:
                window.signals[core.signal_key] = found
        return found


def estimate_units(config: BacktestConfig, cash: float, price: float) -> float:
    """Units the config's sizing buys with ``cash`` at ``price``, fees included, floored to the size unit."""
    fee = config.fee
    budget = cash * config.size_fraction
    if config.size_notional is not None:
        budget = min(budget, config.size_notional)
    return float(budget / (price * (1 + fee)) // config.size_unit * config.size_unit)


@dataclass(frozen=True)
class CandleOutcome:
    """What one closed candle did to a paper trader: fills of the previous order, the next order, a halt."""

    time_ms: int
    executions: tuple[Execution, ...]
    filled_order: OrderIntent | None
    """The order these executions (other than stops) filled."""
    order: OrderIntent | None
    equity: float
    cash: float
    halt: str | None = None
    """Why the trader halted on this candle (a risk limit), or None."""


@dataclass
class PaperTrader:
    """A :class:`TraderCore`, its :class:`PaperBroker` and :class:`RiskGuard`, stepped per closed candle."""

    core: TraderCore
    broker: PaperBroker
    risk: RiskGuard = field(default_factory=lambda: RiskGuard(RiskLimits()))
    pending: OrderIntent | None = None
    halted: str | None = None

    @classmethod
    def new(cls, core: TraderCore, limits: RiskLimits | None = None) -> PaperTrader:
        """A flat paper account with the core's config."""
        return cls(core, PaperBroker(core.config), RiskGuard(limits or RiskLimits()))

    def on_candle(self, candle: Candle, now_ms: int | None = None) -> CandleOutcome:
        """Fill the pending order at the candle's open (and stops in it), then decide the next order."""
        if self.core.last_time_ms is not None and candle.time_ms <= self.core.last_time_ms:
            return CandleOutcome(candle.time_ms, (), None, None, self.broker.equity, self.broker.cash)
        filled = self.pending
        target = NO_CHANGE if filled is None else filled.target
        executions = tuple(self.broker.on_candle(target, candle))
        self.pending = None
        target = self.core.on_candle(candle, self.broker.units)
        halt = self.risk.check_equity(candle.time_ms, self.broker.equity)
        order = None if self.halted or halt else self.core.order(target, candle, self.broker.units, self.broker.cash)
        if order is not None:
            notional = 0.0 if order.target == 0 else estimate_units(self.core.config, self.broker.cash, candle.close) * candle.close
            halt = self.risk.check_order(int(time.time() * 1000) if now_ms is None else now_ms, notional)
            if halt:
                order = None
        if halt and not self.halted:
            self.halted = halt
        self.pending = order
        return CandleOutcome(candle.time_ms, executions, filled, order, self.broker.equity, self.broker.cash, halt)
