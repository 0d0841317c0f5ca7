"""Statistics over the stores (runs, results, candles, feeds, trades), cached in Redis.

:class:`StatsQueries` is the plain, synchronous query layer; :class:`StatsService` puts it
behind :class:`RedisCache` (cache-aside, single-flight, degraded mode) and returns the
encoded payloads the HTTP API sends as they are. The live statistics over the trade ledger
stay fresh through :class:`tradpal_ray.trading.LiveCacheNotifier`, the ledger writer's ``on_change``.
"""

from tradpal_ray.stats.cache import RedisCache
from tradpal_ray.stats.metrics import OUTCOMES, CacheMetrics
from tradpal_ray.stats.queries import TRADE_STATUSES, NotFound, StatsQueries
from tradpal_ray.stats.service import DEFAULT_TTLS, StatsService
from tradpal_ray.stats.versions import RunVersions

__all__ = [
    "DEFAULT_TTLS",
    "OUTCOMES",
    "TRADE_STATUSES",
    "CacheMetrics",
    "NotFound",
    "RedisCache",
    "RunVersions",
    "StatsQueries",
    "StatsService",
]
