"""Live market data: feed actors that stream into the object store and the candle store.

``start_feed(FeedConfig(symbols=("BTC/USDT",), timeframes=("1m",), store=...))`` starts the
actor ``feed:<exchange>:<shard>`` (``...@<instance>`` with ``instance=``); ``subscribe(handle, "BTC/USDT", "1m")`` iterates its
candle batches, ``latest(handle, "BTC/USDT", "1m", n)`` gives a frame. The actor (and Ray)
is imported lazily so that the plain classes stay light.
"""

from typing import Any

from tradpal_ray.feeds.candles import CandleRow, CandleTracker, RepairPlan
from tradpal_ray.feeds.connectors import (
    CcxtConnector,
    Connector,
    NativeBinanceConnector,
)
from tradpal_ray.feeds.consumer import Subscription, latest, subscribe, subscribe_trades
from tradpal_ray.feeds.feed import Feed, FeedConfig
from tradpal_ray.feeds.metrics import FeedMetrics
from tradpal_ray.feeds.publish import (
    CANDLE_BATCH_SCHEMA,
    TRADE_BATCH_SCHEMA,
    BatchRing,
    CandleBuffer,
    TradeBuffer,
)
from tradpal_ray.feeds.status_store import FeedStatusStore


def __getattr__(name: str) -> Any:
    if name in ("FeedActor", "start_feed", "get_feed"):
        from tradpal_ray.feeds import actor

        return getattr(actor, name)
    raise AttributeError(name)


__all__ = [
    "CANDLE_BATCH_SCHEMA",
    "TRADE_BATCH_SCHEMA",
    "BatchRing",
    "CandleBuffer",
    "CandleRow",
    "CandleTracker",
    "CcxtConnector",
    "Connector",
    "Feed",
    "FeedActor",
    "FeedConfig",
    "FeedMetrics",
    "FeedStatusStore",
    "NativeBinanceConnector",
    "RepairPlan",
    "Subscription",
    "TradeBuffer",
    "get_feed",
    "latest",
    "start_feed",
    "subscribe",
    "subscribe_trades",
]
