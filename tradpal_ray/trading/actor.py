"""Trader hosts: restartable Ray actors, each running many traders on the feeds' closed candles.

A trader is a :class:`~tradpal_ray.trading._session.TraderSession`; a host
(``traders:<instance>:<group>-<n>`` in the ``tradpal`` namespace) runs up to
``traders_per_host`` of them in one process. Why not an actor per trader: a Ray worker
process costs about 240 MB of private memory (100 traders would not fit in 24 GB), and each
would fetch every feed batch and commit its own rows. A host follows each (feed, symbol,
timeframe) once (``feeds.consumer.subscribe`` with the candle store: every closed candle
exactly once, in order, across lag and feed restarts), hands each candle to every session on
that symbol, and writes their per-candle rows in one transaction (:meth:`Ledger.deferred`).
Paper traders of the same ledger share hosts; an exchange trader gets a host of its own (the
account's API keys are that actor's arguments, never in the ledger or a log).

On a restart (``max_restarts``) a host runs ``__init__`` again and rebuilds every trader the
ledger records as hosted by it and not stopped: the sessions rebuild themselves from the
ledger and the candle store. Many traders share one feed: :func:`ensure_feed` reuses a
running feed of the instance that serves the symbols and timeframe, or starts one with the
feeds package's :func:`~tradpal_ray.feeds.actor.start_feed`.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from tradpal_ray.errors import ConfigError
from tradpal_ray.feeds.actor import NAMESPACE, actor_name, start_feed
from tradpal_ray.feeds.consumer import subscribe
from tradpal_ray.feeds.feed import FeedConfig
from tradpal_ray.log import get_logger
from tradpal_ray.market.schema import timeframe_ms
from tradpal_ray.trading._changes import LiveCacheNotifier
from tradpal_ray.trading._exchange import exchange_client
from tradpal_ray.trading._ledger import ledger_identity, open_ledger
from tradpal_ray.trading._metrics import TraderHostMetrics
from tradpal_ray.trading._paper import Candle
from tradpal_ray.trading._session import HALTED, STOPPED, TraderSession, TraderSpec
from tradpal_ray.trading._trader import SharedSignals

log = get_logger(__name__)

FEED_WAIT_S = 0.2
"""Pause between looks for the feed actor while it is not up yet."""
RECENT_CANDLES = 256
"""Candles a follow remembers: a trader joining it trades those the store does not hold yet
(the feed publishes a candle before it stores it, within ``store_within`` seconds)."""
HOST_PREFIX = "traders"


def host_prefix(instance: str) -> str:
    """``traders:<instance>:``, the start of every trader host's actor name of the instance."""
    return f"{HOST_PREFIX}:{instance}:"


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


@dataclass
class _Follow:
    """One subscription of a host (feed, symbol, timeframe) and the sessions it feeds."""

    feed: str
    symbol: str
    timeframe: str
    members: list[TraderSession] = field(default_factory=list)
    recent: collections.deque[Candle] = field(default_factory=lambda: collections.deque(maxlen=RECENT_CANDLES))
    task: asyncio.Task[None] | None = None


