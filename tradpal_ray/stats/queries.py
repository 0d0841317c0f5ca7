"""The statistics the service answers, as plain functions of the stores (no Ray, no Redis).

Every query returns JSON-ready Python values (NaN and infinities become ``null`` when
encoded with orjson; times are epoch milliseconds) except the two *tables* the cache
keeps as Arrow: a run's result rows (:meth:`StatsQueries.results_table`) and the recorded
trades (:meth:`StatsQueries.trades_table`). Queries built on them take the table as an
argument so the service can hand in a cached copy.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from tradpal_ray.backtest.metrics import metric as find_metric
from tradpal_ray.backtest.sweep import rank
from tradpal_ray.errors import ConfigError
from tradpal_ray.feeds.status_store import FeedStatusStore
from tradpal_ray.market.store import CandleStore
from tradpal_ray.runs import RunManifest, RunStore, params_of, result_warnings, results_schema

TRADE_STATUSES = ("all", "open", "closed")
MAX_GAPS_LISTED = 20
"""Coverage lists at most this many gaps per series (the count covers all of them)."""
TRADES_SCHEMA = pa.schema([("exit_reason", pa.string()), ("pnl", pa.float64()), ("run_id", pa.string()),
                           ("result_id", pa.string()), ("symbol", pa.string())])
"""The recorded-trades table the trade queries read."""


class NotFound(ConfigError):
    """An unknown run, result or symbol: the API answers 404."""


def _ms(values: pd.Series) -> list[int | None]:
    """Datetimes as epoch ms (None for NaT)."""
    times = pd.to_datetime(values, utc=True).dt.tz_convert(None)
    ms = times.to_numpy().astype("datetime64[ms]").astype("int64").tolist()
    if times.isna().any():
        ms = [None if missing else value for value, missing in zip(ms, times.isna())]
    return ms


def _records(frame: pd.DataFrame, param_names: list[str] | None = None) -> list[dict[str, Any]]:
    """DataFrame rows as dicts; datetime columns as epoch ms; the parameter columns nested as ``params``."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = pd.Series(_ms(out[column]), index=out.index, dtype=object)
    records = out.astype(object).where(out.notna(), None).to_dict("records")
    if param_names:
        for record in records:
            record["params"] = {name: record.pop(name) for name in param_names}
    return records


def _summary(manifest: RunManifest) -> dict[str, Any]:
    """The listing fields of a run (a run whose driver died reads as ``interrupted``)."""
    return {
        "run_id": manifest.run_id, "kind": manifest.kind, "strategy": manifest.strategy,
        "strategy_ref": manifest.strategy_ref.get("text", manifest.strategy),
        "status": manifest.current_status(), "exchange": manifest.exchange, "timeframe": manifest.timeframe,
        "symbols": manifest.symbols, "metric": manifest.metric, "combos": manifest.combos,
        "results": manifest.results, "skipped": manifest.skipped, "warnings": manifest.warnings,
        "created_at": manifest.created_at, "updated_at": manifest.updated_at,
    }


