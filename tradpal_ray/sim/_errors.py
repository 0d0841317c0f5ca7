"""Binance API errors the simulator answers with: an HTTP status and ``{"code": .., "msg": ..}``."""

from __future__ import annotations


class ApiError(Exception):
    """A request Binance would refuse with HTTP ``status`` and ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str, status: int = 400, retry_after: int | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.retry_after = retry_after  # seconds, sent as Retry-After (rate limits)


def missing(name: str) -> ApiError:
    """Binance's -1102 for a mandatory parameter that was not sent."""
    return ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
