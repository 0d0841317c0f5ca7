"""The exchange's clock as a feed can know it: REST server-time answers and how fast that clock runs.

A stream event dated after the exchange's own clock is forged or broken; a candle whose end
the exchange's clock has not reached is still forming. :class:`ExchangeClock` answers both
from :class:`ClockSample` s (``GET /api/v3/time`` and the like) without assuming the exchange
runs at wall-clock speed (the simulator runs many times faster).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClockSample:
    """One server-time answer: ``server_ms`` was read between ``sent`` and ``received`` (monotonic s)."""

    server_ms: int
    sent: float
    received: float


class ExchangeClock:
    """Bounds on the exchange's current time, from its server-time samples.

    The newest sample is a lower bound on the exchange's time from its receipt on. The upper
    bound :meth:`latest` projects it forward at an upper bound of the clock's rate, measured
    between the first and the newest sample once they are ``min_baseline`` seconds (and
    ``rtt_factor`` round trips) apart; before that, or ``horizon`` seconds after the newest
    sample, the upper bound is unknown and a fresh sample must decide.
    """

    def __init__(self, tolerance_ms: int, *, min_baseline: float = 0.2, rtt_factor: float = 20.0,
                 horizon: float = 10.0) -> None:
        self.tolerance_ms = tolerance_ms
        self.min_baseline = min_baseline
        self.rtt_factor = rtt_factor
        self.horizon = horizon
        self.first: ClockSample | None = None
        self.newest: ClockSample | None = None
        self.rate: float | None = None
        """Upper bound of exchange ms per monotonic second, once measurable."""

    def observe(self, sample: ClockSample) -> None:
        """Take a new server-time answer into account (one asked for before the newest adds nothing)."""
        if self.newest is not None and sample.sent < self.newest.sent:
            return
        if self.first is None:
            self.first = sample
        self.newest = sample
        first = self.first
        baseline = sample.sent - first.received
        round_trips = (first.received - first.sent) + (sample.received - sample.sent)
        if baseline >= max(self.min_baseline, self.rtt_factor * round_trips):
            self.rate = (sample.server_ms - first.server_ms) / baseline

    def lower(self) -> int | None:
        """Exchange time (ms) the exchange's clock has surely reached; None before any sample."""
        return None if self.newest is None else self.newest.server_ms

    def latest(self, at: float) -> int | None:
        """Exchange time (ms) the exchange's clock cannot have passed at monotonic ``at``; None if unknown."""
        newest = self.newest
        if newest is None or self.rate is None or not 0 <= at - newest.sent <= self.horizon:
            return None
        return newest.server_ms + int(self.rate * (at - newest.sent)) + 1

    def admits(self, dated_ms: int, at: float) -> bool | None:
        """Whether an event dated ``dated_ms`` that arrived at monotonic ``at`` is within the clock plus
        the tolerance: True, False (a sample asked for after its arrival is older), or None (unknown yet)."""
        newest = self.newest
        if newest is not None and at <= newest.sent:
            return dated_ms <= newest.server_ms + self.tolerance_ms
        latest = self.latest(at)
        if latest is not None and dated_ms <= latest + self.tolerance_ms:
            return True
        return None
