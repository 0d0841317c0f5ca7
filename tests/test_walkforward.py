"""Walk-forward and CPCV on backtesting.py's real GOOG (daily) and EURUSD (hourly) bars.

In process and on a real Ray; the fold's trades against an independent flat-start backtest
with warm-up, no look-ahead past a window's end, resume after a SIGKILLed driver, the CLI,
and CPCV against a reference written from AFML ch. 12 in this file.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from backtesting.test import EURUSD, GOOG
from http_server import Server
from test_page import attribute, browse, chromium  # noqa: F401  (chromium: the fixture)

from tradpal_ray.backtest import (
    BacktestConfig,
    get_strategy,
    objective,
    prepare_bars,
    run_signals,
    strategy_combos,
)
from tradpal_ray.errors import ConfigError
from tradpal_ray.report import build_report
from tradpal_ray.runs import (
    RunStore,
    SweepRequest,
    WalkForwardRequest,
    WalkForwardSpec,
    run_walkforward,
)
from tradpal_ray.runs._walkforward import cpcv_evaluate, grid_search
from tradpal_ray.serve import build_app
from tradpal_ray.stats import StatsService

GRID = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
DATASETS = {"GOOG": (GOOG, WalkForwardSpec("730d", "180d")), "EURUSD": (EURUSD, WalkForwardSpec("60d", "20d"))}
RunCli = Callable[..., tuple[int, str, str]]


def write_csv(tmp_path: Path, name: str, frame: pd.DataFrame) -> str:
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path)
    return str(path)


def walk(tmp_path: Path, name: str, spec: WalkForwardSpec | None = None, frame: pd.DataFrame | None = None,
         store: str = "store", strategy: str = "sma_cross", **options: object) -> object:
    data, default_spec = DATASETS[name]
    csv = write_csv(tmp_path, name, data if frame is None else frame)
    request = WalkForwardRequest(SweepRequest(strategy, GRID, data_file=csv), spec or default_spec)
    return run_walkforward(request, store=str(tmp_path / store), **{"executor": "local", **options})


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_test_window_trades_as_a_flat_start_backtest_with_warm_up_bars_before_it(tmp_path: Path, name: str) -> None:
    outcome = walk(tmp_path, name, chunk_size=17)  # many chunks per fold: the choice must not depend on them
    data = DATASETS[name][0]
    bars = prepare_bars(data)
    warmup = outcome.manifest.walkforward["warmup"]
    assert warmup == 200  # the grid's longest window
    folds, trades, curve = outcome.folds, outcome.trades, outcome.equity
    assert len(folds) >= 5 and (folds["candidates"] == 174).all()
    strat, goal = get_strategy("sma_cross"), objective("sharpe")
    level = 10_000.0
    for row in folds.to_dict("records"):
        start, end = bars.index.get_loc(row["test_from"]), bars.index.get_loc(row["test_to"]) + 1
        params = {"fast": row["fast"], "slow": row["slow"]}
        # Independent: the strategy on the bars ending at the window's end (warm-up included), no entry
        # before the window, on prepare_bars of those rows: trades must match the run's, in every field.
        seen = data.iloc[start - warmup:end]
        entries, exits = strat.signals(prepare_bars(seen), params)
        entries[:warmup], exits[:warmup] = False, False
        reference = run_signals(seen, entries, exits).trades
        ours = trades[trades["fold"] == row["fold"]].reset_index(drop=True)
        assert len(ours) == len(reference)
        for column in ("entry_time", "exit_time"):
            assert list(ours[column].dt.as_unit("ns")) == list(reference[column].dt.as_unit("ns"))
        for column in ("entry_price", "exit_price", "units", "pnl"):
            np.testing.assert_array_equal(ours[column].to_numpy(), reference[column].to_numpy())
        assert list(ours["exit_reason"]) == [str(r) for r in reference["exit_reason"]]
        # The in-sample step in one call chooses what the (fold x chunk) units chose.
        train_start, train_end = bars.index.get_loc(row["train_from"]), bars.index.get_loc(row["train_to"]) + 1
        choice = grid_search(prepare_bars(data.iloc[train_start - warmup:train_end]), warmup, strat,
                             strategy_combos(strat, GRID), BacktestConfig(), goal)
        assert choice is not None and choice.params == params and choice.objective == pytest.approx(row["is_objective"])
        # Compounded: the fold's curve is its own backtest scaled to start from the previous fold's end.
        alone = run_signals(data.iloc[start:end], entries[warmup:], exits[warmup:]).equity.to_numpy()
        stitched = curve.loc[curve["fold"] == row["fold"], "equity"].to_numpy()
        np.testing.assert_allclose(stitched, alone * level / 10_000.0, rtol=1e-12)
        level = stitched[-1]
    summary = outcome.summary
    assert summary["oos"]["final_equity"] == pytest.approx(level)
    assert summary["oos"]["trades"] == int(folds["oos_trades"].sum())
    assert summary["wfe"] == pytest.approx(summary["oos"]["cagr_pct"] / folds["is_cagr_pct"].mean())


def test_a_sampler_can_be_the_in_sample_optimiser(tmp_path: Path, run_cli: RunCli) -> None:
    """--search tpe --trials N: each fold searches the grid's ranges with N trials (seeded per fold), chooses
    its best trial, and tests it out of sample exactly as a grid's choice; the same seed gives the same run."""
    from tradpal_ray.runs._optimize import search_bars

    spec = WalkForwardSpec("730d", "180d", search="tpe", trials=25, seed=7)
    outcome = walk(tmp_path, "GOOG", spec)
    bars, warmup, goal = prepare_bars(GOOG), outcome.manifest.walkforward["warmup"], objective("sharpe")
    folds = outcome.folds
    assert len(folds) >= 5 and folds["candidates"].between(10, 25).all()
    assert folds["fast"].between(5, 50).all() and folds["slow"].between(20, 200).all()
    assert folds[["fast", "slow"]].drop_duplicates().shape[0] > 1  # not a grid point picked every time by accident
    for row in folds.to_dict("records")[:2]:
        start, end = bars.index.get_loc(row["train_from"]), bars.index.get_loc(row["train_to"]) + 1
        search = search_bars(prepare_bars(GOOG.iloc[start - warmup:end]), "sma_cross",
                             ["fast=int:5:50", "slow=int:20:200"], 25, "tpe", "sharpe", BacktestConfig(), 7 + row["fold"],
                             warmup=warmup)
        best = search.best()[0]
        assert best.params == {"fast": row["fast"], "slow": row["slow"]}
        assert goal.value(best.stats) == pytest.approx(row["is_objective"])
    again = walk(tmp_path, "GOOG", spec, store="again")
    pd.testing.assert_frame_equal(folds.drop(columns=["run_id"], errors="ignore"),
                                  again.folds.drop(columns=["run_id"], errors="ignore"))
    code, _, err = run_cli("sweep", "--store", str(tmp_path / "store"), "--resume", outcome.manifest.run_id)
    assert code == 2 and err.startswith(f"error: run {outcome.manifest.run_id} is a walkforward run: resume it with")
    code, _, err = run_cli("walkforward", "--store", str(tmp_path), "--data", write_csv(tmp_path, "GOOG", GOOG),
                           "--grid", "fast=5:50:5", "--search", "tpe")
    assert code == 2 and err.startswith("error: --search tpe needs --trials N")
    code, _, err = run_cli("walkforward", "--store", str(tmp_path), "--data", write_csv(tmp_path, "GOOG", GOOG),
                           "--grid", "fast=5:50:5", "--search", "annealing", "--trials", "5")
    assert code == 2 and err.startswith("error: --search must be grid or one of")


