"""Runs as typed artifacts, run in process: schemas, manifests, lazy grids, resume, skipped combinations."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from http_server import Server
from market_data import goog

from tradpal_ray.backtest import get_strategy, sweep
from tradpal_ray.errors import ConfigError
from tradpal_ray.report import build_report
from tradpal_ray.runs import GridPlan, RunStore, SweepRequest, choose_executor, run_sweep
from tradpal_ray.serve import build_app
from tradpal_ray.stats import StatsService

GRID = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
RunCli = Callable[..., tuple[int, str, str]]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling a file another process writes


def test_results_are_typed_columns_a_user_can_filter(tmp_path: Path, goog_csv: str) -> None:
    outcome = run_sweep(SweepRequest("sma_cross", GRID, data_file=goog_csv), store=str(tmp_path), executor="local")
    assert outcome.manifest.executor == "local" and outcome.manifest.param_types == {"fast": "int", "slow": "int"}
    frame = pd.read_parquet(tmp_path / "runs" / outcome.run_id / "results")
    assert frame["fast"].dtype == np.int64 and frame["slow"].dtype == np.int64
    assert frame["trades"].dtype == np.int64 and frame["sharpe"].dtype == np.float64
    assert len(frame[frame.fast == 10]) == 19  # every slow in 20..200 is above 10
    schema = pq.read_schema(next((tmp_path / "runs" / outcome.run_id / "results").rglob("*.parquet")))
    assert schema.field("fast").type == pa.int64() and "params" not in schema.names
    reference = sweep(goog(), "sma_cross", GRID)
    merged = frame.merge(reference, on=["fast", "slow"], suffixes=("", "_ref"))
    assert len(merged) == 174 and (merged["final_equity"] == merged["final_equity_ref"]).all()


def test_runs_written_before_typed_results_still_read(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = "sma_cross-20240101T000000-0000aa"
    old = pa.table({"run_id": [run_id] * 2, "result_id": ["a" * 16, "b" * 16], "symbol": ["X"] * 2,
                    "strategy": ["sma_cross"] * 2, "params": ['{"fast":5,"slow":20}', '{"fast":10,"slow":30}'],
                    "trades": [3, 4], "sharpe": [0.5, 1.5]})
    (tmp_path / "runs" / run_id / "results" / "X").mkdir(parents=True)
    pq.write_table(old, tmp_path / "runs" / run_id / "results" / "X" / "chunk-00000.parquet")
    (tmp_path / "runs" / run_id / "manifest.json").write_text(json.dumps(
        {"run_id": run_id, "strategy": "sma_cross", "grid": {"fast": [5, 10], "slow": [20, 30]}, "symbols": ["X"],
         "source": "store", "status": "complete", "created_at": "2024-01-01T00:00:00+00:00"}))
    frame = store.results(run_id)
    assert list(frame["fast"]) == [5, 10] and frame["fast"].dtype == np.int64 and "params" not in frame
    old_manifest = store.manifest(run_id)
    assert old_manifest.param_types == {"fast": "int", "slow": "int"}
    assert old_manifest.overfitting == {} and old_manifest.check is None and old_manifest.pbo_partitions == 16


def test_a_grid_is_planned_lazily_and_decoded_in_product_order() -> None:
    strat = get_strategy("sma_cross")
    plan = GridPlan.build(strat, {"fast": list(range(1, 3001)), "slow": list(range(2, 3002))})
    assert plan.total == 9_000_000 and plan.sample is None  # nothing listed
    size = 7_777
    last = plan.chunk_count(size) - 1
    expected = list(itertools.product(range(1, 3001), range(2, 3002)))[last * size:]
    assert [(c["fast"], c["slow"]) for c in plan.chunk(last, size)] == expected
    with pytest.raises(ConfigError, match="over the limit of 10,000,000"):
        GridPlan.build(strat, {"fast": list(range(1, 4001)), "slow": list(range(2, 4002))})
    with pytest.raises(ConfigError, match="gives no valid combination"):
        GridPlan.build(strat, {"fast": [50], "slow": [20]})
    sampled = GridPlan.build(strat, GRID, samples=25, seed=3)
    combos = sampled.chunk(0, 25)
    assert len(combos) == 25 and all(c["fast"] < c["slow"] for c in combos)
    assert combos == GridPlan.build(strat, GRID, samples=25, seed=3).chunk(0, 25)  # reproducible for resume


def test_combinations_that_do_not_fit_the_data_are_skipped_and_counted(tmp_path: Path, goog_csv: str, run_cli: RunCli) -> None:
    bars = len(goog())
    grid = {"fast": [5, 10], "slow": [30, bars - 1, bars + 50]}
    code, out, err = run_cli("sweep", "--store", str(tmp_path), "--data", goog_csv, "--grid", "fast=5,10",
                             "--grid", f"slow=30,{bars - 1},{bars + 50}", "--json", "--executor", "local")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["results"]) == 2
    assert doc["skipped"] == {"window longer than the series": 2, "too short for a signal after warm-up": 2}
    assert "2 combination(s) skipped: window longer than the series" in doc["warnings"]
    outcome = run_sweep(SweepRequest("sma_cross", grid, data_file=goog_csv), store=str(tmp_path), executor="local")
    assert outcome.manifest.results == 2 and sum(outcome.manifest.skipped.values()) == 4
    code, _, err = run_cli("sweep", "--store", str(tmp_path), "--data", goog_csv, "--grid", "fast=5",
                           "--grid", f"slow={bars + 1}", "--executor", "local")
    assert code == 2 and "no combination fits the data: 1 window longer than the series" in err
    assert "Traceback" not in err


RUNNER = textwrap.dedent("""
    import sys
    from tradpal_ray.runs import SweepRequest, run_sweep
    grid = {"fast": list(range(2, 120, 2)), "slow": list(range(20, 260, 2))}
    run_sweep(SweepRequest(sys.argv[3], grid, data_file=sys.argv[1]), store=sys.argv[2], executor="local", chunk_size=300,
              pbo_partitions=int(sys.argv[4]))
