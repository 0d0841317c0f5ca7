"""Sweeps in process and on Ray (real single-node Ray): results, isolation of bad symbols, resume, CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from market_data import goog, write_goog

from tradpal_ray.backtest import BacktestConfig, sweep
from tradpal_ray.errors import ConfigError
from tradpal_ray.runs import RunStore, SweepRequest, _runner, plan_chunk_size, run_sweep

GRID = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
GRID_ARGS = ["--grid", "fast=5:50:5", "--grid", "slow=20:200:10"]
RunCli = Callable[..., tuple[int, str, str]]



@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """GOOG daily bars under two symbols, plus a symbol whose only file is corrupt."""
    root = tmp_path_factory.mktemp("store")
    write_goog(root, {"GOOG/USD": 1.0, "GOOG2/USD": 0.37, "BROKEN/USD": 1.0})
    for path in (root / "candles").rglob("*.parquet"):
        if "BROKEN" in str(path):
            path.write_bytes(b"not parquet at all")
    return str(root)


def request(symbols: list[str], **kwargs: object) -> SweepRequest:
    return SweepRequest(strategy="sma_cross", grid=GRID, symbols=symbols, exchange="test", timeframe="1d", **kwargs)


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("result_id").reset_index(drop=True)


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_results_equal_the_in_process_sweep_and_keep_the_best(ray_session: None, store: str, executor: str) -> None:
    outcome = run_sweep(request(["GOOG/USD", "GOOG2/USD"]), store=store, chunk_size=40, executor=executor)
    assert outcome.manifest.status == "complete" and outcome.manifest.errors == {}
    assert outcome.manifest.executor == executor
    assert len(outcome.results) == 2 * 174 and outcome.results["result_id"].is_unique
    local = sweep(goog(), "sma_cross", GRID, BacktestConfig())
    ours = outcome.results[outcome.results["symbol"] == "GOOG/USD"]
    merged = ours.merge(local, on=["fast", "slow"], suffixes=("", "_local"))
    assert len(merged) == 174
    assert (merged["final_equity"] == merged["final_equity_local"]).all()
    assert (merged["trades"] == merged["trades_local"]).all()

    best = outcome.best_per_symbol()
    assert list(best["symbol"]) == sorted(best["symbol"], key=lambda s: -best.set_index("symbol").loc[s, "sharpe"])
    trades, equity = RunStore(store).detail(outcome.run_id, best["result_id"].iloc[0])
    assert equity["equity"].iloc[-1] == pytest.approx(best["final_equity"].iloc[0], rel=1e-12)
    assert (trades["exit_reason"] != "open").sum() == best["trades"].iloc[0]
    saved = RunStore(store).manifest(outcome.run_id)
    assert saved.status == "complete" and saved.results == 348 and saved.chunk_size == 40
    assert set(saved.kept.values()) == {"GOOG/USD", "GOOG2/USD"} and len(saved.kept) == 6


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_a_bad_symbol_fails_alone(ray_session: None, store: str, executor: str) -> None:
    outcome = run_sweep(request(["GOOG/USD", "BROKEN/USD"]), store=store, executor=executor, chunk_size=30)
    assert outcome.manifest.status == "partial"
    assert set(outcome.manifest.errors) == {"BROKEN/USD"}
    assert "BROKEN" in outcome.manifest.errors["BROKEN/USD"]
    assert set(outcome.results["symbol"]) == {"GOOG/USD"} and len(outcome.results) == 174
    assert RunStore(store).manifest(outcome.run_id).errors == outcome.manifest.errors


def test_a_symbol_missing_from_the_store_fails_before_any_run(tmp_path: Path) -> None:
    store = str(tmp_path)
    write_goog(tmp_path, {"GOOG/USD": 1.0})
    with pytest.raises(ConfigError, match=r"no test 1d candles for MISSING/USD in the store .*stored test 1d series: .*GOOG/USD"):
        run_sweep(request(["GOOG/USD", "MISSING/USD"]), store=store)
    assert not any(m.symbols == ["GOOG/USD", "MISSING/USD"] for m in RunStore(store).runs())


def test_resume_runs_only_missing_chunks_and_never_duplicates(ray_session: None, store: str, tmp_path: Path) -> None:
    first = run_sweep(request(["GOOG/USD", "GOOG2/USD"]), store=store, chunk_size=20)
    results = RunStore(store)
    chunk_files = sorted(Path(store, "runs", first.run_id, "results").rglob("chunk-*.parquet"))
    assert len(chunk_files) == 2 * 10  # 10 x 19 raw grid points in chunks of 20; rules applied inside
    untouched = chunk_files[0]
    stamp = untouched.stat().st_mtime_ns
    for lost in chunk_files[3:8]:
        lost.unlink()
    manifest = results.manifest(first.run_id)
    manifest.status = "running"  # as a driver that died left it
    manifest.driver = {"host": "elsewhere", "pid": 1}
    manifest.heartbeat = "2020-01-01T00:00:00+00:00"
    results.write_manifest(manifest)
    assert results.manifest(first.run_id).current_status() == "interrupted"

    resumed = run_sweep(store=store, resume=first.run_id, executor="ray")
    assert resumed.run_id == first.run_id and resumed.manifest.status == "complete"
    assert untouched.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(ordered(resumed.results), ordered(first.results))
    with pytest.raises(ConfigError, match="is complete: nothing to resume"):
        run_sweep(store=store, resume=first.run_id)


def test_an_unexpected_error_marks_the_run_failed_not_running(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("lost the details\nsecond line")

    monkeypatch.setattr(_runner, "keep_details", broken)
    path = tmp_path / "GOOG.csv"
    goog().to_csv(path)
    store = str(tmp_path / "store")
    with pytest.raises(RuntimeError, match="lost the details"):
        run_sweep(SweepRequest(strategy="sma_cross", grid={"fast": [5], "slow": [20]}, data_file=str(path)), store=store,
                  executor="local")
    [manifest] = RunStore(store).runs()
    assert manifest.status == "failed" and manifest.error == "RuntimeError: lost the details"


def test_sweep_command_json(ray_session: None, store: str, run_cli: RunCli) -> None:
    code, stdout, _ = run_cli("sweep", "--store", store, "--exchange", "test", "--symbols", "GOOG/USD,GOOG2/USD",
                              "--timeframe", "1d", *GRID_ARGS, "--metric", "return_pct", "--top", "3", "--json")
    assert code == 0
    out = json.loads(stdout)
    assert set(out) >= {"run_id", "results"} and out["status"] == "complete"
    assert len(out["results"]) == 3
    returns = [row["stats"]["return_pct"] for row in out["results"]]
    assert returns == sorted(returns, reverse=True)
    assert set(out["results"][0]) >= {"symbol", "params", "stats"} and set(out["results"][0]["params"]) == {"fast", "slow"}

    code, stdout, _ = run_cli("sweep", "--store", store, "--exchange", "test", "--symbols", "GOOG/USD", "--timeframe", "1d",
                              *GRID_ARGS, "--top", "0", "--json")
    assert code == 0 and len(json.loads(stdout)["results"]) == 174


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbols", "GOOG/USD", "--timeframe", "1d"], "give at least one --grid"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", "--strategy", "nope", *GRID_ARGS], "unknown strategy 'nope'"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", "--grid", "window=5:10:1"], "unknown parameter window"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", "--grid", "fast=50", "--grid", "slow=20"], "gives no valid combination"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", "--grid", "fast=5:1:1"], "fast"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--metric", "luck"], "unknown metric 'luck'"),
        (["--timeframe", "1d", *GRID_ARGS], "give --data FILE, or --symbols and --timeframe"),
        (["--data", "/nonexistent.csv", *GRID_ARGS], "no such file"),
        (["--resume", "no-such-run"], "unknown run 'no-such-run'"),
    ],
)
def test_sweep_command_rejects_bad_input(ray_session: None, store: str, run_cli: RunCli, args: list[str], message: str) -> None:
    code, _, err = run_cli("sweep", "--store", store, "--exchange", "test", *args)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_file_without_needed_columns(ray_session: None, store: str, tmp_path: Path, run_cli: RunCli) -> None:
    bad = tmp_path / "prices.csv"
    pd.DataFrame({"time": pd.date_range("2024-01-01", periods=5, freq="D"), "price": range(5)}).to_csv(bad, index=False)
    code, stdout, err = run_cli("sweep", "--store", store, "--data", str(bad), *GRID_ARGS, "--json")
    assert code == 2 and stdout == ""
    assert "missing column(s) open, high, low, close, volume" in err and "Traceback" not in err


def test_sweep_over_a_data_file(ray_session: None, store: str, tmp_path: Path, run_cli: RunCli) -> None:
    path = tmp_path / "GOOG.csv"
    goog().to_csv(path)
    code, stdout, _ = run_cli("sweep", "--store", store, "--data", str(path), *GRID_ARGS, "--top", "0", "--json")
    out = json.loads(stdout)
    assert code == 0 and len(out["results"]) == 174 and {row["symbol"] for row in out["results"]} == {"GOOG"}


def test_chunk_plan_fills_cpus_and_keeps_tasks_busy() -> None:
    assert plan_chunk_size(174, 5_000, 1, 2) == 174  # 174 x 5k bars is under 100 ms of work: one task
    assert plan_chunk_size(10_000, 100_000, 1, 8) == 417  # 24 tasks for 8 CPUs
    assert plan_chunk_size(10_000, 1_000_000, 4, 2) == 5_000  # balanced over symbols x CPUs
    assert plan_chunk_size(3, 10, 1, 64) == 3
    assert plan_chunk_size(0, 10, 1, 2) == 1
    assert plan_chunk_size(10_000_000, 400, 1, 2) == 50_000  # a huge grid: bounded chunks, generated on demand
