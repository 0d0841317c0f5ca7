"""Overfitting statistics at sweep scale: DSR and PBO of 10,000 trials x 1,000 days on one core.

Target: both in under 2 s. The matrix is seeded noise with a planted edge in one column
(rows: days, columns: trials), as a sweep's ``returns.parquet`` would hold.

- ``dsr``: ours is every trial's Sharpe ratio from the matrix plus
  :func:`deflated_sharpe_ratio` of the best; the peer is vectorbt's returns accessor
  ``deflated_sharpe_ratio()`` on the same matrix (it computes the DSR of every column,
  which costs it little more). Both give the same DSR for the best column (checked).
- ``pbo``: ours is :func:`probability_of_backtest_overfitting` with its default 16
  partitions (12,870 splits). The peer is the straightforward CSCV of the tests (one split
  at a time, the rows gathered and mean/std recomputed per split, scipy's ``rankdata``):
  timed on ``--peer-splits`` splits and extrapolated to 12,870, its logits checked
  against ours on those splits.

Each figure is ``--repeat`` runs (min / median / max), wall and CPU seconds: the machine may
be shared, and CPU seconds are what one core spent. BLAS is pinned to one thread.

    .venv/bin/python benchmarks/overfit.py [--repeat 3] [--peer-splits 40]
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_variable] = "1"  # one core: before numpy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from itertools import combinations, islice  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from tradpal_ray.validation import (  # noqa: E402
    deflated_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)

DAYS, TRIALS, PARTITIONS, PERIODS_PER_YEAR = 1_000, 10_000, 16, 365


def returns_matrix() -> np.ndarray:
    """Seeded daily noise (1% a day) for every trial, with a real edge planted in trial 42."""
    matrix = np.random.default_rng(2014).normal(0.0, 0.01, (DAYS, TRIALS))
    matrix[:, 42] += 0.002
    return matrix


def timed(function: Callable[[], Any], repeat: int) -> tuple[dict[str, dict[str, float]], Any]:
    """``function``'s wall and CPU seconds over ``repeat`` runs (min / median / max), and its last result."""
    wall, cpu = [], []
    for _ in range(repeat):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        result = function()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return {"wall_s": spread(wall), "cpu_s": spread(cpu)}, result


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max, rounded to the millisecond."""
    return {"min": round(min(values), 3), "median": round(float(np.median(values)), 3), "max": round(max(values), 3)}


def our_dsr(matrix: np.ndarray) -> float:
    """Every trial's annualised Sharpe from the matrix, then the DSR of the best."""
    sharpes = sharpe_ratio(matrix) * math.sqrt(PERIODS_PER_YEAR)
    best = int(np.nanargmax(sharpes))
    return deflated_sharpe_ratio(sharpes, matrix[:, best], periods_per_year=PERIODS_PER_YEAR).dsr


def vectorbt_dsr(frame: Any) -> float:
    """vectorbt's DSR of every column; the best column's."""
    accessor = frame.vbt.returns(freq="1D", year_freq=f"{PERIODS_PER_YEAR} days")
    return float(accessor.deflated_sharpe_ratio().iloc[int(np.nanargmax(accessor.sharpe_ratio().to_numpy()))])


def peer_logits(matrix: np.ndarray, splits: int) -> np.ndarray:
    """The first ``splits`` logits of the straightforward CSCV (one split at a time)."""
    from scipy.stats import rankdata

    blocks = np.array_split(np.arange(len(matrix)), PARTITIONS)
    logits = []
    for chosen in islice(combinations(range(PARTITIONS), PARTITIONS // 2), splits):
        train = matrix[np.concatenate([blocks[b] for b in chosen])]
        test = matrix[np.concatenate([blocks[b] for b in range(PARTITIONS) if b not in chosen])]
        best = int(np.argmax(train.mean(axis=0) / train.std(axis=0, ddof=1)))
        relative = rankdata(test.mean(axis=0) / test.std(axis=0, ddof=1))[best] / (matrix.shape[1] + 1)
        logits.append(math.log(relative / (1 - relative)))
    return np.array(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer-splits", type=int, default=40)
    args = parser.parse_args()
    import pandas as pd
    import vectorbt  # noqa: F401  (registers the .vbt accessor)

    matrix = returns_matrix()
    frame = pd.DataFrame(matrix, index=pd.date_range("2020-01-01", periods=DAYS, freq="D"))
    our_dsr(matrix)  # warm-up: first-call costs are not what a sweep pays per run
    dsr_ours, dsr_value = timed(lambda: our_dsr(matrix), args.repeat)
    dsr_peer, peer_value = timed(lambda: vectorbt_dsr(frame), args.repeat)
    if not math.isclose(dsr_value, peer_value, rel_tol=1e-9):
        raise SystemExit(f"DSR differs from vectorbt's: {dsr_value} vs {peer_value}")

    pbo_ours, pbo = timed(lambda: probability_of_backtest_overfitting(matrix, partitions=PARTITIONS), args.repeat)
    peer_times, logits = timed(lambda: peer_logits(matrix, args.peer_splits), args.repeat)
    if not np.allclose(logits, pbo.logits[: args.peer_splits], rtol=1e-9):
        raise SystemExit("PBO logits differ from the straightforward CSCV's")
    scale = pbo.n_splits / args.peer_splits
    pbo_peer = {clock: {k: round(v * scale, 1) for k, v in figures.items()} for clock, figures in peer_times.items()}

    both = {clock: {k: round(dsr_ours[clock][k] + pbo_ours[clock][k], 3) for k in ("min", "median", "max")}
            for clock in ("wall_s", "cpu_s")}
    report = {
        "shape": {"days": DAYS, "trials": TRIALS, "partitions": PARTITIONS, "splits": pbo.n_splits},
        "dsr": {"ours": dsr_ours, "vectorbt": dsr_peer, "value": round(dsr_value, 6)},
        "pbo": {"ours": pbo_ours, "straightforward_cscv_extrapolated": pbo_peer,
                "peer_splits_timed": args.peer_splits, "value": round(pbo.pbo, 6)},
        "dsr_plus_pbo": {"ours": both, "target_s": 2.0},
        "repeat": args.repeat,
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
