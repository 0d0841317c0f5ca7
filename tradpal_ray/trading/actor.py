"""TraderActor: a restartable Ray actor around one :class:`~tradpal_ray.trading._session.TraderSession`.

Named ``trader:<instance>:<name>`` in the ``tradpal`` namespace. It follows a feed actor's
closed candles of each of its symbols (``feeds.consumer.subscribe`` with the candle store:
each candle exactly once, in order, across lag and feed restarts) and hands them to the
session. On a restart (``max_restarts``) ``__init__`` runs again and the session rebuilds
itself from the ledger and the candle store. Many traders share one feed:
:func:`ensure_feed` reuses a running feed of the instance that serves the symbols and
timeframe, or starts one with the feeds package's :func:`~tradpal_ray.feeds.actor.start_feed`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from tradpal_ray.errors import ConfigError
from tradpal_ray.feeds.actor import NAMESPACE, actor_name, start_feed
from tradpal_ray.feeds.consumer import subscribe
from tradpal_ray.feeds.feed import FeedConfig
from tradpal_ray.log import get_logger
from tradpal_ray.trading._changes import LiveCacheNotifier
from tradpal_ray.trading._exchange import exchange_client
from tradpal_ray.trading._ledger import open_ledger
from tradpal_ray.trading._paper import Candle
from tradpal_ray.trading._session import TraderSession, TraderSpec

log = get_logger(__name__)

FEED_WAIT_S = 0.2
"""Pause between looks for the feed actor while it is not up yet."""


def trader_actor_name(instance: str, name: str) -> str:
    """``trader:<instance>:<name>``."""
    return f"trader:{instance}:{name}"


def feed_config(spec: TraderSpec) -> FeedConfig:
    """The feed a trader starts when none serves it: its symbols and timeframe, shard ``trade-<digest>``."""
    digest = hashlib.sha256(f"{spec.exchange} {spec.timeframe} {' '.join(sorted(spec.symbols))}".encode()).hexdigest()
    return FeedConfig(symbols=tuple(sorted(spec.symbols)), timeframes=(spec.timeframe,), exchange=spec.exchange,
                      url=spec.exchange_url, store=spec.store, trades=False, shard=f"trade-{digest[:8]}")


def batch_candles(batch: pa.RecordBatch) -> list[Candle]:
    """The closed candles of a feed batch (one series, in order)."""
    closed = batch.filter(pc.equal(batch.column("closed"), True))
    times = closed.column("open_time").cast(pa.int64()).to_pylist()
    columns = [closed.column(k).to_pylist() for k in ("open", "high", "low", "close", "volume")]
    return [Candle(t, o, h, lo, c, v) for t, o, h, lo, c, v in zip(times, *columns, strict=True)]


class TraderActor:
    """Thin Ray shell: the session (rebuilt on every (re)start) fed by the feed's closed candles."""

    def __init__(self, spec: TraderSpec, ledger_url: str | None, feed_name: str,
                 credentials: tuple[str, str] | None = None, redis_url: str | None = None) -> None:
        self.spec = spec
        self.feed_name = feed_name
        client = None if spec.broker != "exchange" else exchange_client(spec.exchange, spec.exchange_url, credentials,
                                                                         sandbox=spec.sandbox)
        ledger = open_ledger(ledger_url, spec.store)
        ledger.on_change = LiveCacheNotifier(redis_url, ledger.identity)  # live statistics see every write at once
        self.session = TraderSession(spec, ledger, exchange_client=client)
        self._lock = asyncio.Lock()
        self._follows: list[asyncio.Task[None]] = []
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._start = asyncio.get_running_loop().create_task(self._boot())
        log.info("trader.actor_up", trader=spec.name, feed=feed_name, restarted=self.restarted)

    async def _boot(self) -> None:
        await asyncio.to_thread(self.session.start)
        self._follows = [asyncio.create_task(self._follow(symbol)) for symbol in self.spec.symbols]

    async def _feed(self) -> Any:
        while True:  # the feed may be started after its traders (they warm up first)
            try:
                return ray.get_actor(self.feed_name, namespace=NAMESPACE)
            except ValueError:
                await asyncio.sleep(FEED_WAIT_S)

    async def _follow(self, symbol: str) -> None:
        subscription = subscribe(await self._feed(), symbol, self.spec.timeframe, store=self.spec.store,
                                 exchange=self.spec.exchange)
        last = self.session.last_candle.get(symbol)
        subscription.last_closed = None if last is None else last.time_ms
        async for batch in subscription:
            candles = batch_candles(batch)
            if candles:
                async with self._lock:
                    try:
                        await asyncio.to_thread(self.session.on_candles, symbol, candles)
                    except Exception as exc:  # an exchange refusal, a ledger outage past its retries: halt, say why
                        log.exception("trader.failed", trader=self.spec.name, symbol=symbol)
                        await asyncio.to_thread(self.session.halt, f"error on {symbol}: {type(exc).__name__}: {exc}")
                        return

    async def ready(self) -> dict[str, Any]:
        """Wait until the books are rebuilt (raises the session's ConfigError/DataError); the status."""
        await asyncio.shield(self._start)
        return await self.status()

    async def status(self) -> dict[str, Any]:
        """See :meth:`TraderSession.report`; ``restarted``: this actor was restarted by Ray after a crash."""
        return {**self.session.report(), "restarted": self.restarted}

    async def stop(self, flatten: bool = False) -> dict[str, Any]:
        """Stop following, trade the candles stored but not seen yet, then stop (``flatten``: close positions).

        Stop the feed first (it stores every closed candle when it stops) to trade up to its last candle.
        """
        await asyncio.shield(self._start)
        for task in self._follows:
            task.cancel()
        await asyncio.gather(*self._follows, return_exceptions=True)
        async with self._lock:
            for symbol in self.spec.symbols:
                await asyncio.to_thread(self.session.catch_up, symbol)
            await asyncio.to_thread(self.session.stop, flatten=flatten)
        return await self.status()