PEEKING = """
import numpy as np
from tradpal_ray.backtest import cross_above, cross_below, sma

def peeking(bars, fast=10, slow=30):
    ahead = np.append(bars.close[fast:], np.full(fast, bars.close[-1]))  # the close `fast` bars later: look-ahead
    f, s = sma(ahead, fast), sma(bars.close, slow)
    return cross_above(f, s), cross_below(f, s)
"""


def test_bars_after_a_window_never_change_its_fold(tmp_path: Path) -> None:
    """No look-ahead past a window, with a strategy that peeks up to 50 bars ahead (so a window's
    results would change if its signals ever saw later bars): rewrite every bar after fold 4's
    training window. Folds 0-3 and every in-sample row of fold 4 (190 combinations) are unchanged;
    later results are not."""
    (tmp_path / "peeking.py").write_text(PEEKING)
    strategy = f"{tmp_path / 'peeking.py'}:peeking"
    honest = walk(tmp_path, "GOOG", store="a", strategy=strategy)
    cut = honest.folds.loc[4, "train_to"]
    assert honest.folds.loc[3, "test_to"] <= cut
    altered = GOOG.copy()
    later = altered.index > cut.tz_localize(None)
    prices = ["Open", "High", "Low", "Close"]
    altered.loc[later, prices] = altered.loc[later, prices].to_numpy()[::-1]
    altered.loc[later, "High"] = altered.loc[later, prices].max(axis=1)
    altered.loc[later, "Low"] = altered.loc[later, prices].min(axis=1)
    changed = walk(tmp_path, "GOOG", frame=altered, store="b", strategy=strategy)
    pd.testing.assert_frame_equal(honest.folds.iloc[:4], changed.folds.iloc[:4])
    in_sample = [RunStore(tmp_path / side).fold_results(o.run_id, 4).drop(columns="run_id")
                 for side, o in (("a", honest), ("b", changed))]
    assert len(in_sample[0]) == 190  # the whole grid: a plain function has no fast < slow rule
    pd.testing.assert_frame_equal(*in_sample)
    assert not honest.folds.iloc[4:].reset_index(drop=True).equals(changed.folds.iloc[4:].reset_index(drop=True))


