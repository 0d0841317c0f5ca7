"""Risk limits of one trader: position notional, daily loss, order rate. Pure, no Ray.

A breach is a reason string; the trader halts on the first one (status ``halted`` with the
reason, in its log and the ledger) and sends no more orders until restarted by a user.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from tradpal_ray.errors import ConfigError

_DAY_MS = 86_400_000
_MINUTE_MS = 60_000


@dataclass(frozen=True)
class RiskLimits:
    """Per-trader limits; None = no limit."""

    max_position_notional: float | None = None
    """Largest position value (units x price, quote) an order may lead to."""
    max_daily_loss: float | None = None
    """Largest drop of equity (quote) below its value at the start of the UTC day."""
    max_orders_per_minute: int | None = None
    """Most orders sent in any 60 s of wall time."""

    def __post_init__(self) -> None:
        for name in ("max_position_notional", "max_daily_loss", "max_orders_per_minute"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name.replace('_', ' ')} must be a positive number, got {value}")


class RiskGuard:
    """Checks orders and equity against :class:`RiskLimits`; remembers the day's start and recent orders."""

    def __init__(self, limits: RiskLimits) -> None:
        self.limits = limits
        self._day = -1
        self._day_start_equity = math.nan
        self._last_equity = math.nan
        self._sent_ms: deque[int] = deque()

    def check_order(self, now_ms: int, notional: float) -> str | None:
        """The breach an order of ``notional`` (quote) sent at wall time ``now_ms`` would make, or None (and it counts)."""
        limits = self.limits
        if limits.max_position_notional is not None and notional > limits.max_position_notional:
            return f"max position notional: order for {notional:,.2f} exceeds {limits.max_position_notional:,.2f}"
        if limits.max_orders_per_minute is not None:
            while self._sent_ms and self._sent_ms[0] <= now_ms - _MINUTE_MS:
                self._sent_ms.popleft()
            if len(self._sent_ms) >= limits.max_orders_per_minute:
                return f"max orders per minute: {len(self._sent_ms) + 1} orders within 60 s exceeds {limits.max_orders_per_minute}"
        self._sent_ms.append(now_ms)
        return None

    def check_equity(self, time_ms: int, equity: float) -> str | None:
        """The daily-loss breach at equity ``equity`` after the candle at ``time_ms``, or None."""
        day = time_ms // _DAY_MS
        if day != self._day:  # the day starts at the previous candle's equity (the first candle's own, at start)
            self._day = day
            self._day_start_equity = equity if math.isnan(self._last_equity) else self._last_equity
        self._last_equity = equity
        loss = self._day_start_equity - equity
        limit = self.limits.max_daily_loss
        if limit is not None and loss > limit:
            return f"max daily loss: down {loss:,.2f} since the start of the UTC day exceeds {limit:,.2f}"
        return None
