"""Feed logic without Ray or network: closed-candle detection, dedup/ordering, gap plans, buffers, ring."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tradpal_ray.errors import ConfigError
from tradpal_ray.feeds import (
    BatchRing,
    CandleBuffer,
    CandleTracker,
    Feed,
    FeedConfig,
    RepairPlan,
    TradeBuffer,
)
from tradpal_ray.feeds.candles import CandleRow
from tradpal_ray.feeds.clock import ClockSample, ExchangeClock
from tradpal_ray.feeds.feed import StreamStats
from tradpal_ray.feeds.publish import CANDLE_BATCH_SCHEMA, TRADE_BATCH_SCHEMA, RingRead
from tradpal_ray.market import CandleStore

STEP = 60_000


def bar(t: int, price: float = 100.0) -> tuple[int, float, float, float, float, float]:
    return (t, price, price + 1, price - 1, price, 2.0)


def closed_times(rows: list[CandleRow]) -> list[int]:
    return [row.t for row in rows if row.closed]


def test_native_closed_candles_in_order_and_once() -> None:
    tr = CandleTracker(STEP)
    out = tr.on_update(*bar(0), False, 10, now=0.0)
    assert [(r.t, r.closed) for r in out] == [(0, False)]
    assert closed_times(tr.on_update(*bar(0), True, 60_000, now=0.0)) == [0]
    assert tr.on_update(*bar(0), True, 60_000, now=0.0) == []  # duplicate final frame
    assert tr.duplicates == 1
    assert tr.last_closed == 0 and tr.plan(now=10.0) is None


def test_out_of_order_closed_frame_is_held_then_released_in_order() -> None:
    tr = CandleTracker(STEP, last_closed=-STEP)
    tr.resync_needed = False
    # the final frame of t=0 arrives after the one of t=60000
    assert tr.on_update(*bar(STEP), True, 2 * STEP, now=0.0) == []
    assert closed_times(tr.on_update(*bar(0), True, 2 * STEP, now=0.1)) == [0, STEP]
    assert tr.pending == {} and tr.plan(now=100.0) is None


def test_stale_forming_update_is_dropped() -> None:
    tr = CandleTracker(STEP)
    tr.on_update(*bar(0, 100), False, 20, now=0.0)
    assert tr.on_update(*bar(0, 99), False, 10, now=0.0) == []  # older event of the same candle
    assert tr.on_update(*bar(0, 99), False, 20, now=0.0) == []  # repeated event
    assert tr.stale == 2
    assert [r.o for r in tr.on_update(*bar(0, 101), False, 30, now=0.0)] == [101]


def test_lost_closed_frame_is_planned_after_grace_and_merged_from_rest() -> None:
    tr = CandleTracker(STEP, grace=1.0)
    tr.on_update(*bar(0), True, STEP, now=0.0)
    tr.on_update(*bar(2 * STEP), False, 2 * STEP + 5, now=5.0)  # t=60000's final frame was lost
    assert tr.plan(now=5.5) is None
    plan = tr.plan(now=6.0)
    assert plan == RepairPlan(STEP, 2 * STEP)
    out = tr.on_rest(plan, [list(bar(STEP, 50.0))], event_ms=999, closed_before=2 * STEP + 5)
    assert closed_times(out) == [STEP] and out[0].o == 50.0
    assert tr.repaired == 1 and tr.plan(now=100.0) is None


def test_ccxt_newer_open_time_is_confirmed_over_rest_immediately() -> None:
    tr = CandleTracker(STEP, rest_confirms=True)
    tr.on_update(*bar(0), None, 1, now=0.0)
    assert tr.plan(now=0.0) is None
    tr.on_update(*bar(STEP), None, 2, now=0.0)
    plan = tr.plan(now=0.0)
    assert plan == RepairPlan(0, STEP)
    # REST may return more than asked; only the closed ones count
    assert closed_times(tr.on_rest(plan, [list(bar(0)), list(bar(STEP))], 3, closed_before=2 * STEP)) == [0]
    # a closed flag from a ccxt stream is never trusted
    assert tr.on_update(*bar(STEP), True, 4, now=0.0)[0].closed is False


def test_resync_fetches_since_last_closed_and_drops_the_forming_row() -> None:
    tr = CandleTracker(STEP, last_closed=0)
    assert tr.plan(now=0.0) == RepairPlan(STEP, None)
    rows = [list(bar(t)) for t in (STEP, 2 * STEP, 3 * STEP)]  # the newest is still forming at the exchange
    out = tr.on_rest(RepairPlan(STEP, None), rows, 1, closed_before=4 * STEP - 1)
    assert closed_times(out) == [STEP, 2 * STEP]
    assert tr.plan(now=10.0) is None  # caught up: nothing to fetch until the next resync
    tr.resync()
    assert tr.plan(now=0.0) == RepairPlan(3 * STEP, None)


def test_candle_missing_at_the_exchange_is_skipped_not_waited_for() -> None:
    tr = CandleTracker(STEP, last_closed=0)
    out = tr.on_rest(RepairPlan(STEP, None), [list(bar(2 * STEP)), list(bar(3 * STEP)), list(bar(4 * STEP))], 1,
                     closed_before=4 * STEP + 5)
    assert closed_times(out) == [2 * STEP, 3 * STEP]
    assert tr.skipped == 1


def test_pending_stream_frames_drain_after_rest_fills_the_hole() -> None:
    tr = CandleTracker(STEP, last_closed=0)
    tr.resync_needed = False
    tr.on_update(*bar(3 * STEP), True, 0, now=0.0)
    tr.on_update(*bar(4 * STEP), True, 0, now=0.0)
    plan = tr.plan(now=10.0)
    assert plan == RepairPlan(STEP, 5 * STEP)
    out = tr.on_rest(plan, [list(bar(STEP)), list(bar(2 * STEP)), list(bar(3 * STEP))], 1, closed_before=5 * STEP)
    assert closed_times(out) == [STEP, 2 * STEP, 3 * STEP, 4 * STEP]
    assert len(tr.history) == 4


def test_an_empty_rest_answer_leaves_nothing_to_fetch_until_the_next_resync() -> None:
    tr = CandleTracker(STEP)
    tr.start_at(0)
    tr.resync()
    assert tr.on_rest(tr.plan(now=0.0), [], 1, closed_before=10 * STEP) == []
    assert tr.plan(now=100.0) is None  # no busy loop asking an exchange without candles again and again


def test_rest_row_of_a_candle_the_exchange_clock_has_not_ended_is_not_closed() -> None:
    tr = CandleTracker(STEP, rest_confirms=True)
    tr.on_update(*bar(0), None, 1, now=0.0)
    tr.on_update(*bar(2 * STEP), None, 2, now=0.0)  # claims 0 and STEP have closed
    plan = tr.plan(now=0.0)
    assert plan == RepairPlan(0, 2 * STEP)
    # the exchange's clock says STEP is still forming: its REST row has partial values
    assert closed_times(tr.on_rest(plan, [list(bar(0)), list(bar(STEP, 1.0))], 3, closed_before=2 * STEP - 1)) == [0]
    assert tr.plan(now=0.0) == RepairPlan(STEP, 2 * STEP)  # asked again until it has ended
    out = tr.on_rest(tr.plan(now=0.0), [list(bar(STEP, 7.0))], 4, closed_before=2 * STEP)
    assert closed_times(out) == [STEP] and out[0].o == 7.0


def test_a_new_series_starts_at_the_candle_forming_at_start_and_can_poll_rest() -> None:
    tr = CandleTracker(STEP)
    assert tr.plan(now=0.0) is None
    tr.start_at(2 * STEP + 500)
    tr.resync()  # a reconnect, or REST polling, without a single stream update
    assert tr.plan(now=0.0) == RepairPlan(2 * STEP, None)
    out = tr.on_rest(tr.plan(now=0.0), [list(bar(2 * STEP)), list(bar(3 * STEP))], 1, closed_before=4 * STEP - 1)
    assert closed_times(out) == [2 * STEP] and tr.next == 3 * STEP


def test_a_later_true_close_replaces_a_wrong_one_after_a_rest_check() -> None:
    tr = CandleTracker(STEP)
    assert closed_times(tr.on_update(*bar(0, 1.0), True, STEP - 1, now=0.0)) == [0]  # wrong, and emitted
    assert tr.on_update(*bar(0, 100.0), True, STEP - 1, now=0.0) == []  # the true close, seen as a duplicate...
    assert tr.disputed == {0}
    plan = tr.plan(now=0.0)  # ... is checked over REST
    assert plan == RepairPlan(0, STEP)
    out = tr.on_rest(plan, [list(bar(0, 100.0))], 5, closed_before=STEP)
    assert [(r.t, r.o, r.closed) for r in out] == [(0, 100.0, True)]  # the correction
    assert tr.corrected == 1 and not tr.disputed and tr.plan(now=0.0) is None
    assert [r.o for r in tr.history] == [100.0]
    # a wrong frame after the true one changes nothing: REST confirms what was emitted
    tr.on_update(*bar(STEP, 100.0), True, 2 * STEP - 1, now=0.0)
    tr.on_update(*bar(STEP, 1.0), True, 2 * STEP - 1, now=0.0)
    assert tr.on_rest(tr.plan(now=0.0), [list(bar(STEP, 100.0))], 6, closed_before=2 * STEP) == []
    assert tr.corrected == 1 and not tr.disputed
    assert tr.on_update(*bar(STEP, 100.0), True, 2 * STEP - 1, now=0.0) == [] and not tr.disputed  # a plain duplicate


def test_exchange_clock_bounds_from_server_time_samples() -> None:
    clock = ExchangeClock(tolerance_ms=1000, min_baseline=0.2)
    assert clock.admits(0, at=0.0) is None and clock.lower() is None
    clock.observe(ClockSample(1_000_000, sent=10.0, received=10.001))
    assert clock.latest(10.1) is None  # the rate is unknown yet (this exchange runs 300x)
    assert clock.admits(1_000_500, at=9.0) is True  # arrived before the sample was asked for
    assert clock.admits(1_001_001, at=9.0) is False
    assert clock.admits(1_000_500, at=10.5) is None  # arrived after: only a newer sample can tell
    clock.observe(ClockSample(1_300_000, sent=11.0, received=11.001))
    assert clock.rate is not None and 300_000 <= clock.rate <= 300_000 * 1.01
    latest = clock.latest(12.0)
    assert latest is not None and 1_600_000 <= latest <= 1_600_000 + 3_000
    assert clock.admits(1_600_000, at=12.0) is True
    assert clock.admits(1_600_000 + 5 * 60_000, at=12.0) is None  # 5 minutes ahead: never on the projection alone
    assert clock.latest(11.0 + clock.horizon + 1) is None  # too long since the newest sample
    assert clock.lower() == 1_300_000


def test_candle_buffer_batch() -> None:
    buf = CandleBuffer()
    buf.add("BTC/USDT", "1m", [CandleRow(0, 1, 2, 0.5, 1.5, 3, False, 5), CandleRow(0, 1, 2, 0.5, 1.5, 4, True, 6)], 1.0)
    buf.add("ETH/USDT", "5m", [CandleRow(STEP * 5, 1, 2, 0.5, 1.5, 3, True, 7)], 2.0)
    buf.add("SOL/USDT", "1m", [CandleRow(0, 1, 2, 0.5, 1.5, 3, False, 8)], 3.0)
    assert buf.first_at == 1.0
    batch, keys, closed = buf.take()
    assert batch.schema == CANDLE_BATCH_SCHEMA and batch.num_rows == 4
    assert keys == {("BTC/USDT", "1m"), ("ETH/USDT", "5m"), ("SOL/USDT", "1m")}
    assert closed == {("BTC/USDT", "1m"), ("ETH/USDT", "5m")}  # SOL's candle is still forming
    assert batch.column("closed").to_pylist() == [False, True, True, False]
    assert len(buf) == 0 and buf.first_at is None


def trade_frame(trade_id: int, price: str = "61268.5", event: int = 1001) -> str:
    return (f'{{"e":"trade","E":{event},"s":"BTCUSDT","t":{trade_id},"p":"{price}","q":"0.19331",'
            f'"T":{event - 1},"m":false,"M":true}}')


def test_trade_buffer_parses_raw_frames_in_bulk_and_drops_duplicates() -> None:
    buf = TradeBuffer({"BTCUSDT": "BTC/USDT"})
    buf.frames += [trade_frame(5), trade_frame(5), trade_frame(4), trade_frame(6, "61269.0", 1003)]
    batch, symbols, stats = buf.take()
    assert batch.schema == TRADE_BATCH_SCHEMA
    assert symbols == {"BTC/USDT"} and stats == {"BTC/USDT": (2, 1003)}
    assert batch.column("price").to_pylist() == [61268.5, 61269.0]
    assert batch.column("trade_id").to_pylist() == [5, 6]
    assert batch.column("symbol").to_pylist() == ["BTC/USDT", "BTC/USDT"]
    assert buf.duplicates == 2 and len(buf) == 0
    buf.frames += [trade_frame(7), trade_frame(8)[:30], '{"e":"trade","s":"BTCUSDT"}', trade_frame(9)]
    batch, _, _ = buf.take()
    assert batch.column("trade_id").to_pylist() == [7, 9] and buf.malformed == 2
    # good JSON with a field of the wrong type, and a pretty-printed frame: only the bad one goes
    wrong_type = trade_frame(11).replace('"p":"61268.5"', '"p":61268.5')
    buf.frames += [trade_frame(10), wrong_type, trade_frame(12).replace(",", ",\n  "), trade_frame(13)]
    batch, _, _ = buf.take()
    assert batch.column("trade_id").to_pylist() == [10, 12, 13] and buf.malformed == 3


def unified_trade(trade_id: str | None, event: int | None = 1001, side: str | None = "buy") -> dict[str, Any]:
    """A trade as ccxt.pro's binance ``watch_trades`` returns it."""
    info = {"e": "trade", "E": event, "s": "BTCUSDT", "t": trade_id, "p": "61268.5", "q": "0.19331", "T": 1000,
            "m": side == "sell", "M": True}
    if event is None:
        del info["E"]
    return {"info": info, "timestamp": 1000, "datetime": "1970-01-01T00:00:01.000Z", "symbol": "BTC/USDT",
            "id": trade_id, "order": None, "type": None, "side": side, "takerOrMaker": None, "price": 61268.5,
            "amount": 0.19331, "cost": 11843.8, "fee": None, "fees": []}


