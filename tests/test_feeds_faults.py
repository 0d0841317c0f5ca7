"""The feed engine in-process (no Ray) against the simulator with real ccxt / aiohttp: every fault
kind, injected repeatedly, for both connectors; the store ends with exactly the simulator's closed
candles and the consumer sees them once each, in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from tradpal_ray.errors import ConfigError, ExchangeUnavailable
from tradpal_ray.feeds import (
    Feed,
    FeedConfig,
    FeedStatusStore,
    subscribe,
    subscribe_trades,
)
from tradpal_ray.market import CandleStore, timeframe_ms
from tradpal_ray.market.retry import Backoff

SYMBOL = "BTC/USDT"
TIMEFRAMES = ("1m", "5m")
SPEED = 300.0  # a 1m candle closes every 0.2 s
OHLCV = ["open_time", "open", "high", "low", "close", "volume"]


def feed_config(sim: Any, store: Path | None, connector: str, **overrides: Any) -> FeedConfig:
    """A feed tuned for a fast simulator: short staleness, grace and backoff."""
    options: dict[str, Any] = {
        "symbols": (SYMBOL,), "timeframes": TIMEFRAMES, "url": sim.url, "store": str(store) if store else None,
        "connector": connector, "stale_after": 0.6, "repair_grace": 0.3, "store_within": 0.5, "status_interval": 0.5,
        "reconnect": Backoff(retries=0, base=0.02, cap=0.2), "rest": Backoff(retries=6, base=0.02, cap=0.2),
    }
    options.update(overrides)
    return FeedConfig(**options)


async def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``condition`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


CLOSED_ONLY = "5m"
"""The Recorder's subscription of this timeframe asks for closed candles only (a trader's), the other for every update."""


class Recorder:
    """Consumes a feed's candle subscriptions and remembers every closed candle seen, in order."""

    def __init__(self, feed: Feed, store: Path | None) -> None:
        self.seen: dict[str, list[tuple]] = {tf: [] for tf in TIMEFRAMES}
        self.forming_only: dict[str, int] = dict.fromkeys(TIMEFRAMES, 0)
        """Batches delivered without a closed candle in them, per timeframe."""
        self.tasks = [asyncio.create_task(self._consume(feed, tf, store)) for tf in TIMEFRAMES]

    async def _consume(self, feed: Feed, timeframe: str, store: Path | None) -> None:
        async for batch in subscribe(feed, SYMBOL, timeframe, store=str(store) if store else None, poll_timeout=0.2,
                                     closed_only=timeframe == CLOSED_ONLY):
            table = pa.Table.from_batches([batch])
            closed = table.filter(table.column("closed")).select(OHLCV)
            self.forming_only[timeframe] += not closed.num_rows
            self.seen[timeframe] += list(zip(*(closed.column(c).to_pylist() for c in OHLCV)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def caught_up(feed: Feed, sim_now_ms: int) -> Callable[[], bool]:
    """True once every series has closed the candles that had closed at ``sim_now_ms``."""

    def check() -> bool:
        for (_, tf), tracker in feed.trackers.items():
            step = timeframe_ms(tf)
            if tracker.last_closed is None or tracker.last_closed < sim_now_ms // step * step - step:
                return False
        return True

    return check


async def finish_and_check(sim: Any, feed: Feed, recorder: Recorder, store: Path,
                           seen_after: dict[str, int] | None = None) -> dict[str, int]:
    """Let the feed catch up with the simulator, stop it, and compare store and consumer with the truth.

    The consumer must have seen every stored candle (those after ``seen_after[tf]`` if given).
    """
    after = {tf: -1 if (seen_after or {}).get(tf) is None else seen_after[tf] for tf in TIMEFRAMES}

    def consumer_done() -> bool:
        for tf in TIMEFRAMES:
            last = feed.trackers[(SYMBOL, tf)].last_closed
            seen = recorder.seen[tf]
            if last is not None and last > after[tf] and not (seen and seen[-1][0].timestamp() * 1000 >= last):
                return False
        return True

    await wait_for(caught_up(feed, sim.now_ms()), what="the feed to catch up with the simulator")
    await asyncio.wait_for(feed.stop(), 30)
    await wait_for(consumer_done, timeout=5, what="the consumer to see the last candle")
    await recorder.stop()
    counts = {}
    for tf in TIMEFRAMES:
        stored = CandleStore(store).read_table("binance", SYMBOL, tf).select(OHLCV)
        times = stored.column("open_time").cast(pa.int64()).to_pylist()
        assert times, f"{tf}: no candle stored"
        truth = sim.closed_candles(SYMBOL, tf, times[0], times[-1] + timeframe_ms(tf)).select(OHLCV)
        assert stored.num_rows == truth.num_rows, f"{tf}: stored {stored.num_rows}, simulator closed {truth.num_rows}"
        assert stored.equals(truth), f"{tf}: stored candles differ from the simulator's"
        expected = [row for t, row in zip(times, zip(*(stored.column(c).to_pylist() for c in OHLCV))) if t > after[tf]]
        assert recorder.seen[tf] == expected, f"{tf}: consumer saw a different sequence"
        counts[tf] = len(times)
    assert recorder.forming_only[CLOSED_ONLY] == 0, "a closed-only subscription was handed a batch without a closed candle"
    return counts


def forged_closed_kline(timeframe: str, t: int, event_ms: int) -> dict[str, Any]:
    """A fault sending one well-formed closed ``timeframe`` kline opening at ``t``, all prices 1.0."""
    kline = {"t": t, "T": t + timeframe_ms(timeframe) - 1, "s": "BTCUSDT", "i": timeframe, "f": 1, "L": 1, "o": "1.0",
             "c": "1.0", "h": "1.0", "l": "1.0", "v": "1.0", "n": 1, "x": True, "q": "1.0", "V": "0.5", "Q": "0.5", "B": "0"}
    return {"kind": "malformed", "text": orjson.dumps({"e": "kline", "E": event_ms, "s": "BTCUSDT", "k": kline}).decode()}


def forged_future_kline(timeframe: str) -> Callable[[Any], dict[str, Any]]:
    """A fault injecting one closed ``timeframe`` kline dated 5 minutes after the simulator's clock."""

    def fault(sim: Any) -> dict[str, Any]:
        step = timeframe_ms(timeframe)
        event_ms = sim.now_ms() + 5 * 60_000
        return forged_closed_kline(timeframe, event_ms // step * step - step, event_ms)  # closed just before it

    return fault


Fault = dict[str, Any] | Callable[[Any], dict[str, Any]]
"""A fault's parameters, or a function of the simulator giving them at injection time."""


async def inject_repeatedly(sim: Any, feed: Feed, faults: list[Fault], reconnects: bool, between: int = 2) -> None:
    """Inject each fault after ``between`` more 1m candles have closed; wait until it took effect."""
    tracker = feed.trackers[(SYMBOL, "1m")]
    for fault in faults:
        target = tracker.closed_count + between
        await wait_for(lambda target=target: tracker.closed_count >= target, what="candles between faults")
        fault = fault(sim) if callable(fault) else fault
        kind, before = fault["kind"], feed.reconnects
        served = sim.stats()["faults"]["served"].get(kind, 0)
        applied = await asyncio.to_thread(sim.inject, **fault)
        while kind in PER_CONNECTION and not applied["connections"]:
            # The feed is between connections (its candles come over REST meanwhile): a fault that acts
            # on open connections needs one, so inject again once the feed has subscribed anew.
            await wait_for(lambda: sim.stats()["subscriptions"]["total"] > 0, what=f"a subscription to inject {kind}")
            applied = await asyncio.to_thread(sim.inject, **fault)
        if kind == "rest_error":
            await asyncio.to_thread(sim.inject, "close")  # the reconnect's gap repair meets the errors
        await wait_for(lambda kind=kind, served=served: sim.stats()["faults"]["served"].get(kind, 0) > served,
                       what=f"{kind} to be served")
        if reconnects:
            await wait_for(lambda before=before: feed.reconnects > before, what=f"a reconnect after {kind}")


PER_CONNECTION = frozenset({"close", "abort", "malformed"})
"""Faults that act once on the stream connections open when injected (see tradpal_ray.sim.faults)."""

FAULTS: dict[str, list[Fault]] = {
    "close": [{"kind": "close"}] * 3,
    "abort": [{"kind": "abort"}] * 3,
    # short stalls lose frames silently (repaired after the grace); long ones trip the watchdog
    "stall": [{"kind": "stall", "duration": 0.3}, {"kind": "stall", "duration": 1.0}, {"kind": "stall", "duration": 0.3}],
    "freeze": [{"kind": "freeze", "duration": 1.0}] * 3,
    "malformed": [{"kind": "malformed"}] * 3,
    "duplicate": [{"kind": "duplicate", "count": 6}] * 3,
    "out_of_order": [{"kind": "out_of_order", "count": 4}] * 3,
    # the third burst outlasts the retry budget of one repair (7 attempts): the next round succeeds
    "rest_error": [{"kind": "rest_error", "count": 3, "status": 503, "retry_after": 0},
                   {"kind": "rest_error", "count": 3, "status": 429, "retry_after": 0},
                   {"kind": "rest_error", "count": 9, "status": 418, "retry_after": 0}],
    # one well-formed closed kline dated 5 minutes ahead of the exchange clock, for each timeframe
    "forged_future": [forged_future_kline("1m"), forged_future_kline("5m"), forged_future_kline("1m")],
}
RECONNECTING = {"close", "abort", "freeze", "rest_error"}


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())


@pytest.mark.parametrize("connector", ["native", "ccxt"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_candle_lost_or_duplicated_under_faults(make_simulator: Any, store_root: Path, connector: str, fault: str) -> None:
    sim = make_simulator([SYMBOL], speed=SPEED)

    async def main() -> None:
        feed = Feed(feed_config(sim, store_root, connector))
        await feed.start()
        recorder = Recorder(feed, store_root)
        try:
            reconnects = fault in RECONNECTING or (fault == "malformed" and connector == "ccxt")
            await inject_repeatedly(sim, feed, FAULTS[fault], reconnects)
            if fault == "forged_future":
                await wait_for(lambda: feed.status()["future_events"] >= 3, what="the forged klines to be rejected")
            counts = await finish_and_check(sim, feed, recorder, store_root)
        finally:
            await asyncio.wait_for(feed.stop(), 30)
            await recorder.stop()
        served = sim.stats()["faults"]["served"]
        kind = "malformed" if fault == "forged_future" else fault
        assert served.get(kind, 0) >= 3, f"the simulator served {served}"
        if reconnects:
            assert feed.reconnects >= 3
        if fault == "malformed" and connector == "native":
            assert feed.connector.malformed == 3
        if fault == "forged_future" and connector == "native":
            assert feed.status()["future_events"] == 3  # each counted once (ccxt may hand a cached one out again)
        assert counts["1m"] >= 6

    run(main)


def test_rest_fallback_while_stream_keeps_failing_then_back_to_ws(make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator([SYMBOL], speed=SPEED)

    async def main() -> None:
        feed = Feed(feed_config(sim, store_root, "native", stale_after=0.3, rest_fallback_after=2,
                                rest_poll_interval=0.2))
        await feed.start()
        recorder = Recorder(feed, store_root)
        try:
            tracker = feed.trackers[(SYMBOL, "1m")]
            await wait_for(lambda: tracker.closed_count >= 2, what="first candles")
            await asyncio.to_thread(sim.inject, "freeze", duration=4.0)
            await wait_for(lambda: feed.mode == "rest", what="REST mode")
            during = tracker.closed_count
            await wait_for(lambda: tracker.closed_count >= during + 3 and feed.mode == "rest", timeout=4,
                           what="candles while polling REST")
            assert feed.status()["mode"] == "rest"
            await wait_for(lambda: feed.mode == "ws", what="the stream to recover")
            assert feed.status()["streams"][0]["mode"] == "ws"
            await finish_and_check(sim, feed, recorder, store_root)
        finally:
            await asyncio.wait_for(feed.stop(), 30)
            await recorder.stop()

    run(main)


@pytest.mark.parametrize("connector", ["native", "ccxt"])
def test_feed_started_while_the_stream_is_silent_polls_rest_then_hands_back(make_simulator: Any, store_root: Path,
                                                                            connector: str) -> None:
    sim = make_simulator([SYMBOL], speed=SPEED)

    async def main() -> None:
        await asyncio.to_thread(sim.inject, "stall")  # every connection silent from before the start until cleared
        before = sim.now_ms()
        feed = Feed(feed_config(sim, store_root, connector, rest_fallback_after=2, rest_poll_interval=0.2))
        await feed.start()
        after = sim.now_ms()
        recorder = Recorder(feed, store_root)
        try:
            tracker = feed.trackers[(SYMBOL, "1m")]
            await wait_for(lambda: feed.mode == "rest", what="REST mode")
            await wait_for(lambda: tracker.closed_count >= 3, what="closed candles polled over REST")
            assert all(stats.messages == 0 for stats in feed.series.values())  # none of them came over the stream
            await asyncio.to_thread(sim.inject, "clear")
            await wait_for(lambda: feed.mode == "ws" and feed.series[(SYMBOL, "1m")].messages > 0,
                           what="the stream to take over again")
            await finish_and_check(sim, feed, recorder, store_root)
        finally:
            await asyncio.wait_for(feed.stop(), 30)
            await recorder.stop()
        for tf in TIMEFRAMES:  # stored from the candle forming when the feed started
            step = timeframe_ms(tf)
            first = CandleStore(store_root).read_table("binance", SYMBOL, tf).column("open_time")[0].value
            assert before // step * step <= first <= after // step * step, tf

    run(main)


def test_a_later_true_close_replaces_a_wrong_one_in_the_store(make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator([SYMBOL], speed=60.0)  # a 1m candle lasts a second: the forgery lands before its close

    async def main() -> None:
        # a tolerance of 10 minutes lets a forged close of the forming candle through
        feed = Feed(feed_config(sim, store_root, "native", clock_tolerance=600.0))
        await feed.start()
        tracker = feed.trackers[(SYMBOL, "1m")]
        try:
            await wait_for(lambda: tracker.closed_count >= 2 and sim.now_ms() % 60_000 < 30_000,
                           what="candles, then the first half of a candle")
            forming = sim.now_ms() // 60_000 * 60_000
            await asyncio.to_thread(sim.inject, **forged_closed_kline("1m", forming, sim.now_ms()))
            await wait_for(lambda: any(row.t == forming and row.o == 1.0 for row in tracker.history),
                           what="the forged close to be taken")
            await wait_for(lambda: tracker.corrected == 1, what="the true close to correct it")
            await wait_for(caught_up(feed, sim.now_ms()), what="the feed to catch up with the simulator")
            in_memory = feed.latest(SYMBOL, "1m", 50)
        finally:
            await asyncio.wait_for(feed.stop(), 30)
        stored = CandleStore(store_root).read_table("binance", SYMBOL, "1m").select(OHLCV)
        times = stored.column("open_time").cast(pa.int64()).to_pylist()
        truth = sim.closed_candles(SYMBOL, "1m", times[0], times[-1] + 60_000).select(OHLCV)
        assert forming in times and stored.equals(truth)
        true_open = truth.column("open")[times.index(forming)].as_py()
        assert in_memory.loc[pd.Timestamp(forming, unit="ms", tz="UTC"), "open"] == true_open != 1.0

    run(main)


def test_restart_resumes_from_the_store_and_repairs_the_gap(make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator([SYMBOL], speed=SPEED)

    async def main() -> None:
        first = Feed(feed_config(sim, store_root, "native"))
        await first.start()
        await wait_for(lambda: first.trackers[(SYMBOL, "1m")].closed_count >= 3, what="first candles")
        await asyncio.wait_for(first.stop(), 30)
        stopped_at = first.trackers[(SYMBOL, "1m")].last_closed
        await wait_for(lambda: sim.now_ms() > stopped_at + 8 * 60_000, what="the simulator to move on")
        second = Feed(feed_config(sim, store_root, "native"))
        await second.start()
        assert second.trackers[(SYMBOL, "1m")].last_closed == stopped_at  # resumed from the store
        resumed = {tf: second.trackers[(SYMBOL, tf)].last_closed for tf in TIMEFRAMES}
        recorder = Recorder(second, store_root)
        try:
            await wait_for(lambda: second.trackers[(SYMBOL, "1m")].repaired >= 7, what="the gap repair")
            await finish_and_check(sim, second, recorder, store_root, seen_after=resumed)
        finally:
            await asyncio.wait_for(second.stop(), 30)
            await recorder.stop()

    run(main)


def test_slow_consumer_is_told_what_it_missed_and_reads_it_from_the_store(make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator([SYMBOL], speed=SPEED)

    async def main() -> None:
        feed = Feed(feed_config(sim, store_root, "native", ring_batches=4, flush_interval=0.02))
        await feed.start()
        try:
            sub = subscribe(feed, SYMBOL, "1m", store=str(store_root), poll_timeout=0.2)
            first = await asyncio.wait_for(anext(sub), 10)  # then fall behind while many batches go by
            ring = feed.rings["candles"]
            await wait_for(lambda: ring.entries and ring.entries[0].seq > sub.cursor + 4, what="the ring to move on")
            closed: list[int] = []

            def collect(batch: pa.RecordBatch) -> None:
                times = batch.column("open_time").cast(pa.int64()).to_pylist()
                closed.extend(t for t, c in zip(times, batch.column("closed").to_pylist()) if c)

            collect(first)
            target = feed.trackers[(SYMBOL, "1m")].closed_count + 3
            await wait_for(lambda: feed.trackers[(SYMBOL, "1m")].closed_count >= target, what="more candles")
            last = feed.trackers[(SYMBOL, "1m")].last_closed
            while not closed or closed[-1] < last:
                collect(await asyncio.wait_for(anext(sub), 10))
            assert sub.missed and sub.missed[0][0] <= sub.missed[0][1]
            assert closed == list(range(closed[0], last + 1, 60_000))  # nothing lost, nothing twice, in order
        finally:
            await asyncio.wait_for(feed.stop(), 30)

    run(main)


def test_trades_identical_for_both_connectors(make_simulator: Any) -> None:
    sim = make_simulator([SYMBOL], speed=SPEED, trades_per_minute=600)

    firsts: dict[str, int] = {}  # each connector's first trade id: they start apart (3,000 trades a second)

    async def collect(connector: str) -> dict[int, tuple]:
        feed = Feed(feed_config(sim, None, connector))
        await feed.start()
        trades: dict[int, tuple] = {}
        sub = subscribe_trades(feed, SYMBOL, poll_timeout=0.2)
        try:
            while len(firsts) < 2 or max(trades) < max(firsts.values()) + 300:  # 300 trades past the later start
                batch = await asyncio.wait_for(anext(sub), 10)
                for row in batch.to_pylist():
                    assert row["trade_id"] not in trades
                    trades[row["trade_id"]] = (row["time"], row["price"], row["amount"], row["buyer_maker"], row["symbol"])
                if trades:
                    firsts.setdefault(connector, min(trades))
        finally:
            await asyncio.wait_for(feed.stop(), 30)
        return trades

    async def main() -> None:
        native, via_ccxt = await asyncio.gather(collect("native"), collect("ccxt"))
        common = native.keys() & via_ccxt.keys()
        assert len(common) >= 100
        assert all(native[i] == via_ccxt[i] for i in common)
        assert sorted(native) == list(range(min(native), max(native) + 1))  # no trade lost or repeated

    run(main)


def test_latest_status_and_snapshot(make_simulator: Any, store_root: Path) -> None:
    sim = make_simulator([SYMBOL], speed=SPEED)

    async def main() -> None:
        feed = Feed(feed_config(sim, store_root, "native"))
        await feed.start()
        try:
            await wait_for(lambda: feed.trackers[(SYMBOL, "1m")].closed_count >= 5, what="candles")
            frame = feed.latest(SYMBOL, "1m", 4)
            last = feed.trackers[(SYMBOL, "1m")].last_closed
            assert len(frame) == 4 and int(frame.index[-1].value // 1_000_000) <= last
            truth = sim.closed_candles(SYMBOL, "1m", frame.index[0], frame.index[-1] + pd.Timedelta(minutes=1)).to_pandas()
            assert list(frame["close"]) == list(truth["close"])
            status = feed.status()
            kline = next(s for s in status["streams"] if s["stream"] == "kline_1m")
            trade = next(s for s in status["streams"] if s["stream"] == "trade")
            assert status["mode"] == "ws" and status["connected"] and kline["messages"] > 0 and kline["closed"] >= 5
            assert kline["last_message_ms"] is not None and kline["lag_ms"] is not None
            await wait_for(lambda: feed.status()["streams"][-1]["messages"] > 0, what="trades")
            assert trade["symbol"] == SYMBOL
            await wait_for(lambda: bool(FeedStatusStore(store_root).read_all()), what="a status snapshot")
            with pytest.raises(ConfigError, match="does not stream"):
                feed.latest("ETH/USDT", "1m", 3)
        finally:
            await asyncio.wait_for(feed.stop(), 30)
        snapshot = FeedStatusStore(store_root).read_all()[0]
        assert snapshot["name"] == "feed:binance:0" and snapshot["stored_rows"] >= 5

    run(main)


def test_unknown_symbol_is_rejected_with_the_valid_ones(make_simulator: Any) -> None:
    sim = make_simulator([SYMBOL, "ETH/USDT"], speed=SPEED)
    feed = Feed(feed_config(sim, None, "native", symbols=("DOGE/USDT",)))
    with pytest.raises(ConfigError, match=r"unknown symbol\(s\) DOGE/USDT.*valid: BTC/USDT, ETH/USDT"):
        asyncio.run(feed.start())


def test_exchange_that_never_answers_fails_clearly() -> None:
    config = FeedConfig(symbols=(SYMBOL,), url="http://127.0.0.1:9", rest=Backoff(retries=2, base=0.01, cap=0.02))
    started = time.monotonic()
    with pytest.raises(ExchangeUnavailable, match="no answer after 3 attempts"):
        asyncio.run(Feed(config).start())
    assert time.monotonic() - started < 10