def _spread(values: pd.Series) -> dict[str, float | None]:
    """Median and quartiles of the finite values: one degenerate result cannot swamp them."""
    finite = values.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return {"median": None, "q1": None, "q3": None}
    q1, median, q3 = np.quantile(finite, [0.25, 0.5, 0.75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def _pnl_stats(trades: pd.DataFrame) -> dict[str, Any]:
    """Win rate, PnL and profit factor of closed trades (NaN where undefined)."""
    pnl = trades["pnl"].to_numpy(dtype=float)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    gross_loss = -losses.sum()
    return {
        "closed": len(pnl),
        "wins": len(wins),
        "losses": len(losses),
        "win_rate_pct": float(len(wins) / len(pnl) * 100) if len(pnl) else None,
        "pnl_total": float(pnl.sum()),
        "pnl_mean": float(pnl.mean()) if len(pnl) else None,
        "profit_factor": float(wins.sum() / gross_loss) if gross_loss > 0 else (None if not len(wins) else float("inf")),
        "best_pnl": float(pnl.max()) if len(pnl) else None,
        "worst_pnl": float(pnl.min()) if len(pnl) else None,
    }


class StatsQueries:
    """Read-only queries over one store root: runs, results, candle coverage, feeds, trades."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self.results = RunStore(root)
        self.candles = CandleStore(root)
        self.feed_status = FeedStatusStore(root)

    # ------------------------------------------------------------------ runs
    def manifest(self, run_id: str) -> RunManifest:
        """A run's manifest; NotFound for an unknown (or malformed) run id."""
        try:
            return self.results.manifest(run_id)
        except ConfigError as exc:
            raise NotFound(f"unknown run {run_id!r}") from exc

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, as listing fields."""
        return [_summary(m) for m in self.results.runs()]

    def results_schema(self, run_id: str) -> pa.Schema:
        """The typed schema :meth:`results_table` gives for ``run_id`` (what a cached copy must match).

        From the run's manifest: its parameters' types and the metric columns it stores
        (a table may have more: the derived metrics).
        """
        manifest = self.manifest(run_id)
        return results_schema(manifest.param_types, manifest.metrics)

    def results_table(self, run_id: str) -> pa.Table:
        """All result rows of a run (empty table if none yet); NotFound for an unknown run."""
        self.manifest(run_id)
        frame = self.results.results(run_id)
        return pa.Table.from_pandas(frame, preserve_index=False)

    def run(self, run_id: str, table: pa.Table | None = None) -> dict[str, Any]:
        """A run's full manifest plus a summary of its results: per symbol, the best result and the spread."""
        manifest = self.manifest(run_id)
        frame = (table if table is not None else self.results_table(run_id)).to_pandas()
        per_symbol = []
        if len(frame):
            metric = manifest.metric
            for symbol, rows in rank(frame, metric).groupby("symbol", sort=False):
                best = rows.iloc[0]
                per_symbol.append({
                    "symbol": symbol, "results": len(rows), "best_result_id": best["result_id"],
                    "best_params": params_of(best, manifest.param_names), "best": _finite(best[metric]),
                    metric: _spread(rows[metric]), "return_pct": _spread(rows["return_pct"]),
                })
        doc = orjson.loads(manifest.to_json())
        doc["status"] = manifest.current_status()
        doc["summary"] = {"results": len(frame), "metric": manifest.metric, "symbols": per_symbol}
        return doc

    def leaderboard(
        self,
        run_id: str,
        *,
        metric: str | None = None,
        top: int = 10,
        symbol: str | None = None,
        strategy: str | None = None,
        timeframe: str | None = None,
        table: pa.Table | None = None,
    ) -> dict[str, Any]:
        """The ``top`` results of a run by ``metric`` (default: the run's), optionally filtered, and the
        run's overfitting statistics per symbol (DSR of the best by the run's metric, PBO, readings).

        NotFound if ``symbol`` is not in the run; a strategy or timeframe the run does not
        have gives an empty list (a run has one of each).
        """
        manifest = self.manifest(run_id)
        metric = find_metric(metric or manifest.metric).name
        frame = (table if table is not None else self.results_table(run_id)).to_pandas()
        if symbol is not None:
            if symbol not in manifest.symbols and (not len(frame) or symbol not in set(frame["symbol"])):
                raise NotFound(f"symbol {symbol!r} is not in run {run_id!r}")
            frame = frame[frame["symbol"] == symbol] if len(frame) else frame
        if (strategy is not None and strategy != manifest.strategy) or (
            timeframe is not None and timeframe != manifest.timeframe
        ):
            frame = frame.iloc[0:0]
        rows = rank(frame, metric).head(top) if len(frame) else frame
        overfitting = {name: dataclasses.asdict(stats) for name, stats in manifest.overfitting.items()
                       if symbol is None or name == symbol}
        return {
            "run_id": run_id, "metric": metric, "strategy": manifest.strategy, "timeframe": manifest.timeframe,
            "total": len(frame), "overfitting": overfitting, "results": [
                {**record, "warnings": result_warnings(manifest, record)} for record in _records(rows, manifest.param_names)
            ],
        }

    def walkforward(self, run_id: str) -> dict[str, Any]:
        """A walk-forward run's summary (stitched OOS statistics, WFE), folds and stitched equity;
        NotFound for an unknown run, another kind, or one not finished yet."""
        manifest = self.manifest(run_id)
        if manifest.kind != "walkforward":
            raise NotFound(f"run {run_id!r} is a {manifest.kind}, not a walk-forward")
        try:
            tables = self.results.walkforward(run_id)
        except ConfigError as exc:
            raise NotFound(str(exc)) from exc
        curve = tables["oos_equity"]
        return {
            "run_id": run_id, "strategy": manifest.strategy, "status": manifest.current_status(),
            "objective": manifest.walkforward["spec"]["objective"], "spec": manifest.walkforward["spec"],
            "warmup": manifest.walkforward.get("warmup"), "summary": manifest.walkforward.get("summary", {}),
            "folds": _records(tables["folds"], manifest.param_names),
            "equity": {"time": _ms(curve["time"]), "equity": curve["equity"].tolist(), "fold": curve["fold"].tolist()},
        }

    def equity(self, run_id: str, rid: str) -> dict[str, Any]:
        """One kept result's equity curve (columnar, ms times) and trades; NotFound if not kept."""
        manifest = self.manifest(run_id)
        try:
            trades, equity = self.results.detail(run_id, rid)
        except ConfigError as exc:
            raise NotFound(str(exc)) from exc
        return {
            "run_id": run_id, "result_id": rid, "strategy": manifest.strategy,
            "equity": {"time": _ms(equity["time"]), "equity": equity["equity"].tolist()},
            "trades": _records(trades),
        }

    # --------------------------------------------------------------- symbols
    def symbol_stats(
        self, exchange: str | None = None, symbol: str | None = None, timeframe: str | None = None
    ) -> list[dict[str, Any]]:
        """Per (exchange, symbol, timeframe): runs, results and the spread of their statistics across runs.

        NotFound if ``symbol`` is neither in a run nor in the candle store.
        """
        groups: dict[tuple[str | None, str, str | None], list[tuple[pd.DataFrame, list[str]]]] = {}
        for manifest in self.results.runs():
            if (exchange and manifest.exchange != exchange) or (timeframe and manifest.timeframe != timeframe):
                continue
            frame = self.results.results(manifest.run_id)  # a data-file run lists no symbols: filter the rows
            if symbol and len(frame):
                frame = frame[frame["symbol"] == symbol]
            for sym, rows in (frame.groupby("symbol", sort=False) if len(frame) else []):
                groups.setdefault((manifest.exchange, sym, manifest.timeframe), []).append((rows, manifest.param_names))
        if symbol and not groups and symbol not in {s.symbol for s in self.candles.series()}:
            raise NotFound(f"unknown symbol {symbol!r}")
        out = []
        for (exch, sym, tf), frames in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
            rows = pd.concat([f for f, _ in frames], ignore_index=True)
            best_index = rank(rows, "sharpe").index[0]
            best = rows.loc[best_index]
            names = next(n for f, n in frames if best["run_id"] in set(f["run_id"]))
            out.append({
                "exchange": exch, "symbol": sym, "timeframe": tf, "runs": int(rows["run_id"].nunique()),
                "results": len(rows),
                "best": {"run_id": best["run_id"], "result_id": best["result_id"], "strategy": best["strategy"],
                         "params": params_of(best, names), "sharpe": _finite(best["sharpe"]),
                         "return_pct": _finite(best["return_pct"])},
                "return_pct": _spread(rows["return_pct"]),
                "sharpe": _spread(rows["sharpe"]),
                "win_rate_pct": _spread(rows["win_rate_pct"]),
                "max_drawdown_pct": _spread(rows["max_drawdown_pct"]),
            })
        return out

    def coverage(self) -> list[dict[str, Any]]:
        """Every stored candle series: rows, first/last open time, and its gaps.

        A damaged series is listed with ``problem`` naming its unreadable file (relative to
        the store root) and null gap counts; the others are unaffected.
        """
        out = []
        for found in self.candles.coverage():
            info, gaps = found.info, found.gaps
            damaged = info.problem is not None
            out.append({
                "exchange": info.exchange, "symbol": info.symbol, "timeframe": info.timeframe, "rows": info.rows,
                "first_ms": info.first_ms, "last_ms": info.last_ms, "gaps": None if damaged else len(gaps),
                "missing": None if damaged else sum(g.count for g in gaps),
                "gap_list": [{"start_ms": g.start_ms, "end_ms": g.end_ms, "count": g.count} for g in gaps[:MAX_GAPS_LISTED]],
                "problem": info.problem,
            })
        return out

    def feeds(self) -> list[dict[str, Any]]:
        """The latest status snapshot of every feed, as the feed actors wrote it."""
        return self.feed_status.read_all()

    # ---------------------------------------------------------------- trades
    def trades_table(self) -> pa.Table:
        """Every recorded trade (the kept results of every run, as their manifests list them) with run_id, result_id and symbol."""
        frames = []
        for manifest in self.results.runs():
            for rid, sym in manifest.kept.items():
                try:
                    trades, _ = self.results.detail(manifest.run_id, rid)
                except ConfigError:
                    continue
                frames.append(trades[["exit_reason", "pnl"]].assign(run_id=manifest.run_id, result_id=rid, symbol=sym))
        if not frames:
            return TRADES_SCHEMA.empty_table()
        return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)

    def trade_counts(self, status: str = "all", table: pa.Table | None = None) -> dict[str, Any]:
        """How many recorded trades are open, closed, or either."""
        if status not in TRADE_STATUSES:
            raise ConfigError(f"status must be one of {', '.join(TRADE_STATUSES)}")
        frame = (table if table is not None else self.trades_table()).to_pandas()
        open_ = int((frame["exit_reason"] == "open").sum())
        counts = {"all": len(frame), "open": open_, "closed": len(frame) - open_}
        return {"status": status, "count": counts[status], **counts}

    def trade_stats(self, table: pa.Table | None = None) -> dict[str, Any]:
        """Win rate, PnL and profit factor over all closed recorded trades, overall and per symbol."""
        frame = (table if table is not None else self.trades_table()).to_pandas()
        closed = frame[frame["exit_reason"] != "open"]
        return {
            **_pnl_stats(closed),
            "open": int(len(frame) - len(closed)),
            "by_symbol": [{"symbol": sym, **_pnl_stats(rows)} for sym, rows in closed.groupby("symbol", sort=True)],
        }


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None
