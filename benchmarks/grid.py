"""Driver memory of a 10^7-combination sweep: the grid is planned lazily, chunks generated on demand.

The peer is the eager plan the sweep had before (every combination listed as a dict by
``param_grid`` before the first task): its driver memory and time to first chunk are
measured in a separate process on the same grid.

Ours: ``run_sweep`` on Ray over a 10,000,000-point sma_cross grid (3,163 x 3,161, about
half valid under fast < slow) of 400 daily bars, for ``--seconds`` of running chunks; a
thread samples the driver's RSS every 50 ms. The run is then stopped (it is resumable).
Prints one JSON object: RSS before the run, peak while planning and running, chunks done,
and the peer's RSS after listing the grid.

    .venv/bin/python benchmarks/grid.py [--seconds 45]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FAST = list(range(1, 3164))
SLOW = list(range(2, 3163))
PEER = """
import resource, time
from tradpal_ray.backtest import strategy_combos
start = time.perf_counter()
combos = strategy_combos("sma_cross", {"fast": list(range(1, 3164)), "slow": list(range(2, 3163))})
print(len(combos), time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def rss_mb() -> float:
    """This process's resident set size, in MB."""
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class Stop(Exception):
    """Raised from the progress callback to end the timed run."""


def ours(seconds: float) -> dict[str, Any]:
    """Run the lazy sweep for ``seconds`` of chunks on a private local Ray; driver RSS samples."""
    import ray

    from tradpal_ray.runs import SweepRequest, run_sweep

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    root = tempfile.mkdtemp(prefix="tradpal-grid-")
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 400)))
    frame = pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99, "close": close, "volume": 1.0},
                         index=pd.date_range("2020-01-01", periods=400, freq="D", tz="UTC", name="time"))
    path = Path(root, "WALK.csv")
    frame.to_csv(path)
    samples: list[float] = []
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            samples.append(rss_mb())
            time.sleep(0.05)  # a sampling period, not synchronisation

    before = rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    progress: dict[str, Any] = {}

    def on_progress(done: int, total: int) -> None:
        progress.setdefault("first_progress_s", time.perf_counter() - started)
        progress.update(done=done, total=total)
        if time.perf_counter() - started > seconds:
            raise Stop

    try:
        run_sweep(SweepRequest("sma_cross", {"fast": FAST, "slow": SLOW}, data_file=str(path)), store=root,
                  executor="ray", keep_best=0, on_progress=on_progress)
    except Stop:
        pass
    running.clear()
    sampler.join()
    ray.shutdown()
    return {"grid": len(FAST) * len(SLOW), "rss_before_mb": round(before, 1), "rss_peak_mb": round(max(samples), 1),
            "rss_growth_mb": round(max(samples) - before, 1), "chunks_done": progress.get("done"),
            "chunks_total": progress.get("total"), "seconds_to_plan": round(progress.get("first_progress_s", 0), 2),
            "seconds_run": round(time.perf_counter() - started, 1)}


def peer() -> dict[str, Any]:
    """The eager plan in a fresh process: combinations listed, seconds, peak RSS (MB)."""
    out = subprocess.run([sys.executable, "-c", PEER], capture_output=True, text=True, check=True).stdout.split()
    return {"combos": int(out[0]), "seconds_to_list": round(float(out[1]), 2), "rss_peak_mb": round(float(out[2]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="How long to run chunks before stopping.")
    args = parser.parse_args()
    print(json.dumps({"lazy_grid": ours(args.seconds), "eager_peer": peer()}, indent=2))


if __name__ == "__main__":
    main()
