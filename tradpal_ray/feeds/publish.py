"""Columnar batch buffers and the bounded ring of published batches that consumers read.

Connectors append rows to :class:`CandleBuffer` / :class:`TradeBuffer` (plain lists, one
per column: cheap appends on the hot path; numbers may still be the exchange's decimal
strings); a flush turns them into one Arrow record batch per kind. :class:`BatchRing` keeps
the last batches (whatever the publisher made of them: an ObjectRef inside the actor) under
increasing sequence numbers; a consumer reads from its cursor and is told exactly which
sequence numbers it missed when it fell behind the ring.
"""

from __future__ import annotations

import functools
import io
import itertools
import uuid
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from tradpal_ray.feeds.candles import CandleRow

CANDLE_BATCH_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string()),
        pa.field("timeframe", pa.string()),
        pa.field("open_time", pa.timestamp("ms", tz="UTC")),
        pa.field("open", pa.float64()),
        pa.field("high", pa.float64()),
        pa.field("low", pa.float64()),
        pa.field("close", pa.float64()),
        pa.field("volume", pa.float64()),
        pa.field("closed", pa.bool_()),
        pa.field("event_time", pa.timestamp("ms", tz="UTC")),
    ]
)
"""Candle updates: closed candles once each, in open-time order per series, forming ones between
(the first closed candles of a series with nothing stored yet follow once they are stored)."""

TRADE_BATCH_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string()),
        pa.field("trade_id", pa.int64()),
        pa.field("time", pa.timestamp("ms", tz="UTC")),
        pa.field("price", pa.float64()),
        pa.field("amount", pa.float64()),
        pa.field("buyer_maker", pa.bool_()),
        pa.field("event_time", pa.timestamp("ms", tz="UTC")),
    ]
)
"""Trades, deduplicated by id per symbol, in arrival order."""

_MS = pa.timestamp("ms", tz="UTC")


def _floats(values: pa.ChunkedArray) -> pa.Array:
    """Float or decimal-string column as float64 (strings parsed in C++)."""
    return pc.cast(values, pa.float64()).combine_chunks()


