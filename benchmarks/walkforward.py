"""Walk-forward overhead: a 12-fold walk-forward beside the plain sweep, on the same bars, same run.

Prints one JSON object on stdout. The bars and grid are ``benchmarks/sweep.py``'s: the
174-combination sma_cross grid (fast 5..50/5 x slow 20..200/10, fast < slow) on
backtesting.py's EURUSD hourly bars (5,000), costs ``BacktestConfig(periods_per_year=252)``.

- ``walkforward``: ``run_walkforward`` in process, train 60 days, test 18 days (12 rolling
  folds), warm-up 200 bars, objective Sharpe: planning, the (fold x chunk) units with their
  chunk files, choosing, the 12 out-of-sample backtests, stitching and the run's tables.
- ``sweep``: the plain sweep as a run, ``run_sweep`` in process over the whole series (its
  chunk files, the 3 kept results, the manifest): what ``tradpal-ray sweep`` does.

Backtested bar-combinations per second = bars simulated by every backtest of the run (warm-up
bars, which only feed indicators, not counted) / wall time. The sweep simulates 174 x 5,000;
the walk-forward 174 x (each fold's training bars) plus each fold's test bars. Target: the
walk-forward at >= 80 % of the sweep's rate. ``bare_sweep_call`` adds the rate of one
``sweep()`` call (no run, no files) for scale. Three runs, interleaved, each the best of
``--repeat`` calls: min / median / max.

Run: ``.venv/bin/python benchmarks/walkforward.py [--runs 3] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TRADPAL_LOG_LEVEL", "WARNING")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import CONFIG, GRID, best_of, spread

from tradpal_ray.backtest import prepare_bars, strategy_combos, sweep
from tradpal_ray.backtest.data import slice_bars
from tradpal_ray.runs import (
    SweepRequest,
    WalkForwardRequest,
    WalkForwardSpec,
    run_sweep,
    run_walkforward,
)
from tradpal_ray.runs._walkforward import WalkForwardPlan, grid_search, window_backtest

TARGET = 0.8
FOLDS = 12


def bare_walkforward(planned: WalkForwardPlan) -> None:
    """The walk-forward's backtests without a run: each fold's grid_search, then its test window."""
    combos = strategy_combos(planned.strat, {k: list(v) for k, v in GRID.items()})
    for fold in planned.folds:
        window = slice_bars(planned.bars, fold.train.start - planned.warmup, fold.train.end)
        choice = grid_search(window, planned.warmup, planned.strat, combos, CONFIG, planned.goal)
        window_backtest(planned.bars, planned.strat, choice.params if choice else None, CONFIG, fold.test,
                        planned.warmup)


def bench(runs: int, repeat: int) -> dict[str, Any]:
    from backtesting.test import EURUSD

    grid = {name: list(values) for name, values in GRID.items()}
    bars = prepare_bars(EURUSD)
    combos = strategy_combos("sma_cross", grid)
    with tempfile.TemporaryDirectory(prefix="tradpal-wf-bench-") as root:
        data = f"{root}/EURUSD.csv"
        EURUSD.to_csv(data)
        plain = SweepRequest("sma_cross", grid, data_file=data, config=CONFIG)
        walk = WalkForwardRequest(plain, WalkForwardSpec("60d", "18d", objective="sharpe"))
        outcome = run_walkforward(walk, store=root, executor="local")
        folds = outcome.folds
        assert len(folds) == FOLDS and (folds["candidates"] == len(combos)).all(), folds
        walk_work = int((folds["candidates"] * folds["train_bars"] + folds["test_bars"]).sum())
        sweep_work = len(combos) * len(bars)
        planned = WalkForwardPlan.build(walk, root)
        calls: dict[str, tuple[Callable[[], Any], int]] = {
            "walkforward": (lambda: run_walkforward(walk, store=root, executor="local"), walk_work),
            "sweep": (lambda: run_sweep(plain, store=root, executor="local"), sweep_work),
            "bare_walkforward_calls": (lambda: bare_walkforward(planned), walk_work),
            "bare_sweep_call": (lambda: sweep(bars, "sma_cross", combos, CONFIG), sweep_work),
        }
        seconds: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(runs):  # interleaved, so that all see the same machine
            for name, (call, _) in calls.items():
                seconds[name].append(best_of(call, repeat)[0])
    rates = {name: [work / s for s in seconds[name]] for name, (_, work) in calls.items()}
    ratios = [w / s for w, s in zip(rates["walkforward"], rates["sweep"])]
    return {
        "bars": len(bars), "combinations": len(combos), "folds": FOLDS, "train": "60d", "test": "18d",
        "warmup_bars": outcome.manifest.walkforward["warmup"], "runs": runs,
        "unit": "backtested bar-combinations per second (warm-up bars not counted)",
        "walkforward": {"bar_combinations": walk_work, "seconds": spread(seconds["walkforward"], 4),
                        "per_s": spread(rates["walkforward"], 0)},
        "sweep": {"bar_combinations": sweep_work, "seconds": spread(seconds["sweep"], 4),
                  "per_s": spread(rates["sweep"], 0)},
        "bare_walkforward_calls": {"seconds": spread(seconds["bare_walkforward_calls"], 4),
                                   "per_s": spread(rates["bare_walkforward_calls"], 0)},
        "bare_sweep_call": {"seconds": spread(seconds["bare_sweep_call"], 4), "per_s": spread(rates["bare_sweep_call"], 0)},
        "bare_walkforward_over_bare_sweep": spread(
            [w / s for w, s in zip(rates["bare_walkforward_calls"], rates["bare_sweep_call"])], 3),
        "walkforward_over_sweep": spread(ratios, 3),
        "target": TARGET,
        "meets_target_at_median": sorted(ratios)[len(ratios) // 2] >= TARGET,
    }


def main() -> None:
    """Run the benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs reported as min / median / max")
    parser.add_argument("--repeat", type=int, default=3, help="calls per timing (the best counts)")
    args = parser.parse_args()
    started = time.perf_counter()
    report = {"walkforward_eurusd": bench(args.runs, args.repeat), "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "wall_s": None}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
