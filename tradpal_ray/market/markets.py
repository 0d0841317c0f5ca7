"""What an exchange says about each market, kept beside the candles: the tradable amount step.

``fetch`` records it when it loads the exchange's markets, so a backtest or sweep over a
store series sizes orders in the market's own lot step (1e-05 BTC on Binance, not 1 BTC)
without asking the exchange again. Stored as ``<store>/markets/<exchange>.json`` (orjson).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from tradpal_ray.errors import StoreError
from tradpal_ray.market.store import encode_key
from tradpal_ray.storage import open_filesystem, write_atomic

_TICK_SIZE = 4
"""ccxt's ``precisionMode`` TICK_SIZE: ``precision.amount`` is the step itself, not a number of decimals."""


@dataclass(frozen=True)
class MarketInfo:
    """The trading rules of one market that sizing needs."""

    symbol: str
    amount_step: float
    """Smallest increment of an order's amount (the exchange's lot step)."""
    min_amount: float | None = None
    min_notional: float | None = None


def market_info(symbol: str, market: Mapping[str, Any], precision_mode: int = _TICK_SIZE) -> MarketInfo:
    """A ccxt market dict as :class:`MarketInfo` (``precision.amount`` read as ccxt's precision mode says)."""
    precision = (market.get("precision") or {}).get("amount")
    if precision is None:
        step = 1.0
    elif precision_mode == _TICK_SIZE:
        step = float(precision)
    else:
        step = 10.0 ** -float(precision)
    limits = market.get("limits") or {}
    amount_min = (limits.get("amount") or {}).get("min")
    notional_min = (limits.get("cost") or {}).get("min")
    return MarketInfo(symbol, step, None if amount_min is None else float(amount_min),
                      None if notional_min is None else float(notional_min))


class MarketInfoStore:
    """Read and record :class:`MarketInfo` per exchange under ``<root>/markets/``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._fs, base = open_filesystem(root)
        self._base = f"{base}/markets"

    def _path(self, exchange: str) -> str:
        return f"{self._base}/{encode_key(exchange)}.json"

    def read(self, exchange: str) -> dict[str, MarketInfo]:
        """Every recorded market of ``exchange`` by symbol (empty when none was recorded)."""
        try:
            with self._fs.open_input_stream(self._path(exchange)) as stream:
                raw = orjson.loads(stream.read())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"corrupt market info for {exchange}: {exc}") from exc
        return {symbol: MarketInfo(**fields) for symbol, fields in raw.items()}

    def record(self, exchange: str, infos: Mapping[str, MarketInfo]) -> None:
        """Add or replace the given markets of ``exchange`` (the others are kept)."""
        merged = {**self.read(exchange), **infos}
        data = orjson.dumps({s: asdict(info) for s, info in sorted(merged.items())}, option=orjson.OPT_INDENT_2)
        self._fs.create_dir(self._base, recursive=True)
        write_atomic(self._fs, self._path(exchange), lambda out: out.write(data))

    def size_unit(self, exchange: str, symbol: str) -> float | None:
        """The recorded amount step of ``symbol``, or None."""
        info = self.read(exchange).get(symbol)
        return info.amount_step if info else None