def test_trade_buffer_takes_ccxt_trades_like_raw_ones() -> None:
    raw, parsed = TradeBuffer({"BTCUSDT": "BTC/USDT"}), TradeBuffer({})
    raw.frames.append(trade_frame(5))
    parsed.add_unified([unified_trade("5")], 0.0)
    assert parsed.first_at == 0.0
    assert raw.take()[0].equals(parsed.take()[0])


def test_trade_buffer_drops_ccxt_trades_it_cannot_order() -> None:
    buf = TradeBuffer({})
    wrong_type = unified_trade("9") | {"price": "sixty thousand"}
    buf.add_unified([unified_trade("7", event=None, side="sell"), unified_trade("a1b2"), unified_trade(None),
                     wrong_type, unified_trade("8")], 0.0)
    batch, _, stats = buf.take()
    assert batch.column("trade_id").to_pylist() == [7, 8] and buf.malformed == 3
    assert batch.column("buyer_maker").to_pylist() == [True, False]
    assert batch.column("event_time").cast(pa.int64()).to_pylist() == [1000, 1001]  # no E: the trade time
    assert stats == {"BTC/USDT": (2, 1001)}


def test_ring_bounds_memory_and_reports_what_a_slow_reader_missed() -> None:
    ring = BatchRing(capacity=3)
    for i in range(5):
        ring.append(i, frozenset({"a"}))
    assert [e.payload for e in ring.entries] == [2, 3, 4]
    read = ring.read(0)
    assert read.missed == (0, 1) and [e.payload for e in read.entries] == [2, 3, 4] and read.cursor == 5
    assert ring.read(5).entries == [] and ring.read(5).missed is None


