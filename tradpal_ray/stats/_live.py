"""Live statistics over the trade ledger.

The queries are SQL aggregates: the database counts and sums, Python only shapes the few
result rows. The statistics service caches their JSON in Redis under keys that carry a
*generation* per topic, which the ledger's writer bumps after every committed change
(:class:`~tradpal_ray.trading.LiveCacheNotifier`), so the next request misses and
recomputes: a fill is visible at once, not after a TTL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import sqlalchemy as sa

from tradpal_ray.errors import ConfigError
from tradpal_ray.stats.queries import TRADE_STATUSES, NotFound
from tradpal_ray.trading import Ledger
from tradpal_ray.trading._changes import DECISION_EVENT, DIVERGENCE_EVENT

DAY_MS = 86_400_000
RECENT_FILLS = 20


def trade_counts(ledger: Ledger, status: str = "all", trader: str | None = None) -> dict[str, Any]:
    """Round trips in the ledger: ``count`` of the asked status, and all, open and closed."""
    if status not in TRADE_STATUSES:
        raise ConfigError(f"status must be one of {', '.join(TRADE_STATUSES)}")
    trades = ledger.tables["trades"]
    query = sa.select(sa.func.count(), sa.func.count(trades.c.exit_time_ms))
    if trader is not None:
        query = query.where(trades.c.trader == trader)
    total, closed = ledger.read(lambda c: c.execute(query).one())
    counts = {"all": total, "open": total - closed, "closed": closed}
    return {"status": status, "trader": trader, "count": counts[status], **counts}


def _day_start_ms(day: str) -> int:
    try:
        date = dt.date.fromisoformat(day)
    except ValueError as exc:
        raise ConfigError(f"day must be a date as YYYY-MM-DD, got {day!r}") from exc
    return int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp() * 1000)


def daily_stats(ledger: Ledger, day: str | None = None, trader: str | None = None) -> list[dict[str, Any]]:
    """Closed round trips per UTC day of their exit (one day, or every day): trades, wins, win
    rate %, PnL, fees (entry + exit), best and worst trade PnL."""
    trades = ledger.tables["trades"]
    day_index = (trades.c.exit_time_ms // DAY_MS).label("day")
    query = (
        sa.select(day_index, sa.func.count().label("trades"),
                  sa.func.sum(sa.case((trades.c.pnl > 0, 1), else_=0)).label("wins"),
                  sa.func.sum(trades.c.pnl).label("pnl"), sa.func.sum(trades.c.entry_fee + trades.c.exit_fee).label("fees"),
                  sa.func.max(trades.c.pnl).label("best"), sa.func.min(trades.c.pnl).label("worst"))
        .where(trades.c.exit_time_ms.is_not(None)).group_by(day_index).order_by(day_index)
    )
    if day is not None:
        start = _day_start_ms(day)
        query = query.where(trades.c.exit_time_ms >= start, trades.c.exit_time_ms < start + DAY_MS)
    if trader is not None:
        query = query.where(trades.c.trader == trader)
    rows = ledger.read(lambda c: c.execute(query).all())
    return [
        {"day": dt.datetime.fromtimestamp(int(r.day) * DAY_MS / 1000, dt.UTC).date().isoformat(), "trades": r.trades,
         "wins": int(r.wins), "win_rate_pct": 100.0 * int(r.wins) / r.trades, "pnl": r.pnl, "fees": r.fees,
         "best": r.best, "worst": r.worst}
        for r in rows
    ]


def _latest_events(ledger: Ledger, connection: sa.Connection) -> dict[tuple[str, str], Any]:
    events = ledger.tables["events"]
    latest = (sa.select(sa.func.max(events.c.id).label("id"))
              .where(events.c.kind.in_((DECISION_EVENT, DIVERGENCE_EVENT))).group_by(events.c.trader, events.c.kind)
              .subquery())
    rows = connection.execute(sa.select(events).join(latest, events.c.id == latest.c.id)).all()
    return {(r.trader, r.kind): r for r in rows}


def traders_view(ledger: Ledger) -> dict[str, Any]:
    """Every trader (those registered and those with positions): status and reason, positions,
    realized PnL, latest equity, trade counts, last decision and its latency, latest
    divergence from its backtest; and the most recent fills of all traders."""
    t = ledger.tables

    def read(connection: sa.Connection) -> dict[str, Any]:
        registered = connection.execute(sa.select(t["traders"]).order_by(t["traders"].c.name)).all()
        held = connection.execute(sa.select(t["positions"]).order_by(t["positions"].c.trader, t["positions"].c.symbol)).all()
        last = sa.select(t["equity"].c.trader, sa.func.max(t["equity"].c.time_ms).label("time_ms")).group_by(
            t["equity"].c.trader).subquery()
        equity = connection.execute(sa.select(t["equity"]).join(
            last, (t["equity"].c.trader == last.c.trader) & (t["equity"].c.time_ms == last.c.time_ms))).all()
        counts = connection.execute(sa.select(t["trades"].c.trader, sa.func.count(), sa.func.count(t["trades"].c.exit_time_ms))
                                    .group_by(t["trades"].c.trader)).all()
        fills = connection.execute(sa.select(t["fills"]).order_by(t["fills"].c.time_ms.desc(), t["fills"].c.fill_id)
                                   .limit(RECENT_FILLS)).all()
        return {"registered": registered, "held": held, "equity": equity, "counts": counts, "fills": fills,
                "events": _latest_events(ledger, connection)}

    data = ledger.read(read)
    view: dict[str, dict[str, Any]] = {
        r.name: {"name": r.name, "status": r.status, "reason": r.reason, "updated_ms": r.updated_ms} for r in data["registered"]
    }
    for r in data["held"]:
        row = view.setdefault(r.trader, {"name": r.trader, "status": None, "reason": None, "updated_ms": None})
        row.setdefault("positions", []).append({"symbol": r.symbol, "units": r.units, "entry_price": r.entry_price,
                                                "realized_pnl": r.realized_pnl})
    for row in view.values():
        row.setdefault("positions", [])
        row["realized_pnl"] = sum(p["realized_pnl"] for p in row["positions"])
        row.update(equity=None, trades={"all": 0, "open": 0, "closed": 0}, last_decision=None, divergence=None)
    for r in data["equity"]:
        if r.trader in view:
            view[r.trader]["equity"] = {"time_ms": r.time_ms, "equity": r.equity, "cash": r.cash}
    for name, total, closed in data["counts"]:
        if name in view:
            view[name]["trades"] = {"all": total, "open": total - closed, "closed": closed}
    for (name, kind), r in data["events"].items():
        if name in view:
            detail = orjson.loads(r.detail)
            if kind == DECISION_EVENT:
                view[name]["last_decision"] = {"time_ms": r.time_ms, "latency_ms": detail.get("latency_ms"), "detail": detail}
            else:
                view[name]["divergence"] = {"time_ms": r.time_ms, **detail}
    recent = [{"trader": f.trader, "symbol": f.symbol, "side": f.side, "units": f.units, "price": f.price, "fee": f.fee,
               "time_ms": f.time_ms, "fill_id": f.fill_id} for f in data["fills"]]
    return {"traders": sorted(view.values(), key=lambda row: row["name"]), "recent_fills": recent}


def trader_equity(ledger: Ledger, name: str) -> dict[str, Any]:
    """One trader's equity snapshots as columns (NotFound if the ledger knows no such trader)."""
    t = ledger.tables

    def read(connection: sa.Connection) -> tuple[bool, list[Any]]:
        known = connection.execute(sa.select(t["traders"].c.name).where(t["traders"].c.name == name)).first() is not None
        query = (sa.select(t["equity"].c.time_ms, t["equity"].c.equity, t["equity"].c.cash)
                 .where(t["equity"].c.trader == name).order_by(t["equity"].c.time_ms))
        return known, connection.execute(query).all()

    known, rows = ledger.read(read)
    if not known and not rows:
        raise NotFound(f"no trader named {name!r}")
    return {"trader": name, "time_ms": [r.time_ms for r in rows], "equity": [r.equity for r in rows],
            "cash": [r.cash for r in rows]}