def _times(values: Sequence[int] | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return pc.cast(values, pa.int64()).combine_chunks().cast(_MS)
    return pa.array(values, pa.int64()).cast(_MS)


class CandleBuffer:
    """Candle rows waiting for the next flush."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, CandleRow]] = []
        self.first_at: float | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, symbol: str, timeframe: str, rows: Iterable[CandleRow], now: float) -> None:
        """Queue rows of one series (``now``: monotonic seconds, for the flush latency)."""
        for row in rows:
            self.rows.append((symbol, timeframe, row))
        if self.rows and self.first_at is None:
            self.first_at = now

    def take(self) -> tuple[pa.RecordBatch, frozenset[tuple[str, str]], frozenset[tuple[str, str]]]:
        """The queued rows as a batch, the series in it and those with a closed candle in it (then empty)."""
        rows, self.rows, self.first_at = self.rows, [], None
        cols = list(zip(*(r for _, _, r in rows)))
        batch = pa.record_batch(
            [
                pa.array([s for s, _, _ in rows], pa.string()),
                pa.array([tf for _, tf, _ in rows], pa.string()),
                _times(cols[0]),
                *(pa.array(cols[k], pa.float64()) for k in range(1, 6)),
                pa.array(cols[6], pa.bool_()),
                _times(cols[7]),
            ],
            schema=CANDLE_BATCH_SCHEMA,
        )
        return batch, frozenset((s, tf) for s, tf, _ in rows), frozenset((s, tf) for s, tf, r in rows if r[6])


_TRADE_EVENT_SCHEMA = pa.schema(
    [("s", pa.string()), ("t", pa.int64()), ("T", pa.int64()), ("p", pa.string()), ("q", pa.string()),
     ("m", pa.bool_()), ("E", pa.int64())]
)
"""The fields of a Binance trade event that a trade batch is made of."""


def parse_trade_frames(frames: list[str]) -> tuple[pa.Table, int]:
    """Raw Binance trade events -> a table of :data:`_TRADE_EVENT_SCHEMA` (Arrow's C++ JSON reader)
    and the number of malformed frames dropped.

    A batch that does not parse is split in halves until the bad frames are alone (bad JSON,
    or good JSON with a field of the wrong type): only they are dropped.
    """
    if not frames:
        return _TRADE_EVENT_SCHEMA.empty_table(), 0
    if len(frames) == 1 and "\n" in frames[0]:  # a pretty-printed frame: raw newlines are only whitespace in JSON
        frames = [frames[0].replace("\n", " ")]
    data = "\n".join(frames).encode()
    options = pajson.ParseOptions(explicit_schema=_TRADE_EVENT_SCHEMA, unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(io.BytesIO(data), parse_options=options,
                                 read_options=pajson.ReadOptions(use_threads=False, block_size=len(data) + 1))
    except pa.ArrowInvalid:
        if len(frames) == 1:
            return _TRADE_EVENT_SCHEMA.empty_table(), 1
        half = len(frames) // 2
        (first, bad_first), (second, bad_second) = parse_trade_frames(frames[:half]), parse_trade_frames(frames[half:])
        return pa.concat_tables([first, second]), bad_first + bad_second
    complete = functools.reduce(pc.and_, (pc.is_valid(table.column(name)) for name in _TRADE_EVENT_SCHEMA.names))
    if table.num_rows and not pc.all(complete).as_py():
        kept = table.filter(complete)
        return kept, table.num_rows - kept.num_rows
    return table, 0


_UNIFIED_TRADE_TYPE = pa.struct(
    [("symbol", pa.string()), ("id", pa.string()), ("timestamp", pa.int64()), ("price", pa.float64()),
     ("amount", pa.float64()), ("side", pa.string()), ("info", pa.struct([("E", pa.int64())]))]
)
"""The fields of a ccxt unified trade structure that a trade batch is made of (others ignored)."""


def unified_trades_table(trades: list[dict[str, Any]]) -> tuple[pa.Table, int]:
    """ccxt unified trade structures -> a table of :data:`_TRADE_EVENT_SCHEMA` with float prices,
    and the number dropped (no integer id, or a field of the wrong type).

    One Arrow conversion for the whole list (about 3x cheaper than reading the dicts field by
    field in Python); the event time is the exchange's ``E`` when its raw event has one.
    """
    try:
        rows = pa.array(trades, _UNIFIED_TRADE_TYPE)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a field of the wrong type: keep the trades that convert
        rows = pa.array([trade for trade in trades if _converts(trade)], _UNIFIED_TRADE_TYPE)
    ids = rows.field("id")
    try:
        int_ids = pc.cast(ids, pa.int64())
    except pa.ArrowInvalid:  # some trade ids are not integers: those cannot be ordered or deduplicated
        numeric = pc.fill_null(pc.match_substring_regex(ids, r"^-?\d{1,18}$"), False)
        rows, ids = rows.filter(numeric), ids.filter(numeric)
        int_ids = pc.cast(ids, pa.int64())
    time_ms = rows.field("timestamp")
    table = pa.table(
        [rows.field("symbol"), int_ids, time_ms, rows.field("price"), rows.field("amount"),
         pc.fill_null(pc.equal(rows.field("side"), "sell"), False), pc.coalesce(rows.field("info").field("E"), time_ms)],
        names=_TRADE_EVENT_SCHEMA.names,
    )
    complete = pc.and_(pc.is_valid(int_ids), pc.and_(pc.is_valid(rows.field("symbol")), pc.is_valid(time_ms)))
    if not pc.all(complete).as_py():
        table = table.filter(complete)
    return table, len(trades) - table.num_rows


def _converts(trade: dict[str, Any]) -> bool:
    try:
        pa.array([trade], _UNIFIED_TRADE_TYPE)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


class TradeBuffer:
    """Trades waiting for the next flush; duplicates dropped by id at flush.

    Both inputs cost one list operation per message on the hot path and are parsed in bulk
    at the flush: the native connector appends raw Binance trade frames to :attr:`frames`
    (setting :attr:`first_at` when the buffer was empty); the ccxt connector hands over its
    unified trade structures with :meth:`add_unified`.
    """

    def __init__(self, symbols: dict[str, str]) -> None:
        self.symbols = symbols
        """Exchange id (``BTCUSDT``) or unified symbol -> unified symbol."""
        self.frames: list[str] = []
        self.unified: list[dict[str, Any]] = []
        self.last_id: dict[str, int] = {}
        self.first_at: float | None = None
        self.duplicates = 0
        self.malformed = 0

    def __len__(self) -> int:
        return len(self.frames) + len(self.unified)

    def add_unified(self, trades: list[dict[str, Any]], now: float) -> None:
        """Queue ccxt unified trade structures (``now``: monotonic seconds, for the flush latency)."""
        if not len(self):
            self.first_at = now
        self.unified += trades

    def _columns(self) -> pa.Table:
        table, bad = parse_trade_frames(self.frames)
        self.malformed += bad
        if self.unified:
            parsed, bad = unified_trades_table(self.unified)
            self.malformed += bad
            table = parsed if not self.frames else pa.concat_tables(
                [table.set_column(3, "p", pc.cast(table["p"], pa.float64()))
                      .set_column(4, "q", pc.cast(table["q"], pa.float64())), parsed])
        self.frames, self.unified, self.first_at = [], [], None
        return table

    def take(self) -> tuple[pa.RecordBatch, frozenset[str], dict[str, tuple[int, int]]]:
        """The queued trades as a batch, its symbols and per symbol (count, last event ms); then empty.

        A trade whose id is not newer than every earlier id of its symbol is a duplicate (or too late) and goes.
        """
        table = self._columns().combine_chunks()
        sym = table.column("s").chunk(0).dictionary_encode() if table.num_rows else pa.array([], pa.string()).dictionary_encode()
        names = [self.symbols.get(x, x) for x in sym.dictionary.to_pylist()]
        codes = sym.indices.to_numpy(zero_copy_only=False)
        ids = table.column("t").to_numpy()
        keep = np.empty(len(ids), dtype=bool)
        for code, name in enumerate(names):
            where = np.flatnonzero(codes == code) if len(names) > 1 else slice(None)
            mine = ids[where]
            before = np.maximum.accumulate(np.concatenate(([self.last_id.get(name, -1)], mine[:-1])))
            keep[where] = mine > before
            self.last_id[name] = max(self.last_id.get(name, -1), int(mine.max()))
        event = table.column("E").to_numpy()
        batch = pa.record_batch(
            [
                pa.array(names, pa.string()).take(sym.indices),
                table.column("t").chunk(0) if table.num_rows else pa.array([], pa.int64()),
                _times(table.column("T")),
                _floats(table.column("p")),
                _floats(table.column("q")),
                table.column("m").combine_chunks(),
                _times(table.column("E")),
            ],
            schema=TRADE_BATCH_SCHEMA,
        )
        if not keep.all():
            self.duplicates += int((~keep).sum())
            batch = batch.filter(pa.array(keep))
            codes, event = codes[keep], event[keep]
        counts = np.bincount(codes, minlength=len(names))
        last = np.full(len(names), np.iinfo(np.int64).min)
        np.maximum.at(last, codes, event)
        stats = {name: (int(counts[i]), int(last[i])) for i, name in enumerate(names) if counts[i]}
        return batch, frozenset(stats), stats


@dataclass
class RingEntry:
    """One published batch: its sequence number, payload, keys (series or symbols) and size."""

    seq: int
    payload: Any
    keys: frozenset[Hashable]
    nbytes: int = 0
    closed: frozenset[Hashable] = frozenset()
    """Candles: the series with a closed candle in the batch (what a consumer of closed candles waits for)."""


@dataclass
class RingRead:
    """What a consumer gets: entries after its cursor, its next cursor, the sequence numbers it missed."""

    epoch: str
    entries: list[RingEntry]
    cursor: int
    missed: tuple[int, int] | None = None
    """``[first, last]`` sequence numbers that were evicted before this consumer read them."""
    ended: bool = False
    """The feed has stopped and nothing is left after ``cursor``."""


@dataclass
class BatchRing:
    """The last published batches, bounded.

    At most ``capacity`` entries and ``max_bytes`` of batches are kept, except that with
    ``guard`` an entry is only dropped once :meth:`persisted` covers it (its closed candles
    are in the durable store, so whoever missed it can read them there); ``hard_capacity``
    bounds even that.
    """

    capacity: int = 256
    max_bytes: int = 8 << 20
    guard: bool = False
    hard_capacity: int = 4096
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    entries: deque[RingEntry] = field(default_factory=deque)
    next_seq: int = 0
    persisted_seq: int = -1
    forced_evictions: int = 0
    nbytes: int = 0

    def append(self, payload: Any, keys: frozenset[Hashable], nbytes: int = 0,
               closed: frozenset[Hashable] = frozenset()) -> int:
        """Add a batch (of ``nbytes``; ``closed``: see :attr:`RingEntry.closed`); returns its sequence number."""
        seq = self.next_seq
        self.next_seq += 1
        self.entries.append(RingEntry(seq, payload, keys, nbytes, closed))
        self.nbytes += nbytes
        self._evict()
        return seq

    def persisted(self, seq: int) -> None:
        """Everything up to ``seq`` is durable and may be evicted."""
        self.persisted_seq = max(self.persisted_seq, seq)
        self._evict()

    def _evict(self) -> None:
        entries = self.entries
        while len(entries) > 1 and (len(entries) > self.capacity or self.nbytes > self.max_bytes) and (
            not self.guard or entries[0].seq <= self.persisted_seq
        ):
            self.nbytes -= entries.popleft().nbytes
        while len(entries) > self.hard_capacity:
            self.nbytes -= entries.popleft().nbytes
            self.forced_evictions += 1

    def read(self, cursor: int | None, key: Hashable | None = None, limit: int = 64, closed_only: bool = False) -> RingRead:
        """Entries with ``seq >= cursor`` (None: the oldest kept) holding ``key`` (None: any); with
        ``closed_only``, only those holding a closed candle of ``key`` (:attr:`RingEntry.closed`)."""
        oldest = self.entries[0].seq if self.entries else self.next_seq
        if cursor is None or cursor > self.next_seq:
            cursor = oldest
        missed = (cursor, oldest - 1) if cursor < oldest else None
        start = max(cursor, oldest) - oldest
        picked = [
            entry for entry in itertools.islice(self.entries, start, None)
            if key is None or key in (entry.closed if closed_only else entry.keys)
        ][:limit]
        next_cursor = picked[-1].seq + 1 if len(picked) == limit else self.next_seq
        return RingRead(self.epoch, picked, next_cursor, missed)
