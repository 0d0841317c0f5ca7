"""Exceptions that mean "the user asked for something that cannot be done".

The CLI turns any :class:`TradpalError` into a one-line message and a non-zero exit;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TradpalError(Exception):
    """Base class for errors caused by input, configuration or an unreachable service."""


class ConfigError(TradpalError):
    """Bad settings or arguments: unknown exchange, symbol, timeframe, malformed range."""


class DataError(TradpalError):
    """Market data that breaks the candle contract (NaN, non-positive prices, bad order)."""


class StoreError(TradpalError):
    """The durable store cannot be read or written (corrupt file, unreachable location)."""


class ExchangeUnavailable(TradpalError):
    """The exchange did not answer within the retry budget."""
