"""The trade ledger against both backends: SQLite (the store's file) and a real PostgreSQL server
the tests start. Idempotent orders and fills, the engine's round-trip accounting, atomic
fills, schema versions, concurrent writers in two processes, a PostgreSQL restart under load."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from pg_server import PASSWORD, PostgresProcess
from redis_fixtures import synthetic_bars

from tradpal_ray.backtest import BacktestConfig, backtest
from tradpal_ray.errors import ConfigError, DataError, StoreError
from tradpal_ray.stats.local_redis import wait_for
from tradpal_ray.trading import Fill, Ledger, Order, Position, _ledger, apply_fill, client_order_id, open_ledger

SYMBOL = "BTC/USDT"
MakeLedger = Callable[..., Ledger]




def order(trader: str, bar_ms: int, side: str, units: float, reason: str = "signal") -> Order:
    return Order(trader=trader, client_order_id=client_order_id(trader, SYMBOL, bar_ms, side), symbol=SYMBOL, side=side,
                 units=units, bar_time_ms=bar_ms, reason=reason, created_ms=bar_ms)


def fill_of(o: Order, price: float, fee: float, time_ms: int, seq: int = 0) -> Fill:
    return Fill(o.trader, o.client_order_id, f"{o.client_order_id}:{seq}", o.symbol, o.side, o.units, price, fee, time_ms)


# ----------------------------------------------------------------- pure logic
def test_client_order_id_is_deterministic_short_and_binance_legal() -> None:
    assert client_order_id("sma-1", "BTC/USDT", 1_700_000_000_000, "buy") == "sma-1-BTCUSDT-1700000000000-b"
    long = client_order_id("a-very-long-trader-name-indeed", "ETH/USDT:USDT", 1_700_000_000_000, "sell")
    assert long == client_order_id("a-very-long-trader-name-indeed", "ETH/USDT:USDT", 1_700_000_000_000, "sell")
    ids = {client_order_id(t, s, b, side) for t in ("x", "a-very-long-trader-name-indeed") for s in ("BTC/USDT", "ETH/USDT:USDT")
           for b in (1, 2) for side in ("buy", "sell")}
    assert len(ids) == 16
    assert all(len(i) <= 36 and Order.__dataclass_fields__ and _legal(i) for i in ids)
    with pytest.raises(DataError):
        Order(trader="x", client_order_id="bad id!", symbol=SYMBOL, side="buy", units=1, bar_time_ms=0, created_ms=0)
    with pytest.raises(DataError):
        Fill("x", "c", "c:0", SYMBOL, "buy", 0.0, 100.0, 0.0, 0)


def _legal(text: str) -> bool:
    from tradpal_ray.trading._models import CLIENT_ORDER_ID

    return bool(CLIENT_ORDER_ID.match(text))


def test_apply_fill_accounting() -> None:
    flat = Position("t", SYMBOL)
    long, none = apply_fill(flat, Fill("t", "a", "a:0", SYMBOL, "buy", 2.0, 100.0, 0.2, 1))
    assert none is None and (long.units, long.entry_price, long.entry_fee) == (2.0, 100.0, 0.2)
    added, _ = apply_fill(long, Fill("t", "b", "b:0", SYMBOL, "buy", 2.0, 110.0, 0.22, 2))
    assert added.units == 4.0 and added.entry_price == pytest.approx(105.0) and added.entry_fee == pytest.approx(0.42)
    half, closed = apply_fill(added, Fill("t", "c", "c:0", SYMBOL, "sell", 1.0, 120.0, 0.12, 3))
    assert closed is not None and closed.units == 1.0 and closed.entry_fee == pytest.approx(0.105)
    assert closed.pnl == pytest.approx(1.0 * (120 - 105) - 0.105 - 0.12)
    assert closed.return_pct == pytest.approx(closed.pnl / 105 * 100)
    assert half.units == 3.0 and half.entry_price == pytest.approx(105.0) and half.entry_fee == pytest.approx(0.315)
    short, closed = apply_fill(half, Fill("t", "d", "d:0", SYMBOL, "sell", 5.0, 100.0, 0.5, 4))  # a reversal in one fill
    assert closed is not None and closed.units == 3.0 and closed.exit_fee == pytest.approx(0.3)
    assert short.units == -2.0 and short.entry_price == 100.0 and short.entry_fee == pytest.approx(0.2)
    assert short.realized_pnl == pytest.approx(half.realized_pnl + 3 * (100 - 105) - 0.315 - 0.3)
    flat_again, closed = apply_fill(short, Fill("t", "e", "e:0", SYMBOL, "buy", 2.0, 90.0, 0.18, 5))
    assert closed is not None and closed.pnl == pytest.approx(-2.0 * (90 - 100) - 0.2 - 0.18)  # a short's gain
    assert flat_again.units == 0.0 and flat_again.entry_fee == 0.0


def test_float_sums_close_flat() -> None:
    position = Position("t", SYMBOL)
    for k, units in enumerate((0.1, 0.2)):
        position, _ = apply_fill(position, Fill("t", f"b{k}", f"b{k}:0", SYMBOL, "buy", units, 100.0, 0.0, k))
    position, closed = apply_fill(position, Fill("t", "s", "s:0", SYMBOL, "sell", 0.3, 100.0, 0.0, 9))
    assert position.units == 0.0 and closed is not None and closed.units == pytest.approx(0.3)


# --------------------------------------------------------------- both backends
def test_orders_and_fills_are_idempotent(make_ledger: MakeLedger) -> None:
    changes: list[str] = []
    ledger = make_ledger(on_change=changes.append)
    buy = order("t1", 60_000, "buy", 2.0)
    assert ledger.record_order(buy) is True
    assert ledger.record_order(buy) is False
    assert ledger.open_orders("t1") == [buy]
    assert ledger.update_order(buy.client_order_id, "sent", exchange_order_id="123") is True
    assert ledger.update_order("no-such-order", "sent") is False
    assert ledger.order(buy.client_order_id).exchange_order_id == "123"
    first = ledger.record_fill(fill_of(buy, 100.0, 0.2, 120_000))
    assert ledger.record_fill(fill_of(buy, 100.0, 0.2, 120_000)) == first  # the repeat changes nothing
    assert first == ledger.position("t1", SYMBOL) == Position("t1", SYMBOL, 2.0, 100.0, 0.2, 0.0, 120_000)
    assert ledger.fill_count("t1") == 1
    ledger.update_order(buy.client_order_id, "filled")
    assert ledger.open_orders("t1") == []
    assert changes == ["order", "order", "fill", "fill", "order"]  # nothing written, no notice


def test_round_trips_equal_the_engine(make_ledger: MakeLedger) -> None:
    """The engine's own trades (longshort, stop-loss and take-profit) fed as fills give back its trade rows."""
    ledger = make_ledger()
    bars = synthetic_bars(3)
    config = BacktestConfig(direction="longshort", stop_loss=0.02, take_profit=0.03, size_unit=0.001)
    result = backtest(bars, "sma_cross", {"fast": 5, "slow": 20}, config)
    engine = result.trades[result.trades.exit_reason != "open"].reset_index(drop=True)
    assert len(engine) > 10 and set(engine.exit_reason) >= {"signal", "stop_loss"}
    ms = lambda t: int(t.value // 1_000_000)  # noqa: E731
    for row in result.trades.itertuples():
        side = "buy" if row.units > 0 else "sell"
        entry = order("eng", ms(row.entry_time), side, abs(row.units))
        # A reversal is one order (trader, bar, side) with two fills: the close, then the open.
        seq = 0 if ledger.record_order(entry) else 1
        ledger.record_fill(fill_of(entry, row.entry_price, row.entry_fee, ms(row.entry_time), seq))
        if row.exit_reason != "open":
            exit_ = order("eng", ms(row.exit_time), "sell" if side == "buy" else "buy", abs(row.units),
                          reason=str(row.exit_reason))
            ledger.record_order(exit_)
            ledger.record_fill(fill_of(exit_, row.exit_price, row.exit_fee, ms(row.exit_time)))
    got = ledger.closed_trades("eng")
    assert list(got.columns) == [*_ledger.TRADE_COLUMNS, "symbol"]
    expected = engine[list(_ledger.TRADE_COLUMNS)].assign(exit_reason=engine.exit_reason.astype(str), symbol=SYMBOL)
    pd.testing.assert_frame_equal(got, expected.astype({"exit_reason": object}), check_exact=False, rtol=1e-9,
                                  check_dtype=False)
    still_open = result.trades.iloc[-1]
    position = ledger.position("eng", SYMBOL)
    assert position.units == pytest.approx(still_open.units if still_open.exit_reason == "open" else 0.0)
    assert position.realized_pnl == pytest.approx(engine.pnl.sum())


def test_a_failed_fill_leaves_nothing(make_ledger: MakeLedger, backend_url: str | None) -> None:
    """A constraint violation raised by the database between the fill's insert and the position
    update (a trigger on the positions table) rolls back the fill too."""
    ledger = make_ledger()
    buy = order("t1", 60_000, "buy", 1.0)
    ledger.record_fill(fill_of(buy, 100.0, 0.1, 60_000))
    before = (ledger.position("t1", SYMBOL), ledger.fill_count(), ledger.closed_trades("t1"))
    with ledger.engine.begin() as connection:
        for statement in _failure_trigger(backend_url is None):
            connection.exec_driver_sql(statement)
    sell = order("t1", 120_000, "sell", 1.0)
    with pytest.raises(StoreError, match="injected failure"):
        ledger.record_fill(fill_of(sell, 110.0, 0.11, 120_000))
    assert ledger.position("t1", SYMBOL) == before[0] and ledger.fill_count() == before[1] == 1
    pd.testing.assert_frame_equal(ledger.closed_trades("t1"), before[2])
    with ledger.engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER injected" + ("" if backend_url is None else " ON positions"))
    assert ledger.record_fill(fill_of(sell, 110.0, 0.11, 120_000)).units == 0.0  # the same fill, now it lands
    assert ledger.closed_trades("t1").pnl.tolist() == pytest.approx([10.0 - 0.1 - 0.11])


def _failure_trigger(sqlite_db: bool) -> list[str]:
    if sqlite_db:
        return ["CREATE TRIGGER injected BEFORE UPDATE ON positions WHEN NEW.units = 0 "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"]
    return ["CREATE FUNCTION injected() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ "
            "LANGUAGE plpgsql",
            "CREATE TRIGGER injected BEFORE UPDATE ON positions FOR EACH ROW WHEN (NEW.units = 0) EXECUTE FUNCTION injected()"]


def test_equity_events_and_traders(make_ledger: MakeLedger) -> None:
    ledger = make_ledger()
    ledger.upsert_trader("t1", {"strategy": "sma_cross", "params": {"fast": 5}}, "running")
    ledger.record_equity("t1", 60_000, 10_000.0, 10_000.0)
    ledger.record_equity("t1", 120_000, 10_010.0, 0.0)
    ledger.record_equity("t1", 120_000, 10_020.0, 0.0)  # the same time again: replaced
    curve = ledger.equity("t1")
    assert curve.tolist() == [10_000.0, 10_020.0] and curve.index[1] == pd.Timestamp(120_000, unit="ms", tz="UTC")
    ledger.record_event("t1", "decision", {"latency_ms": 3.5, "bar": np.int64(7)}, time_ms=5)
    ledger.record_event("t1", "halt", {"limit": "max_daily_loss"}, time_ms=6)
    assert [e.kind for e in ledger.events("t1")] == ["halt", "decision"]
    assert ledger.events("t1", kind="decision")[0].detail == {"latency_ms": 3.5, "bar": 7}
    ledger.set_status("t1", "halted", "max daily loss 5% breached")
    [record] = ledger.traders()
    assert (record.status, record.reason, record.config["params"]) == ("halted", "max daily loss 5% breached", {"fast": 5})
    ledger.upsert_trader("t1", {"strategy": "sma_cross"}, "running")
    assert ledger.traders()[0].reason is None
    with pytest.raises(DataError):
        ledger.set_status("nobody", "halted")
    with pytest.raises(DataError):
        ledger.upsert_trader("bad name/..", {}, "running")


def test_deferred_rows_land_together_in_call_order(make_ledger: MakeLedger) -> None:
    changes: list[str] = []
    ledger = make_ledger()
    ledger.on_change = changes.append
    ledger.upsert_trader("t1", {}, "running")
    ledger.upsert_trader("t2", {}, "running")
    changes.clear()
    with ledger.deferred():
        for trader in ("t1", "t2"):
            ledger.record_equity(trader, 60_000, 1.0, 1.0)
            ledger.record_equity(trader, 60_000, 2.0, 2.0)  # the same point again in the batch: the last one counts
            ledger.record_event(trader, "decision", {"n": 1})
        with ledger.deferred():  # nested: the outer block writes
            ledger.record_event("t1", "halt", {"n": 2})
        assert ledger.equity("t1").empty and not ledger.events("t1") and not changes  # nothing visible yet
    assert ledger.equity("t1").tolist() == ledger.equity("t2").tolist() == [2.0]
    assert [(e.kind, e.detail) for e in ledger.events("t1")] == [("halt", {"n": 2}), ("decision", {"n": 1})]
    assert sorted(changes) == ["equity", "event"]  # one notification per kind for the whole batch
    with pytest.raises(RuntimeError), ledger.deferred():  # a failing block still writes what it queued
        ledger.record_event("t2", "halt", {"n": 3})
        raise RuntimeError("a trader failed")
    assert ledger.events("t2")[0].detail == {"n": 3}


def test_deferred_orders_and_fills_land_with_the_batch_and_undeferred_ones_at_once(make_ledger: MakeLedger) -> None:
    changes: list[str] = []
    ledger = make_ledger(on_change=changes.append)
    paper, sent = order("t1", 60_000, "buy", 2.0), order("t2", 60_000, "buy", 1.0)
    with ledger.deferred():  # a paper trader's order, its fill and status join the batch, in call order
        assert ledger.record_order(paper, defer=True) is None
        assert ledger.record_fill(fill_of(paper, 100.0, 0.2, 60_000), defer=True) is None
        assert ledger.update_order(paper.client_order_id, "filled", defer=True) is None
        ledger.record_equity("t1", 60_000, 1.0, 1.0)
        assert ledger.record_order(sent) is True  # an exchange order: committed before it is sent
        assert ledger.order(sent.client_order_id) is not None and changes == ["order"]
        assert ledger.order(paper.client_order_id) is None and ledger.fill_count("t1") == 0
    assert ledger.order(paper.client_order_id).status == "filled"
    assert ledger.position("t1", SYMBOL) == Position("t1", SYMBOL, 2.0, 100.0, 0.2, 0.0, 60_000)
    assert ledger.equity("t1").tolist() == [1.0]
    assert changes == ["order", "order", "fill", "equity"]  # the batch's changes once each, after its commit


def test_schema_is_versioned(make_ledger: MakeLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = make_ledger()
    assert ledger.schema_version() == _ledger.SCHEMA_VERSION == 2
    assert ledger.migrate() == 2  # already there: nothing to do
    # a version-1 database (before traders.host) is upgraded in place by the real upgrade step, its rows kept
    ledger.upsert_trader("old", {"strategy": "sma_cross"}, "running")
    versions = _ledger.schema_version
    ledger.run(lambda c: (c.exec_driver_sql("ALTER TABLE traders DROP COLUMN host"),
                          c.execute(sa.update(versions).values(version=1))))
    assert ledger.schema_version() == 1
    upgraded = make_ledger()
    assert upgraded.schema_version() == 2 and [(t.name, t.host) for t in upgraded.traders()] == [("old", None)]
    upgraded.set_host("old", "trader-host:i:h")
    assert upgraded.traders()[0].host == "trader-host:i:h"
    added: list[int] = []

    def add_note_column(connection: sa.Connection) -> None:
        connection.exec_driver_sql("ALTER TABLE traders ADD COLUMN note TEXT")
        added.append(1)

    monkeypatch.setattr(_ledger, "UPGRADES", (*_ledger.UPGRADES, add_note_column))
    monkeypatch.setattr(_ledger, "SCHEMA_VERSION", 3)
    assert make_ledger().schema_version() == 3 and added == [1]
    assert make_ledger().schema_version() == 3 and added == [1]  # upgraded once
    monkeypatch.setattr(_ledger, "SCHEMA_VERSION", 2)
    with pytest.raises(ConfigError, match="schema version 3"):
        make_ledger()


WRITER = """
import sys
from tradpal_ray.trading import Fill, open_ledger
url, store, first, last = sys.argv[1] or None, sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ledger = open_ledger(url, store)
for k in range(first, last):
    ledger.record_fill(Fill("t1", f"o{k}", f"f{k}", "BTC/USDT", "buy", 1.0, 100.0 + k, 0.01, k))
print(ledger.fill_count())
"""


def test_concurrent_writers_in_two_processes(make_ledger: MakeLedger, backend_url: str | None, store_root: Path) -> None:
    """Two processes record overlapping fills into one position: each fill counts once, no update is lost."""
    ledger = make_ledger()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, backend_url or "", str(store_root), str(a), str(b)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for a, b in ((0, 150), (50, 200))]
    for writer in writers:
        out, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err
    assert ledger.fill_count() == 200
    position = ledger.position("t1", SYMBOL)
    assert position.units == 200.0
    assert position.entry_price == pytest.approx(100.0 + np.arange(200).mean())
    assert position.entry_fee == pytest.approx(2.0)
    [open_trade] = ledger.run(lambda c: c.execute(sa.select(_ledger.trades)).all())
    assert open_trade.units == 200.0 and open_trade.exit_time_ms is None


def test_postgres_restart_under_load(make_postgres: Callable[[], PostgresProcess], store_root: Path) -> None:
    """The server restarts (immediate: a crash) twice while a writer records fills: each call
    returns once its fill is committed, none is lost and none counted twice."""
    server = make_postgres()
    ledger = open_ledger(server.create_database(), store_root, retry_s=60)
    written: list[int] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        k = 0
        try:
            while not stop.is_set():
                side = "buy" if k % 2 == 0 else "sell"
                ledger.record_fill(Fill("t1", f"o{k}", f"f{k}", SYMBOL, side, 1.0, 100.0 + k % 7, 0.01, k))
                written.append(k)
                k += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for target in (50, 150):
            wait_for(lambda t=target: len(written) >= t or failures, timeout=60, what=f"{target} fills")
            server.restart("immediate")
        wait_for(lambda: len(written) >= 250 or failures, timeout=60, what="fills after the restarts")
    finally:
        stop.set()
        writer.join(timeout=120)
    assert not failures and not writer.is_alive()
    assert ledger.retries >= 2  # each restart interrupted the writer, which retried
    n = len(written)
    assert written == list(range(n))
    assert ledger.fill_count() == n
    position = ledger.position("t1", SYMBOL)
    assert position.units == (1.0 if n % 2 else 0.0)
    assert len(ledger.closed_trades("t1")) == n // 2
    ledger.close()


def test_secrets_stay_out_of_errors_and_identity(pg_server: PostgresProcess, store_root: Path) -> None:
    wrong = pg_server.url().replace(PASSWORD, "wrong-secret-9")
    with pytest.raises(StoreError) as failure:
        open_ledger(wrong, store_root, retry_s=0.5)
    assert "wrong-secret-9" not in str(failure.value) and "***" in str(failure.value)
    ledger = open_ledger(pg_server.create_database(), store_root)
    assert PASSWORD not in ledger.identity and ledger.identity.startswith("postgresql+psycopg://tradpal:***@127.0.0.1")
    ledger.close()
    with pytest.raises(ConfigError, match="not a database URL"):
        open_ledger("not a url at all", store_root)
    with pytest.raises(ConfigError, match="PostgreSQL and SQLite"):
        open_ledger("mysql://u:p@127.0.0.1/x", store_root)
    with pytest.raises(ConfigError, match="TRADPAL_DB_URL"):
        open_ledger(None, "s3://bucket/store")


def test_sqlite_ledger_is_a_wal_file_in_the_store(store_root: Path) -> None:
    ledger = open_ledger(None, store_root)
    assert (store_root / "ledger.sqlite").exists()
    assert ledger.run(lambda c: c.exec_driver_sql("PRAGMA journal_mode").scalar()) == "wal"
    assert math.isclose(ledger.record_fill(Fill("t", "o", "o:0", SYMBOL, "buy", 0.5, 10.0, 0.0, 1)).units, 0.5)
    with ledger.engine.begin() as writer:  # a writer holds the lock (BEGIN IMMEDIATE) mid-transaction
        writer.execute(_ledger.positions.update().values(units=5.0))
        assert ledger.position("t", SYMBOL).units == 0.5  # a reader takes no lock: the committed state, at once
    assert ledger.position("t", SYMBOL).units == 5.0
    ledger.close()


def test_sqlite_writers_take_turns_on_a_lock_file_that_hands_over_at_once(store_root: Path) -> None:
    import fcntl

    ledger = open_ledger(None, store_root)
    done = threading.Event()
    with (store_root / "ledger.sqlite-writer").open("a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)  # another process's writer has the turn
        writer = threading.Thread(target=lambda: (ledger.record_event("t", "note", {}), done.set()))
        writer.start()
        assert not done.wait(1.0)  # no write while another holds the turn
        assert ledger.events("t") == []  # reads take no turn
    assert done.wait(30.0) and [e.kind for e in ledger.events("t")] == ["note"]  # the turn released: written
    writer.join()
    ledger.close()