class TraderHost:
    """Thin Ray shell around many sessions: start, follow the feeds, fan candles out, stop (see the module)."""

    def __init__(self, name: str, instance: str, ledger_url: str | None, store: str,
                 credentials: tuple[str, str] | None = None, redis_url: str | None = None) -> None:
        self.name = name
        self.instance = instance
        self.credentials = credentials
        self.ledger = open_ledger(ledger_url, store)
        self.ledger.on_change = LiveCacheNotifier(redis_url, self.ledger.identity)  # live statistics see every write
        self.sessions: dict[str, TraderSession] = {}
        self.shared = SharedSignals()
        self.starts: dict[str, asyncio.Task[None]] = {}
        self.failed: set[str] = set()
        self.follows: dict[tuple[str, str, str], _Follow] = {}
        self._lock = asyncio.Lock()
        self._queue: list[tuple[_Follow, list[Candle], asyncio.Future[None]]] = []
        self.metrics = TraderHostMetrics(name)
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if self.restarted:  # the traders this host ran before the crash, from the ledger
            for record in self.ledger.traders():
                if record.host == name and record.status != STOPPED:
                    spec = TraderSpec.from_dict(record.config)
                    self._start(spec, None)
        log.info("trader.host_up", host=name, restarted=self.restarted, traders=sorted(self.sessions))

    # ------------------------------------------------------------ traders
    async def add(self, spec: TraderSpec, feed: str) -> None:
        """Start a trader following ``feed`` (its books are rebuilt in the background: see :meth:`ready`)."""
        if spec.name in self.sessions:
            raise ConfigError(f"trader {spec.name} already runs in {self.name}")
        self._start(spec, feed)

    def _start(self, spec: TraderSpec, feed: str | None) -> None:
        client = None if spec.broker != "exchange" else exchange_client(spec.exchange, spec.exchange_url,
                                                                         self.credentials, sandbox=spec.sandbox)
        session = TraderSession(spec, self.ledger, exchange_client=client, host=self.name, shared=self.shared)
        self.sessions[spec.name] = session
        self.failed.discard(spec.name)
        self.starts[spec.name] = asyncio.get_running_loop().create_task(self._boot(session, feed))
        self.metrics.traders(len(self.sessions))

    async def _boot(self, session: TraderSession, feed: str | None) -> None:
        spec = session.spec
        try:
            await asyncio.to_thread(session.start)
            if feed is None:  # restarted: the feed that serves it now, or the one it starts
                feed = await asyncio.to_thread(serving_feed, spec, self.instance) or actor_name(feed_config(spec),
                                                                                                 self.instance)
        except BaseException:
            self.sessions.pop(spec.name, None)
            raise
        async with self._lock:
            for symbol in spec.symbols:
                follow = self.follows.get((feed, symbol, spec.timeframe))
                if follow is None:
                    follow = self.follows[feed, symbol, spec.timeframe] = _Follow(feed, symbol, spec.timeframe)
                    last = session.last_candle.get(symbol)
                    follow.task = asyncio.create_task(self._follow(follow, spec, None if last is None else last.time_ms))
                else:  # the follow runs: the candles it delivered that the store may not hold yet
                    await asyncio.to_thread(self._join, session, symbol, list(follow.recent))
                follow.members.append(session)
        # The books just built live as long as the trader: out of the collector's way. A full collection
        # walks them all (400,000 objects for 50 traders in process: 170 ms, every trader paused); now
        # it walks the newer ones only.
        gc.freeze()
        log.info("trader.hosted", trader=spec.name, host=self.name, feed=feed)

    @staticmethod
    def _join(session: TraderSession, symbol: str, recent: list[Candle]) -> None:
        """Trade what the follow delivered before the session joined: from the store unless the follow's
        recent candles reach back to the session's last one, then those."""
        last = session.last_candle.get(symbol)
        if last is None or not recent or recent[0].time_ms > last.time_ms + timeframe_ms(session.spec.timeframe):
            session.catch_up(symbol)
        session.on_candles(symbol, recent)

    async def _feed(self, name: str) -> Any:
        while True:  # the feed may be started after its traders (they warm up first)
            try:
                return ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                await asyncio.sleep(FEED_WAIT_S)

    async def _follow(self, follow: _Follow, spec: TraderSpec, last_ms: int | None) -> None:
        subscription = subscribe(await self._feed(follow.feed), follow.symbol, follow.timeframe, store=spec.store,
                                 exchange=spec.exchange, closed_only=True)
        subscription.last_closed = last_ms
        async for batch in subscription:
            candles = batch_candles(batch)
            if candles:
                await self._hand_out(follow, candles)

    async def _hand_out(self, follow: _Follow, candles: list[Candle]) -> None:
        """Trade ``candles`` in every session of the follow; returns once they are. Batches of several
        follows that arrive together (every symbol's candle closes at once) go out in one thread call
        and one ledger transaction: one commit per host and candle, not one per symbol."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append((follow, candles, done))
        try:
            async with self._lock:
                if not done.done():  # no other follow took this batch with its own
                    taken, self._queue = self._queue, []
                    for queued, queued_candles, _ in taken:
                        queued.recent.extend(queued_candles)
                    await asyncio.to_thread(self._dispatch, [(f.symbol, c, list(f.members)) for f, c, _ in taken])
                    for _, _, finished in taken:
                        finished.set_result(None)
        except asyncio.CancelledError:  # the follow was stopped: its batch, if still waiting, goes with it
            self._queue = [entry for entry in self._queue if entry[2] is not done]
            raise

    def _dispatch(self, batches: list[tuple[str, list[Candle], list[TraderSession]]]) -> None:
        """Each batch's sessions trade its candles; all their equity and decision rows in one transaction.
        A session that fails (an exchange refusal, a ledger outage past its retries) halts, saying why."""
        failures: list[tuple[TraderSession, str, Exception]] = []
        sessions = {id(session): session for _, _, members in batches for session in members}.values()
        started, decided = time.perf_counter(), sum(session.candles for session in sessions)
        try:
            with self.ledger.deferred():
                for symbol, candles, members in batches:
                    for session in members:
                        if session.spec.name in self.failed:
                            continue
                        try:
                            session.on_candles(symbol, candles)
                        except Exception as exc:  # noqa: BLE001 - one trader's failure must not stop the others
                            self.failed.add(session.spec.name)
                            failures.append((session, symbol, exc))
        except Exception as exc:  # noqa: BLE001 - the rows could not be written: every session of the batches halts
            failures += [(session, batches[0][0], exc) for session in sessions if session.spec.name not in self.failed]
        self.metrics.dispatched(sum(session.candles for session in sessions) - decided,
                                (time.perf_counter() - started) * 1000.0, len(self.sessions))
        for session, symbol, exc in failures:
            self.failed.add(session.spec.name)
            log.error("trader.failed", trader=session.spec.name, symbol=symbol, error=f"{type(exc).__name__}: {exc}")
            try:
                session.halt(f"error on {symbol}: {type(exc).__name__}: {exc}")
            except Exception as halt_error:  # noqa: BLE001 - the ledger is down: the status says it in memory
                session.status, session.reason = HALTED, f"error on {symbol}: {type(halt_error).__name__}"

    # ------------------------------------------------------------ calls
    async def ready(self, name: str) -> dict[str, Any]:
        """Wait until the trader's books are rebuilt (raises its ConfigError/DataError); its status."""
        start = self.starts.get(name)
        if start is None:
            raise ConfigError(f"no trader {name} in {self.name}")
        await asyncio.shield(start)
        return await self.status(name)

    async def status(self, name: str) -> dict[str, Any]:
        """See :meth:`TraderSession.report`; ``restarted``: its host was restarted by Ray after a crash."""
        session = self.sessions.get(name)
        if session is None:
            raise ConfigError(f"no trader {name} in {self.name}")
        return {**session.report(), "restarted": self.restarted, "host": self.name}

    async def names(self) -> list[str]:
        """The traders this host runs."""
        return sorted(self.sessions)

    async def stop(self, name: str, flatten: bool = False) -> dict[str, Any]:
        """Stop following, trade the candles stored but not seen yet, then stop (``flatten``: close positions).

        Stop the feed first (it stores every closed candle when it stops) to trade up to its last candle.
        """
        await self.ready(name)
        async with self._lock:
            session = self.sessions[name]
            for key, follow in list(self.follows.items()):
                if session in follow.members:
                    follow.members.remove(session)
                if not follow.members and follow.task is not None:
                    follow.task.cancel()
                    await asyncio.gather(follow.task, return_exceptions=True)
                    del self.follows[key]
            if name not in self.failed:
                for symbol in session.spec.symbols:
                    await asyncio.to_thread(session.catch_up, symbol)
            await asyncio.to_thread(session.stop, flatten=flatten)
            final = await self.status(name)
            del self.sessions[name], self.starts[name]
            self.metrics.traders(len(self.sessions))
        return final


