"""Change notices of the ledger: what the live statistics cache keys on.

The statistics service caches live answers in Redis under keys that carry a *generation*
per topic; the ledger's writer bumps the generations after every committed change
(:class:`LiveCacheNotifier` as the ledger's ``on_change``), so the next request misses and
recomputes: a fill is visible at once, not after a TTL. The writer side owns this protocol;
the statistics read it.

    tradpal:live:<digest of the ledger identity>:gen:<topic>      (INCR by the writer)

Topics: ``trades`` (the round trips: counts and daily statistics) changes on fills only;
``traders`` (statuses, positions, equity, events) on every change.
"""

from __future__ import annotations

import hashlib

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from tradpal_ray.log import get_logger, redact

log = get_logger(__name__)

DECISION_EVENT = "decision"
"""Event kind a trader records per decision; ``detail["latency_ms"]`` is shown as its latency."""
DIVERGENCE_EVENT = "divergence"
"""Event kind a trader records when it compares its live results with its backtest."""
TOPICS_OF_CHANGE: dict[str, tuple[str, ...]] = {
    "fill": ("trades", "traders"), "order": ("traders",), "trader": ("traders",), "equity": ("traders",),
    "event": ("traders",),
}
"""Which generations a ledger change (:data:`tradpal_ray.trading._ledger.CHANGE_KINDS`) bumps."""


def live_prefix(ledger_identity: str) -> str:
    """The Redis key prefix of one ledger's live statistics (its generations and cached answers)."""
    return f"tradpal:live:{hashlib.blake2b(ledger_identity.encode(), digest_size=8).hexdigest()}:"


def generation_key(topic: str) -> str:
    """The key (after :func:`live_prefix`) of a topic's generation counter."""
    return f"gen:{topic}"


class LiveCacheNotifier:
    """``on_change`` for a :class:`~tradpal_ray.trading.Ledger`: bumps the generations in Redis.

    Best effort and bounded (``timeout`` s, no retry): a Redis outage never fails a write;
    it is logged once, and cached answers then age out by their TTL.
    """

    def __init__(self, redis_url: str | None, ledger_identity: str, *, timeout: float = 0.2) -> None:
        self.prefix = live_prefix(ledger_identity)
        self.url = redact(redis_url) if redis_url else None
        self._client = redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                            retry=Retry(NoBackoff(), 0)) if redis_url else None
        self._down = False

    def __call__(self, change: str) -> None:
        if self._client is None:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for topic in TOPICS_OF_CHANGE.get(change, ("traders",)):
                pipe.incr(self.prefix + generation_key(topic))
            pipe.execute()
        except (RedisError, OSError) as exc:
            if not self._down:
                log.warning("live.notify.down", redis=self.url, error=type(exc).__name__)
            self._down = True
            return
        if self._down:
            self._down = False
            log.info("live.notify.up", redis=self.url)

    def close(self) -> None:
        """Close the Redis connections."""
        if self._client is not None:
            self._client.close()
