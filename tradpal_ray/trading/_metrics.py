"""Trader host metrics on the Ray dashboard (``ray.util.metrics``), recorded once per candle batch, not per trader.

Ray exports them with a ``ray_`` prefix on each node's metrics port (Prometheus):

==================================  =========  =====  ==============================================================
name                                type       tags   meaning
==================================  =========  =====  ==============================================================
``tradpal_trader_decisions``        counter    host   candles the host's traders decided on
``tradpal_trader_dispatch_ms``      histogram  host   wall time to hand a candle batch to every trader on its symbol
                                                      and write their rows (what the host adds to decision latency)
``tradpal_traders``                 gauge      host   traders the host runs
==================================  =========  =====  ==============================================================
"""

from __future__ import annotations

from typing import Any

DISPATCH_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]


class TraderHostMetrics:
    """Metrics of one trader host (Ray is imported: hosts are actors)."""

    def __init__(self, host: str) -> None:
        from ray.util import metrics

        self._decisions: Any = metrics.Counter("tradpal_trader_decisions", "Candles decided on by a host's traders.",
                                               ("host",))
        self._dispatch: Any = metrics.Histogram(
            "tradpal_trader_dispatch_ms", "Wall time to hand a candle batch to a host's traders and write their rows (ms).",
            DISPATCH_BOUNDARIES_MS, ("host",))
        self._traders: Any = metrics.Gauge("tradpal_traders", "Traders a host runs.", ("host",))
        for metric in (self._decisions, self._dispatch, self._traders):
            metric.set_default_tags({"host": host})

    def dispatched(self, decisions: int, wall_ms: float, traders: int) -> None:
        """One candle batch was handed out: ``decisions`` made in ``wall_ms``; the host runs ``traders``
        (set again with every batch: Ray stops exporting a gauge that is not set for a while)."""
        if decisions:
            self._decisions.inc(decisions)
        self._dispatch.observe(wall_ms)
        self._traders.set(traders)

    def traders(self, count: int) -> None:
        """The host now runs ``count`` traders."""
        self._traders.set(count)
