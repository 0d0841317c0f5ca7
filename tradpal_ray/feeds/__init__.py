"""Live market data: feed actors that stream into the object store and the candle store."""

from tradpal_ray.feeds.status_store import FeedStatusStore

__all__ = ["FeedStatusStore"]
