"""Cache-aside over Redis that never takes the service down.

* redis-py asyncio over a blocking connection pool; every call is bounded by a short
  timeout (no retries), so a slow or dead Redis costs at most that once.
* After a failure the cache is *degraded*: Redis is skipped for ``retry_after`` seconds
  (answers come from the stores), then one request probes it again; success resumes
  caching. Going down and coming back are each logged once.
* Single-flight: concurrent requests for one key share one lookup, and on a miss one
  computation; the shared task ends after the value is written back, so a request that
  arrives later finds it in Redis.
* Values are bytes (orjson or Arrow IPC, produced by the caller); a value that fails the
  caller's validation is a miss, never a crash. Nothing is pickled.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tradpal_ray.log import get_logger, redact
from tradpal_ray.stats.metrics import CacheMetrics

log = get_logger(__name__)

Validator = Callable[[bytes], bool]


def redis_problem(url: str | None, timeout: float = 1.0) -> str | None:
    """Why Redis at ``url`` cannot cache (no URL, a bad URL, no PING answer within ``timeout`` s), or None.

    A blocking one-shot probe for command-line start-up; secrets in the reason are masked.
    """
    import redis
    from redis.retry import Retry as BlockingRetry

    if not url:
        return "no Redis URL is set"
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                      retry=BlockingRetry(NoBackoff(), 0))
        try:
            client.ping()
        finally:
            client.close()
    except (RedisError, OSError, ValueError, TypeError) as exc:
        return redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return None


class RedisCache:
    """Cache-aside get-or-compute with a TTL per call, single-flight and graceful degradation."""

    def __init__(
        self,
        url: str | None,
        *,
        prefix: str = "tradpal:stats:",
        timeout: float = 0.1,
        retry_after: float = 1.0,
        max_connections: int = 64,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        self.metrics = metrics or CacheMetrics()
        self.url = redact(url) if url else None
        self._redis: aioredis.Redis | None = None
        if url:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
                socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            )
            self._redis = aioredis.Redis.from_pool(pool)
        self._down_until = 0.0
        self._down = False
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        """key -> the lookup in flight for it (single-flight)."""

    @property
    def available(self) -> bool:
        """Whether Redis is configured and not currently considered down."""
        return self._redis is not None and not self._down

    async def close(self) -> None:
        """Close the connection pool."""
        if self._redis is not None:
            await self._redis.aclose()

    async def ping(self) -> bool:
        """True if Redis answers within the timeout (updates the up/down state)."""
        if self._redis is None:
            return False
        ok, _ = await self._call("ping", self._redis.ping)
        return ok

    def _skip(self) -> bool:
        """During the back-off after a failure, skip Redis; let one probe through when it ends."""
        if self._redis is None:
            return True
        if not self._down:
            return False
        now = time.monotonic()
        if now < self._down_until:
            return True
        self._down_until = now + self.retry_after
        return False

    async def _call(self, op: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """One bounded Redis call: (True, result), or (False, None) and the degraded state on any failure."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await fn(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.error(op)
            if not self._down:
                self._down = True
                log.warning("stats.cache.down", redis=self.url, op=op, error=type(exc).__name__,
                            retry_after_s=self.retry_after)
            self._down_until = time.monotonic() + self.retry_after
            return False, None
        self.metrics.redis_latency(op, time.perf_counter() - started)
        if self._down:
            self._down = False
            log.info("stats.cache.up", redis=self.url)
        return True, result

    async def get(self, key: str) -> bytes | None:
        """The cached bytes of ``key``, or None (absent, Redis down or slow)."""
        if self._skip():
            return None
        _, value = await self._call("get", self._redis.get, self.prefix + key)  # type: ignore[union-attr]
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (best effort)."""
        if not self._skip():
            await self._call("set", self._redis.set, self.prefix + key, value, px=max(1, int(ttl * 1000)))  # type: ignore[union-attr]

    async def get_or_compute(
        self, kind: str, key: str, ttl: float, compute: Callable[[], Awaitable[bytes]], valid: Validator
    ) -> bytes:
        """Cached bytes of ``key`` if present and ``valid``, else ``compute()`` (then cached).

        Concurrent callers for one key share a single lookup (and computation) that runs as
        its own task, so a caller that goes away does not cancel it for the others.
        """
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup(kind, key, ttl, compute, valid))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        else:
            self.metrics.count(kind, "shared")
        return await asyncio.shield(task)

    async def _lookup(
        self, kind: str, key: str, ttl: float, compute: Callable[[], Awaitable[bytes]], valid: Validator
    ) -> bytes:
        cached = await self.get(key)
        if cached is not None:
            if valid(cached):
                self.metrics.count(kind, "hit")
                return cached
            self.metrics.count(kind, "invalid")
            log.warning("stats.cache.invalid_value", kind=kind, key=key)
        else:
            self.metrics.count(kind, "miss" if self.available else "degraded")
        started = time.perf_counter()
        value = await compute()
        self.metrics.compute_latency(kind, time.perf_counter() - started)
        await self.set(key, value, ttl)
        return value

    def _forget(self, key: str, task: asyncio.Future[bytes]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: the callers awaiting it re-raise it
