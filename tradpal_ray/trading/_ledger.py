"""The trade ledger: orders, fills, positions, round-trip trades, equity and trader events in SQL.

SQLAlchemy Core, not the ORM: the records are already frozen dataclasses, the writes are a
few explicit statements per transaction (insert-or-ignore, a locked position row), and the
live statistics are SQL aggregates over the same :class:`~sqlalchemy.Table` objects. SQLite
by default (``<store>/ledger.sqlite``, WAL, every write transaction ``BEGIN IMMEDIATE`` after its turn
on the lock file ``ledger.sqlite-writer``, reads deferred),
PostgreSQL (psycopg 3) when ``TRADPAL_DB_URL`` names one.

Every write is one transaction, retried as a whole on a lost connection (a restarted
server, a locked SQLite file) until ``retry_s`` runs out; the inserts are idempotent
(client order id, fill id: ``INSERT ... ON CONFLICT DO NOTHING RETURNING``), so a retry after a commit whose answer was lost changes nothing.
After each committed change ``on_change(kind)`` is called (kinds: :data:`CHANGE_KINDS`),
e.g. to invalidate the live statistics cache. Inside :meth:`Ledger.deferred` the per-candle rows
(equity points, events) of many traders are queued and written together: one transaction
of two bulk inserts instead of two transactions per trader and candle.

Schema versions: ``schema_version`` holds the version a database is at. A fresh database
gets the current tables (``metadata.create_all``) and the latest version. To change the
schema, edit the tables below and append to :data:`UPGRADES` a function that brings a
database at the previous version to the new one (``ALTER TABLE ...`` through the
connection it receives); databases are upgraded at start, in one transaction, under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from tradpal_ray.errors import ConfigError, DataError, StoreError
from tradpal_ray.log import get_logger, redact
from tradpal_ray.trading._models import OPEN_ORDER_STATUSES, ORDER_STATUSES, TRADER_NAME, Fill, Order, Position, signed_units

log = get_logger(__name__)

T = TypeVar("T")

SQLITE_FILE = "ledger.sqlite"
CHANGE_KINDS = ("order", "fill", "trader", "equity", "event")
"""What ``on_change`` is told was written."""
FLAT_TOLERANCE = 1e-9
"""A position within this fraction of its size of zero after a closing fill is flat (float sums)."""
TRADE_COLUMNS = ("entry_time", "exit_time", "entry_price", "exit_price", "units", "entry_fee", "exit_fee", "pnl",
                 "return_pct", "exit_reason")
"""Columns of :meth:`Ledger.closed_trades`, as :attr:`tradpal_ray.backtest.BacktestResult.trades` (then ``symbol``)."""

metadata = sa.MetaData()
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
Name = sa.String(64)
Symbol = sa.String(32)

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, primary_key=True),
                          sa.Column("applied_ms", sa.BigInteger, nullable=False))
traders = sa.Table(
    "traders", metadata,
    sa.Column("name", Name, primary_key=True), sa.Column("config", sa.Text, nullable=False),
    sa.Column("status", sa.String(32), nullable=False), sa.Column("reason", sa.Text),
    sa.Column("updated_ms", sa.BigInteger, nullable=False), sa.Column("host", sa.String(160)),
)
orders = sa.Table(
    "orders", metadata,
    sa.Column("client_order_id", sa.String(36), primary_key=True), sa.Column("trader", Name, nullable=False),
    sa.Column("symbol", Symbol, nullable=False), sa.Column("side", sa.String(4), nullable=False),
    sa.Column("units", sa.Double, nullable=False), sa.Column("order_type", sa.String(16), nullable=False),
    sa.Column("bar_time_ms", sa.BigInteger, nullable=False), sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False), sa.Column("exchange_order_id", sa.String(64)),
    sa.Column("created_ms", sa.BigInteger, nullable=False), sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Index("orders_trader_status", "trader", "status"),
)
fills = sa.Table(
    "fills", metadata,
    sa.Column("fill_id", sa.String(96), primary_key=True), sa.Column("trader", Name, nullable=False),
    sa.Column("client_order_id", sa.String(36), nullable=False), sa.Column("symbol", Symbol, nullable=False),
    sa.Column("side", sa.String(4), nullable=False), sa.Column("units", sa.Double, nullable=False),
    sa.Column("price", sa.Double, nullable=False), sa.Column("fee", sa.Double, nullable=False),
    sa.Column("time_ms", sa.BigInteger, nullable=False),
    sa.Index("fills_trader_time", "trader", "time_ms"), sa.Index("fills_time", "time_ms"),
)
trades = sa.Table(
    "trades", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True), sa.Column("trader", Name, nullable=False),
    sa.Column("symbol", Symbol, nullable=False), sa.Column("entry_time_ms", sa.BigInteger, nullable=False),
    sa.Column("exit_time_ms", sa.BigInteger), sa.Column("entry_price", sa.Double, nullable=False),
    sa.Column("exit_price", sa.Double), sa.Column("units", sa.Double, nullable=False),
    sa.Column("entry_fee", sa.Double, nullable=False), sa.Column("exit_fee", sa.Double, nullable=False, default=0.0),
    sa.Column("pnl", sa.Double), sa.Column("return_pct", sa.Double), sa.Column("exit_reason", sa.String(16)),
    sa.Index("trades_exit_time", "exit_time_ms"), sa.Index("trades_trader_exit_time", "trader", "exit_time_ms"),
)
"""Round trips: a row opens with the position and gets its exit when the position closes
(``exit_time_ms`` NULL while open); a partial close splits off a closed row."""
positions = sa.Table(
    "positions", metadata,
    sa.Column("trader", Name, primary_key=True), sa.Column("symbol", Symbol, primary_key=True),
    sa.Column("units", sa.Double, nullable=False), sa.Column("entry_price", sa.Double, nullable=False),
    sa.Column("entry_fee", sa.Double, nullable=False), sa.Column("realized_pnl", sa.Double, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False), sa.Column("trade_id", Id),
)
equity_points = sa.Table(
    "equity", metadata,
    sa.Column("trader", Name, primary_key=True), sa.Column("time_ms", sa.BigInteger, primary_key=True),
    sa.Column("equity", sa.Double, nullable=False), sa.Column("cash", sa.Double, nullable=False),
)
events = sa.Table(
    "events", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True), sa.Column("trader", Name, nullable=False),
    sa.Column("time_ms", sa.BigInteger, nullable=False), sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("events_trader_kind", "trader", "kind", "id"),
)



def _add_trader_host(connection: Connection) -> None:
    """Version 2: ``traders.host``, the Ray actor hosting the trader (a restarted host finds its traders)."""
    connection.execute(sa.text("ALTER TABLE traders ADD COLUMN host VARCHAR(160)"))


UPGRADES: tuple[Callable[[Connection], None], ...] = (_add_trader_host,)
"""Upgrade steps: ``UPGRADES[i]`` takes a database from version ``i + 1`` to ``i + 2``."""
SCHEMA_VERSION = 1 + len(UPGRADES)
MIGRATION_LOCK = 7_461_726_164
"""PostgreSQL advisory lock key taken while the schema is created or upgraded."""


@dataclass(frozen=True)
class TraderRecord:
    """A trader as the ledger knows it: its configuration, status and why (a halt's reason)."""

    name: str
    config: dict[str, Any]
    status: str
    reason: str | None
    updated_ms: int
    host: str | None = None
    """The Ray actor that hosts it (``trader-host:...``), None for a trader run outside a host."""


@dataclass(frozen=True)
class LedgerEvent:
    """Something a trader reports (a decision and its latency, a halt, a reconciliation)."""

    trader: str
    time_ms: int
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class ClosedPart:
    """The part of a position a fill closes: a round trip's exit (``units`` signed as the position)."""

    units: float
    entry_price: float
    entry_fee: float
    exit_price: float
    exit_fee: float
    pnl: float
    return_pct: float


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return time.time_ns() // 1_000_000


def _encode(detail: dict[str, Any]) -> str:
    return orjson.dumps(detail, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def apply_fill(position: Position, fill: Fill) -> tuple[Position, ClosedPart | None]:
    """The position after ``fill`` and the part of the old one it closed, if any.

    The engine's accounting: a trade's PnL = units * (exit - entry) - entry fee - exit fee,
    return % on the entry notional. Adding to a position averages its entry price and sums
    its fees; a partial close takes its share of the entry fee; a fill larger than the
    position closes it and opens the rest the other way (the fill's fee split pro rata).
    """
    held, delta = position.units, signed_units(fill.side, fill.units)
    if held == 0 or (held > 0) == (delta > 0):
        units = held + delta
        entry_price = (held * position.entry_price + delta * fill.price) / units
        return Position(fill.trader, fill.symbol, units, entry_price, position.entry_fee + fill.fee,
                        position.realized_pnl, fill.time_ms), None
    remaining = held + delta
    flat = abs(remaining) <= FLAT_TOLERANCE * abs(held)
    closing = abs(held) if flat else min(abs(delta), abs(held))
    entry_fee = position.entry_fee * closing / abs(held)
    exit_fee = fill.fee * closing / abs(delta)
    units = math.copysign(closing, held)
    pnl = units * (fill.price - position.entry_price) - entry_fee - exit_fee
    closed = ClosedPart(units, position.entry_price, entry_fee, fill.price, exit_fee, pnl,
                        pnl / (closing * position.entry_price) * 100.0)
    realized = position.realized_pnl + pnl
    if flat:
        after = Position(fill.trader, fill.symbol, 0.0, 0.0, 0.0, realized, fill.time_ms)
    elif (remaining > 0) == (held > 0):
        after = Position(fill.trader, fill.symbol, remaining, position.entry_price, position.entry_fee - entry_fee,
                         realized, fill.time_ms)
    else:
        after = Position(fill.trader, fill.symbol, remaining, fill.price, fill.fee - exit_fee, realized, fill.time_ms)
    return after, closed


def sqlite_path(store_root: str | os.PathLike[str]) -> Path:
    """Where the default SQLite ledger of a store lives (ConfigError for a store that is not a local directory)."""
    root = os.fspath(store_root)
    if "://" in root and not root.startswith("file://"):
        raise ConfigError(f"the store {redact(root)} is not local: set TRADPAL_DB_URL to a database for the ledger")
    return Path(root.removeprefix("file://")).resolve() / SQLITE_FILE


def ledger_exists(url: str | None, store_root: str | os.PathLike[str]) -> bool:
    """Whether there is a ledger to read: a database URL is given, or the store's SQLite file exists."""
    return bool(url) or sqlite_path(store_root).exists()


def database_url(url: str | None, store_root: str | os.PathLike[str]) -> sa.URL:
    """The SQLAlchemy URL of the ledger: ``url`` (``postgresql://`` means psycopg 3) or the store's SQLite file."""
    if not url:
        return sa.URL.create("sqlite+pysqlite", database=str(sqlite_path(store_root)))
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"TRADPAL_DB_URL is not a database URL: {redact(url)}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigError(f"the ledger supports PostgreSQL and SQLite, not {parsed.get_backend_name()!r}")
    return parsed


def ledger_identity(url: str | None, store_root: str | os.PathLike[str]) -> str:
    """The ledger's name without secrets (its URL, password masked): what cache keys and logs use."""
    return _identity(database_url(url, store_root))


def _identity(url: sa.URL) -> str:
    return redact(url.render_as_string(hide_password=True))


def _sqlite_engine(url: sa.URL) -> Engine:
    Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(connection: Any, _record: Any) -> None:
        connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=30000")

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # Writers queue at the start (no lock upgrade to fail half-way); readers take no lock (WAL).
        connection.exec_driver_sql("BEGIN" if connection.get_execution_options().get("ledger_read_only") else "BEGIN IMMEDIATE")

    return engine


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """A lost or refused connection, a restarting server, a busy SQLite file: worth a retry."""
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) or exc.connection_invalidated


def _trader_name(name: str) -> str:
    if not TRADER_NAME.match(name):
        raise DataError(f"trader name {name!r} does not match {TRADER_NAME.pattern}")
    return name


@dataclass(frozen=True)
class _Statements:
    """The statements of the per-fill path, built once per ledger and run with parameters: building
    a statement (and its cache key) costs SQLAlchemy more than SQLite takes to run it. Bound
    parameters of WHERE clauses start with ``_`` (the others name columns)."""

    order_insert: Any
    order_update: Any
    order_reason: Any
    fill_insert: Any
    position: Any
    position_locked: Any
    """The position row, inserted flat if new, locked for this transaction (an upsert that changes nothing)."""
    position_update: Any
    trade_insert: Any
    trade_update: Any
    trade_entry_time: Any

    @classmethod
    def build(cls, insert: Callable[[sa.Table], Any]) -> _Statements:
        """The statements for the dialect whose ``insert`` (with ON CONFLICT) is given."""
        order_id, trade_id = sa.bindparam("_id"), sa.bindparam("_id")
        key = (positions.c.trader == sa.bindparam("_trader")) & (positions.c.symbol == sa.bindparam("_symbol"))
        return cls(
            order_insert=insert(orders).on_conflict_do_nothing(index_elements=["client_order_id"])
            .returning(orders.c.client_order_id),
            order_update=orders.update().where(orders.c.client_order_id == order_id),
            order_reason=sa.select(orders.c.reason).where(orders.c.client_order_id == order_id),
            fill_insert=insert(fills).on_conflict_do_nothing(index_elements=["fill_id"]).returning(fills.c.fill_id),
            position=sa.select(positions).where(key),
            position_locked=(upsert := insert(positions)).on_conflict_do_update(
                index_elements=["trader", "symbol"], set_={"trader": upsert.excluded.trader}).returning(*positions.c),
            position_update=positions.update().where(key),
            trade_insert=trades.insert().returning(trades.c.id),
            trade_update=trades.update().where(trades.c.id == trade_id),
            trade_entry_time=sa.select(trades.c.entry_time_ms).where(trades.c.id == trade_id),
        )


class Ledger:
    """The ledger over one database; thread-safe (a connection pool), shareable across processes."""

    tables = MappingProxyType({
        "traders": traders, "orders": orders, "fills": fills, "trades": trades, "positions": positions,
        "equity": equity_points, "events": events,
    })
    """The tables, for read-only queries (the live statistics)."""

    def __init__(self, engine: Engine, identity: str, *, on_change: Callable[[str], None] | None = None,
                 retry_s: float = 30.0) -> None:
        self.engine = engine
        self.identity = identity
        self.on_change = on_change
        self.retry_s = retry_s
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self.retries = 0
        """Transactions retried after a transient failure, since the ledger opened."""
        self._failing = False
        self._queue = threading.local()
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self._writer_turn = f"{database}-writer" if database and database != ":memory:" else None
        """SQLite: the lock file its writers take turns on (see :meth:`_write_turn`)."""

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    # ------------------------------------------------------------- plumbing
    def run(self, work: Callable[[Connection], T], change: str | None = None, *, defer: bool = False) -> T | None:
        """``work(connection)`` in one write transaction, retried whole on a transient failure until
        ``retry_s`` runs out (then StoreError); ``on_change(change)`` after a commit, unless
        ``work`` returned 0 or False (nothing was written). ``defer`` inside :meth:`deferred`:
        ``work`` joins the block's transaction (in call order) and None is returned."""
        if defer and (queued := self._queued()) is not None:
            queued["work"].append((work, change))
            return None
        result = self._transaction(work, read_only=False)
        if change is not None and result is not False and result != 0:
            self._notify(change)
        return result

    def read(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one read-only transaction (on SQLite a deferred one: readers
        never queue behind writers), retried as :meth:`run` is."""
        return self._transaction(work, read_only=True)

    def _transaction(self, work: Callable[[Connection], T], read_only: bool) -> T:
        deadline, delay = time.monotonic() + self.retry_s, 0.05
        while True:
            try:
                with self._write_turn(read_only), self.engine.connect() as connection:
                    connection.execution_options(ledger_read_only=read_only)
                    with connection.begin():
                        result = work(connection)
                break
            except sa.exc.DBAPIError as exc:
                message = redact(str(exc.orig or exc).splitlines()[0] if str(exc.orig or exc) else type(exc).__name__)
                if not _transient(exc) or time.monotonic() > deadline:
                    raise StoreError(f"ledger {self.identity}: {message}") from None
                if not self._failing:
                    log.warning("ledger.retrying", ledger=self.identity, error=message)
                self._failing = True
                self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        if self._failing:
            self._failing = False
            log.info("ledger.recovered", ledger=self.identity)
        return result

    @contextlib.contextmanager
    def _write_turn(self, read_only: bool) -> Iterator[None]:
        """SQLite: a writer of any process holds an exclusive ``flock`` on :attr:`_writer_turn` for its
        transaction. The kernel hands a released flock to a waiter at once, where SQLite's busy handler
        polls with growing sleeps (1, 2, 5, 10, 15, 20 ms...): a trader host queued behind another's
        commit woke up to 15 ms after the lock was free."""
        if read_only or self._writer_turn is None:
            yield
            return
        descriptor = os.open(self._writer_turn, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Queue this thread's equity points and events until the block ends, then write them in one
        transaction (bulk inserts, in call order; an event's time is when it is written).

        What a host of many traders does per candle: the rows that every decision writes cost one
        commit for all traders instead of two per trader. Orders and fills join only when written
        with ``defer=True`` (paper traders: nothing is sent anywhere, and a fill still lands with
        its position change), first and in call order; an exchange order never does (it is
        committed before it is sent). The queue is written even when the block raises;
        StoreError if it cannot be.
        """
        if getattr(self._queue, "rows", None) is not None:
            yield  # nested: the outer block writes
            return
        rows: dict[str, Any] = {"work": [], "equity": {}, "event": []}
        self._queue.rows = rows
        try:
            yield
        finally:
            self._queue.rows = None
            self._write_queued(rows["work"], rows["equity"], rows["event"])

    def _write_queued(self, works: list[tuple[Callable[[Connection], Any], str | None]],
                      points: dict[tuple[str, int], dict[str, Any]], queued: list[dict[str, Any]]) -> None:
        if not works and not points and not queued:
            return

        def work(connection: Connection) -> list[str]:
            changed = [change for write, change in works if (done := write(connection)) is not False and done != 0
                       and change is not None]
            if points:
                connection.execute(self._equity_upsert, list(points.values()))
                changed.append("equity")
            if queued:
                written = now_ms()
                connection.execute(events.insert(), [{**row, "time_ms": row["time_ms"] or written} for row in queued])
                changed.append("event")
            return changed

        for change in dict.fromkeys(self._transaction(work, read_only=False)):
            self._notify(change)

    def _queued(self) -> dict[str, Any] | None:
        return getattr(self._queue, "rows", None)

    def _notify(self, change: str) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(change)
        except Exception as exc:  # noqa: BLE001 - the write is committed; a notifier failure must not undo it
            log.warning("ledger.on_change_failed", change=change, error=type(exc).__name__)

    def migrate(self) -> int:
        """Create the schema or upgrade it to :data:`SCHEMA_VERSION`; the version found before (0: none)."""

        def work(connection: Connection) -> int:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            if not sa.inspect(connection).has_table(schema_version.name):
                metadata.create_all(connection)
                connection.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_ms=now_ms()))
                return 0
            found = connection.execute(sa.select(sa.func.max(schema_version.c.version))).scalar_one()
            if found > SCHEMA_VERSION:
                raise ConfigError(f"ledger {self.identity} has schema version {found}; this tradpal-ray knows up "
                                  f"to {SCHEMA_VERSION}: upgrade tradpal-ray")
            for version in range(found, SCHEMA_VERSION):
                UPGRADES[version - 1](connection)
                connection.execute(schema_version.insert().values(version=version + 1, applied_ms=now_ms()))
            return int(found)

        found = self.run(work)
        if found != SCHEMA_VERSION:
            log.info("ledger.schema", ledger=self.identity, found=found, version=SCHEMA_VERSION)
        return found

    def schema_version(self) -> int:
        """The version the database is at."""
        return int(self.read(lambda c: c.execute(sa.select(sa.func.max(schema_version.c.version))).scalar_one()))

    # --------------------------------------------------------------- orders
    def record_order(self, order: Order, *, defer: bool = False) -> bool | None:
        """Store a new order; False (nothing written) if its client order id is already there
        (None: deferred, see :meth:`deferred`)."""
        values = {**vars(order), "updated_ms": order.created_ms}
        return self.run(lambda c: c.execute(self._sql.order_insert, values).first() is not None, "order", defer=defer)

    def update_order(self, client_order_id: str, status: str, exchange_order_id: str | None = None, *,
                     defer: bool = False) -> bool | None:
        """Set an order's status (and the exchange's id when known); False if no such order (None: deferred)."""
        if status not in ORDER_STATUSES:
            raise DataError(f"status must be one of {', '.join(ORDER_STATUSES)}, got {status!r}")
        values: dict[str, Any] = {"_id": client_order_id, "status": status, "updated_ms": now_ms()}
        if exchange_order_id is not None:
            values["exchange_order_id"] = exchange_order_id
        return self.run(lambda c: bool(c.execute(self._sql.order_update, values).rowcount), "order", defer=defer)

    def order(self, client_order_id: str) -> Order | None:
        """One order by its client id, or None."""
        row = self.read(lambda c: c.execute(sa.select(orders).where(orders.c.client_order_id == client_order_id)).first())
        return None if row is None else _order(row)

    def open_orders(self, trader: str) -> list[Order]:
        """The trader's orders that may still fill (new, sent, unknown), oldest first."""
        query = (sa.select(orders).where(orders.c.trader == trader, orders.c.status.in_(OPEN_ORDER_STATUSES))
                 .order_by(orders.c.created_ms, orders.c.client_order_id))
        return [_order(row) for row in self.read(lambda c: c.execute(query).all())]

    # ---------------------------------------------------------------- fills
    def record_fill(self, fill: Fill, *, defer: bool = False) -> Position | None:
        """Store a fill and apply it to the position and the round-trip trades, in one transaction
        (None: deferred, see :meth:`deferred`).

        Idempotent on ``fill_id``: a fill already recorded changes nothing and the current
        position is returned. The closing part's exit reason is its order's reason.
        """
        return self.run(lambda connection: self._apply(connection, fill), "fill", defer=defer)

    def _apply(self, connection: Connection, fill: Fill) -> Position:
        sql = self._sql
        if connection.execute(sql.fill_insert, dict(vars(fill))).first() is None:
            return self._position(connection, fill.trader, fill.symbol)
        key = {"_trader": fill.trader, "_symbol": fill.symbol}
        row = connection.execute(sql.position_locked, {"trader": fill.trader, "symbol": fill.symbol, "units": 0.0,
                                                       "entry_price": 0.0, "entry_fee": 0.0, "realized_pnl": 0.0,
                                                       "updated_ms": fill.time_ms}).one()
        before = Position(fill.trader, fill.symbol, row.units, row.entry_price, row.entry_fee, row.realized_pnl, row.updated_ms)
        after, closed = apply_fill(before, fill)
        trade_id = row.trade_id
        if closed is not None:
            reason = connection.execute(sql.order_reason, {"_id": fill.client_order_id}).scalar() or "signal"
            exit_values = {"units": closed.units, "entry_fee": closed.entry_fee, "exit_time_ms": fill.time_ms,
                           "exit_price": closed.exit_price, "exit_fee": closed.exit_fee, "pnl": closed.pnl,
                           "return_pct": closed.return_pct, "exit_reason": reason}
            if after.units and (after.units > 0) == (before.units > 0):  # partial close: split a closed row off
                entry_time = connection.execute(sql.trade_entry_time, {"_id": trade_id}).scalar_one()
                connection.execute(sql.trade_insert, {"trader": fill.trader, "symbol": fill.symbol, "entry_time_ms": entry_time,
                                                      "entry_price": closed.entry_price, **exit_values})
            else:
                connection.execute(sql.trade_update, {"_id": trade_id, **exit_values})
                trade_id = None
        if after.units:
            open_values = {"units": after.units, "entry_price": after.entry_price, "entry_fee": after.entry_fee}
            if trade_id is None:
                trade_id = connection.execute(sql.trade_insert, {"trader": fill.trader, "symbol": fill.symbol,
                                                                 "entry_time_ms": fill.time_ms, **open_values}).scalar_one()
            else:
                connection.execute(sql.trade_update, {"_id": trade_id, **open_values})
        connection.execute(sql.position_update, {**key, "units": after.units, "entry_price": after.entry_price,
                                                 "entry_fee": after.entry_fee, "realized_pnl": after.realized_pnl,
                                                 "updated_ms": after.updated_ms, "trade_id": trade_id})
        return after

    def fill_count(self, trader: str | None = None) -> int:
        """How many fills are recorded (of one trader, or all)."""
        query = sa.select(sa.func.count()).select_from(fills)
        if trader is not None:
            query = query.where(fills.c.trader == trader)
        return int(self.read(lambda c: c.execute(query).scalar_one()))

    def _position(self, connection: Connection, trader: str, symbol: str) -> Position:
        row = connection.execute(self._sql.position, {"_trader": trader, "_symbol": symbol}).first()
        if row is None:
            return Position(trader, symbol)
        return Position(trader, symbol, row.units, row.entry_price, row.entry_fee, row.realized_pnl, row.updated_ms)

    def position(self, trader: str, symbol: str) -> Position:
        """The trader's position in ``symbol`` (flat if it never traded it)."""
        return self.read(lambda c: self._position(c, trader, symbol))

    def positions(self, trader: str) -> list[Position]:
        """Every symbol the trader has traded, flat ones included, by symbol."""
        query = sa.select(positions).where(positions.c.trader == trader).order_by(positions.c.symbol)
        return [Position(r.trader, r.symbol, r.units, r.entry_price, r.entry_fee, r.realized_pnl, r.updated_ms)
                for r in self.read(lambda c: c.execute(query).all())]

    def closed_trades(self, trader: str, symbol: str | None = None) -> pd.DataFrame:
        """The trader's closed round trips by exit time, in the columns of a backtest's trades
        (:data:`TRADE_COLUMNS`, times as UTC timestamps) plus ``symbol``."""
        query = sa.select(trades).where(trades.c.trader == trader, trades.c.exit_time_ms.is_not(None))
        if symbol is not None:
            query = query.where(trades.c.symbol == symbol)
        rows = self.read(lambda c: c.execute(query.order_by(trades.c.exit_time_ms, trades.c.id)).all())
        frame = pd.DataFrame(rows, columns=list(trades.c.keys()))
        frame["entry_time"] = pd.to_datetime(frame["entry_time_ms"].astype("int64"), unit="ms", utc=True)
        frame["exit_time"] = pd.to_datetime(frame["exit_time_ms"].astype("int64"), unit="ms", utc=True)
        frame["exit_reason"] = frame["exit_reason"].astype(object)
        return frame[[*TRADE_COLUMNS, "symbol"]].astype({c: "float64" for c in TRADE_COLUMNS[2:9]})

    # --------------------------------------------------------------- equity
    def record_equity(self, trader: str, time_ms: int, equity: float, cash: float) -> None:
        """The trader's equity and cash at ``time_ms`` (a second snapshot at the same time replaces the first)."""
        row = {"trader": trader, "time_ms": time_ms, "equity": equity, "cash": cash}
        if (queued := self._queued()) is not None:
            queued["equity"][trader, time_ms] = row
            return
        self.run(lambda c: c.execute(self._equity_upsert, [row]), "equity")

    @functools.cached_property
    def _equity_upsert(self) -> Any:
        """Insert-or-replace of equity points (built once: building it costs more than running it)."""
        statement = self._insert(equity_points)
        return statement.on_conflict_do_update(index_elements=["trader", "time_ms"],
                                               set_={"equity": statement.excluded.equity, "cash": statement.excluded.cash})

    @functools.cached_property
    def _sql(self) -> _Statements:
        return _Statements.build(self._insert)

    def equity(self, trader: str) -> pd.Series:
        """The trader's equity snapshots, indexed by UTC time."""
        query = (sa.select(equity_points.c.time_ms, equity_points.c.equity).where(equity_points.c.trader == trader)
                 .order_by(equity_points.c.time_ms))
        rows = self.read(lambda c: c.execute(query).all())
        index = pd.to_datetime(pd.Series([r.time_ms for r in rows], dtype="int64"), unit="ms", utc=True)
        return pd.Series([r.equity for r in rows], index=pd.DatetimeIndex(index, name="time"), name="equity", dtype="float64")

    # --------------------------------------------------------------- events
    def record_event(self, trader: str, kind: str, detail: dict[str, Any], time_ms: int | None = None) -> None:
        """Something the trader reports, with a JSON detail (e.g. kind ``decision``, detail ``{"latency_ms": 3.1}``)."""
        row = {"trader": trader, "time_ms": time_ms, "kind": kind, "detail": _encode(detail)}
        if (queued := self._queued()) is not None:
            queued["event"].append(row)
            return
        row["time_ms"] = now_ms() if time_ms is None else time_ms
        self.run(lambda c: c.execute(events.insert(), [row]), "event")

    def events(self, trader: str, kind: str | None = None, limit: int | None = None) -> list[LedgerEvent]:
        """The trader's events, newest first (of one kind, at most ``limit``)."""
        query = sa.select(events).where(events.c.trader == trader)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        query = query.order_by(events.c.id.desc()).limit(limit)
        return [LedgerEvent(r.trader, r.time_ms, r.kind, orjson.loads(r.detail)) for r in self.read(lambda c: c.execute(query).all())]

    # -------------------------------------------------------------- traders
    def upsert_trader(self, name: str, config: dict[str, Any], status: str, host: str | None = None) -> None:
        """Create or replace a trader's configuration, status and host (the reason is cleared)."""
        values = {"config": _encode(config), "status": status, "reason": None, "updated_ms": now_ms(), "host": host}
        statement = self._insert(traders).values(name=_trader_name(name), **values)
        self.run(lambda c: c.execute(statement.on_conflict_do_update(index_elements=["name"], set_=values)), "trader")

    def set_status(self, name: str, status: str, reason: str | None = None) -> None:
        """Set a trader's status and the reason (e.g. the risk limit that halted it); DataError if unknown."""
        statement = traders.update().where(traders.c.name == name).values(status=status, reason=reason, updated_ms=now_ms())
        if not self.run(lambda c: c.execute(statement).rowcount, "trader"):
            raise DataError(f"no trader named {name!r} in the ledger")

    def set_host(self, name: str, host: str | None) -> None:
        """Record which Ray actor hosts the trader now (it moved, e.g. restarted by another command)."""
        statement = traders.update().where(traders.c.name == name).values(host=host, updated_ms=now_ms())
        if not self.run(lambda c: c.execute(statement).rowcount, "trader"):
            raise DataError(f"no trader named {name!r} in the ledger")

    def traders(self) -> list[TraderRecord]:
        """Every trader, by name."""
        rows = self.read(lambda c: c.execute(sa.select(traders).order_by(traders.c.name)).all())
        return [_trader(r) for r in rows]

    def trader(self, name: str) -> TraderRecord | None:
        """One trader by name, or None."""
        row = self.read(lambda c: c.execute(sa.select(traders).where(traders.c.name == name)).first())
        return None if row is None else _trader(row)


def _trader(row: sa.Row[Any]) -> TraderRecord:
    return TraderRecord(row.name, orjson.loads(row.config), row.status, row.reason, row.updated_ms, row.host)


def _order(row: sa.Row[Any]) -> Order:
    values = row._asdict()
    del values["updated_ms"]
    return Order(**values)


def open_ledger(
    url: str | None, store_root: str | os.PathLike[str], *, on_change: Callable[[str], None] | None = None,
    retry_s: float = 30.0,
) -> Ledger:
    """The ledger at ``url`` (None: ``<store_root>/ledger.sqlite``), its schema created or upgraded.

    ConfigError for a URL that is not a PostgreSQL or SQLite one; StoreError if the database
    cannot be reached within ``retry_s``. No password ever appears in a log line or an error.
    """
    parsed = database_url(url, store_root)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed)
    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True, pool_size=4, max_overflow=8,
                                  connect_args={"connect_timeout": 5})
    ledger = Ledger(engine, _identity(parsed), on_change=on_change, retry_s=retry_s)
    try:
        ledger.migrate()
    except BaseException:
        ledger.close()
        raise
    return ledger