@dataclass(frozen=True)
class TraderHandle:
    """A trader in its host: each call returns an ObjectRef, as an actor method's ``.remote`` does."""

    host: Any
    """The host's actor handle (``ray.kill`` it to crash every trader it runs)."""
    name: str

    def ready(self) -> ray.ObjectRef:
        """Its status once its books are rebuilt."""
        return self.host.ready.remote(self.name)

    def status(self) -> ray.ObjectRef:
        """Its status (:meth:`TraderSession.report`)."""
        return self.host.status.remote(self.name)


def serving_feed(spec: TraderSpec, instance: str) -> str | None:
    """The name of a running feed actor of the instance that serves the trader's symbols and timeframe, or None."""
    for name in _named(lambda n: n.startswith("feed:") and n.endswith(f"@{instance}")):
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


def _named(keep: Any) -> list[str]:
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a.get("namespace") == NAMESPACE and keep(a["name"]))


def start_trader(spec: TraderSpec, *, instance: str, ledger_url: str | None = None, detached: bool = False,
                 max_restarts: int = -1, credentials: tuple[str, str] | None = None,
                 redis_url: str | None = None, per_host: int | None = None, feed: str | None = None) -> TraderHandle:
    """Start (or find, after a driver restart) the trader in a host; ConfigError if a trader of that name
    runs with another configuration. ``ray.get(handle.ready())`` waits for its books.

    A paper trader joins a host of the instance with the same ledger, cache and lifetime that
    runs fewer than ``per_host`` traders (default: ``TRADPAL_TRADERS_PER_HOST``), or a new one; an exchange trader gets its own host,
    with ``credentials`` (API key, secret) as its arguments. ``redis_url``: the statistics cache
    whose live answers each ledger write invalidates. ``feed``: the name of the feed actor to follow
    (default: the one :func:`serving_feed` finds, else :func:`feed_config`'s, started by :func:`ensure_feed`).
    """
    if per_host is None:
        from tradpal_ray.config import Settings

        per_host = Settings().traders_per_host
    if per_host < 1:
        raise ConfigError(f"traders per host must be at least 1, got {per_host}")
    hosts = _hosted(instance)
    if (running := running_trader(instance, spec.name, hosts)) is not None:
        current = ray.get(running.status())
        if current.get("strategy") != spec.strategy or current.get("params") != dict(spec.params):
            raise ConfigError(f"trader {spec.name} already runs with {current.get('strategy')} {current.get('params')}; "
                              "stop it first or give another --name")
        return running
    feed = feed or serving_feed(spec, instance) or actor_name(feed_config(spec), instance)
    if spec.broker == "exchange":
        group, room = f"x-{spec.name}", 1
    else:
        key = f"{ledger_identity(ledger_url, spec.store)} {spec.store} {redis_url} {detached} {max_restarts}"
        group, room = f"p{hashlib.sha256(key.encode()).hexdigest()[:8]}", per_host
    host = _place(hosts, f"{host_prefix(instance)}{group}-", room, detached=detached, max_restarts=max_restarts,
                  args=(instance, ledger_url, spec.store, credentials, redis_url))
    ray.get(host.add.remote(spec, feed))
    return TraderHandle(host, spec.name)