def test_anchored_folds_grow_and_ray_tasks_give_the_in_process_results(tmp_path: Path, ray_session: None) -> None:
    spec = WalkForwardSpec("730d", "180d", anchored=True, objective="sortino")
    local = walk(tmp_path, "GOOG", spec, store="local")
    on_ray = walk(tmp_path, "GOOG", spec, store="ray", executor="ray", chunk_size=40)
    assert on_ray.manifest.executor == "ray" and on_ray.manifest.status == "complete"
    assert local.folds["train_from"].nunique() == 1 and local.folds["train_bars"].is_monotonic_increasing
    pd.testing.assert_frame_equal(local.folds, on_ray.folds)
    pd.testing.assert_frame_equal(local.equity, on_ray.equity)
    assert RunStore(tmp_path / "ray").manifest(on_ray.run_id).kind == "walkforward"


RUNNER = textwrap.dedent("""
    import sys
    from tradpal_ray.runs import SweepRequest, WalkForwardRequest, WalkForwardSpec, run_walkforward
    grid = {"fast": list(range(2, 120, 2)), "slow": list(range(20, 260, 2))}
    request = WalkForwardRequest(SweepRequest(sys.argv[3], grid, data_file=sys.argv[1]), WalkForwardSpec("730d", "180d"))
    run_walkforward(request, store=sys.argv[2], executor="local", chunk_size=300)
""")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling files another process writes


def test_a_killed_driver_is_resumed_to_identical_results(tmp_path: Path, run_cli: RunCli) -> None:
    csv = write_csv(tmp_path, "GOOG", GOOG)
    store = tmp_path / "store"
    strategy_file = tmp_path / "walked_cross.py"
    strategy_file.write_text(
        "from tradpal_ray.backtest import cross_above, cross_below, sma\n\n"
        "def walked_cross(bars, fast=10, slow=30):\n"
        "    f, s = sma(bars.close, fast), sma(bars.close, slow)\n"
        "    return cross_above(f, s), cross_below(f, s)\n"
    )
    ref = f"{strategy_file}:walked_cross"

    def units() -> list[Path]:
        return list(store.glob("runs/*/folds/*/chunk-*.parquet"))

    driver = subprocess.Popen([sys.executable, "-c", RUNNER, csv, str(store), ref],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(units()) >= 3, 120, "three units")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    [manifest] = RunStore(store).runs()
    assert manifest.kind == "walkforward" and manifest.current_status() == "interrupted"
    done = len(units())
    assert done < manifest.walkforward["folds"] * manifest.chunks
    code, out, err = run_cli("walkforward", "--store", str(store), "--resume", manifest.run_id, "--json")
    assert code == 0, err
    resumed = json.loads(out)
    assert resumed["run_id"] == manifest.run_id and resumed["status"] == "complete"
    grid = {"fast": list(range(2, 120, 2)), "slow": list(range(20, 260, 2))}
    fresh = run_walkforward(WalkForwardRequest(SweepRequest(ref, grid, data_file=csv), WalkForwardSpec("730d", "180d")),
                            store=str(tmp_path / "fresh"), executor="local")
    ours = RunStore(store).walkforward(manifest.run_id)
    pd.testing.assert_frame_equal(ours["folds"], fresh.folds)
    pd.testing.assert_frame_equal(ours["oos_equity"], fresh.equity)
    assert resumed["summary"]["wfe"] == pytest.approx(fresh.summary["wfe"])


