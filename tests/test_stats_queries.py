"""The plain query layer over real stores (no Redis, no Ray)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from redis_fixtures import run_id

from tradpal_ray.errors import ConfigError
from tradpal_ray.feeds import FeedStatusStore
from tradpal_ray.market.schema import candles_table
from tradpal_ray.market.store import CandleStore
from tradpal_ray.runs import RUN_ID_PATTERN, RunStore, chunk_table, new_run_id
from tradpal_ray.stats import NotFound, RunVersions, StatsQueries

OLD, NEW = run_id(1), run_id(2)
R1, R2 = run_id(3), run_id(4)


@pytest.fixture
def two_runs(store_root: Path, make_run: Callable[..., Any]) -> StatsQueries:
    make_run(store_root, OLD, created_at="2024-05-01T00:00:00+00:00", seed=1)
    make_run(store_root, NEW, symbols=("BTC/USDT",), created_at="2024-06-01T00:00:00+00:00", seed=2)
    return StatsQueries(store_root)


def test_runs_newest_first_and_run_summary(two_runs: StatsQueries) -> None:
    assert [r["run_id"] for r in two_runs.runs()] == [NEW, OLD]
    doc = two_runs.run(OLD)
    assert doc["status"] == "complete" and doc["grid"] == {"fast": [5, 10], "slow": [20, 40]}
    summary = doc["summary"]
    assert summary["results"] == 8 and sorted(s["symbol"] for s in summary["symbols"]) == ["BTC/USDT", "ETH/USDT"]
    frame = RunStore(two_runs.root).results(OLD, "ETH/USDT")
    eth = next(s for s in summary["symbols"] if s["symbol"] == "ETH/USDT")
    assert eth["best"] == pytest.approx(frame["sharpe"].max()) and eth["results"] == 4


def test_leaderboard_ranks_filters_and_rejects(two_runs: StatsQueries) -> None:
    board = two_runs.leaderboard(OLD, top=3)
    values = [r["sharpe"] for r in board["results"]]
    assert board["metric"] == "sharpe" and board["total"] == 8 and len(values) == 3 and values == sorted(values, reverse=True)
    assert isinstance(board["results"][0]["params"], dict)
    drawdown = [r["max_drawdown_pct"] for r in two_runs.leaderboard(OLD, metric="max_drawdown_pct", top=8)["results"]]
    assert drawdown == sorted(drawdown)  # lower is better
    eth = two_runs.leaderboard(OLD, symbol="ETH/USDT", top=10)
    assert eth["total"] == 4 and {r["symbol"] for r in eth["results"]} == {"ETH/USDT"}
    assert two_runs.leaderboard(OLD, strategy="ema_cross")["results"] == []
    assert two_runs.leaderboard(OLD, timeframe="1d")["total"] == 0
    assert two_runs.leaderboard(OLD, timeframe="1h")["total"] == 8
    with pytest.raises(NotFound, match="SOL/USDT"):
        two_runs.leaderboard(OLD, symbol="SOL/USDT")
    with pytest.raises(NotFound):
        two_runs.leaderboard("no-such-run")
    with pytest.raises(NotFound):
        two_runs.run("../etc")
    with pytest.raises(ConfigError, match="unknown metric"):
        two_runs.leaderboard(OLD, metric="luck")


def test_equity_and_trades_of_a_kept_result(two_runs: StatsQueries) -> None:
    best = two_runs.leaderboard(OLD, top=1)["results"][0]
    doc = two_runs.equity(OLD, best["result_id"])
    assert len(doc["equity"]["time"]) == len(doc["equity"]["equity"]) == 600
    assert doc["equity"]["time"][0] == int(pd.Timestamp("2024-01-01", tz="UTC").value // 1_000_000)
    closed = [t for t in doc["trades"] if t["exit_reason"] != "open"]
    assert len(closed) == best["trades"]
    assert all(isinstance(t["entry_time"], int) for t in doc["trades"])
    worst = two_runs.leaderboard(OLD, top=8)["results"][-1]  # not kept (keep=2 per symbol)
    with pytest.raises(NotFound):
        two_runs.equity(OLD, worst["result_id"])


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
    manifest = make_run(store_root, R1)
    first, runs = versions.scan()
    assert first != empty and set(runs) == {R1} and versions.scan() == (first, runs)
    make_run(store_root, R2, seed=3)
    second, runs2 = versions.scan()
    assert second != first and runs2[R1] == runs[R1]  # an older run keeps its stamp
    store = RunStore(store_root)
    manifest.status = "running"
    store.write_manifest(manifest)
    running, runs3 = versions.scan()
    frame = store.results(R1, "BTC/USDT")
    store.write_chunk(R1, "BTC/USDT", 7, chunk_table(R1, "BTC/USDT", "sma_cross",
                                                      frame[["sharpe"]].assign(fast=1, slow=2), {"fast": "int", "slow": "int"}))
    grown, runs4 = versions.scan()
    assert grown != running and runs4[R1] != runs3[R1] and runs4[R2] == runs3[R2]


def test_run_and_result_ids_must_have_their_real_shape(two_runs: StatsQueries) -> None:
    """Ids enter from URLs and the command line: ``..`` or a path never reaches the filesystem."""
    store = RunStore(two_runs.root)
    Path(two_runs.root, "manifest.json").write_bytes(Path(two_runs.root, "runs", OLD, "manifest.json").read_bytes())
    for bad in ("..", ".", "../runs/" + OLD, OLD + "/..", "old-run", OLD[:-1] + "g", OLD + "0", ""):
        with pytest.raises(ConfigError, match="run ids look like"):
            store.manifest(bad)
        with pytest.raises(NotFound):
            two_runs.run(bad)
    [kept] = [r["result_id"] for r in two_runs.leaderboard(OLD, top=1)["results"]]
    assert store.detail(OLD, kept)[0] is not None
    for bad in ("..", "../" + kept, kept.upper(), kept[:-1]):
        with pytest.raises(ConfigError, match="16 hex digits"):
            store.detail(OLD, bad)
    assert re.fullmatch(RUN_ID_PATTERN, new_run_id("sma_cross")) and re.fullmatch(RUN_ID_PATTERN, OLD)
    odd = new_run_id("../my strategy")  # a strategy name is made safe, never a path
    assert re.fullmatch(RUN_ID_PATTERN, odd) and odd.startswith("___my_strategy-")


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
