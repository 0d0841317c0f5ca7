"""Fault injection: validated fault specs and the timed/counted fault state.

``close``, ``abort`` and ``malformed`` act once on the connections they target;
``duplicate`` and ``out_of_order`` arm the next kline events of those connections;
``stall``, ``freeze`` and ``latency`` last ``duration`` seconds or until cleared;
``rest_error`` answers the next ``count`` REST calls with an error status.
Trading faults act on the next ``count`` new orders (``POST /api/v3/order``), in the order
they were injected: ``reject`` refuses them with a Binance error ``code`` (and ``msg``);
``lose_response`` places them and then loses the answer (``status`` 0, the default: the
connection is dropped; or a 5xx status); ``order_rate_limit`` answers 429 -1015 with
``Retry-After``. ``user_stream_drop`` drops every user data stream connection once.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tradpal_ray.errors import ConfigError
from tradpal_ray.sim._errors import INSUFFICIENT_BALANCE, INVALID_KEY, STALE_REQUEST, TOO_MANY_ORDERS

_COMMON = {"kind", "connection"}
FAULT_PARAMS: dict[str, set[str]] = {
    "close": _COMMON,
    "abort": _COMMON,
    "stall": _COMMON | {"duration"},
    "freeze": _COMMON | {"duration"},
    "malformed": _COMMON | {"text"},
    "duplicate": _COMMON | {"count"},
    "out_of_order": _COMMON | {"count"},
    "rest_error": {"kind", "count", "status", "retry_after"},
    "latency": _COMMON | {"ms", "duration"},
    "reject": {"kind", "count", "code", "msg"},
    "lose_response": {"kind", "count", "status"},
    "order_rate_limit": {"kind", "count", "retry_after"},
    "user_stream_drop": {"kind"},
    "clear": {"kind"},
}
"""Fault kinds and the parameters each accepts."""

REST_ERROR_STATUSES = (418, 429, 500, 502, 503, 504)
LOST_RESPONSE_STATUSES = (0, 500, 502, 503, 504)
ORDER_FAULTS = ("reject", "lose_response", "order_rate_limit")
"""Fault kinds that act on new orders."""
REJECT_MESSAGES = {
    refusal.code: refusal.msg
    for refusal in (INSUFFICIENT_BALANCE, INVALID_KEY, STALE_REQUEST, TOO_MANY_ORDERS)
} | {
    -1013: "Filter failure: NOTIONAL",
    -1000: "An unknown error occured while processing the request.",
}
"""Default message of a ``reject`` fault's code (ccxt maps some codes by message)."""


@dataclass(frozen=True)
class Fault:
    """One validated fault; ``connection`` None means every WebSocket connection."""

    kind: str
    connection: int | None = None
    duration: float | None = None
    count: int = 1
    status: int = 429
    retry_after: int = 1
    ms: float = 0.0
    text: str | None = None
    code: int | None = None
    msg: str | None = None


def parse_fault(body: Mapping[str, Any]) -> Fault:
    """A :class:`Fault` from ``{"kind": K, ...}``; ConfigError with a clear message if invalid."""
    if not isinstance(body, Mapping):
        raise ConfigError('fault must be a JSON object like {"kind": "close"}')
    kind = body.get("kind")
    if kind not in FAULT_PARAMS:
        raise ConfigError(
            f"unknown fault kind {kind!r}; valid: {', '.join(FAULT_PARAMS)}"
        )
    unknown = set(body) - FAULT_PARAMS[kind]
    if unknown:
        allowed = ", ".join(sorted(FAULT_PARAMS[kind] - {"kind"})) or "none"
        raise ConfigError(
            f"fault {kind!r} does not take {', '.join(sorted(unknown))}; it takes: {allowed}"
        )
    params: dict[str, Any] = {"kind": kind}
    if body.get("connection") is not None:
        params["connection"] = _number(body, "connection", int, 1)
    if body.get("duration") is not None:
        params["duration"] = _number(body, "duration", float, 0.0)
    if "count" in body:
        params["count"] = _number(body, "count", int, 1)
    if "retry_after" in body:
        params["retry_after"] = _number(body, "retry_after", int, 0)
    if "ms" in body:
        params["ms"] = _number(body, "ms", float, 0.0)
    if kind == "latency" and "ms" not in body:
        raise ConfigError('fault "latency" needs "ms" (added delay in milliseconds)')
    statuses = LOST_RESPONSE_STATUSES if kind == "lose_response" else REST_ERROR_STATUSES
    if kind == "lose_response":
        params["status"] = 0
    if "status" in body:
        status = body["status"]
        if status not in statuses:
            raise ConfigError(
                f"{kind} status must be one of {', '.join(map(str, statuses))}, got {status!r}"
            )
        params["status"] = status
    if kind == "reject":
        params.update(_reject(body))
    if "text" in body:
        if not isinstance(body["text"], str) or not body["text"]:
            raise ConfigError("malformed text must be a non-empty string")
        params["text"] = body["text"]
    return Fault(**params)


