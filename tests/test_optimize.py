"""Smart search (``optimize``): search spaces, samplers against a random grid, Pareto fronts,
custom objectives, typed trials and resume after a SIGKILLed driver, on real Ray and real data
(backtesting.py's GOOG and EURUSD)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backtesting.test import EURUSD, GOOG
from test_runs import wait_until

from tradpal_ray.backtest import BacktestConfig, get_strategy, sweep
from tradpal_ray.errors import ConfigError
from tradpal_ray.runs import (
    BarsSource,
    OptimizeRequest,
    RunStore,
    optimize_bars,
    run_optimize,
)
from tradpal_ray.runs._optimize import (
    bind_space,
    evaluate_trials,
    parse_dim,
    parse_space,
)
from tradpal_ray.stats import StatsQueries

RunCli = Callable[..., tuple[int, str, str]]
CONFIG = BacktestConfig(periods_per_year=252)
SPACE = {"fast": "int:5:50", "slow": "int:20:200"}


def lower(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns=str.lower)


@pytest.fixture
def eurusd_csv(tmp_path: Path) -> str:
    path = tmp_path / "EURUSD.csv"
    lower(EURUSD).to_csv(path)
    return str(path)


@pytest.fixture
def goog_csv(tmp_path: Path) -> str:
    path = tmp_path / "GOOG.csv"
    lower(GOOG).to_csv(path)
    return str(path)


def test_a_space_is_parsed_and_checked_against_the_strategy() -> None:
    fast = parse_dim("fast=int:5:200")
    assert (fast.kind, fast.low, fast.high, fast.log, fast.spec) == ("int", 5, 200, False, "int:5:200")
    k = parse_dim("k=float:0.5:3:log")
    assert k.log and k.spec == "float:0.5:3:log" and parse_dim(f"k={k.spec}") == k
    assert parse_dim("mode=cat:a,b").choices == ("a", "b") and parse_dim("w=cat:10,20.5").choices == (10, 20.5)
    bad = ["fast", "fast=int:5", "fast=int:5:x", "fast=int:9:5", "fast=int:1.5:9", "k=float:0:3:log",
           "fast=range:1:2", "k=float:1:2:lin", "1x=int:1:2", "mode=cat:a,a", "mode=cat:"]
    for text in bad:
        with pytest.raises(ConfigError, match="bad --space"):
            parse_dim(text)
    with pytest.raises(ConfigError, match="given twice"):
        parse_space(["fast=int:5:9", "fast=int:5:9"])
    sma = get_strategy("sma_cross")
    with pytest.raises(ConfigError, match="unknown parameter bogus"):
        bind_space(sma, parse_space(["bogus=int:1:2"]))
    with pytest.raises(ConfigError, match="is an integer: use fast=int"):
        bind_space(sma, parse_space(["fast=float:1:2"]))
    with pytest.raises(ConfigError, match="parameter slow must be >= 2"):
        bind_space(sma, parse_space(["slow=int:1:20"]))
    with pytest.raises(ConfigError, match="must be a number, got 'a'"):
        bind_space(sma, parse_space(["slow=cat:a,b"]))
    assert bind_space(sma, parse_space(["slow=cat:20,30"]))["slow"].choices == (20, 30)
    bands = bind_space(get_strategy("bollinger_breakout"), parse_space(["k=int:1:3", "window=cat:10,20"]))
    assert bands["k"].kind == "int"  # a float parameter takes an int range too (its values become floats)
    params, _ = optimize_bars(lower(GOOG), "bollinger_breakout", {"k": "cat:1,2.5", "window": "int:10:30"}, 4, "random")
    assert params["k"] in (1.0, 2.5) and isinstance(params["k"], float) and isinstance(params["window"], int)


def test_trials_that_break_the_rules_or_do_not_fit_fail_with_the_reason_and_the_rest_match_a_sweep() -> None:
    bars = lower(GOOG)
    outcomes = evaluate_trials(bars, get_strategy("sma_cross"), CONFIG,
                               [(0, {"fast": 30, "slow": 20}), (1, {"fast": 10, "slow": 30}), (2, {"slow": len(bars) + 5}),
                                (3, {"fast": 12, "slow": 26})])
    assert [o.number for o in outcomes] == [0, 1, 2, 3]
    assert "fast must be below slow" in outcomes[0].failure and not outcomes[0].stats
    assert "needs at least" in outcomes[2].failure
    reference = sweep(bars, "sma_cross", [{"fast": 10, "slow": 30}, {"fast": 12, "slow": 26}], CONFIG)
    assert outcomes[1].stats["final_equity"] == reference["final_equity"][0]
    assert outcomes[3].stats["sharpe"] == reference["sharpe"][1] and outcomes[3].stats["trades"] == reference["trades"][1]
    assert isinstance(outcomes[3].stats["trades"], int)


@pytest.mark.parametrize("name,data", [("GOOG", GOOG), ("EURUSD", EURUSD)])
def test_tpe_is_at_least_as_good_as_the_median_of_a_random_grid_with_the_same_budget(name: str, data: pd.DataFrame) -> None:
    budget = 40
    bars = lower(data)
    params, stats = optimize_bars(bars, "sma_cross", SPACE, budget, "tpe", "sharpe", CONFIG, seed=7)
    rng = np.random.default_rng(7)
    grid = [{"fast": int(f), "slow": int(s)} for f, s in zip(rng.integers(5, 51, 400), rng.integers(20, 201, 400)) if f < s]
    random_grid = sweep(bars, "sma_cross", grid[:budget], CONFIG)
    assert stats["sharpe"] >= random_grid["sharpe"].median()
    assert stats["sharpe"] == sweep(bars, "sma_cross", [params], CONFIG)["sharpe"][0]
    again = optimize_bars(bars, "sma_cross", [f"{k}={v}" for k, v in SPACE.items()], budget, "tpe", "sharpe", CONFIG, seed=7)
    assert again == (params, stats)  # deterministic for a seed


def test_tpe_on_ray_with_two_workers_beats_the_median_of_a_random_grid_too(tmp_path: Path, goog_csv: str,
                                                                           ray_session: None) -> None:
    budget = 40
    request = OptimizeRequest("sma_cross", SPACE, BarsSource("GOOG", data_file=goog_csv), trials=budget, seed=11,
                              config=CONFIG)
    outcome = run_optimize(request, store=str(tmp_path), executor="ray", workers=2)
    assert outcome.manifest.executor == "ray" and outcome.manifest.sampler == "tpe" and len(outcome.trials) == budget
    rng = np.random.default_rng(11)
    grid = [{"fast": int(f), "slow": int(s)} for f, s in zip(rng.integers(5, 51, 400), rng.integers(20, 201, 400)) if f < s]
    [best] = outcome.best
    assert best["values"][0] >= sweep(lower(GOOG), "sma_cross", grid[:budget], CONFIG)["sharpe"].median()


def test_minimised_objectives_and_every_sampler_run(goog_csv: str) -> None:
    bars = lower(GOOG)
    for sampler in ("cmaes", "random", "nsga2"):
        params, stats = optimize_bars(bars, "sma_cross", SPACE, 12, sampler, "max_drawdown_pct", CONFIG, seed=1)
        assert params["fast"] < params["slow"] and stats["max_drawdown_pct"] >= 0
    with pytest.raises(ConfigError, match="unknown objective"):
        optimize_bars(bars, "sma_cross", SPACE, 5, "tpe", "sharpness")


def test_a_run_on_ray_is_typed_resumable_state_and_readable_by_runs_and_reports(
    tmp_path: Path, goog_csv: str, ray_session: None, run_cli: RunCli,
) -> None:
    goals = tmp_path / "goals.py"
    goals.write_text(textwrap.dedent('''
        import numpy as np

        def robust(stats):
            """Sharpe times the square root of the trade count."""
            return stats["sharpe"] * np.sqrt(stats["trades"])
    '''))
    store = tmp_path / "store"
    code, out, err = run_cli("optimize", "--store", str(store), "--data", goog_csv, "--space", "fast=int:5:50",
                             "--space", "slow=int:20:200", "--trials", "24", "--objective", f"{goals}:robust",
                             "--sampler", "random", "--seed", "3", "--periods-per-year", "252", "--executor", "ray",
                             "--workers", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["status"] == "complete" and doc["executor"] == "ray" and doc["trials"] == 24
    [best] = doc["best"]
    assert best["values"][0] == pytest.approx(best["stats"]["sharpe"] * np.sqrt(best["stats"]["trades"]))
    run_dir = store / "runs" / doc["run_id"]
    schema = pq.read_schema(run_dir / "trials.parquet")
    assert schema.field("trial").type == pa.int64() and schema.field("fast").type == pa.int64()
    assert schema.field("objective_0").type == pa.float64() and schema.field("trades").type == pa.int64()
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert list(trials["trial"]) == list(range(24))
    done = trials[trials["state"] == "complete"]
    np.testing.assert_allclose(done["objective_0"], done["sharpe"] * np.sqrt(done["trades"]))
    assert best["values"][0] == done["objective_0"].max()
    failed = trials[trials["state"] == "failed"]
    assert (failed["fast"] >= failed["slow"]).all() and failed["failure"].str.contains("fast must be below slow").all()
    manifest = RunStore(store).manifest(doc["run_id"])
    assert manifest.kind == "optimize" and manifest.space == {"fast": "int:5:50", "slow": "int:20:200"}
    assert manifest.objectives == [f"{goals}:robust"] and manifest.best[0]["trial"] == best["trial"]

    listed = {run["run_id"]: run for run in StatsQueries(store).runs()}
    assert listed[doc["run_id"]]["kind"] == "optimize" and listed[doc["run_id"]]["results"] == 24
    summary = StatsQueries(store).run(doc["run_id"])["summary"]
    assert summary["results"] == len(done.drop_duplicates(["fast", "slow"]))
    code, _, err = run_cli("report", doc["run_id"], "--store", str(store), "--out", str(tmp_path / "r.html"))
    assert code == 0, err
    assert "sma_cross" in (tmp_path / "r.html").read_text()

    with pytest.raises(ConfigError, match="is complete: nothing to resume"):
        run_optimize(store=str(store), resume=doc["run_id"])


def test_several_objectives_give_a_pareto_front_that_no_trial_dominates(eurusd_csv: str, tmp_path: Path,
                                                                      ray_session: None) -> None:
    request = OptimizeRequest("sma_cross", SPACE, BarsSource("EURUSD", data_file=eurusd_csv),
                              objectives=("sharpe", "max_drawdown_pct"), trials=40, seed=5, config=CONFIG)
    outcome = run_optimize(request, store=str(tmp_path), executor="ray", workers=2)
    assert outcome.manifest.sampler == "nsga2" and outcome.manifest.directions == ["maximize", "minimize"]
    trials = outcome.trials
    assert len(trials) == 40
    done = trials[trials["state"] == "complete"]
    points = {int(t): (s, d) for t, s, d in zip(done["trial"], done["objective_0"], done["objective_1"])}

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    brute = {t for t, p in points.items() if not any(dominates(q, p) for q in points.values())}
    front = {b["trial"] for b in outcome.best}
    assert front == brute and len(front) >= 1
    for b in outcome.best:
        assert tuple(b["values"]) == points[b["trial"]]


def test_bad_input_is_one_error_line_and_exit_2(goog_csv: str, tmp_path: Path, run_cli: RunCli) -> None:
    cases = [
        (["--space", "fast=int:5"], "bad --space 'fast=int:5'"),
        (["--space", "fast=float:1:9"], "is an integer"),
        (["--space", "nope=int:1:9"], "unknown parameter nope"),
        (["--space", "fast=int:5:50", "--sampler", "grid"], "--sampler must be one of"),
        (["--space", "fast=int:5:50", "--objective", "sharpe", "--objective", "calmar", "--sampler", "cmaes"],
         "cmaes sampler optimises one objective"),
        (["--space", "fast=int:5:50", "--trials", "0"], "--trials must be positive"),
        (["--space", "fast=int:5:50", "--objective", "nosuch"], "unknown objective 'nosuch'"),
        ([], "give at least one --space"),
    ]
    for args, message in cases:
        code, out, err = run_cli("optimize", "--store", str(tmp_path), "--data", goog_csv, *args)
        assert code == 2 and out == "", (args, err)
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "runs").exists()  # a typo leaves no run behind


SLOW_STRATEGY = '''
import time
from tradpal_ray.backtest import cross_above, cross_below, sma

def slow_cross(bars, fast=10, slow=30):
    """sma_cross that takes 0.25 s per trial: long enough to kill its driver mid-run."""
    time.sleep(0.25)
    f, s = sma(bars.close, fast), sma(bars.close, slow)
    return cross_above(f, s), cross_below(f, s)
'''


def _journal_trials(path: Path) -> list[Any]:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    studies = storage.get_all_studies()
    return storage.get_all_trials(studies[0]._study_id) if studies else []


def test_resume_after_the_driver_is_killed_finishes_to_exactly_n_trials(
    tmp_path: Path, goog_csv: str, ray_session: None, run_cli: RunCli,
) -> None:
    import optuna

    strategy_file = tmp_path / "slow_cross.py"
    strategy_file.write_text(SLOW_STRATEGY)
    store = tmp_path / "store"
    env = dict(os.environ, TRADPAL_LOG_LEVEL="WARNING")
    env.pop("RAY_ADDRESS", None)  # the driver starts a private Ray of its own
    driver = subprocess.Popen(
        [sys.executable, "-m", "tradpal_ray.cli", "optimize", "--store", str(store), "--data", goog_csv,
         "--strategy", f"{strategy_file}:slow_cross", "--space", "fast=int:5:50", "--space", "slow=int:20:200",
         "--trials", "30", "--sampler", "tpe", "--executor", "ray", "--workers", "2", "--trials-per-task", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    finished = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    try:
        wait_until(lambda: any(store.glob("runs/*/study.journal"))
                   and sum(t.state in finished for t in _journal_trials(next(store.glob("runs/*/study.journal")))) >= 6,
                   240, "six trials told")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the private Ray it started
        driver.wait()
    [manifest] = RunStore(store).runs()
    assert manifest.status == "running" and manifest.current_status() == "interrupted"
    journal = store / "runs" / manifest.run_id / "study.journal"
    before = _journal_trials(journal)
    told_before = {t.number: t.values for t in before if t.state in finished}
    in_flight = {t.number: t.params for t in before if t.state == optuna.trial.TrialState.RUNNING}
    assert 6 <= len(told_before) < 30
    assert in_flight  # two workers and a batch asked in advance: trials were in flight at the kill

    code, out, err = run_cli("optimize", "--store", str(store), "--resume", manifest.run_id, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["status"] == "complete" and doc["trials"] == 30
    trials = RunStore(store).trials(manifest.run_id)
    assert len(trials) == 30 and trials["trial"].is_unique
    after = {t.number: t for t in _journal_trials(journal)}
    for number, values in told_before.items():  # told before the kill: kept, not run again
        assert after[number].values == values
    for number, params in in_flight.items():  # in flight at the kill: re-run under their own numbers
        assert after[number].state in finished and after[number].params == params
        assert number in set(trials["trial"]) or after[number].user_attrs.get("abandoned")
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in after.values())
