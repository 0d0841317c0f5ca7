"""The paper broker: fills a trader's orders on closed candles with the backtest engine's own rules.

Per candle it runs the engine's jitted :func:`~tradpal_ray.backtest.engine.step_bar` (the
kernel's per-bar step) on an account state it keeps between candles: the pending target fills at the candle's open,
then stop-loss / take-profit inside it, then the mark to the close. There is no second copy of
the fill rules, so a paper trader fills exactly as ``backtest()`` does on the same candles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tradpal_ray.backtest.engine import (
    EXIT_REASONS,
    ST_CASH,
    ST_DEAD,
    ST_ENTRY_FEE,
    ST_ENTRY_PX,
    ST_POS,
    ST_ROWS,
    ST_STOP_PX,
    ST_TAKE_PX,
    ST_UNFILLED,
    TRADE_RECORD,
    BacktestConfig,
    close_position,
    new_accumulators,
    new_state,
    step_bar,
)

_ENTRY_BAR, _EXIT_BAR, _ENTRY_PX, _EXIT_PX, _UNITS, _ENTRY_FEE, _EXIT_FEE, _PNL, _REASON = (
    TRADE_RECORD.index(name) for name in
    ("entry_bar", "exit_bar", "entry_price", "exit_price", "units", "entry_fee", "exit_fee", "pnl", "reason")
)


@dataclass(frozen=True)
class Candle:
    """One closed candle: open time (ms, UTC) and OHLCV."""

    time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


@dataclass(frozen=True)
class Execution:
    """One fill the paper broker made: ``opens`` a position or closes one, at ``price`` with ``fee`` (quote)."""

    time_ms: int
    """Open time of the candle it filled in."""
    side: str
    """``buy`` or ``sell``."""
    units: float
    """Positive quantity traded."""
    price: float
    fee: float
    reason: str
    """``signal``, ``stop_loss``, ``take_profit`` or ``liquidation``."""
    opens: bool


@dataclass(frozen=True)
class PaperTrade:
    """A round trip the paper broker closed, with the fields of ``BacktestResult.trades``."""

    entry_time_ms: int
    exit_time_ms: int
    entry_price: float
    exit_price: float
    units: float
    """Negative for a short."""
    entry_fee: float
    exit_fee: float
    pnl: float
    exit_reason: str


class PaperBroker:
    """One symbol's paper account (the engine's state array) filled candle by candle.

    ``on_candle(target, candle)`` moves the position to ``target`` (-1, 0, 1, or
    :data:`~tradpal_ray.backtest.engine.NO_CHANGE`) at the candle's open, checks the stops
    inside it, marks to its close and returns the executions in the order they happened.
    """

    def __init__(self, config: BacktestConfig) -> None:
        self.config = config
        (_, self._fee, self._unit, self._frac, self._notional, self._slip, self._sl, self._tp, _, _) = config.kernel_args()
        self.state = new_state(float(config.cash))
        self.acc = new_accumulators()
        self._rows = np.full((2, len(TRADE_RECORD)), math.nan)
        self._entry_time_ms = -1
        self.trades: list[PaperTrade] = []
        self.equity = float(config.cash)

    @classmethod
    def resume(cls, config: BacktestConfig, *, units: float, entry_price: float, entry_fee: float, entry_time_ms: int,
               realized_pnl: float) -> PaperBroker:
        """The account after a restart: cash = starting cash + realized PnL - the open position's entry fee."""
        broker = cls(config)
        broker.state[ST_CASH] = float(config.cash) + realized_pnl - (entry_fee if units else 0.0)
        if units:
            broker.state[ST_POS] = units
            broker.state[ST_ENTRY_PX] = entry_price
            broker.state[ST_ENTRY_FEE] = entry_fee
            broker._set_levels(units, entry_price)
            broker._entry_time_ms = entry_time_ms
        broker.equity = broker.state[ST_CASH]
        return broker

    def _set_levels(self, units: float, entry_price: float) -> None:
        # The levels fill_open sets at an entry (NaN distance: NaN level, never triggers).
        long = units > 0
        self.state[ST_STOP_PX] = entry_price * (1.0 - self._sl if long else 1.0 + self._sl)
        self.state[ST_TAKE_PX] = entry_price * (1.0 + self._tp if long else 1.0 - self._tp)

    @property
    def units(self) -> float:
        """The position: positive long, negative short, 0 flat."""
        return float(self.state[ST_POS])

    @property
    def cash(self) -> float:
        return float(self.state[ST_CASH])

    @property
    def entry_price(self) -> float:
        return float(self.state[ST_ENTRY_PX])

    @property
    def entry_fee(self) -> float:
        return float(self.state[ST_ENTRY_FEE])

    @property
    def entry_time_ms(self) -> int:
        """Open time of the candle the held position was entered in (-1 when none yet)."""
        return self._entry_time_ms

    @property
    def dead(self) -> bool:
        """True once equity reached 0 (shorts only): the account trades no more, as in the backtest."""
        return bool(self.state[ST_DEAD])

    @property
    def unfilled_entries(self) -> int:
        """Entries not filled because not one size unit was affordable."""
        return int(self.state[ST_UNFILLED])

    def on_candle(self, target: int, candle: Candle) -> list[Execution]:
        """Fill ``target`` at the candle's open, then stops inside it, then mark to its close (see the class)."""
        self._prepare_rows()
        self.equity = float(step_bar(self.state, target, 0, candle.open, candle.high, candle.low, candle.close,
                                     self._fee, self._unit, self._frac, self._notional, self._slip, self._sl,
                                     self._tp, self._rows, self.acc))
        return self._executions(candle.time_ms, int(self.state[ST_ROWS]))

    def flatten(self, candle: Candle) -> list[Execution]:
        """Close the position at ``candle``'s close, slippage against and the exit fee as any fill (``stop --flatten``)."""
        units = self.units
        if not units:
            return []
        self._prepare_rows()
        px = candle.close * (1.0 - self._slip) if units > 0 else candle.close * (1.0 + self._slip)
        close_position(self.state, 0, px, EXIT_REASONS.index("signal"), self._fee, self._rows, self.acc)
        self.equity = self.cash
        executions = self._executions(candle.time_ms, 1, reason="flatten")
        return executions

    def _prepare_rows(self) -> None:
        """Scratch trade rows for one step: row 0 is the open trade while a position is held, as in the kernel."""
        rows = self._rows
        rows[:] = math.nan
        held = self.state[ST_POS]
        if held:
            rows[0, _ENTRY_PX] = self.state[ST_ENTRY_PX]
            rows[0, _UNITS] = held
            rows[0, _ENTRY_FEE] = self.state[ST_ENTRY_FEE]
        self.state[ST_ROWS] = 1.0 if held else 0.0

    def _executions(self, time_ms: int, used: int, reason: str | None = None) -> list[Execution]:
        out: list[Execution] = []
        for row in self._rows[:used]:
            units = float(row[_UNITS])
            if row[_ENTRY_BAR] == 0:
                self._entry_time_ms = time_ms
                out.append(Execution(time_ms, "buy" if units > 0 else "sell", abs(units), float(row[_ENTRY_PX]),
                                     float(row[_ENTRY_FEE]), "signal", True))
            if row[_EXIT_BAR] == 0:
                why = reason or EXIT_REASONS[int(row[_REASON])]
                out.append(Execution(time_ms, "sell" if units > 0 else "buy", abs(units), float(row[_EXIT_PX]),
                                     float(row[_EXIT_FEE]), why, False))
                self.trades.append(PaperTrade(self._entry_time_ms, time_ms, float(row[_ENTRY_PX]), float(row[_EXIT_PX]),
                                              units, float(row[_ENTRY_FEE]), float(row[_EXIT_FEE]), float(row[_PNL]),
                                              why))
        return out


def trades_frame(trades: list[PaperTrade]) -> pd.DataFrame:
    """Closed paper trades with the columns (and dtypes) of ``BacktestResult.trades`` minus the bar numbers."""
    frame = pd.DataFrame(
        {
            "entry_time": pd.to_datetime([t.entry_time_ms for t in trades], unit="ms", utc=True),
            "exit_time": pd.to_datetime([t.exit_time_ms for t in trades], unit="ms", utc=True),
            "entry_price": np.array([t.entry_price for t in trades], dtype=float),
            "exit_price": np.array([t.exit_price for t in trades], dtype=float),
            "units": np.array([t.units for t in trades], dtype=float),
            "entry_fee": np.array([t.entry_fee for t in trades], dtype=float),
            "exit_fee": np.array([t.exit_fee for t in trades], dtype=float),
            "pnl": np.array([t.pnl for t in trades], dtype=float),
        }
    )
    frame["return_pct"] = frame["pnl"] / (frame["units"].abs() * frame["entry_price"]) * 100.0
    frame["exit_reason"] = pd.Categorical([t.exit_reason for t in trades], categories=[*EXIT_REASONS, "flatten"])
    return frame