def test_cli_json_and_one_line_errors(tmp_path: Path, run_cli: RunCli) -> None:
    csv = write_csv(tmp_path, "EURUSD", EURUSD)
    base = ("walkforward", "--store", str(tmp_path), "--data", csv, "--grid", "fast=5:50:5", "--grid", "slow=20:200:10")
    code, out, err = run_cli(*base, "--train", "60d", "--test", "20d", "--objective", "calmar", "--json",
                             "--executor", "local", "--periods-per-year", "252")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["objective"] == "calmar" and doc["warmup"] == 200 and len(doc["folds"]) == doc["summary"]["folds"] >= 5
    first = doc["folds"][0]
    assert set(first["params"]) == {"fast", "slow"} and first["is"]["calmar"] == pytest.approx(first["is_objective"])
    assert first["test"][0] > first["train"][1]
    code, _, err = run_cli(*base, "--train", "60d", "--test", "20d", "--step", "10d")
    assert code == 2 and err.startswith("error: --step 10 days") and "Traceback" not in err
    code, _, err = run_cli(*base, "--train", "600d", "--test", "20d")
    assert code == 2 and "no walk-forward fold fits" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(*base, "--objective", "nope")
    assert code == 2 and err.startswith("error: unknown objective 'nope'")
    with pytest.raises(ConfigError, match="walk-forward takes one symbol"):
        WalkForwardRequest(SweepRequest("sma_cross", GRID, symbols=["A/B", "C/D"], timeframe="1h"),
                           WalkForwardSpec("60d", "20d")).check()


