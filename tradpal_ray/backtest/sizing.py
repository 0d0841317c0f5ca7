"""Position sizing: how much of the account an entry uses, parsed from the CLI's ``--size``.

Two schemes, both in the kernel (``engine.simulate``): a fraction of equity in (0, 1]
(1 = all-in, the default and backtesting.py's default order size), or a fixed amount of quote
currency per entry (``500usd``). Units are always floored to the size unit, fees included, so
an entry may find no unit affordable: the kernel counts those as ``unfilled_entries``.
Plain Python, no numpy: the CLI parses ``--size`` before it imports anything heavy.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from tradpal_ray.errors import ConfigError

_SIZE = re.compile(r"^(?P<number>\d*\.?\d+(?:e[-+]?\d+)?)\s*(?P<unit>%|[a-z]{2,6})?$")


class PositionSize(NamedTuple):
    """A sizing scheme; its fields are :class:`~tradpal_ray.backtest.engine.BacktestConfig`'s."""

    size_fraction: float = 1.0
    """Fraction of equity spent (fees included) per entry, in (0, 1]; 1 = all-in."""
    size_notional: float | None = None
    """Fixed quote amount spent (fees included) per entry, at most the cash; None = use the fraction."""

    def describe(self) -> str:
        """``all-in``, ``50% of equity`` or ``500 quote per entry``: for messages."""
        if self.size_notional is not None:
            return f"{self.size_notional:g} quote per entry"
        return "all-in" if self.size_fraction == 1.0 else f"{self.size_fraction * 100:g}% of equity"


def parse_size(text: str) -> PositionSize:
    """``0.5`` or ``50%`` (a fraction of equity) or ``500usd`` (a quote amount; the letters name the
    quote currency for the reader and are not converted). ConfigError on anything else."""
    match = _SIZE.match(text.strip().lower())
    if match is None:
        raise ConfigError(f"size must be a fraction of equity in (0, 1] such as 0.5, or a quote amount such as 500usd; got {text!r}")
    value = float(match["number"])
    unit = match["unit"]
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"size must be positive, got {text!r}")
    if unit is None or unit == "%":
        fraction = value / 100.0 if unit == "%" else value
        if fraction > 1.0:
            hint = "at most 100%" if unit else f"give a fraction in (0, 1], or a quote amount such as {value:g}usd"
            raise ConfigError(f"size {text!r} is more than all of the equity; {hint}")
        return PositionSize(size_fraction=fraction)
    return PositionSize(size_notional=value)
