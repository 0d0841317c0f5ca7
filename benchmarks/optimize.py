"""Optimize throughput: trials per second with 1 and 2 Ray workers on a 10 ms objective.

The objective is a backtest of ``sleepy_cross``: sma_cross whose signal function first
sleeps 10 ms (a stand-in for a costly strategy; sleeping, not spinning, so that the figure
measures the executor and not how busy the machine's two cores are with other work), so
a trial costs ~10 ms plus the backtest (~2-4 ms on GOOG's 2,148 bars). Each figure is
trials told per second between the first ask and the last tell of ``run_optimize``
(executor ``ray``, a private 2-CPU Ray, workers warmed up by a first run that is not
counted), for the TPE and random samplers.

Peer, from the same run: plain Optuna, ``study.optimize(objective, n_trials, n_jobs=W)``
in one process with its in-memory storage (threads; the sleep releases the GIL), the same
sampler and the same backtest. Its figure has no durable study, no resume and no cluster.

Prints one JSON object: per sampler, ours and the peer's trials/s for 1 and 2 workers and the
2-worker speed-up, each as min / median / max over ``--runs`` runs (target: ours >= 1.7x).

Run: ``.venv/bin/python benchmarks/optimize.py [--trials 200] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SLEEP_SECONDS = 0.010
SPACE = {"fast": "int:5:50", "slow": "int:20:200"}
STRATEGY = f'''
import time
from tradpal_ray.backtest import cross_above, cross_below, sma

def sleepy_cross(bars, fast=10, slow=30):
    """sma_cross after a {SLEEP_SECONDS * 1000:g} ms sleep: a 10 ms objective."""
    time.sleep({SLEEP_SECONDS})
    f, s = sma(bars.close, fast), sma(bars.close, slow)
    return cross_above(f, s), cross_below(f, s)
'''


def spread(values: Sequence[float], digits: int = 2) -> dict[str, float]:
    """min / median / max of ``values`` (one per run)."""
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def ours(ref: str, data: str, store: str, sampler: str, trials: int, workers: int, seed: int) -> float:
    """Trials per second of one ``run_optimize`` on Ray, first ask to last tell."""
    from tradpal_ray.backtest import BacktestConfig
    from tradpal_ray.runs import BarsSource, OptimizeRequest, run_optimize

    stamps: list[float] = []
    request = OptimizeRequest(ref, SPACE, BarsSource("GOOG", data_file=data), trials=trials, sampler=sampler,
                              seed=seed, config=BacktestConfig(periods_per_year=252))
    outcome = run_optimize(request, store=store, executor="ray", workers=workers,
                           on_progress=lambda done, total: stamps.append(time.perf_counter()))
    assert outcome.manifest.results == trials and outcome.manifest.status == "complete"
    return trials / (stamps[-1] - stamps[0])


def peer(ref: str, data: str, sampler: str, trials: int, workers: int, seed: int) -> float:
    """Trials per second of plain Optuna with ``n_jobs=workers`` threads on the same objective."""
    import optuna

    from tradpal_ray.backtest import BacktestConfig, load_bars, resolve_strategy, sweep
    from tradpal_ray.runs._optimize import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bars, strat, config = load_bars(data), resolve_strategy(ref), BacktestConfig(periods_per_year=252)

    def objective(trial: optuna.Trial) -> float:
        fast, slow = trial.suggest_int("fast", 5, 50), trial.suggest_int("slow", 20, 200)
        if fast >= slow:
            raise optuna.TrialPruned()
        return float(sweep(bars, strat, [{"fast": fast, "slow": slow}], config)["sharpe"][0])

    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed, trials))
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=workers)
    return trials / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samplers", default="tpe,random")
    args = parser.parse_args(argv)

    import ray
    from backtesting.test import GOOG

    with tempfile.TemporaryDirectory(prefix="tradpal-bench-opt-") as scratch:
        strategy_file = Path(scratch) / "sleepy_cross.py"
        strategy_file.write_text(STRATEGY)
        ref = f"{strategy_file}:sleepy_cross"
        data = str(Path(scratch) / "GOOG.csv")
        GOOG.rename(columns=str.lower).to_csv(data)
        store = str(Path(scratch) / "store")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ours(ref, data, store, "random", 20, 2, 0)  # warm-up: worker processes, imports, numba cache
            report: dict[str, object] = {"trials": args.trials, "objective_sleep_ms": SLEEP_SECONDS * 1000,
                                         "runs": args.runs}
            for sampler in args.samplers.split(","):
                figures: dict[str, list[float]] = {key: [] for key in ("ours_1", "ours_2", "peer_1", "peer_2")}
                for run in range(args.runs):
                    for workers in (1, 2):
                        figures[f"ours_{workers}"].append(ours(ref, data, store, sampler, args.trials, workers, run))
                        figures[f"peer_{workers}"].append(peer(ref, data, sampler, args.trials, workers, run))
                report[sampler] = {
                    "ours_trials_per_s_1_worker": spread(figures["ours_1"]),
                    "ours_trials_per_s_2_workers": spread(figures["ours_2"]),
                    "ours_speedup_2_vs_1": spread([b / a for a, b in zip(figures["ours_1"], figures["ours_2"])]),
                    "peer_optuna_threads_trials_per_s_1_job": spread(figures["peer_1"]),
                    "peer_optuna_threads_trials_per_s_2_jobs": spread(figures["peer_2"]),
                    "peer_speedup_2_vs_1": spread([b / a for a, b in zip(figures["peer_1"], figures["peer_2"])]),
                }
                print(json.dumps({sampler: report[sampler]}), file=sys.stderr)
        finally:
            ray.shutdown()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