def reference_cpcv(returns: pd.DataFrame, groups: int, k: int, purge: int, embargo: int, ppy: float) -> list[float]:
    """CPCV from AFML ch. 12, written plainly: pandas Sharpe on the kept training days, paths by counting."""
    days = len(returns)
    sizes = [days // groups + (1 if g < days % groups else 0) for g in range(groups)]
    edges = np.concatenate(([0], np.cumsum(sizes)))
    chosen: dict[tuple[int, ...], int] = {}
    for test in itertools.combinations(range(groups), k):
        keep = np.ones(days, dtype=bool)
        for g in test:
            keep[max(0, edges[g] - purge):edges[g + 1] + purge + embargo] = False
        train = returns[keep]
        sharpe = train.mean() / train.std(ddof=1)
        chosen[test] = int(np.argmax(sharpe.fillna(-np.inf).to_numpy()))
    seen = [0] * groups
    paths: list[list[float]] = [[] for _ in range(len([t for t in chosen if 0 in t]))]
    for test, best in chosen.items():
        for g in test:
            paths[seen[g]].extend(returns.iloc[edges[g]:edges[g + 1], best])
            seen[g] += 1
    return [float(np.mean(p) / np.std(p, ddof=1) * np.sqrt(ppy)) for p in paths]


@pytest.mark.parametrize("name", list(DATASETS))
def test_cpcv_paths_match_a_reference_and_give_sharpe_quantiles(tmp_path: Path, name: str, run_cli: RunCli) -> None:
    from tradpal_ray.backtest import sweep_returns

    data = DATASETS[name][0]
    combos = strategy_combos("sma_cross", GRID)
    _, returns = sweep_returns(data, "sma_cross", combos, BacktestConfig(periods_per_year=252))
    report = cpcv_evaluate(returns.to_numpy(), combos, objective("sharpe"), groups=6, test_groups=2, purge=3,
                           embargo=2, ppy=252)
    assert len(report.choices) == 15 and len(report.path_sharpes) == 5
    assert list(report.path_sharpes) == pytest.approx(reference_cpcv(returns, 6, 2, 3, 2, 252), rel=1e-9)
    q = report.quantiles()
    assert q["min"] <= q["p5"] <= q["p25"] <= q["median"] <= q["p75"] <= q["p95"] <= q["max"]
    assert q["min"] == pytest.approx(min(report.path_sharpes)) and q["max"] == pytest.approx(max(report.path_sharpes))
    code, out, err = run_cli("walkforward", "--store", str(tmp_path), "--data", write_csv(tmp_path, name, data),
                             "--grid", "fast=5:50:5", "--grid", "slow=20:200:10", "--cv", "cpcv", "--groups", "6",
                             "--test-groups", "2", "--purge", "3", "--embargo", "2", "--periods-per-year", "252", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["splits"] == 15 and doc["paths"] == 5
    assert doc["path_sharpes"] == pytest.approx(list(report.path_sharpes))
    code, _, err = run_cli("walkforward", "--store", str(tmp_path), "--data", write_csv(tmp_path, name, data),
                           "--grid", "fast=5,10", "--grid", "slow=20,30", "--cv", "cpcv", "--objective", "sqn")
    assert code == 2 and "needs statistic 'sqn', which the results lack" in err  # CPCV chooses from daily returns


def test_runs_api_page_and_report_show_folds_wfe_and_the_stitched_curve(
    tmp_path: Path, redis_server: Any, chromium: str, run_cli: RunCli  # noqa: F811  (the fixture imported above)
) -> None:
    outcome = walk(tmp_path, "GOOG")
    store = tmp_path / "store"
    with Server(build_app(StatsService(store, redis_server.url), require_key=False)) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            [listed] = http.get("/runs").json()
            doc = http.get(f"/runs/{outcome.run_id}/walkforward").json()
            missing = http.get("/runs/sma_cross-20240101T000000-0000aa/walkforward")
        dom = browse(chromium, f"{server.url}/", tmp_path, "--dump-dom").stdout
    assert listed["kind"] == "walkforward" and listed["run_id"] == outcome.run_id
    assert doc["summary"]["wfe"] == pytest.approx(outcome.summary["wfe"]) and doc["objective"] == "sharpe"
    assert [f["params"] for f in doc["folds"]] == [{"fast": r.fast, "slow": r.slow} for r in outcome.folds.itertuples()]
    assert doc["equity"]["equity"] == pytest.approx(outcome.equity["equity"].tolist()) and missing.status_code == 404
    assert attribute(dom, "leaderboard", "data-kind") == "walkforward"
    assert attribute(dom, "leaderboard", "data-run") == outcome.run_id
    assert re.findall(r'<tr data-fold="(\d+)"', dom) == [str(k) for k in range(len(outcome.folds))]
    points = re.search(r'<div id="equity"[^>]*><svg [^>]*data-points="(\d+)"', dom)
    assert points and int(points.group(1)) == len(outcome.equity)
    assert 'id="error" role="alert"></span>' in dom
    page = build_report(RunStore(store), outcome.run_id)
    assert f"<h1>Walk-forward {outcome.run_id}</h1>" in page and page.count('class="fold"') == len(outcome.folds)
    assert "walk-forward efficiency" in page and "<polyline" in page
    code, _, err = run_cli("report", outcome.run_id, "--store", str(store), "--out", str(tmp_path / "wf.html"))
    assert code == 0, err
    assert (tmp_path / "wf.html").read_text() == page


def test_a_store_series_walks_forward_like_its_file(tmp_path: Path, run_cli: RunCli) -> None:
    from market_data import write_goog

    write_goog(tmp_path, {"GOOGX/USD": 1.0})
    grid = ("--grid", "fast=10,20", "--grid", "slow=50,100", "--train", "730d", "--test", "180d", "--json",
            "--executor", "local", "--size-unit", "1")
    code, out, err = run_cli("walkforward", "--store", str(tmp_path), "--exchange", "test", "--symbols", "GOOGX/USD",
                             "--timeframe", "1d", *grid)
    assert code == 0, err
    from_store = json.loads(out)
    code, out, err = run_cli("walkforward", "--store", str(tmp_path / "file"), "--data", write_csv(tmp_path, "GOOG", GOOG),
                             *grid)
    assert code == 0, err
    from_file = json.loads(out)
    assert from_store["summary"] == from_file["summary"] and len(from_store["folds"]) == len(from_file["folds"]) >= 5
    assert [f["params"] for f in from_store["folds"]] == [f["params"] for f in from_file["folds"]]
    code, _, err = run_cli("walkforward", "--store", str(tmp_path), "--exchange", "test", "--symbols", "NOPE/USD",
                           "--timeframe", "1d", *grid)
    assert code == 2 and "no test 1d candles for NOPE/USD" in err