def _place(hosts: dict[str, tuple[Any, list[str]]], prefix: str, room: int, *, detached: bool, max_restarts: int,
           args: tuple[Any, ...]) -> Any:
    """A host named ``prefix<n>`` (its group) with room for one more trader: a running one, else a new one."""
    names = [n for n in hosts if n.startswith(prefix)]
    for name in names:
        handle, hosted = hosts[name]
        if len(hosted) < room:
            return handle
    taken = {n.removeprefix(prefix) for n in names}
    name = prefix + str(next(k for k in range(len(names) + 1) if str(k) not in taken))
    return ray.remote(TraderHost).options(
        name=name, namespace=NAMESPACE, get_if_exists=True, max_restarts=max_restarts,
        max_task_retries=-1 if max_restarts else 0, lifetime="detached" if detached else None, num_cpus=0,
    ).remote(name, *args)


def _hosted(instance: str) -> dict[str, tuple[Any, list[str]]]:
    """Every trader host of the instance by name: its handle and the traders it runs."""
    names = _named(lambda n: n.startswith(host_prefix(instance)))
    handles = [ray.get_actor(n, namespace=NAMESPACE) for n in names]
    return dict(zip(names, zip(handles, ray.get([h.names.remote() for h in handles]), strict=True), strict=True))


def running_trader(instance: str, name: str, hosts: dict[str, tuple[Any, list[str]]] | None = None) -> TraderHandle | None:
    """The running trader ``name`` of the instance (in whichever host runs it), or None (``hosts``: a
    listing already made by :func:`_hosted`)."""
    hosts = _hosted(instance) if hosts is None else hosts
    return next((TraderHandle(handle, name) for handle, hosted in hosts.values() if name in hosted), None)


def stop_trader(instance: str, name: str, *, flatten: bool, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stop a running trader (positions closed with ``flatten``, else left); its final status. A host left
    without traders ends."""
    trader = running_trader(instance, name)
    if trader is None:
        raise ConfigError(f"no trader {name} runs on this Ray cluster (instance {instance}); see `tradpal-ray trade list`")
    started = time.monotonic()
    final = ray.get(trader.host.stop.remote(name, flatten), timeout=timeout_s)
    if not ray.get(trader.host.names.remote()):
        ray.kill(trader.host, no_restart=True)
    log.info("trader.stopped_in_host", trader=name, seconds=round(time.monotonic() - started, 3))
    return final
