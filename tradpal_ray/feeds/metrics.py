"""Feed metrics on the Ray dashboard (``ray.util.metrics``), recorded once per flush, not per message.

Ray exports them with a ``ray_`` prefix on each node's metrics port (Prometheus):

=====================================  =========  ================  =============================================
name                                   type       tags              meaning
=====================================  =========  ================  =============================================
``tradpal_feed_messages``              counter    feed, kind        events received (kind: candles, trades)
``tradpal_feed_reconnects``            counter    feed              stream connections lost and re-dialled
``tradpal_feed_gaps_repaired``         counter    feed              closed candles fetched over REST to fill gaps
``tradpal_feed_flush_latency_ms``      histogram  feed, kind        age of a batch's oldest row when published
``tradpal_feed_lag_ms``                gauge      feed, symbol      the exchange's clock at receipt minus event time
``tradpal_feed_mode``                  gauge      feed              0 = WebSocket, 1 = REST polling fallback
=====================================  =========  ================  =============================================
"""

from __future__ import annotations

from typing import Any

FLUSH_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]


class FeedMetrics:
    """Metrics of one feed; every method is a no-op when ``enabled`` is False (no Ray)."""

    def __init__(self, feed: str, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from ray.util import metrics

        tags = {"feed": feed}
        self._messages: Any = metrics.Counter("tradpal_feed_messages", "Events received by a feed.", ("feed", "kind"))
        self._reconnects: Any = metrics.Counter("tradpal_feed_reconnects", "Stream reconnects.", ("feed",))
        self._repaired: Any = metrics.Counter("tradpal_feed_gaps_repaired", "Closed candles repaired over REST.", ("feed",))
        self._flush: Any = metrics.Histogram(
            "tradpal_feed_flush_latency_ms", "Age of a batch's oldest row at publish (ms).", FLUSH_BOUNDARIES_MS,
            ("feed", "kind"),
        )
        self._lag: Any = metrics.Gauge("tradpal_feed_lag_ms", "The exchange's clock at receipt minus its event time (ms).", ("feed", "symbol"))
        self._mode: Any = metrics.Gauge("tradpal_feed_mode", "0 WebSocket, 1 REST polling.", ("feed",))
        for metric in (self._messages, self._reconnects, self._repaired, self._flush, self._lag, self._mode):
            metric.set_default_tags(tags)

    def messages(self, kind: str, count: int) -> None:
        """``count`` events of ``kind`` were published."""
        if self.enabled and count:
            self._messages.inc(count, {"kind": kind})

    def reconnect(self) -> None:
        """The stream was lost and will be re-dialled."""
        if self.enabled:
            self._reconnects.inc()

    def repaired(self, count: int) -> None:
        """``count`` closed candles came from REST gap repair."""
        if self.enabled and count:
            self._repaired.inc(count)

    def flushed(self, kind: str, latency_ms: float) -> None:
        """A batch of ``kind`` was published ``latency_ms`` after its oldest row arrived."""
        if self.enabled:
            self._flush.observe(latency_ms, {"kind": kind})

    def lag(self, symbol: str, lag_ms: float) -> None:
        """Latest receipt-minus-event lag of ``symbol``."""
        if self.enabled:
            self._lag.set(lag_ms, {"symbol": symbol})

    def mode(self, rest: bool) -> None:
        """Whether the feed is polling REST instead of streaming."""
        if self.enabled:
            self._mode.set(1 if rest else 0)