def serving_feed(spec: TraderSpec, instance: str) -> str | None:
    """The name of a running feed actor of the instance that serves the trader's symbols and timeframe, or None."""
    for name in _feeds(instance):
        handle = ray.get_actor(name, namespace=NAMESPACE)
        try:
            status = ray.get(handle.status.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - a feed that does not answer serves nobody
            log.info("trader.feed_unresponsive", feed=name, error=type(exc).__name__)
            continue
        served = {(row["symbol"], row["stream"]) for row in status.get("streams", [])}
        if status.get("exchange") == spec.exchange and all((s, f"kline_{spec.timeframe}") in served for s in spec.symbols):
            return name
    return None


def ensure_feed(spec: TraderSpec, instance: str, *, detached: bool = False) -> ray.actor.ActorHandle:
    """The feed actor the trader follows: a running one of the instance serving its symbols and
    timeframe (:func:`serving_feed`), else the one :func:`feed_config` describes (started here,
    restartable). Keep the handle while the feed is to run: a feed that is not detached ends with its last handle."""
    name = serving_feed(spec, instance)
    if name is not None:
        return ray.get_actor(name, namespace=NAMESPACE)
    return start_feed(feed_config(spec), instance=instance, if_running="reuse", max_restarts=-1, detached=detached)


def _feeds(instance: str) -> list[str]:
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a.get("namespace") == NAMESPACE and a["name"].startswith("feed:") and a["name"].endswith(f"@{instance}"))


def start_trader(spec: TraderSpec, *, instance: str, ledger_url: str | None = None, detached: bool = False,
                 max_restarts: int = -1, credentials: tuple[str, str] | None = None,
                 redis_url: str | None = None) -> ray.actor.ActorHandle:
    """Start (or find, after a driver restart) the trader actor; ConfigError if a trader of that name runs with
    another configuration. ``ray.get(handle.ready.remote())`` waits for its books. ``credentials``
    (API key, secret) are for the exchange broker: actor arguments, never in the ledger or a log.
    ``redis_url``: the statistics cache whose live answers each ledger write invalidates."""
    name = trader_actor_name(instance, spec.name)
    if (running := running_trader(instance, spec.name)) is not None:
        current = ray.get(running.status.remote())
        if current.get("strategy") != spec.strategy or current.get("params") != dict(spec.params):
            raise ConfigError(f"trader {spec.name} already runs with {current.get('strategy')} {current.get('params')}; "
                              "stop it first or give another --name")
        return running
    feed = serving_feed(spec, instance) or actor_name(feed_config(spec), instance)
    return ray.remote(TraderActor).options(
        name=name, namespace=NAMESPACE, max_restarts=max_restarts, max_task_retries=-1 if max_restarts else 0,
        lifetime="detached" if detached else None, num_cpus=0,
    ).remote(spec, ledger_url, feed, credentials, redis_url)


def running_trader(instance: str, name: str) -> ray.actor.ActorHandle | None:
    """The running trader actor ``trader:<instance>:<name>``, or None."""
    try:
        return ray.get_actor(trader_actor_name(instance, name), namespace=NAMESPACE)
    except ValueError:
        return None


def stop_trader(instance: str, name: str, *, flatten: bool, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stop a running trader (positions closed with ``flatten``, else left) and end its actor; its final status."""
    handle = running_trader(instance, name)
    if handle is None:
        raise ConfigError(f"no trader {name} runs on this Ray cluster (instance {instance}); see `tradpal-ray trade list`")
    started = time.monotonic()
    final = ray.get(handle.stop.remote(flatten=flatten), timeout=timeout_s)
    ray.kill(handle, no_restart=True)
    log.info("trader.actor_stopped", trader=name, seconds=round(time.monotonic() - started, 3))
    return final
