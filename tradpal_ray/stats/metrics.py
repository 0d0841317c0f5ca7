"""Cache counters and latencies: kept locally for ``/cache/stats`` and, under Ray, exported
as ``ray.util.metrics`` (``ray_tradpal_stats_*`` on the node's metrics port)."""

from __future__ import annotations

import functools
from collections import Counter, deque
from typing import Any

OUTCOMES = ("hit", "miss", "shared", "invalid", "degraded")
"""hit: valid bytes from Redis; miss: computed, Redis up; shared: joined a lookup in
flight; invalid: Redis held bytes that failed validation (then computed); degraded:
computed while Redis was down or slow."""
_SAMPLES = 2048


def _summary(samples: deque[float], count: int, total: float) -> dict[str, Any]:
    ordered = sorted(samples)

    def pct(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None

    return {"count": count, "mean_ms": round(total / count, 3) if count else None,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(max(ordered), 3) if ordered else None}


class CacheMetrics:
    """Hit/miss/error counters and latency samples of one process (one Serve replica)."""

    def __init__(self, *, export: bool | None = None) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[str] = Counter()
        self._latency: dict[str, tuple[deque[float], list[float]]] = {}
        self._ray: dict[str, Any] | None = None
        if export is None:
            import ray

            export = ray.is_initialized()
        if export:
            self._ray = _ray_metrics()

    def count(self, kind: str, outcome: str) -> None:
        """One request of ``kind`` ended as ``outcome`` (see :data:`OUTCOMES`)."""
        self.outcomes[kind, outcome] += 1
        if self._ray:
            self._ray["requests"].inc(tags={"kind": kind, "outcome": outcome})

    def error(self, op: str) -> None:
        """A Redis call (get, set, ping) failed or timed out."""
        self.errors[op] += 1
        if self._ray:
            self._ray["errors"].inc(tags={"op": op})

    def _observe(self, name: str, seconds: float) -> None:
        samples, acc = self._latency.setdefault(name, (deque(maxlen=_SAMPLES), [0, 0.0]))
        samples.append(seconds * 1000)
        acc[0] += 1
        acc[1] += seconds * 1000

    def redis_latency(self, op: str, seconds: float) -> None:
        """Latency of a successful Redis call."""
        self._observe(f"redis_{op}", seconds)
        if self._ray:
            self._ray["redis_ms"].observe(seconds * 1000, tags={"op": op})

    def compute_latency(self, kind: str, seconds: float) -> None:
        """Latency of answering ``kind`` from the stores."""
        self._observe(f"compute_{kind}", seconds)
        if self._ray:
            self._ray["compute_ms"].observe(seconds * 1000, tags={"kind": kind})

    def snapshot(self) -> dict[str, Any]:
        """Everything as JSON-ready dicts: totals, per kind, Redis errors, latency summaries."""
        totals = Counter({outcome: 0 for outcome in OUTCOMES})
        by_kind: dict[str, dict[str, int]] = {}
        for (kind, outcome), n in sorted(self.outcomes.items()):
            totals[outcome] += n
            by_kind.setdefault(kind, {})[outcome] = n
        looked_up = totals["hit"] + totals["miss"] + totals["invalid"]
        return {
            **totals,
            "hit_ratio": round(totals["hit"] / looked_up, 4) if looked_up else None,
            "errors": dict(self.errors),
            "by_kind": by_kind,
            "latency": {name: _summary(s, int(acc[0]), acc[1]) for name, (s, acc) in sorted(self._latency.items())},
        }


@functools.cache
def _ray_metrics() -> dict[str, Any]:
    from ray.util import metrics

    return {
        "requests": metrics.Counter(
            "tradpal_stats_cache_requests", "Stats requests by query kind and cache outcome.", tag_keys=("kind", "outcome")
        ),
        "errors": metrics.Counter("tradpal_stats_cache_errors", "Failed or timed-out Redis calls.", tag_keys=("op",)),
        "redis_ms": metrics.Histogram(
            "tradpal_stats_redis_latency_ms", "Latency of successful Redis calls.",
            boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100], tag_keys=("op",),
        ),
        "compute_ms": metrics.Histogram(
            "tradpal_stats_compute_ms", "Time to answer a query from the stores.",
            boundaries=[1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000], tag_keys=("kind",),
        ),
    }