def test_guarded_ring_keeps_batches_until_stored() -> None:
    ring = BatchRing(capacity=2, guard=True, hard_capacity=6)
    for i in range(5):
        ring.append(i, frozenset({"a"}))
    assert len(ring.entries) == 5  # nothing stored yet: nothing may go
    ring.persisted(2)
    assert [e.payload for e in ring.entries] == [3, 4]
    for i in range(5, 12):
        ring.append(i, frozenset({"a"}))
    assert len(ring.entries) == 6 and ring.forced_evictions == 3


def test_ring_is_bounded_by_bytes_too() -> None:
    ring = BatchRing(capacity=100, max_bytes=250)
    for i in range(6):
        ring.append(i, frozenset({"a"}), nbytes=100)
    assert [e.payload for e in ring.entries] == [4, 5] and ring.nbytes == 200
    assert ring.read(0).missed == (0, 3)


def test_ring_read_filters_by_key_and_pages() -> None:
    ring = BatchRing(capacity=10)
    for i in range(6):
        ring.append(i, frozenset({"a" if i % 2 else "b"}))
    read = ring.read(None, "a", limit=2)
    assert [e.payload for e in read.entries] == [1, 3] and read.cursor == 4
    assert [e.payload for e in ring.read(read.cursor, "a").entries] == [5]


