"""The backtest engine: one numba loop that fills signals at the next open and keeps the books.

Contract (``shared/reference/backtest-semantics.md``); the defaults reproduce backtesting.py
0.6.6 ``Backtest(data, S, cash=10_000, commission=0.001, trade_on_close=False,
exclusive_orders=False, finalize_trades=False)`` trade for trade:

- A signal on bar ``i`` (decided at its close) fills at ``open[i+1]``; a signal on the last
  bar never fills. An entry and an exit on the same bar cancel each other (no action).
- ``direction="long"``: an entry opens a long when flat, an exit closes it.
  ``direction="longshort"``: an entry closes a short and opens a long, an exit closes a
  long and opens a short (backtesting.py's ``position.close(); self.buy()/sell()``).
- Sizing, all-in: ``units = ((cash * (1 - eps)) / unit) // cost * unit`` with
  ``cost = price + (price * (1 - eps) * fee) / (1 - eps)``: the contract's
  ``floor(cash / (price * (1 + fee)) / unit) * unit`` written with backtesting.py's own
  operations (its default order size is ``1 - eps`` of equity), so the floor lands on the
  same integer as the peer's. Visible difference from the plain formula: when
  ``cash / cost`` is exactly an integer, one unit fewer is bought (10,000 at 100, no fee: 99).
  A fraction ``f`` of equity (``size_fraction``) replaces ``1 - eps`` by ``f`` in both places,
  which is backtesting.py's ``self.buy(size=f)``; a fixed quote amount (``size_notional``)
  spends ``min(notional, cash * (1 - eps))``, fees included. An entry that affords zero units
  is not filled and is counted in ``unfilled_entries`` (see :func:`sizing_warning`).
- Books are kept as backtesting.py does: ``cash`` drops by the entry fee only; equity is
  ``cash + (close * units - units * entry_price)``; closing adds
  ``units * (exit - entry) - exit fee``. Fee = ``|units| * price * fee`` on each side.
- Slippage (bps) moves every fill against the trader: buys at ``price * (1 + s)``, sells
  at ``price * (1 - s)``, stop and take-profit fills included.
- Stop-loss / take-profit (fractions of the entry fill price) are checked on every bar
  the position is held, including its entry bar, after that bar's open fill:
  stop first (pessimistic when both are inside one bar's range), then take-profit.
  A long's stop fills at ``min(open, stop)`` when ``low <= stop`` (a gap through the
  stop fills at the open), its take-profit at ``max(open, tp)`` when ``high >= tp``;
  mirrored for shorts. This is the order backtesting.py processes SL/TP orders in.
  An exit signal fills at the open *before* the stop is checked, as in backtesting.py when
  the strategy exits with ``position.close()``: ``Trade.close()`` puts its order at the
  front of the queue, ahead of the SL order (``_process_orders`` fills it at the open and
  the SL/TP orders die with the trade). Only a bare opposite order (``self.sell()`` while
  long, appended behind the SL) would let backtesting.py fill the stop first.
- A position open after the last bar is marked to the last close, no exit fee, and left
  out of the trade count, win rate and other trade statistics.
- If equity reaches 0 or less (possible only with shorts), the position is closed at
  that bar's close and the account stops trading with equity 0, as in backtesting.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

from tradpal_ray.backtest.data import Bars, prepare_bars
from tradpal_ray.backtest.metrics import KERNEL_STATS, MAX_RATIO, NOISE_FLOOR, metric_columns
from tradpal_ray.backtest.sizing import PositionSize
from tradpal_ray.backtest.strategies import get_strategy
from tradpal_ray.errors import ConfigError

DIRECTIONS = ("long", "longshort")
EXIT_REASONS = ("signal", "stop_loss", "take_profit", "open", "liquidation")
"""Why a trade ended; ``open`` marks the position still held after the last bar."""

_FULL = 1.0 - 2.220446049250313e-16  # backtesting.py's default order size (1 - eps)
_SIGNAL, _STOP, _TAKE, _OPEN, _LIQUIDATION = range(5)
_KERNEL_WRITES = (
    "trades", "final_equity", "return_pct", "cagr_pct", "max_drawdown_pct", "win_rate_pct", "profit_factor",
    "expectancy", "sharpe", "sortino", "exposure_pct", "fees", "best_trade_pct", "worst_trade_pct", "unfilled_entries",
    "sqn",
)  # every statistic simulate() writes, each at its position in the registry's KERNEL_STATS
if sorted(_KERNEL_WRITES) != sorted(KERNEL_STATS):
    raise ImportError(f"the kernel writes {sorted(_KERNEL_WRITES)} but KERNEL_STATS is {sorted(KERNEL_STATS)}")
_N_STATS = len(KERNEL_STATS)
(_S_TRADES, _S_FINAL_EQUITY, _S_RETURN, _S_CAGR, _S_MAX_DD, _S_WIN_RATE, _S_PROFIT_FACTOR, _S_EXPECTANCY, _S_SHARPE,
 _S_SORTINO, _S_EXPOSURE, _S_FEES, _S_BEST, _S_WORST, _S_UNFILLED, _S_SQN) = (KERNEL_STATS.index(name) for name in _KERNEL_WRITES)
TRADE_RECORD = ("entry_bar", "exit_bar", "entry_price", "exit_price", "units", "entry_fee", "exit_fee", "pnl", "reason")
"""The columns of the kernel's trade rows, in order (``reason`` indexes :data:`EXIT_REASONS`)."""
_T_ENTRY_BAR, _T_EXIT_BAR, _T_ENTRY_PX, _T_EXIT_PX, _T_UNITS, _T_ENTRY_FEE, _T_EXIT_FEE, _T_PNL, _T_REASON = range(9)
_T_FIELDS = len(TRADE_RECORD)


