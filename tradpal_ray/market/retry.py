"""Capped exponential backoff with jitter, and a retry loop for transient exchange errors.

Shared by the history backfill and the feeds' reconnect logic so both honour the same
policy: ``Retry-After`` when the exchange sends one, otherwise ``base * 2**attempt``
capped at ``cap``, with full jitter so that many clients do not retry in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import ccxt

from tradpal_ray.errors import ExchangeUnavailable
from tradpal_ray.log import get_logger

T = TypeVar("T")
log = get_logger(__name__)

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ccxt.NetworkError,)
"""ccxt's NetworkError covers 429 (RateLimitExceeded), 418 (DDoSProtection), 5xx
(ExchangeNotAvailable), timeouts and dropped connections: all worth retrying."""


@dataclass(frozen=True)
class Backoff:
    """Retry policy: at most ``retries`` retries, delays within [base, cap] seconds."""

    retries: int = 8
    base: float = 0.25
    cap: float = 30.0
    jitter: bool = True

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(self.cap, max(retry_after, 0.0))
        ceiling = min(self.cap, self.base * (2**attempt))
        return random.uniform(self.base, ceiling) if self.jitter else ceiling


def retry_after_seconds(headers: dict[str, str] | None) -> float | None:
    """The ``Retry-After`` header (seconds form) of the last response, if any."""
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            try:
                return float(value)
            except ValueError:
                return None
    return None


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    policy: Backoff,
    what: str,
    client: Any = None,
) -> T:
    """Await ``call()``, retrying transient exchange errors per ``policy``.

    ``client`` (a ccxt exchange) lets us read the ``Retry-After`` header of the failed
    response. After the last retry an :class:`ExchangeUnavailable` names ``what`` and
    the last error.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except TRANSIENT_ERRORS as exc:
            if attempt == policy.retries:
                raise ExchangeUnavailable(
                    f"{what}: no answer after {policy.retries + 1} attempts ({type(exc).__name__}: {str(exc)[:200]})"
                ) from exc
            headers = getattr(client, "last_response_headers", None)
            wait = policy.delay(attempt, retry_after_seconds(headers))
            log.warning("exchange.retry", what=what, attempt=attempt + 1, wait_s=round(wait, 3), error=type(exc).__name__)
            attempt += 1
            await asyncio.sleep(wait)