def test_ring_read_closed_only_skips_batches_without_a_closed_candle_of_the_key() -> None:
    ring = BatchRing(capacity=10)
    ring.append("forming", frozenset({"a", "b"}))
    ring.append("b closed", frozenset({"a", "b"}), closed=frozenset({"b"}))
    ring.append("a closed", frozenset({"a"}), closed=frozenset({"a"}))
    assert [e.payload for e in ring.read(None, "a", closed_only=True).entries] == ["a closed"]
    assert [e.payload for e in ring.read(None, "a").entries] == ["forming", "b closed", "a closed"]
    assert ring.read(None, "a", closed_only=True).cursor == 3


def test_config_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="valid: 1m, 5m"):
        FeedConfig(symbols=("BTC/USDT",), timeframes=("7m",))
    with pytest.raises(ConfigError, match="ccxt, native"):
        FeedConfig(symbols=("BTC/USDT",), connector="zmq")
    with pytest.raises(ConfigError, match="at least one symbol"):
        FeedConfig(symbols=())
    assert FeedConfig(symbols=["BTC/USDT"], shard="eu").name == "feed:binance:eu"
    assert isinstance(FeedConfig(symbols=["BTC/USDT"]).symbols, tuple)
    assert pa.types.is_timestamp(CANDLE_BATCH_SCHEMA.field("open_time").type)


