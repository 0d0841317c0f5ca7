"""Closed-candle recognition, deduplication, ordering and gap planning for one candle series.

Both connectors feed :class:`CandleTracker` the same candle-update form
``(t, o, h, l, c, v, closed, event_ms)``; ``closed`` is the exchange's ``x`` flag (native) or
None when the client drops it (ccxt). The tracker emits rows in the one order consumers and
the store rely on: every closed candle exactly once, by open time, with forming updates in
between. Missing closed candles (lost frames, reconnects, restarts, a ccxt candle that can
only be confirmed over REST) become a REST fetch range from :meth:`CandleTracker.plan`, whose
result goes back through :meth:`CandleTracker.on_rest`. A REST row counts as closed only once
the exchange's clock has passed its end, and a closed candle that the stream later reports
with other values is checked over REST: if what was emitted was wrong, the REST candle is
emitted again as a correction (the store keeps the last row per open time; subscriptions,
which never repeat an open time, do not pass it on).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple


class CandleRow(NamedTuple):
    """One candle update as published: open time (ms), OHLCV, closed flag, event time (ms)."""

    t: int
    o: float
    h: float
    l: float
    c: float
    v: float
    closed: bool
    event_ms: int


@dataclass(frozen=True)
class RepairPlan:
    """Closed candles to fetch over REST: open times in ``[start, end)``; ``end`` None = up to now."""

    start: int
    end: int | None


class CandleTracker:
    """Turn a stream of candle updates of one series into ordered, deduplicated candle rows.

    ``step`` is the timeframe in ms; ``last_closed`` the open time of the newest closed candle
    already recorded (the store's, after a restart); a new series starts at the first update or
    at :meth:`start_at`. ``rest_confirms`` (ccxt) means the stream cannot say when a candle
    closed: a newer open time marks it closed and its final values come from REST. Otherwise
    closed candles come from the stream (``x`` flag) and a hole left by a lost frame is fetched
    over REST after ``grace`` seconds.
    """

    def __init__(self, step: int, last_closed: int | None = None, *, rest_confirms: bool = False,
                 grace: float = 1.0, history: int = 1000) -> None:
        self.step = step
        self.rest_confirms = rest_confirms
        self.grace = grace
        self.last_closed = last_closed
        """Open time of the newest closed candle emitted (or recorded before a restart)."""
        self.next: int | None = None if last_closed is None else last_closed + step
        """Open time of the next closed candle to emit (None until the series is anchored)."""
        self.closed_until: int = self.next or 0
        """Every candle opening before this is known to have closed."""
        self.forming: CandleRow | None = None
        self.pending: dict[int, CandleRow] = {}
        self.history: deque[CandleRow] = deque(maxlen=history)
        self.disputed: set[int] = set()
        """Open times of emitted closed candles the stream later reported with other values."""
        self.resync_needed = last_closed is not None
        self._gap_since: float | None = None
        self.duplicates = 0
        self.stale = 0
        self.repaired = 0
        self.skipped = 0
        self.corrected = 0
        self.closed_count = 0

    def start_at(self, now_ms: int) -> None:
        """Anchor a series with nothing recorded at the candle forming at exchange time ``now_ms``.

        From then on a reconnect or REST polling fetches its closed candles even if the stream
        never delivered anything.
        """
        if self.next is None:
            self.next = self.closed_until = now_ms // self.step * self.step

    def resync(self) -> None:
        """After a reconnect or restart: the next plan fetches everything since the last closed candle."""
        if self.next is not None:
            self.resync_needed = True

    def on_update(self, t: int, o: float, h: float, l: float, c: float, v: float,
                  closed: bool | None, event_ms: int, now: float) -> list[CandleRow]:
        """Rows to publish for one update (``now``: monotonic seconds, for the repair grace)."""
        if self.next is None:
            self.next = self.closed_until = t
        row = CandleRow(t, o, h, l, c, v, bool(closed), event_ms)
        if t < self.next:
            self.duplicates += 1  # closed and emitted already (duplicate or late frame)
            if closed and not self.rest_confirms and not self._emitted_as(row):
                self.disputed.add(t)  # one of the two is wrong: REST decides
            return []
        if closed and not self.rest_confirms:
            self._advance_closed_until(t + self.step, now)
            if t in self.pending:
                self.duplicates += 1
                if self.pending[t][:6] != row[:6]:
                    self.disputed.add(t)
                return []
            if t != self.next:
                self.pending[t] = row  # an earlier closed candle is still missing
                return []
            out = self._emit(row)
            self._drain(out)
            return out
        forming = self.forming
        if forming is not None and (t, event_ms) <= (forming.t, forming.event_ms):
            self.stale += 1  # an older (reordered) or repeated update of the forming candle
            return []
        row = row._replace(closed=False)
        self.forming = row
        self._advance_closed_until(t, now)
        return [row]

    def _advance_closed_until(self, until: int, now: float) -> None:
        self.closed_until = max(self.closed_until, until)
        if self.next is not None and self.closed_until > self.next and self._gap_since is None:
            self._gap_since = now

    def _emit(self, row: CandleRow) -> list[CandleRow]:
        row = row._replace(closed=True)
        self.last_closed = row.t
        self.next = row.t + self.step
        self.pending.pop(row.t, None)
        self.history.append(row)
        self.closed_count += 1
        if self.forming is not None and self.forming.t < self.next:
            self.forming = None
        return [row]

    def _emitted_as(self, row: CandleRow) -> bool:
        """Whether ``row``'s values are those emitted for its open time (True when no longer in memory)."""
        emitted = next((old for old in reversed(self.history) if old.t == row.t), None)
        return emitted is None or emitted[:6] == row[:6]

    def _correct(self, row: CandleRow) -> list[CandleRow]:
        """Re-emit the closed candle ``row`` (checked over REST) if it differs from what was emitted."""
        if self._emitted_as(row):
            return []
        for i, old in enumerate(self.history):
            if old.t == row.t:
                self.history[i] = row
        self.corrected += 1
        return [row]

    def _drain(self, out: list[CandleRow]) -> None:
        while self.next in self.pending:
            out += self._emit(self.pending[self.next])
        if self.next >= self.closed_until:
            self._gap_since = None

    def plan(self, now: float) -> RepairPlan | None:
        """The REST fetch this series needs now, if any."""
        if self.next is None:
            return None
        if self.resync_needed:
            return RepairPlan(self.next, None)
        if self.closed_until > self.next and self._gap_since is not None and (
            self.rest_confirms or now - self._gap_since >= self.grace
        ):
            return RepairPlan(self.next, self.closed_until)
        if self.disputed:
            return RepairPlan(min(self.disputed), max(self.disputed) + self.step)
        return None

    def on_rest(self, plan: RepairPlan, rows: list[list[float]], event_ms: int, closed_before: int) -> list[CandleRow]:
        """Merge REST klines fetched for ``plan``; rows to publish, closed candles in order.

        Only rows whose candle ended by ``closed_before`` (exchange time, ms, read before the
        fetch) count: the others may still be forming. A row newer than a missing one proves the
        missing candle does not exist at the exchange. Disputed candles come back as corrections.
        """
        closed = sorted((row for row in rows if int(row[0]) + self.step <= closed_before), key=lambda row: row[0])
        if plan.end is None:
            self.resync_needed = False
            if closed:  # what REST shows closed (nothing: nothing to wait for)
                self._advance_closed_until(int(closed[-1][0]) + self.step, 0.0)
        out: list[CandleRow] = []
        for t, o, h, l, c, v in (row[:6] for row in closed):
            row = CandleRow(int(t), float(o), float(h), float(l), float(c), float(v), True, event_ms)
            if self.next is None or row.t >= self.closed_until:
                continue
            if row.t < self.next:
                if row.t in self.disputed:
                    out += self._correct(row)
                continue
            if row.t > self.next:
                self.skipped += (row.t - self.next) // self.step
            self.repaired += 1
            out += self._emit(row)
            self._drain(out)
        end = closed_before if plan.end is None else min(plan.end, closed_before)
        self.disputed = {t for t in self.disputed if not (plan.start <= t and t + self.step <= end and t < self.next)}
        if self.next is not None and self.next >= self.closed_until:
            self._gap_since = None
        return out
