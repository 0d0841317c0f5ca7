"""The plain query layer over real stores (no Redis, no Ray)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tradpal_ray.backtest.results import ResultStore
from tradpal_ray.errors import ConfigError
from tradpal_ray.feeds import FeedStatusStore
from tradpal_ray.market.schema import candles_table
from tradpal_ray.market.store import CandleStore
from tradpal_ray.stats import NotFound, RunVersions, StatsQueries


@pytest.fixture
def two_runs(store_root: Path, make_run: Callable[..., Any]) -> StatsQueries:
    make_run(store_root, "old-run", created_at="2024-05-01T00:00:00+00:00", seed=1)
    make_run(store_root, "new-run", symbols=("BTC/USDT",), created_at="2024-06-01T00:00:00+00:00", seed=2)
    return StatsQueries(store_root)


def test_runs_newest_first_and_run_summary(two_runs: StatsQueries) -> None:
    assert [r["run_id"] for r in two_runs.runs()] == ["new-run", "old-run"]
    doc = two_runs.run("old-run")
    assert doc["status"] == "complete" and doc["grid"] == {"fast": [5, 10], "slow": [20, 40]}
    summary = doc["summary"]
    assert summary["results"] == 8 and sorted(s["symbol"] for s in summary["symbols"]) == ["BTC/USDT", "ETH/USDT"]
    frame = ResultStore(two_runs.root).results("old-run", "ETH/USDT")
    eth = next(s for s in summary["symbols"] if s["symbol"] == "ETH/USDT")
    assert eth["best"] == pytest.approx(frame["sharpe"].max()) and eth["results"] == 4


def test_leaderboard_ranks_filters_and_rejects(two_runs: StatsQueries) -> None:
    board = two_runs.leaderboard("old-run", top=3)
    values = [r["sharpe"] for r in board["results"]]
    assert board["metric"] == "sharpe" and board["total"] == 8 and len(values) == 3 and values == sorted(values, reverse=True)
    assert isinstance(board["results"][0]["params"], dict)
    drawdown = [r["max_drawdown_pct"] for r in two_runs.leaderboard("old-run", metric="max_drawdown_pct", top=8)["results"]]
    assert drawdown == sorted(drawdown)  # lower is better
    eth = two_runs.leaderboard("old-run", symbol="ETH/USDT", top=10)
    assert eth["total"] == 4 and {r["symbol"] for r in eth["results"]} == {"ETH/USDT"}
    assert two_runs.leaderboard("old-run", strategy="ema_cross")["results"] == []
    assert two_runs.leaderboard("old-run", timeframe="1d")["total"] == 0
    assert two_runs.leaderboard("old-run", timeframe="1h")["total"] == 8
    with pytest.raises(NotFound, match="SOL/USDT"):
        two_runs.leaderboard("old-run", symbol="SOL/USDT")
    with pytest.raises(NotFound):
        two_runs.leaderboard("no-such-run")
    with pytest.raises(NotFound):
        two_runs.run("../etc")
    with pytest.raises(ConfigError, match="unknown metric"):
        two_runs.leaderboard("old-run", metric="luck")


def test_equity_and_trades_of_a_kept_result(two_runs: StatsQueries) -> None:
    best = two_runs.leaderboard("old-run", top=1)["results"][0]
    doc = two_runs.equity("old-run", best["result_id"])
    assert len(doc["equity"]["time"]) == len(doc["equity"]["equity"]) == 600
    assert doc["equity"]["time"][0] == int(pd.Timestamp("2024-01-01", tz="UTC").value // 1_000_000)
    closed = [t for t in doc["trades"] if t["exit_reason"] != "open"]
    assert len(closed) == best["trades"]
    assert all(isinstance(t["entry_time"], int) for t in doc["trades"])
    worst = two_runs.leaderboard("old-run", top=8)["results"][-1]  # not kept (keep=2 per symbol)
    with pytest.raises(NotFound):
        two_runs.equity("old-run", worst["result_id"])


def test_symbol_stats_across_runs(two_runs: StatsQueries, store_root: Path) -> None:
    stats = {s["symbol"]: s for s in two_runs.symbol_stats()}
    assert stats["BTC/USDT"]["runs"] == 2 and stats["BTC/USDT"]["results"] == 8
    assert stats["ETH/USDT"]["runs"] == 1 and stats["ETH/USDT"]["timeframe"] == "1h"
    assert [s["symbol"] for s in two_runs.symbol_stats(symbol="ETH/USDT")] == ["ETH/USDT"]
    assert two_runs.symbol_stats(timeframe="1d") == [] and two_runs.symbol_stats(exchange="kraken") == []
    with pytest.raises(NotFound):
        two_runs.symbol_stats(symbol="DOGE/USDT")
    write_candles(store_root, "DOGE/USDT", [0, 1, 2])
    assert two_runs.symbol_stats(symbol="DOGE/USDT") == []  # known to the candle store, no runs yet


def write_candles(root: Path, symbol: str, hours: list[int]) -> None:
    start = pd.Timestamp("2024-01-01", tz="UTC")
    frame = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.0},
                         index=pd.DatetimeIndex([start + pd.Timedelta(hours=h) for h in hours], name="time"))
    CandleStore(root).write(candles_table(frame, exchange="binance", symbol=symbol, timeframe="1h"))


def test_coverage_feeds_and_trades(two_runs: StatsQueries, store_root: Path) -> None:
    write_candles(store_root, "BTC/USDT", [0, 1, 2, 5, 6])
    [series] = two_runs.coverage()
    assert (series["symbol"], series["rows"], series["gaps"], series["missing"]) == ("BTC/USDT", 5, 1, 2)
    assert series["gap_list"][0]["count"] == 2
    FeedStatusStore(store_root).write("binance-ws", {"mode": "ws", "reconnects": 2})
    assert two_runs.feeds() == [{"mode": "ws", "reconnects": 2, "name": "binance-ws"}]

    table = two_runs.trades_table().to_pandas()
    counts = two_runs.trade_counts("all")
    assert counts["all"] == len(table) == counts["open"] + counts["closed"] > 0
    assert two_runs.trade_counts("open")["count"] == counts["open"] == (table["exit_reason"] == "open").sum()
    stats = two_runs.trade_stats()
    closed = table[table["exit_reason"] != "open"]
    assert stats["closed"] == len(closed) and stats["pnl_total"] == pytest.approx(closed["pnl"].sum())
    assert stats["win_rate_pct"] == pytest.approx((closed["pnl"] > 0).mean() * 100)
    wins, losses = closed["pnl"][closed["pnl"] > 0].sum(), closed["pnl"][closed["pnl"] < 0].sum()
    assert stats["profit_factor"] == pytest.approx(wins / -losses)
    assert sum(s["closed"] for s in stats["by_symbol"]) == stats["closed"]
    with pytest.raises(ConfigError):
        two_runs.trade_counts("pending")


def test_empty_store(store_root: Path) -> None:
    queries = StatsQueries(store_root)
    assert queries.runs() == [] and queries.coverage() == [] and queries.feeds() == []
    assert queries.trade_counts()["all"] == 0 and queries.trade_stats()["win_rate_pct"] is None


def test_versions_change_when_a_run_lands_or_grows(store_root: Path, make_run: Callable[..., Any]) -> None:
    versions = RunVersions(store_root)
    empty, runs = versions.scan()
    assert runs == {}
    manifest = make_run(store_root, "r1")
    first, runs = versions.scan()
    assert first != empty and set(runs) == {"r1"} and versions.scan() == (first, runs)
    make_run(store_root, "r2", seed=3)
    second, runs2 = versions.scan()
    assert second != first and runs2["r1"] == runs["r1"]  # an older run keeps its stamp
    store = ResultStore(store_root)
    manifest.status = "running"
    store.write_manifest(manifest)
    running, runs3 = versions.scan()
    frame = store.results("r1", "BTC/USDT")
    from tradpal_ray.backtest.distributed import results_table

    store.write_chunk("r1", "BTC/USDT", 7, results_table("r1", "BTC/USDT", "sma_cross",
                                                          frame[["sharpe"]].assign(fast=1), ["fast"]))
    grown, runs4 = versions.scan()
    assert grown != running and runs4["r1"] != runs3["r1"] and runs4["r2"] == runs3["r2"]


def test_one_corrupt_file_fails_only_its_own_series(
    two_runs: StatsQueries, store_root: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    """Issue 11: one truncated ETH 5m file made coverage, BTC's symbol stats and `candles` fail for the whole store."""
    write_candles(store_root, "BTC/USDT", [0, 1, 2, 5])
    five = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.0},
                        index=pd.date_range("2024-01-01", periods=12, freq="5min", tz="UTC", name="time"))
    CandleStore(store_root).write(candles_table(five, exchange="binance", symbol="ETH/USDT", timeframe="5m"))
    (bad,) = (store_root / "candles").glob("exchange=binance/timeframe=5m/symbol=ETH-USDT/*/*.parquet")
    bad.write_bytes(bad.read_bytes()[:100])
    named = str(bad.relative_to(store_root))

    btc, eth = two_runs.coverage()
    assert (btc["symbol"], btc["rows"], btc["missing"], btc["problem"]) == ("BTC/USDT", 4, 2, None)
    assert (eth["symbol"], eth["timeframe"], eth["gaps"], eth["missing"]) == ("ETH/USDT", "5m", None, None)
    assert named in eth["problem"] and str(store_root) not in eth["problem"]
    assert [s["symbol"] for s in two_runs.symbol_stats(symbol="BTC/USDT")] == ["BTC/USDT"]
    assert CandleStore(store_root).problems() == [f"binance ETH/USDT 5m: {eth['problem']}"]

    code, _, err = run_cli("candles", "--store", str(store_root))
    assert code == 1 and "Traceback" not in err
    assert "BTC/USDT" in err and f"damaged series: binance ETH/USDT 5m: corrupt or unreadable candle file {named}" in err