def _reject(body: Mapping[str, Any]) -> dict[str, Any]:
    """Code and message of a ``reject`` fault (default: -2010 insufficient balance)."""
    code = body.get("code", -2010)
    if isinstance(code, bool) or not isinstance(code, int) or code >= 0:
        raise ConfigError(f"reject code must be a negative Binance error code, e.g. -2010, got {code!r}")
    msg = body.get("msg", REJECT_MESSAGES.get(code))
    if not isinstance(msg, str) or not msg:
        raise ConfigError(f"reject code {code} needs a msg (known codes: {', '.join(map(str, REJECT_MESSAGES))})")
    return {"code": code, "msg": msg}


def _number(body: Mapping[str, Any], name: str, kind: type, minimum: float) -> Any:
    value = body[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        raise ConfigError(
            f"fault parameter {name!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        )
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(
            f"fault parameter {name!r} must be >= {minimum}, got {value!r}"
        )
    return kind(value)


class FaultState:
    """Faults that last (stall, freeze, latency) or count down (rest_error), plus counters."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._timed: list[tuple[Fault, float]] = []  # (fault, monotonic deadline)
        self._rest_errors: list[Fault] = []
        self._order_faults: list[Fault] = []
        self.injected: Counter[str] = Counter()
        self.served: Counter[str] = Counter()

    def arm(self, fault: Fault) -> None:
        """Remember a lasting or counted fault (other kinds are acted on by the server)."""
        self.injected[fault.kind] += 1
        if fault.kind in ("stall", "freeze", "latency"):
            deadline = (
                math.inf if fault.duration is None else self._clock() + fault.duration
            )
            self._timed.append((fault, deadline))
        elif fault.kind == "rest_error":
            self._rest_errors.extend([fault] * fault.count)
        elif fault.kind in ORDER_FAULTS:
            self._order_faults.extend([fault] * fault.count)

    def clear(self) -> None:
        """Drop every lasting and counted fault."""
        self._timed.clear()
        self._rest_errors.clear()
        self._order_faults.clear()

    def _active(self, kind: str, connection: int | None) -> list[Fault]:
        now = self._clock()
        self._timed = [(f, deadline) for f, deadline in self._timed if deadline > now]
        return [
            f
            for f, _ in self._timed
            if f.kind == kind and f.connection in (None, connection)
        ]

    def frozen(self, connection: int) -> bool:
        """Whether ``connection`` must send nothing at all (no data, no pings, no pongs)."""
        return bool(self._active("freeze", connection))

    def silenced(self, connection: int) -> bool:
        """Whether ``connection`` must send no data (stalled or frozen)."""
        return self.frozen(connection) or bool(self._active("stall", connection))

    def latency(self, connection: int | None = None) -> float:
        """Added delay in seconds for a connection (None: for REST)."""
        return sum(f.ms for f in self._active("latency", connection)) / 1000.0

    def take_rest_error(self) -> Fault | None:
        """The rest_error the next REST call must answer with, if any (counts it served)."""
        if not self._rest_errors:
            return None
        self.served["rest_error"] += 1
        return self._rest_errors.pop(0)

    def take_order_fault(self) -> Fault | None:
        """The trading fault the next new order meets, if any (counts it served)."""
        if not self._order_faults:
            return None
        fault = self._order_faults.pop(0)
        self.served[fault.kind] += 1
        return fault