def test_a_polling_consumer_gets_buffered_trades_without_waiting_for_the_flush_cadence() -> None:
    feed = Feed(FeedConfig(symbols=("BTC/USDT",), flush_interval=60.0))  # not started: no flush loop runs
    feed.trades.add_unified([unified_trade("5"), unified_trade("6")], 0.0)

    async def poll() -> tuple[RingRead, RingRead]:
        first = await feed.poll("trades", None, "BTC/USDT", timeout=5.0)
        return first, await feed.poll("trades", first.cursor, "BTC/USDT", timeout=0.05)

    first, second = asyncio.run(poll())
    assert [e.payload.column("trade_id").to_pylist() for e in first.entries] == [[5, 6]]
    assert second.entries == [] and second.cursor == first.cursor == 1


def test_a_closed_candle_reaches_a_closed_only_consumer_at_once_and_forming_updates_wait() -> None:
    feed = Feed(FeedConfig(symbols=("BTC/USDT",), flush_interval=60.0))  # not started: no flush loop runs
    key = ("BTC/USDT", "1m")
    feed.trackers[key] = CandleTracker(STEP)
    feed.series[key] = StreamStats()

    def vouch() -> None:  # a server-time sample asked for after the updates: they are applied
        feed.observe_clock(ClockSample(2 * STEP, sent=time.monotonic(), received=time.monotonic()))

    async def scenario() -> tuple[int, bool, RingRead]:
        waiting = asyncio.ensure_future(feed.poll("candles", None, key, timeout=30.0, closed_only=True))
        while not feed._waiting[True]:  # the consumer is waiting
            await asyncio.sleep(0)
        feed.kline("BTC/USDT", "1m", 0, 100, 101, 99, 100, 1.0, False, STEP // 2)
        vouch()
        due = feed.flush(force=False)  # a closed-only consumer does not force the flush cadence
        for _ in range(3):
            await asyncio.sleep(0)
        woken = waiting.done()
        feed.kline("BTC/USDT", "1m", 0, 100, 102, 99, 101, 2.0, True, STEP)
        vouch()  # the close: flushed as soon as the loop is free
        return due, woken, await asyncio.wait_for(waiting, 5.0)

    due, woken, read = asyncio.run(scenario())
    assert due == 0 and not woken
    [entry] = read.entries
    assert entry.payload.column("closed").to_pylist() == [False, True] and entry.payload.column("close").to_pylist() == [100, 101]


def test_a_bad_candle_from_the_exchange_is_dropped_and_the_rest_stored(tmp_path: Path) -> None:
    feed = Feed(FeedConfig(symbols=("BTC/USDT",), store=str(tmp_path)))  # not started: no network
    feed.trackers[("BTC/USDT", "1m")] = CandleTracker(STEP)
    feed.series[("BTC/USDT", "1m")] = StreamStats()
    for k, (o, h, l, c) in enumerate([(100, 101, 99, 100), (100, 98, 99, 100), (100, 102, 99, 101)]):  # 2nd: high < low
        feed.kline("BTC/USDT", "1m", k * STEP, o, h, l, c, 5.0, True, k * STEP + STEP)
    feed.observe_clock(ClockSample(3 * STEP, sent=time.monotonic(), received=time.monotonic()))  # vouches for them
    assert asyncio.run(feed.write_store()) == 3
    stored = CandleStore(tmp_path).read_table("binance", "BTC/USDT", "1m")
    assert stored.column("open_time").cast(pa.int64()).to_pylist() == [0, 2 * STEP]
    assert feed.bad_candles == 1 and feed.status()["bad_candles"] == 1
    assert len(feed.latest("BTC/USDT", "1m", 2)) == 2
    with pytest.raises(ConfigError, match="at least 1"):
        feed.latest("BTC/USDT", "1m", 0)
    with pytest.raises(ConfigError, match="at least 1"):
        asyncio.run(feed.poll("trades", limit=0))


def test_a_candle_update_dated_after_the_exchange_clock_is_rejected_and_counted() -> None:
    feed = Feed(FeedConfig(symbols=("BTC/USDT",), clock_tolerance=5.0))  # not started: no network
    tracker = feed.trackers[("BTC/USDT", "1m")] = CandleTracker(STEP)
    feed.series[("BTC/USDT", "1m")] = StreamStats()
    feed.kline("BTC/USDT", "1m", 0, 100, 101, 99, 100, 5.0, True, STEP)
    feed.kline("BTC/USDT", "1m", 10 * STEP, 1, 1, 1, 1, 1.0, True, 11 * STEP)  # closed 10 minutes from now
    feed.kline("BTC/USDT", "1m", STEP, 100, 101, 99, 100, 5.0, True, 2 * STEP)
    assert feed.status()["unverified"] == 3 and tracker.closed_count == 0  # nothing applied unread
    feed.observe_clock(ClockSample(2 * STEP, sent=time.monotonic(), received=time.monotonic()))
    assert feed.status()["future_events"] == 1 and feed.status()["unverified"] == 0
    assert [row.t for row in tracker.history] == [0, STEP] and tracker.closed_until == 2 * STEP and not tracker.pending
