"""Binance API errors the simulator answers with: an HTTP status and ``{"code": .., "msg": ..}``."""

from __future__ import annotations

from dataclasses import dataclass


class ApiError(Exception):
    """A request Binance would refuse with HTTP ``status`` and ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str, status: int = 400, retry_after: int | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.retry_after = retry_after  # seconds, sent as Retry-After (rate limits)


@dataclass(frozen=True)
class Refusal:
    """One of Binance's fixed refusals; :meth:`error` makes a fresh exception to raise."""

    code: int
    msg: str
    status: int = 400

    def error(self, retry_after: int | None = None) -> ApiError:
        """This refusal as an :class:`ApiError`."""
        return ApiError(self.code, self.msg, self.status, retry_after)


INSUFFICIENT_BALANCE = Refusal(-2010, "Account has insufficient balance for requested action.")
DUPLICATE_ORDER = Refusal(-2010, "Duplicate order sent.")
ORDER_NOT_FOUND = Refusal(-2013, "Order does not exist.")
UNKNOWN_ORDER = Refusal(-2011, "Unknown order sent.")
INVALID_KEY = Refusal(-2015, "Invalid API-key, IP, or permissions for action.", 401)
STALE_REQUEST = Refusal(-1021, "Timestamp for this request is outside of the recvWindow.")
TOO_MANY_ORDERS = Refusal(-1015, "Too many new orders; current limit is 50 orders per 10 SECOND.", 429)
UNKNOWN_LISTEN_KEY = Refusal(-1125, "This listenKey does not exist.")


def missing(name: str) -> ApiError:
    """Binance's -1102 for a mandatory parameter that was not sent."""
    return ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