@dataclass(frozen=True)
class BacktestConfig:
    """Account and execution settings shared by every combination of a run or sweep."""

    cash: float = 10_000.0
    fee: float = 0.001
    """Fee rate per side on traded notional (0.001 = 0.1 %)."""
    size_unit: float = 1.0
    """Tradable increment: 1 for shares (backtesting.py), 1e-8 for BTC."""
    size_fraction: float = 1.0
    """Fraction of equity spent per entry, fees included, in (0, 1]; 1 = all-in."""
    size_notional: float | None = None
    """Fixed quote amount spent per entry (fees included, at most the cash) instead of a fraction."""
    slippage_bps: float = 0.0
    direction: str = "long"
    stop_loss: float | None = None
    """Stop distance as a fraction of the entry fill price (0.05 = 5 %); None = no stop."""
    take_profit: float | None = None
    """Take-profit distance as a fraction of the entry fill price; None = none."""
    periods_per_year: float = 365.0
    """Annualisation of the daily Sharpe/Sortino/CAGR: 365 (crypto), 252 (weekday markets)."""

    def __post_init__(self) -> None:
        checks = (
            (self.cash > 0, f"cash must be positive, got {self.cash}"),
            (0 <= self.fee < 0.1, f"fee must be in [0, 0.1), got {self.fee}"),
            (self.size_unit > 0, f"size unit must be positive, got {self.size_unit}"),
            (0 < self.size_fraction <= 1, f"size fraction must be in (0, 1], got {self.size_fraction}"),
            (self.size_notional is None or 0 < self.size_notional < math.inf,
             f"size notional must be a positive amount, got {self.size_notional}"),
            (self.size_notional is None or self.size_fraction == 1,
             "give a size fraction or a size notional, not both"),
            (self.slippage_bps >= 0, f"slippage must be >= 0 bps, got {self.slippage_bps}"),
            (self.direction in DIRECTIONS, f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}"),
            (self.stop_loss is None or 0 < self.stop_loss < 1, f"stop loss must be in (0, 1), got {self.stop_loss}"),
            (self.take_profit is None or self.take_profit > 0, f"take profit must be positive, got {self.take_profit}"),
            (self.periods_per_year > 0, f"periods per year must be positive, got {self.periods_per_year}"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def position_size(self) -> PositionSize:
        """The sizing scheme (fraction or notional) of this config."""
        return PositionSize(self.size_fraction, self.size_notional)

    def kernel_args(self) -> tuple[float, float, float, float, float, float, float, float, int, float]:
        """The scalar arguments of the numba kernels, in their order."""
        return (
            float(self.cash),
            float(self.fee),
            float(self.size_unit),
            _FULL if self.size_fraction == 1 else float(self.size_fraction),
            math.nan if self.size_notional is None else float(self.size_notional),
            float(self.slippage_bps) / 10_000.0,
            math.nan if self.stop_loss is None else float(self.stop_loss),
            math.nan if self.take_profit is None else float(self.take_profit),
            DIRECTIONS.index(self.direction),
            float(self.periods_per_year),
        )


@dataclass(frozen=True)
class BacktestResult:
    """One backtest: statistics (every metric of :func:`~tradpal_ray.backtest.metrics.metrics`), trades, equity."""

    stats: dict[str, float]
    trades: pd.DataFrame
    """entry/exit time and price, units (negative = short), fees, pnl, return_pct, exit_reason;
    the last row has exit_reason ``open`` (exit_time NaT, exit_price = last close) if a position is held."""
    equity: pd.Series
    strategy: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    config: BacktestConfig = field(default_factory=BacktestConfig)
    warnings: tuple[str, ...] = ()
    """Why the result may not be what the user meant: no unit affordable, data too short."""

    def to_dict(self, *, trades: bool = False) -> dict[str, Any]:
        """JSON-ready: ``{"strategy", "params", "config", "stats", "warnings"[, "trades"]}``; NaN/inf -> None."""
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "params": dict(self.params),
            "config": asdict(self.config),
            "stats": {k: _json_number(v) for k, v in self.stats.items()},
            "warnings": list(self.warnings),
        }
        if trades:
            out["trades"] = trade_records(self.trades)
        return out


def trade_records(trades: pd.DataFrame) -> list[dict[str, Any]]:
    """Trades (the columns of :attr:`BacktestResult.trades`) as the JSON rows of ``backtest --json --trades``."""
    return [
        {
            "entry_time": row.entry_time.isoformat(),
            "exit_time": None if pd.isna(row.exit_time) else row.exit_time.isoformat(),
            "entry_price": _json_number(row.entry_price),
            "exit_price": _json_number(row.exit_price),
            "units": _json_number(row.units),
            "fees": _json_number(row.entry_fee + row.exit_fee),
            "pnl": _json_number(row.pnl),
            "return_pct": _json_number(row.return_pct),
            "exit_reason": str(row.exit_reason),
        }
        for row in trades.itertuples(index=False)
    ]


def _json_number(value: Any) -> float | int | None:
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def stats_dict(row: np.ndarray) -> dict[str, float]:
    """A kernel stats row plus every derived metric as ``{name: value}``, counts as ints."""
    return {name: column[0].item() for name, column in metric_columns(row[np.newaxis, :]).items()}


def sizing_warning(stats: Mapping[str, float], config: BacktestConfig, *, price: float | None = None) -> str | None:
    """A one-line warning when entry signals went unfilled because not one size unit was affordable.

    E.g. ``0 trades: 3 entry signals not filled, no size unit affordable (size unit 1 at price
    ~60,000 with starting cash 10,000, all-in)``; None when every entry signal was filled.
    ``price`` (a typical price of the series) makes the message concrete.
    """
    unfilled = int(stats.get("unfilled_entries", 0) or 0)
    if unfilled <= 0:
        return None
    head = "0 trades: " if stats.get("trades") == 0 else ""
    signals = "entry signal" if unfilled == 1 else "entry signals"
    at = f" at price ~{price:,.6g}" if price is not None else ""
    return (
        f"{head}{unfilled} {signals} not filled, no size unit affordable (size unit {config.size_unit:g}{at} "
        f"with starting cash {config.cash:,.6g}, {config.position_size.describe()}); use a smaller size unit "
        "(e.g. 1e-8 for BTC), more cash or a larger size"
    )


@njit(cache=True, error_model="numpy")
def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when undefined (the rule of :func:`~tradpal_ray.backtest.metrics.ratio`)."""
    if not denominator > NOISE_FLOOR or abs(numerator) > MAX_RATIO * denominator:
        return math.nan
    return numerator / denominator


@njit(cache=True, error_model="numpy")
def daily_ratios(day_returns: np.ndarray, count: int, growth: float, ppy: float) -> tuple[float, float, float]:
    """(Sharpe, Sortino, CAGR) of the first ``count`` daily returns, as empyrical computes them.

    Sharpe = mean / std(ddof=1) * sqrt(ppy); Sortino = mean * ppy / (sqrt(mean(min(r, 0)^2))
    * sqrt(ppy)); both NaN under 2 returns or when undefined (:func:`_ratio`). CAGR =
    growth^(ppy / count) - 1 where ``growth`` = last / first day-end equity (the product of
    1 + r); NaN without returns or when it overflows.
    """
    if count == 0:
        return math.nan, math.nan, math.nan
    cagr = growth ** (ppy / count) - 1.0
    if not math.isfinite(cagr):
        cagr = math.nan
    if count < 2:
        return math.nan, math.nan, cagr
    total = 0.0
    downside = 0.0
    for k in range(count):
        r = day_returns[k]
        total += r
        if r < 0.0:
            downside += r * r
    mean = total / count
    sq = 0.0
    for k in range(count):
        d = day_returns[k] - mean
        sq += d * d
    root_ppy = math.sqrt(ppy)
    sharpe = _ratio(mean, math.sqrt(sq / (count - 1))) * root_ppy
    sortino = _ratio(mean, math.sqrt(downside / count)) * root_ppy
    return sharpe, sortino, cagr


# Closed-trade accumulators kept by the kernel in one small array; the PnL's running mean and
# sum of squared deviations (Welford) give the SQN without a second pass over the trades.
_A_CLOSED, _A_WINS, _A_GROSS_WIN, _A_GROSS_LOSS, _A_PNL, _A_BEST, _A_WORST, _A_FEES, _A_MEAN, _A_M2 = range(10)
_N_ACC = 10


@njit(cache=True, error_model="numpy")
def _close(
    trades: np.ndarray, row: int, bar: int, units: float, entry_px: float, entry_fee: float, px: float,
    fee: float, reason: int, acc: np.ndarray,
) -> float:
    """Close ``units`` at ``px``: record the trade (if ``trades`` has the row), update ``acc``; cash change."""
    exit_fee = abs(units) * px * fee
    gross = units * (px - entry_px)
    pnl = gross - (exit_fee + entry_fee)
    if row < trades.shape[0]:
        trades[row, _T_EXIT_BAR] = bar
        trades[row, _T_EXIT_PX] = px
        trades[row, _T_EXIT_FEE] = exit_fee
        trades[row, _T_PNL] = pnl
        trades[row, _T_REASON] = reason
    ret = pnl / (abs(units) * entry_px)
    acc[_A_CLOSED] += 1.0
    acc[_A_PNL] += pnl
    delta = pnl - acc[_A_MEAN]
    acc[_A_MEAN] += delta / acc[_A_CLOSED]
    acc[_A_M2] += delta * (pnl - acc[_A_MEAN])
    acc[_A_FEES] += exit_fee
    acc[_A_BEST] = max(acc[_A_BEST], ret)
    acc[_A_WORST] = min(acc[_A_WORST], ret)
    if pnl > 0.0:
        acc[_A_WINS] += 1.0
        acc[_A_GROSS_WIN] += pnl
    elif pnl < 0.0:
        acc[_A_GROSS_LOSS] += pnl
    return gross - exit_fee


# The account the fill rules work on, one small float array so that the kernel and the paper
# broker (tradpal_ray.trading), which holds it between candles, run the very same step functions.
(ST_CASH, ST_POS, ST_ENTRY_PX, ST_ENTRY_FEE, ST_STOP_PX, ST_TAKE_PX, ST_ROWS, ST_UNFILLED, ST_DEAD) = range(9)
STATE_FIELDS = 9
NO_CHANGE = 2
"""The pending target meaning "no order": targets are -1 (short), 0 (flat), 1 (long)."""


@njit(cache=True)
def new_state(cash0: float) -> np.ndarray:
    """A flat account with ``cash0``: the state :func:`step_bar` and its parts update."""
    state = np.zeros(STATE_FIELDS)
    state[ST_CASH] = cash0
    state[ST_STOP_PX] = math.nan
    state[ST_TAKE_PX] = math.nan
    return state


@njit(cache=True)
def new_accumulators() -> np.ndarray:
    """Closed-trade accumulators (count, wins, PnL, fees, best/worst ...) that :func:`_close` updates."""
    acc = np.zeros(_N_ACC)
    acc[_A_BEST] = -math.inf
    acc[_A_WORST] = math.inf
    return acc


@njit(cache=True, error_model="numpy")
def fill_open(
    state: np.ndarray, pending: int, bar: int, open_px: float, fee: float, unit: float, frac: float,
    notional: float, slip: float, sl: float, tp: float, trades: np.ndarray, acc: np.ndarray,
) -> bool:
    """Move the position to the ``pending`` target (-1, 0, 1) at this bar's open; True if a position was opened.

    A position on the wrong side is closed first (reason ``signal``); then, when flat and the
    target is not 0, the all-in / fraction / notional size is bought or sold short (an
    unaffordable entry counts in ``state[ST_UNFILLED]``). Trade rows go to ``trades`` at
    ``state[ST_ROWS]`` while it has room.
    """
    pos = state[ST_POS]
    t = int(state[ST_ROWS])
    if pos != 0.0 and (pending == 0 or (pos > 0.0) != (pending > 0)):
        px = open_px * (1.0 - slip) if pos > 0.0 else open_px * (1.0 + slip)
        state[ST_CASH] += _close(trades, t - 1, bar, pos, state[ST_ENTRY_PX], state[ST_ENTRY_FEE], px, fee, _SIGNAL, acc)
        state[ST_POS] = 0.0
        pos = 0.0
    if pending == 0 or pos != 0.0:
        return False
    px = open_px * (1.0 + slip) if pending > 0 else open_px * (1.0 - slip)
    cost = px + (frac * px * fee) / frac
    budget = state[ST_CASH] * frac
    if notional < budget:  # noqa: PLR1730 - False when notional is NaN (no fixed amount); min() would take the NaN
        budget = notional
    units = (budget / unit) // cost * unit
    if units <= 0.0:
        state[ST_UNFILLED] += 1.0
        return False
    pos = units if pending > 0 else -units
    entry_fee = units * px * fee
    state[ST_POS] = pos
    state[ST_ENTRY_PX] = px
    state[ST_ENTRY_FEE] = entry_fee
    state[ST_CASH] -= entry_fee
    acc[_A_FEES] += entry_fee
    if pending > 0:
        state[ST_STOP_PX] = px * (1.0 - sl)
        state[ST_TAKE_PX] = px * (1.0 + tp)
    else:
        state[ST_STOP_PX] = px * (1.0 + sl)
        state[ST_TAKE_PX] = px * (1.0 - tp)
    if t < trades.shape[0]:
        trades[t, _T_ENTRY_BAR] = bar
        trades[t, _T_EXIT_BAR] = -1
        trades[t, _T_ENTRY_PX] = px
        trades[t, _T_UNITS] = pos
        trades[t, _T_ENTRY_FEE] = entry_fee
    state[ST_ROWS] = t + 1
    return True


@njit(cache=True, error_model="numpy")
def stop_exit(pos: float, stop_px: float, take_px: float, open_px: float, high: float, low: float,
              slip: float) -> tuple[float, int]:
    """(fill price, reason) of the stop-loss, else the take-profit, hit inside a bar; reason ``signal`` = none.

    Stop first (pessimistic when both are inside the range), a gap through a level fills at
    the open; NaN levels never trigger. Scalars only: it runs on every bar a position is held.
    """
    if pos > 0.0:
        if low <= stop_px:
            return min(open_px, stop_px) * (1.0 - slip), _STOP
        if high >= take_px:
            return max(open_px, take_px) * (1.0 - slip), _TAKE
    elif pos < 0.0:
        if high >= stop_px:
            return max(open_px, stop_px) * (1.0 + slip), _STOP
        if low <= take_px:
            return min(open_px, take_px) * (1.0 + slip), _TAKE
    return math.nan, _SIGNAL


@njit(cache=True, error_model="numpy")
def close_position(state: np.ndarray, bar: int, px: float, reason: int, fee: float, trades: np.ndarray,
                   acc: np.ndarray) -> None:
    """Close the held position at ``px`` for ``reason`` (a stop or take-profit hit, see :func:`stop_exit`)."""
    t = int(state[ST_ROWS])
    state[ST_CASH] += _close(trades, t - 1, bar, state[ST_POS], state[ST_ENTRY_PX], state[ST_ENTRY_FEE], px, fee,
                             reason, acc)
    state[ST_POS] = 0.0


@njit(cache=True, error_model="numpy")
def liquidate(state: np.ndarray, bar: int, close: float, fee: float, trades: np.ndarray, acc: np.ndarray) -> float:
    """Equity reached 0 or less at this close: close the position there; the account trades no more (equity 0)."""
    pos = state[ST_POS]
    if pos != 0.0:
        _close(trades, int(state[ST_ROWS]) - 1, bar, pos, state[ST_ENTRY_PX], state[ST_ENTRY_FEE], close, fee,
               _LIQUIDATION, acc)
        state[ST_POS] = 0.0
    state[ST_CASH] = 0.0
    state[ST_DEAD] = 1.0
    return 0.0


@njit(cache=True, error_model="numpy")
def step_bar(
    state: np.ndarray, pending: int, bar: int, open_px: float, high: float, low: float, close: float,
    fee: float, unit: float, frac: float, notional: float, slip: float, sl: float, tp: float,
    trades: np.ndarray, acc: np.ndarray,
) -> float:
    """One bar of :func:`simulate` for the paper broker: :func:`fill_open` the ``pending`` target, the
    stops (:func:`stop_exit`), the mark to the close (:func:`liquidate` at 0); the equity.

    ``simulate`` runs these very steps inline (calling this per bar would cost the kernel
    ~10x: array arguments per call), so the order of the steps is written twice, the rules once.
    """
    if pending != NO_CHANGE and state[ST_DEAD] == 0.0:
        fill_open(state, pending, bar, open_px, fee, unit, frac, notional, slip, sl, tp, trades, acc)
    if state[ST_POS] != 0.0:
        px, reason = stop_exit(state[ST_POS], state[ST_STOP_PX], state[ST_TAKE_PX], open_px, high, low, slip)
        if reason != _SIGNAL:
            close_position(state, bar, px, reason, fee, trades, acc)
    equity = state[ST_CASH] + (close * state[ST_POS] - state[ST_POS] * state[ST_ENTRY_PX])
    return equity if equity > 0.0 else liquidate(state, bar, close, fee, trades, acc)


@njit(cache=True)
def next_target(pos: float, entry: bool, exit_: bool, direction: int) -> int:
    """The position target (-1, 0, 1, or :data:`NO_CHANGE`) a bar's signals ask for, decided at its close.

    An entry and an exit on the same bar cancel; an entry while long, or an exit while flat
    in ``long`` mode, changes nothing; ``longshort`` (direction 1) reverses on either.
    """
    e = entry and not exit_
    x = exit_ and not entry
    if pos > 0.0:
        if x:
            return -1 if direction == 1 else 0
    elif pos < 0.0:
        if e:
            return 1
    elif e:
        return 1
    elif x and direction == 1:
        return -1
    return NO_CHANGE


@njit(cache=True, error_model="numpy")
def simulate(
    o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, day_end: np.ndarray,
    entries: np.ndarray, exits: np.ndarray,
    cash0: float, fee: float, unit: float, frac: float, notional: float, slip: float, sl: float, tp: float,
    direction: int, ppy: float, equity_out: np.ndarray, trades: np.ndarray, day_returns: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Run one backtest; return (stats row in :data:`KERNEL_STATS` order, trade rows written).

    ``equity_out`` (length n, or 0 to skip) receives the equity curve and ``trades`` (rows =
    an upper bound on trades, or 0 to skip) the trade records; ``day_returns`` is scratch of
    length n. Sweeps and single backtests both call this function, so their statistics agree.
    Each bar is :func:`step_bar` written inline (:func:`fill_open`, :func:`stop_exit`, the mark,
    :func:`liquidate`), then :func:`next_target`: the steps the paper broker runs per candle.
    """
    n = c.shape[0]
    record_equity = equity_out.shape[0] > 0
    use_stops = not (math.isnan(sl) and math.isnan(tp))
    state = new_state(cash0)
    pending = NO_CHANGE
    acc = new_accumulators()
    peak = cash0
    max_dd = 0.0
    exposed = 0
    n_days = 0
    first_day_equity = math.nan
    prev_day_equity = math.nan
    equity = cash0
    for i in range(n):
        held = state[ST_POS] != 0.0
        # 1. Fills at the open for the signal of the previous bar.
        if pending != NO_CHANGE:
            if fill_open(state, pending, i, o[i], fee, unit, frac, notional, slip, sl, tp, trades, acc):
                held = True
            pending = NO_CHANGE
        # 2. Stop-loss, then take-profit, inside the bar.
        pos = state[ST_POS]
        if use_stops and pos != 0.0:
            px, reason = stop_exit(pos, state[ST_STOP_PX], state[ST_TAKE_PX], o[i], h[i], lo[i], slip)
            if reason != _SIGNAL:
                close_position(state, i, px, reason, fee, trades, acc)
                pos = 0.0
        # 3. Mark to the close (0 once dead: cash and position are 0 then).
        equity = state[ST_CASH] + (c[i] * pos - pos * state[ST_ENTRY_PX])
        if equity <= 0.0:
            equity = liquidate(state, i, c[i], fee, trades, acc)
        if held:
            exposed += 1
        if record_equity:
            equity_out[i] = equity
        if equity >= peak:
            peak = equity
        elif 1.0 - equity / peak > max_dd:
            max_dd = 1.0 - equity / peak
        if day_end[i]:
            if math.isnan(first_day_equity):
                first_day_equity = equity
            else:  # a previous day exists
                r = equity / prev_day_equity - 1.0
                if not math.isnan(r):  # pct_change 0/0 is NaN and dropped, as pandas' dropna does
                    day_returns[n_days] = r
                    n_days += 1
            prev_day_equity = equity
        # 4. The signal at this close, acted on at the next open.
        if i + 1 < n and state[ST_DEAD] == 0.0:
            pending = next_target(state[ST_POS], entries[i], exits[i], direction)
    pos = state[ST_POS]
    t = int(state[ST_ROWS])
    if pos != 0.0 and t - 1 < trades.shape[0]:
        trades[t - 1, _T_EXIT_PX] = c[n - 1]
        trades[t - 1, _T_EXIT_FEE] = 0.0
        trades[t - 1, _T_PNL] = pos * (c[n - 1] - state[ST_ENTRY_PX]) - state[ST_ENTRY_FEE]
        trades[t - 1, _T_REASON] = _OPEN
    unfilled = state[ST_UNFILLED]
    sharpe, sortino, cagr = daily_ratios(day_returns, n_days, prev_day_equity / first_day_equity, ppy)
    closed = acc[_A_CLOSED]
    none = math.nan if closed == 0.0 else 0.0  # trade statistics are NaN without closed trades
    stats = np.empty(_N_STATS)
    stats[_S_TRADES] = closed
    stats[_S_FINAL_EQUITY] = equity
    stats[_S_RETURN] = (equity - cash0) / cash0 * 100.0
    stats[_S_CAGR] = cagr * 100.0
    stats[_S_MAX_DD] = max_dd * 100.0
    stats[_S_WIN_RATE] = acc[_A_WINS] / closed * 100.0 + none
    stats[_S_PROFIT_FACTOR] = _ratio(acc[_A_GROSS_WIN], -acc[_A_GROSS_LOSS])
    stats[_S_EXPECTANCY] = acc[_A_PNL] / closed + none
    stats[_S_SHARPE] = sharpe
    stats[_S_SORTINO] = sortino
    stats[_S_EXPOSURE] = exposed / n * 100.0
    stats[_S_FEES] = acc[_A_FEES]
    stats[_S_BEST] = acc[_A_BEST] * 100.0 + none
    stats[_S_WORST] = acc[_A_WORST] * 100.0 + none
    stats[_S_UNFILLED] = unfilled
    stats[_S_SQN] = math.sqrt(closed) * _ratio(acc[_A_MEAN], math.sqrt(acc[_A_M2] / (closed - 1.0))) if closed > 1.0 else math.nan
    return stats, min(t, trades.shape[0])


@njit(cache=True, error_model="numpy")
def simulate_many(
    o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, day_end: np.ndarray,
    entries: np.ndarray, exits: np.ndarray,
    cash0: float, fee: float, unit: float, frac: float, notional: float, slip: float, sl: float, tp: float,
    direction: int, ppy: float, returns_out: np.ndarray,
) -> np.ndarray:
    """Backtest every row of the 2-D (combos x bars) ``entries``/``exits``; one stats row each.

    ``returns_out`` (combos x days, or 0 x 0 to skip) receives each combination's daily
    returns, the series its Sharpe is computed from (:func:`day_index` labels the columns);
    days after the account died (equity 0) return 0.
    """
    k = entries.shape[0]
    out = np.empty((k, _N_STATS))
    no_equity = np.empty(0)
    no_trades = np.empty((0, _T_FIELDS))
    day_returns = np.empty(c.shape[0])
    keep_returns = returns_out.shape[0] > 0
    for j in range(k):
        if keep_returns:
            day_returns[:] = math.nan  # simulate writes the defined returns only
        stats, _ = simulate(
            o, h, lo, c, day_end, entries[j], exits[j], cash0, fee, unit, frac, notional, slip, sl, tp, direction,
            ppy, no_equity, no_trades, day_returns,
        )
        out[j] = stats
        if keep_returns:
            for d in range(returns_out.shape[1]):
                r = day_returns[d]
                returns_out[j, d] = 0.0 if math.isnan(r) else r
    return out


def day_index(bars: Bars) -> pd.DatetimeIndex:
    """The UTC days of the daily returns :func:`simulate_many` writes: every day after the first."""
    return bars.index[bars.day_end].normalize()[1:]


def run_signals(
    bars: pd.DataFrame | Bars,
    entries: np.ndarray,
    exits: np.ndarray,
    config: BacktestConfig | None = None,
    *,
    strategy: str = "",
    params: Mapping[str, Any] | None = None,
) -> BacktestResult:
    """Backtest given boolean entry/exit arrays (signal at a bar's close, fill at the next open).

    The result carries a :func:`sizing_warning` when entry signals found no affordable unit.
    """
    bars = prepare_bars(bars)
    config = config or BacktestConfig()
    n = len(bars)
    entries = _signal_array(entries, n, "entries")
    exits = _signal_array(exits, n, "exits")
    bound = int(np.count_nonzero(entries | exits))
    trades = np.full((bound, _T_FIELDS), np.nan)
    equity = np.empty(n)
    stats, rows = simulate(
        bars.open, bars.high, bars.low, bars.close, bars.day_end, entries, exits, *config.kernel_args(),
        equity, trades, np.empty(n),
    )
    stats_by_name = stats_dict(stats)
    warning = sizing_warning(stats_by_name, config, price=float(np.median(bars.close)))
    return BacktestResult(
        stats=stats_by_name,
        trades=_trades_frame(trades[:rows], bars.index),
        equity=pd.Series(equity, index=bars.index, name="equity"),
        strategy=strategy,
        params=dict(params or {}),
        config=config,
        warnings=() if warning is None else (warning,),
    )


def backtest(
    bars: pd.DataFrame | Bars,
    strategy: str = "sma_cross",
    params: Mapping[str, Any] | None = None,
    config: BacktestConfig | None = None,
    *,
    drop_bad: bool = False,
) -> BacktestResult:
    """Backtest a registered strategy with ``params`` (defaults fill the rest) on ``bars``.

    Data shorter than a window parameter is no error: as in backtesting.py, the result has no
    trades (flat equity) and a warning naming the window and the bar count.
    """
    bars = prepare_bars(bars, drop_bad=drop_bad)
    strat = get_strategy(strategy)
    resolved = strat.resolve(params or {})
    n = len(bars)
    too_long = [f"{name}={v} needs {v}" for name, p in strat.params.items() if p.window and (v := resolved[name]) > n]
    if not too_long:
        entries, exits = strat.signals(bars, resolved)
        return run_signals(bars, entries, exits, config, strategy=strat.name, params=resolved)
    no_signal = np.zeros(n, dtype=np.bool_)
    result = run_signals(bars, no_signal, no_signal, config, strategy=strat.name, params=resolved)
    warning = f"0 trades: only {n} bars, too few for {strat.name} ({', '.join(too_long)})"
    return replace(result, warnings=(warning, *result.warnings))


def _signal_array(values: Any, n: int, name: str) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(values, dtype=np.bool_))
    if array.shape != (n,):
        raise ConfigError(f"{name} must have one value per bar ({n}), got shape {array.shape}")
    return array


def _trades_frame(rows: np.ndarray, index: pd.DatetimeIndex) -> pd.DataFrame:
    entry_bar = rows[:, _T_ENTRY_BAR].astype(np.int64)
    exit_bar = rows[:, _T_EXIT_BAR].astype(np.int64)
    units = rows[:, _T_UNITS]
    return pd.DataFrame(
        {
            "entry_time": index[entry_bar],
            "exit_time": index[np.maximum(exit_bar, 0)].where(exit_bar >= 0),
            "entry_bar": entry_bar,
            "exit_bar": exit_bar,
            "entry_price": rows[:, _T_ENTRY_PX],
            "exit_price": rows[:, _T_EXIT_PX],
            "units": units,
            "entry_fee": rows[:, _T_ENTRY_FEE],
            "exit_fee": rows[:, _T_EXIT_FEE],
            "pnl": rows[:, _T_PNL],
            "return_pct": rows[:, _T_PNL] / (np.abs(units) * rows[:, _T_ENTRY_PX]) * 100.0,
            "exit_reason": pd.Categorical.from_codes(rows[:, _T_REASON].astype(np.int64), EXIT_REASONS),
        }
    )
