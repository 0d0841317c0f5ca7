"""Overfitting statistics on every sweep: each result's daily returns in ``returns.parquet``, the DSR
and PBO per symbol in the manifest (recomputable from that file), shown by the CLI, the API, the
page and the report; the same file in process, on Ray and after a resumed SIGKILLed driver; and
``sweep --check`` stopping a strategy that looks ahead."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from http_server import Server
from market_data import goog
from test_lookahead import PEEKING, cheating_bars
from test_page import attribute, browse, chromium  # noqa: F401  (chromium is a fixture)
from test_runs import GRID, RUNNER_GRID, RunCli, killed_run

from tradpal_ray.backtest import BacktestConfig, backtest, rank
from tradpal_ray.market import CandleStore, candles_table
from tradpal_ray.report import build_report
from tradpal_ray.runs import RunStore, SweepRequest, run_sweep
from tradpal_ray.serve import build_app
from tradpal_ray.stats import StatsService
from tradpal_ray.validation import deflated_sharpe_ratio, probability_of_backtest_overfitting


@pytest.fixture(scope="module")
def two_symbol_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished in-process run over GOOG and a second symbol whose bars stop half way (5 chunks each)."""
    root = tmp_path_factory.mktemp("overfit-store")
    store = CandleStore(root)
    frame = goog()
    store.write(candles_table(frame, exchange="test", symbol="GOOG/USD", timeframe="1d"))
    store.write(candles_table(goog(0.5).iloc[: len(frame) // 2], exchange="test", symbol="HALF/USD", timeframe="1d"))
    request = SweepRequest("sma_cross", GRID, symbols=["GOOG/USD", "HALF/USD"], exchange="test", timeframe="1d",
                           config=BacktestConfig(periods_per_year=252))
    outcome = run_sweep(request, store=str(root), executor="local", chunk_size=40)
    return root, outcome.run_id


def daily_equity_returns(bars: pd.DataFrame, params: dict[str, Any], config: BacktestConfig) -> pd.Series:
    """One backtest's daily returns, as a user would compute them from its equity curve."""
    equity = backtest(bars, "sma_cross", params, config).equity
    return equity.groupby(equity.index.normalize()).last().pct_change().dropna()


def test_returns_parquet_holds_each_results_daily_equity_returns(two_symbol_run: tuple[Path, str]) -> None:
    root, run_id = two_symbol_run
    store = RunStore(root)
    results = store.results(run_id)
    matrix = pq.read_table(root / "runs" / run_id / "returns.parquet")
    assert matrix.column_names == ["day", *results["result_id"]]
    assert str(matrix.schema.field("day").type) == "timestamp[ns, tz=UTC]"
    frame = matrix.to_pandas().set_index("day")
    assert frame.index.is_monotonic_increasing and (frame.index == frame.index.normalize()).all()
    config = BacktestConfig(periods_per_year=252)
    for symbol, bars in (("GOOG/USD", goog()), ("HALF/USD", goog(0.5).iloc[: len(goog()) // 2])):
        rows = results[results["symbol"] == symbol]
        for position in (0, len(rows) // 2, len(rows) - 1):
            row = rows.iloc[position]
            expected = daily_equity_returns(bars, {"fast": int(row.fast), "slow": int(row.slow)}, config)
            column = frame[row.result_id].dropna()
            assert (column.index == expected.index).all()
            np.testing.assert_allclose(column.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-15)
    half = results.loc[results["symbol"] == "HALF/USD", "result_id"]
    assert frame[half].iloc[-1].isna().all() and frame[half].iloc[0].notna().all()  # no bars: null, not 0
    one = store.returns(run_id, "HALF/USD")
    assert list(one.columns) == list(half) and not one.isna().any().any()
    pd.testing.assert_frame_equal(one, frame[list(half)].dropna(how="all"), check_freq=False)


def test_stored_dsr_and_pbo_are_validations_functions_on_returns_parquet(two_symbol_run: tuple[Path, str]) -> None:
    root, run_id = two_symbol_run
    store = RunStore(root)
    manifest = store.manifest(run_id)
    frame = pd.read_parquet(root / "runs" / run_id / "returns.parquet").set_index("day")
    assert set(manifest.overfitting) == {"GOOG/USD", "HALF/USD"} and manifest.pbo_partitions == 16
    for symbol, stats in manifest.overfitting.items():
        results = store.results(run_id, symbol)
        best = rank(results, manifest.metric).iloc[0]
        returns = frame[results["result_id"]].dropna(how="all")
        deflated = deflated_sharpe_ratio(results["sharpe"].to_numpy(), returns[best.result_id].to_numpy(),
                                         periods_per_year=252)
        overfit = probability_of_backtest_overfitting(returns.to_numpy(), partitions=16)
        assert stats.best_result_id == best.result_id and stats.n_trials == len(results) == 174
        assert stats.n_days == len(returns)
        assert stats.dsr == pytest.approx(deflated.dsr, rel=1e-12) and stats.psr == pytest.approx(deflated.psr, rel=1e-12)
        assert stats.expected_max_sharpe == pytest.approx(deflated.expected_max_sharpe, rel=1e-12)
        assert stats.sharpe == pytest.approx(best.sharpe, rel=1e-9)  # the best's Sharpe from its stored returns
        assert stats.pbo == overfit.pbo and stats.reading_pbo == overfit.reading()
        assert stats.reading_dsr == deflated.reading()
        assert stats.logits_median == pytest.approx(float(np.median(overfit.logits[np.isfinite(overfit.logits)])))


def test_ray_and_in_process_write_the_same_returns_file(ray_session: None, tmp_path: Path, goog_csv: str) -> None:
    request = SweepRequest("sma_cross", GRID, data_file=goog_csv)
    local = run_sweep(request, store=str(tmp_path / "local"), executor="local", chunk_size=50)
    on_ray = run_sweep(request, store=str(tmp_path / "ray"), executor="ray", chunk_size=50, check=True)
    ours = pq.read_table(tmp_path / "local" / "runs" / local.run_id / "returns.parquet")
    theirs = pq.read_table(tmp_path / "ray" / "runs" / on_ray.run_id / "returns.parquet")
    assert ours.num_columns == 175 and ours.equals(theirs)
    assert on_ray.manifest.overfitting == local.manifest.overfitting
    assert on_ray.manifest.check is not None and on_ray.manifest.check.clean
    assert on_ray.manifest.check.params == {"fast": 5, "slow": 20}


def test_resume_after_a_killed_driver_gives_the_same_returns_and_statistics(tmp_path: Path, goog_csv: str) -> None:
    store = tmp_path / "store"
    ref = killed_run(store, goog_csv, tmp_path / "overfit_cross.py", pbo_partitions=8)
    [manifest] = RunStore(store).runs()
    assert manifest.current_status() == "interrupted" and not manifest.overfitting
    assert not (store / "runs" / manifest.run_id / "returns.parquet").exists()
    resumed = run_sweep(store=str(store), resume=manifest.run_id, executor="local")
    fresh = run_sweep(SweepRequest(ref, RUNNER_GRID, data_file=goog_csv), store=str(tmp_path / "fresh"), executor="local",
                      chunk_size=300, pbo_partitions=8)
    ours = pq.read_table(store / "runs" / resumed.run_id / "returns.parquet")
    theirs = pq.read_table(tmp_path / "fresh" / "runs" / fresh.run_id / "returns.parquet")
    assert ours.num_columns == resumed.manifest.results + 1 and ours.equals(theirs)
    assert resumed.manifest.pbo_partitions == 8 and resumed.manifest.overfitting == fresh.manifest.overfitting
    [stats] = resumed.manifest.overfitting.values()
    assert stats.pbo_partitions == 8 and stats.pbo is not None and stats.dsr is not None


def test_too_few_days_or_a_huge_run_say_why_a_statistic_is_missing(tmp_path: Path, goog_csv: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    short = tmp_path / "SHORT.csv"
    goog().iloc[:14].to_csv(short)
    outcome = run_sweep(SweepRequest("sma_cross", {"fast": [2, 3], "slow": [4, 5]}, data_file=str(short)),
                        store=str(tmp_path / "short"), executor="local")
    [stats] = outcome.manifest.overfitting.values()
    assert stats.pbo is None and stats.n_days == 13
    assert stats.reading_pbo == "PBO not computed: 13 rows of returns cannot make 16 partitions: use fewer partitions or more days"
    assert stats.dsr is not None

    import tradpal_ray.runs._runner as runner

    monkeypatch.setattr(runner, "MAX_RETURNS_RESULTS", 100)
    big = run_sweep(SweepRequest("sma_cross", GRID, data_file=goog_csv), store=str(tmp_path / "big"), executor="local")
    assert not (tmp_path / "big" / "runs" / big.run_id / "returns.parquet").exists()
    assert "174 results is over 100: daily returns kept per chunk only (no returns.parquet), no PBO" in big.manifest.warnings
    [stats] = big.manifest.overfitting.values()
    assert stats.pbo is None and stats.reading_pbo == "PBO not computed: over 100 results"
    assert stats.dsr is not None and big.returns("GOOG").shape == (len(goog()) - 1, 174)


def test_cli_shows_the_readings_and_json_carries_them(tmp_path: Path, goog_csv: str, run_cli: RunCli) -> None:
    argv = ("sweep", "--store", str(tmp_path), "--data", goog_csv, "--grid", "fast=5:50:5", "--grid", "slow=20:200:10",
            "--executor", "local", "--pbo-partitions", "10")
    code, out, err = run_cli(*argv, "--json")
    assert code == 0, err
    doc = json.loads(out)
    stats = doc["overfitting"]["GOOG"]
    manifest = RunStore(tmp_path).manifest(doc["run_id"])
    assert stats["pbo_partitions"] == 10 and stats["pbo"] == manifest.overfitting["GOOG"].pbo
    assert stats["dsr"] == manifest.overfitting["GOOG"].dsr and stats["reading_dsr"].startswith("DSR 0.")
    assert doc["check"] is None
    code, _, err = run_cli(*argv)
    assert code == 0
    text = " ".join(err.split())
    assert f"overfitting GOOG (174 trials, {len(goog()) - 1:,} days): {stats['reading_dsr']}" in text
    assert f"overfitting GOOG: {stats['reading_pbo']}" in text
    code, out, err = run_cli(*argv[:-1], "7")
    assert code == 2 and out == "" and err == "error: --pbo-partitions must be an even number from 2 to 20, got 7\n"


def test_sweep_check_stops_a_strategy_that_looks_ahead(tmp_path: Path, goog_csv: str, run_cli: RunCli) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    path = tmp_path / f"peeking_{tmp_path.name.replace('-', '_')}.py"
    path.write_text(PEEKING.format(calls=str(calls)))
    store = tmp_path / "store"
    try:
        code, out, err = run_cli("sweep", "--store", str(store), "--data", goog_csv, "--strategy", f"{path}:peeking_cross",
                                 "--grid", "fast=10,20", "--grid", "slow=30,40", "--check", "--json")
    finally:
        sys.modules.pop(path.stem, None)
    first = cheating_bars()[0]
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: the strategy looks ahead on GOOG at bar {first} (") and "the sweep did not run" in err
    assert not list(store.glob("runs/*"))  # the sweep never started

    code, out, err = run_cli("sweep", "--store", str(store), "--data", goog_csv, "--grid", "fast=10,20",
                             "--grid", "slow=30,40", "--check", "--executor", "local")
    assert code == 0, err
    assert re.search(r"check: no look-ahead: GOOG \(fast=10 slow=30\), 2,148 bars, 1,000 prefixes; warm-up \d+ bars",
                     " ".join(err.split()))
    [manifest] = RunStore(store).runs()
    assert manifest.check is not None and manifest.check.clean and manifest.check.params == {"fast": 10, "slow": 30}


def test_api_page_and_report_show_dsr_and_pbo(tmp_path: Path, goog_csv: str, redis_server: Any, chromium: str) -> None:  # noqa: F811
    outcome = run_sweep(SweepRequest("sma_cross", GRID, data_file=goog_csv), store=str(tmp_path), executor="local")
    stats = outcome.manifest.overfitting["GOOG"]
    with Server(build_app(StatsService(tmp_path, redis_server.url), require_key=False)) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            run = http.get(f"/runs/{outcome.run_id}").json()
            board = http.get(f"/runs/{outcome.run_id}/leaderboard", params={"top": 3}).json()
            again = http.get(f"/runs/{outcome.run_id}/leaderboard", params={"top": 3}).json()  # from the cache
            one = http.get(f"/runs/{outcome.run_id}/leaderboard", params={"symbol": "GOOG"}).json()
        dom = browse(chromium, f"{server.url}/?run={outcome.run_id}", tmp_path, "--dump-dom").stdout
    assert run["overfitting"]["GOOG"]["dsr"] == stats.dsr and run["overfitting"]["GOOG"]["pbo"] == stats.pbo
    assert run["pbo_partitions"] == 16
    assert board["overfitting"] == again["overfitting"] == one["overfitting"] == run["overfitting"]
    assert board["overfitting"]["GOOG"]["reading_pbo"] == stats.reading_pbo
    assert attribute(dom, "overfitting", "data-symbols") == "1"
    tag = re.search(r'<p data-symbol="GOOG" data-dsr="([^"]*)" data-pbo="([^"]*)">', dom)
    assert tag and tag.groups() == (f"{stats.dsr:.2f}", f"{stats.pbo:.2f}")
    assert stats.reading_dsr in dom and stats.reading_pbo in dom
    page = build_report(RunStore(tmp_path), outcome.run_id)
    row = re.search(r'<tr class="overfitting" data-symbol="GOOG">(.*?)</tr>', page)
    assert row and f"<td>{stats.dsr:,.2f}</td><td>{stats.pbo:,.2f}</td>" in row.group(1)
    assert stats.reading_dsr.replace("'", "&#x27;") in row.group(1) and stats.reading_pbo in row.group(1)
    assert math.isfinite(stats.dsr) and 0 <= stats.pbo <= 1
