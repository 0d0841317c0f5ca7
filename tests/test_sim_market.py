"""Pure parts of the simulator: data generation, aggregation, wire shapes, faults, replay source."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from tradpal_ray.errors import ConfigError, DataError
from tradpal_ray.sim import wire
from tradpal_ray.sim.faults import FaultState, parse_fault
from tradpal_ray.sim.market import (
    Bars,
    MarketView,
    SymbolSpec,
    aggregate,
    decimals_of,
    fmt_decimal,
)
from tradpal_ray.sim.replay import ReplaySource
from tradpal_ray.sim.synthetic import DAY_MS, MINUTE_MS, SyntheticSource, WalkParams

GENESIS = 1_704_067_200_000  # 2024-01-01


def test_fmt_decimal_is_exact() -> None:
    assert fmt_decimal(12345, 2) == "123.45"
    assert fmt_decimal(5, 3) == "0.005"
    assert fmt_decimal(-5, 2) == "-0.05"
    assert fmt_decimal(7, 0) == "7"
    assert decimals_of(np.array([1.5, 2.25, 100.0])) == 2
    assert decimals_of(np.array([42000.0, 1.0])) == 0


def test_symbol_specs_and_bad_symbols() -> None:
    spec = SymbolSpec.for_price("BTC/USDT", 42000.0)
    assert (spec.id, spec.stream, spec.price_decimals, spec.qty_decimals) == (
        "BTCUSDT",
        "btcusdt",
        2,
        5,
    )
    for bad in ("BTCUSDT", "BTC/", "btc/usdt", "BTC/XYZQ"):
        with pytest.raises(ConfigError):
            SymbolSpec.for_price(bad, 1.0)


def test_minute_trades_reproduce_minute_bars_exactly() -> None:
    source = SyntheticSource(["BTC/USDT", "DOGE/USDT"], seed=3)
    for symbol in source.specs():
        bars = source.bars(
            symbol, GENESIS + 5 * DAY_MS, GENESIS + 5 * DAY_MS + 120 * MINUTE_MS
        )
        assert len(bars) == 120
        next_id = int(bars.f[0])
        for i in range(len(bars)):
            trades = source.bar_trades(symbol, int(bars.t[i]))
            assert trades.p[0] == bars.o[i] and trades.p[-1] == bars.c[i]
            assert trades.p.max() == bars.h[i] and trades.p.min() == bars.l[i]
            assert (
                trades.q.sum() == bars.v[i]
                and len(trades) == bars.n[i]
                and (trades.q > 0).all()
            )
            assert trades.id.tolist() == list(
                range(next_id, next_id + len(trades))
            )  # sequential ids
            assert (
                np.all(np.diff(trades.t) >= 0)
                and bars.t[i] <= trades.t[0]
                and trades.t[-1] < bars.t[i] + MINUTE_MS
            )
            next_id += len(trades)
        assert np.array_equal(bars.o[1:], bars.c[:-1])  # the walk is continuous


def test_days_chain_and_ids_continue_across_days() -> None:
    source = SyntheticSource(["ETH/USDT"])
    two_days = source.bars(
        "ETH/USDT",
        GENESIS + 30 * DAY_MS - 10 * MINUTE_MS,
        GENESIS + 30 * DAY_MS + 10 * MINUTE_MS,
    )
    assert len(two_days) == 20
    assert np.array_equal(two_days.o[1:], two_days.c[:-1])
    assert np.array_equal(two_days.f[1:], two_days.f[:-1] + two_days.n[:-1])
    assert (
        len(source.bars("ETH/USDT", GENESIS - DAY_MS, GENESIS)) == 0
    )  # nothing before genesis
    assert len(source.bar_trades("ETH/USDT", GENESIS - MINUTE_MS)) == 0


def test_determinism_same_seed_same_data_and_symbols_differ() -> None:
    window = (GENESIS + 40 * DAY_MS, GENESIS + 40 * DAY_MS + 600 * MINUTE_MS)
    a = SyntheticSource(["BTC/USDT", "FOO/USDT"], seed=11).bars("BTC/USDT", *window)
    b = SyntheticSource(["BTC/USDT"], seed=11).bars(
        "BTC/USDT", *window
    )  # cache order does not matter
    c = SyntheticSource(["BTC/USDT"], seed=12).bars("BTC/USDT", *window)
    for name in Bars.FIELDS:
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.c, c.c)
    foo = SyntheticSource(["FOO/USDT", "BAR/USDT"], seed=11)
    returns = [
        np.diff(np.log(foo.bars(s, *window).c)) for s in ("FOO/USDT", "BAR/USDT")
    ]
    assert not np.allclose(returns[0], returns[1])


def test_aggregate_matches_pandas_resample() -> None:
    source = SyntheticSource(["BTC/USDT"], params=WalkParams(trades_per_minute=10))
    bars = source.bars("BTC/USDT", GENESIS, GENESIS + 2 * DAY_MS)
    frame = pd.DataFrame(
        {n: getattr(bars, n) for n in "ohlcv"}, index=pd.to_datetime(bars.t, unit="ms")
    )
    expected = frame.resample("4h").agg(
        {"o": "first", "h": "max", "l": "min", "c": "last", "v": "sum"}
    )
    four_hours = aggregate(bars, 4 * 3_600_000)
    assert len(four_hours) == 12
    for n in "ohlcv":
        assert np.array_equal(getattr(four_hours, n), expected[n].to_numpy())
    assert np.array_equal(four_hours.f, bars.f[::240])


def test_view_forming_candle_and_nothing_in_future() -> None:
    view = MarketView(SyntheticSource(["BTC/USDT"]))
    now = GENESIS + 3 * DAY_MS + 7 * MINUTE_MS + 30_000  # half-way through a minute
    candles = view.latest_candles("BTC/USDT", "5m", 10, now)
    assert candles.t[-1] == GENESIS + 3 * DAY_MS + 5 * MINUTE_MS and len(candles) == 10
    full = view.candles(
        "BTC/USDT",
        "5m",
        int(candles.t[-1]),
        int(candles.t[-1]) + 300_000,
        now + 10 * MINUTE_MS,
    )
    assert (
        candles.v[-1] < full.v[0] and candles.o[-1] == full.o[0]
    )  # forming: part of the volume
    trades = view.trades("BTC/USDT", now - MINUTE_MS, now + MINUTE_MS, now)
    assert trades.t.max() <= now
    closed = view.closed_candles(
        "BTC/USDT", "1m", now - 5 * MINUTE_MS, now + MINUTE_MS, now
    )
    assert (
        closed.t[-1] + MINUTE_MS <= now and len(closed) == 4
    )  # 3..6 closed, 7 forming


def test_trade_frame_template_equals_orjson() -> None:
    source = SyntheticSource(["BTC/USDT"])
    spec = source.specs()["BTC/USDT"]
    trades = source.bar_trades("BTC/USDT", GENESIS + 77 * MINUTE_MS)
    frames = wire.trade_frames(spec, trades)
    aggs = wire.agg_trade_frames(spec, trades)
    for k in (0, len(trades) - 1):
        i, t, p, q, m = (
            trades.id[k],
            trades.t[k],
            trades.p[k],
            trades.q[k],
            bool(trades.m[k]),
        )
        event = {
            "e": "trade",
            "E": int(t),
            "s": "BTCUSDT",
            "t": int(i),
            "p": spec.price(p),
            "q": spec.qty(q),
            "T": int(t),
            "m": m,
            "M": True,
        }
        assert frames[k] == orjson.dumps(event)
        agg = orjson.loads(aggs[k])
        assert (agg["e"], agg["a"], agg["f"], agg["l"], agg["p"]) == (
            "aggTrade",
            int(i),
            int(i),
            int(i),
            spec.price(p),
        )


def test_parse_fault_validates() -> None:
    assert parse_fault({"kind": "rest_error", "status": 418, "count": 2}).count == 2
    assert (
        parse_fault({"kind": "stall", "duration": 1.5, "connection": 3}).connection == 3
    )
    for body, words in [
        ({"kind": "boom"}, "unknown fault kind"),
        ({"kind": "close", "duration": 1}, "does not take duration"),
        ({"kind": "rest_error", "status": 404}, "status must be one of"),
        ({"kind": "latency"}, 'needs "ms"'),
        ({"kind": "stall", "duration": -1}, "must be >= 0"),
        ({"kind": "duplicate", "count": "2"}, "must be an integer"),
        ([1, 2], "JSON object"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_fault(body)


def test_fault_state_timing_and_counts() -> None:
    now = [100.0]
    state = FaultState(clock=lambda: now[0])
    state.arm(parse_fault({"kind": "stall", "duration": 2, "connection": 1}))
    state.arm(parse_fault({"kind": "latency", "ms": 250}))
    state.arm(parse_fault({"kind": "rest_error", "count": 2, "status": 503}))
    assert state.silenced(1) and not state.silenced(2) and not state.frozen(1)
    assert state.latency() == 0.25 and state.latency(7) == 0.25
    assert state.take_rest_error().status == 503 and state.take_rest_error() is not None
    assert state.take_rest_error() is None and state.served["rest_error"] == 2
    now[0] += 2.5
    assert not state.silenced(1)
    state.clear()
    assert state.latency() == 0.0 and state.injected["stall"] == 1


def _candles_frame() -> pd.DataFrame:
    times = pd.date_range("2024-05-01", periods=48, freq="1h", tz="UTC")
    close = 100 + np.cumsum(np.where(np.arange(48) % 3, 0.25, -0.5))
    return pd.DataFrame(
        {
            "symbol": "SOL/USDT",
            "timeframe": "1h",
            "open_time": times,
            "open": close - 0.1,
            "high": close + 0.5,
            "low": close - 0.75,
            "close": close,
            "volume": np.arange(48) * 1.5 + 3.0,
        }
    )


def test_replay_source_serves_candles_and_matching_trades() -> None:
    frame = _candles_frame()
    source = ReplaySource(frame)
    view = MarketView(source)
    assert source.base_ms("SOL/USDT") == 3_600_000
    first = int(frame["open_time"].iloc[0].value // 1_000_000)
    now = first + 48 * 3_600_000
    table = view.table(
        "SOL/USDT", "1h", view.closed_candles("SOL/USDT", "1h", first, now, now)
    )
    assert table.num_rows == 48
    assert np.allclose(
        table["close"].to_numpy(), frame["close"].to_numpy(), rtol=0, atol=1e-12
    )
    assert np.array_equal(table["volume"].to_numpy(), frame["volume"].to_numpy())
    bars = source.bars("SOL/USDT", first, now)
    for i in (0, 17, 47):
        trades = source.bar_trades("SOL/USDT", int(bars.t[i]))
        assert (trades.p[0], trades.p.max(), trades.p.min(), trades.p[-1]) == (
            bars.o[i],
            bars.h[i],
            bars.l[i],
            bars.c[i],
        )
        assert trades.q.sum() == bars.v[i]
    four = view.closed_candles("SOL/USDT", "4h", first, now, now)
    assert len(four) == 12 and four.h[0] == bars.h[:4].max()
    with pytest.raises(ConfigError, match="finer than the data"):
        view.candles("SOL/USDT", "5m", first, now, now)
    with pytest.raises(ConfigError, match="not in the replay data"):
        ReplaySource(frame, symbols=["BTC/USDT"])
    with pytest.raises(DataError):
        ReplaySource(frame.drop(columns=["volume"]))