""")
RUNNER_GRID = {"fast": list(range(2, 120, 2)), "slow": list(range(20, 260, 2))}
"""The grid RUNNER sweeps in 300-combination chunks: 5,805 combinations, 20 chunks, so a kill after three lands mid-run."""


def killed_run(store: Path, goog_csv: str, strategy_file: Path, pbo_partitions: int = 16) -> str:
    """Start RUNNER on GOOG with an SMA-cross strategy written to ``strategy_file`` in another process,
    SIGKILL it once three chunks are written; the strategy's reference."""
    name = strategy_file.stem
    strategy_file.write_text(
        "from tradpal_ray.backtest import cross_above, cross_below, sma\n\n"
        f"def {name}(bars, fast=10, slow=30):\n"
        "    f, s = sma(bars.close, fast), sma(bars.close, slow)\n"
        "    return cross_above(f, s), cross_below(f, s)\n"
    )
    ref = f"{strategy_file}:{name}"
    driver = subprocess.Popen([sys.executable, "-c", RUNNER, goog_csv, str(store), ref, str(pbo_partitions)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(list(store.glob("runs/*/results/*/chunk-*.parquet"))) >= 3, 120, "three chunks")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    return ref


def test_a_killed_driver_reads_as_interrupted_and_resume_finishes_it(tmp_path: Path, goog_csv: str, run_cli: RunCli) -> None:
    store = tmp_path / "store"
    strategy_file = tmp_path / "resumable_cross.py"
    ref = killed_run(store, goog_csv, strategy_file)
    [manifest] = RunStore(store).runs()
    assert manifest.status == "running" and manifest.current_status() == "interrupted"
    done = len(list(store.glob("runs/*/results/*/chunk-*.parquet")))
    assert done < manifest.chunks

    strategy_file.write_text(strategy_file.read_text() + "# edited after the run started\n")
    with pytest.raises(ConfigError, match="changed since run .* started; resume with --allow-changed-code"):
        run_sweep(store=str(store), resume=manifest.run_id)
    code, _, err = run_cli("sweep", "--store", str(store), "--resume", manifest.run_id)
    assert code == 2 and err.startswith("error: strategy ") and len(err.strip().splitlines()) == 1
    resumed = run_sweep(store=str(store), resume=manifest.run_id, allow_changed_code=True, executor="local")
    assert resumed.manifest.status == "complete"
    reference = run_sweep(SweepRequest(ref, RUNNER_GRID, data_file=goog_csv), store=str(tmp_path / "fresh"),
                          executor="local")
    ours = resumed.results.drop(columns="run_id").sort_values("result_id").reset_index(drop=True)
    theirs = reference.results.drop(columns="run_id").sort_values("result_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs)


def test_small_work_runs_in_process_and_large_or_clustered_work_on_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    assert choose_executor("auto", 174 * 5_000) == "local"
    assert choose_executor("auto", 10**10) == "ray"
    assert choose_executor("auto", 10, address="127.0.0.1:6379") == "ray"
    assert choose_executor("ray", 10) == "ray" and choose_executor("local", 10**12) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert choose_executor("auto", 10) == "ray"


def test_a_run_records_the_strategy_reference_and_source_hash(tmp_path: Path, goog_csv: str) -> None:
    outcome = run_sweep(SweepRequest("sma_cross", {"fast": [5], "slow": [20]}, data_file=goog_csv),
                        store=str(tmp_path), executor="local")
    m = RunStore(tmp_path).manifest(outcome.run_id)
    assert m.strategy_ref["text"] == "sma_cross" and m.strategy_ref["kind"] == "builtin"
    assert len(m.strategy_ref["source_hash"]) == 64
    assert m.driver["pid"] == os.getpid() and m.current_status() == "complete"
    assert list(m.kept.values()) == ["GOOG"]


@pytest.fixture
def per_trade_metric() -> Iterator[str]:
    """A derived metric registered by the test (and removed after it)."""
    from tradpal_ray.backtest import Metric, ratio, register_metric, unregister_metric

    register_metric(Metric("return_per_trade", "ret/trade", "return % per closed trade",
                           derive=lambda c: ratio(c["return_pct"], c["trades"])))
    yield "return_per_trade"
    unregister_metric("return_per_trade")


def test_a_metric_added_in_a_test_appears_everywhere(tmp_path: Path, goog_csv: str, run_cli: RunCli,
                                                     per_trade_metric: str, redis_server: Any) -> None:
    """CLI listing and ranking, sweep JSON, the API's leaderboard and the HTML report: no other change."""
    code, out, _ = run_cli("metrics", "--json")
    assert code == 0 and {"name": "return_per_trade", "label": "ret/trade", "higher_is_better": True,
                          "description": "return % per closed trade"} in json.loads(out)["metrics"]
    code, out, err = run_cli("sweep", "--store", str(tmp_path), "--data", goog_csv, "--grid", "fast=5:50:5",
                             "--grid", "slow=20:200:10", "--metric", per_trade_metric, "--top", "5", "--json",
                             "--executor", "local")
    assert code == 0, err
    doc = json.loads(out)
    values = [row["stats"][per_trade_metric] for row in doc["results"]]
    assert values == sorted(values, reverse=True) and len(values) == 5
    row = doc["results"][0]["stats"]
    assert row[per_trade_metric] == pytest.approx(row["return_pct"] / row["trades"])
    with Server(build_app(StatsService(tmp_path, redis_server.url), require_key=False)) as server:
        board = httpx.get(f"{server.url}/runs/{doc['run_id']}/leaderboard",
                          params={"metric": per_trade_metric, "top": 5}, timeout=30).json()
    assert [r[per_trade_metric] for r in board["results"]] == pytest.approx(values)
    page = build_report(RunStore(tmp_path), doc["run_id"], metric=per_trade_metric)
    assert f"<b>metric</b>: {per_trade_metric}" in page and "ret/trade" in page


def test_results_with_no_affordable_unit_say_so_in_the_cli_json_and_api(tmp_path: Path, run_cli: RunCli) -> None:
    from market_data import write_goog

    from tradpal_ray.stats.queries import StatsQueries

    write_goog(tmp_path, {"GOOGX/USD": 100.0})  # prices of 20,000-70,000 against 10,000 cash, size unit 1
    code, out, err = run_cli("sweep", "--store", str(tmp_path), "--exchange", "test", "--symbols", "GOOGX/USD",
                             "--timeframe", "1d", "--grid", "fast=5,10", "--grid", "slow=20,30", "--json",
                             "--executor", "local")
    assert code == 0, err
    assert "warning: no market info recorded for GOOGX/USD: size unit 1" in err
    doc = json.loads(out)
    assert all(row["stats"]["trades"] == 0 for row in doc["results"])
    assert all(row["warnings"] and "no size unit affordable (size unit 1 " in row["warnings"][0] for row in doc["results"])
    board = StatsQueries(tmp_path).leaderboard(doc["run_id"])
    assert all("no size unit affordable" in row["warnings"][0] for row in board["results"])
    code, _, err = run_cli("sweep", "--store", str(tmp_path), "--exchange", "test", "--symbols", "GOOGX/USD",
                           "--timeframe", "1d", "--grid", "fast=5,10", "--grid", "slow=20,30", "--executor", "local")
    assert code == 0 and "listed result(s): 0 trades: " in err.replace("\n", " ")
