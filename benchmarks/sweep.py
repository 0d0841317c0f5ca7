"""Sweep speed: tradpal-ray's engine vs vectorbt and backtesting.py, from the same run.

Prints one JSON object on stdout:

- ``sweep_eurusd``: the 174-combination sma_cross grid (fast 5..50/5 x slow 20..200/10,
  fast < slow) on backtesting.py's EURUSD hourly bars, one process. Ours is the whole
  ``sweep()`` call (indicators, signals, kernel, result frame). vectorbt is one
  ``Portfolio.from_signals`` call over all 174 columns plus ``final_value()``, with signals
  we precompute and hand over (shifted one bar, filled at the open, whole units, same fee),
  so its figure excludes signal generation. backtesting.py runs a subset of combinations
  (``--peer-combos``) and is extrapolated. Final equity is checked against both peers.
- ``one_million_bars``: one sma_cross(10, 30) backtest on a 1,000,000-bar random walk,
  ours (``backtest()``: signals + kernel + trade list) vs vectorbt (``from_signals``).
- ``cold_start``: a fresh ``python -c`` that imports the engine and returns its first
  result (numba cache warm), ours and vectorbt's; plus the import cost breakdown.
- ``ray_workers``: the same multi-symbol sweep on Ray with 1 and with 2 CPUs (see
  :func:`bench_ray_workers`).

Times are the best of ``--repeat`` runs after one warm-up. Run:
``.venv/bin/python benchmarks/sweep.py [--repeat 5] [--peer-combos 12]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from tradpal_ray.backtest import (
    BacktestConfig,
    backtest,
    get_strategy,
    prepare_bars,
    strategy_combos,
    sweep,
)

GRID = {"fast": range(5, 51, 5), "slow": range(20, 201, 10)}
CONFIG = BacktestConfig(periods_per_year=252)  # cash 10,000, fee 0.001, whole units


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """(fastest wall time in seconds, last result) over ``repeat`` runs after a warm-up."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def vectorbt_inputs(bars: Any, combos: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Our signals, shifted one bar so that vectorbt's same-bar fill at ``price=open`` is our next-open fill."""
    strat = get_strategy("sma_cross")
    entries = np.zeros((len(bars), len(combos)), dtype=bool)
    exits = np.zeros_like(entries)
    for j, params in enumerate(combos):
        e, x = strat.signals(bars, params)
        entries[1:, j], exits[1:, j] = e[:-1], x[:-1]
    return entries, exits


def vectorbt_final_values(bars: Any, entries: np.ndarray, exits: np.ndarray) -> np.ndarray:
    import vectorbt as vbt

    close = pd.Series(bars.close, index=bars.index.tz_localize(None))
    pf = vbt.Portfolio.from_signals(
        close, entries, exits, price=bars.open[:, None], fees=CONFIG.fee, size=np.inf,
        size_granularity=CONFIG.size_unit, init_cash=CONFIG.cash, freq="1h",
    )
    return np.asarray(pf.final_value(), dtype=float).reshape(-1)


def backtesting_py_final_equity(data: pd.DataFrame, combos: list[dict[str, Any]]) -> tuple[float, np.ndarray]:
    """Seconds per backtest and final equities of backtesting.py on ``combos``."""
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover
    from backtesting.test import SMA

    class SmaCrossLong(Strategy):
        fast = 10
        slow = 30

        def init(self) -> None:
            self.f = self.I(SMA, self.data.Close, self.fast)
            self.s = self.I(SMA, self.data.Close, self.slow)

        def next(self) -> None:
            if crossover(self.f, self.s):
                if not self.position:
                    self.buy()
            elif crossover(self.s, self.f):
                self.position.close()

    bt = Backtest(data, SmaCrossLong, cash=CONFIG.cash, commission=CONFIG.fee, finalize_trades=False)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        equity = np.array([bt.run(**c)["Equity Final [$]"] for c in combos])
    return (time.perf_counter() - start) / len(combos), equity


def bench_sweep(repeat: int, peer_combos: int) -> dict[str, Any]:
    from backtesting.test import EURUSD

    bars = prepare_bars(EURUSD)
    combos = strategy_combos("sma_cross", GRID)
    ours_s, ours = best_of(lambda: sweep(bars, "sma_cross", combos, CONFIG), repeat)
    entries, exits = vectorbt_inputs(bars, combos)
    vbt_s, vbt_final = best_of(lambda: vectorbt_final_values(bars, entries, exits), repeat)
    subset = [combos[k] for k in np.linspace(0, len(combos) - 1, peer_combos).astype(int)]
    bt_per, bt_final = backtesting_py_final_equity(EURUSD, subset)
    ours_by_combo = dict(zip(zip(ours.fast, ours.slow), ours.final_equity))
    ours_subset = np.array([ours_by_combo[(c["fast"], c["slow"])] for c in subset])
    n = len(combos)
    return {
        "bars": len(bars),
        "combinations": n,
        "ours": {"seconds": ours_s, "backtests_per_s": n / ours_s},
        "vectorbt": {
            "seconds": vbt_s,
            "backtests_per_s": n / vbt_s,
            "note": "from_signals over all columns + final_value(); signal generation not timed",
            "final_equity_max_rel_diff_vs_ours": float(np.max(np.abs(vbt_final / ours.final_equity.to_numpy() - 1))),
        },
        "backtesting_py": {
            "combos_timed": len(subset),
            "seconds_extrapolated": bt_per * n,
            "backtests_per_s": 1 / bt_per,
            "final_equity_max_rel_diff_vs_ours": float(np.max(np.abs(bt_final / ours_subset - 1))),
        },
        "speedup_vs_vectorbt": vbt_s / ours_s,
        "speedup_vs_backtesting_py": bt_per * n / ours_s,
    }


def random_walk(n: int, seed: int = 1) -> pd.DataFrame:
    """Synthetic OHLCV bars: log-normal random walk, opens near the previous close."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.0005, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.001, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.001, n)))
    index = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1.0}, index=index)


def bench_million(repeat: int) -> dict[str, Any]:
    bars = prepare_bars(random_walk(1_000_000))
    params = {"fast": 10, "slow": 30}
    ours_s, ours = best_of(lambda: backtest(bars, "sma_cross", params, CONFIG), repeat)
    entries, exits = vectorbt_inputs(bars, [params])
    vbt_s, vbt_final = best_of(lambda: vectorbt_final_values(bars, entries, exits), repeat)
    return {
        "bars": len(bars),
        "trades": ours.stats["trades"],
        "ours_seconds": ours_s,
        "vectorbt_seconds": vbt_s,
        "note": "ours = backtest(): signals + kernel + trade list; vectorbt = from_signals on given signals",
        "final_equity_rel_diff": float(abs(vbt_final[0] / ours.stats["final_equity"] - 1)),
        "speedup_vs_vectorbt": vbt_s / ours_s,
    }


OURS_COLD = """
import numpy as np, pandas as pd
from tradpal_ray.backtest import backtest
c = 100 + np.cumsum(np.random.default_rng(0).normal(0, 1, 500))
df = pd.DataFrame({"open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 1.0},
                  index=pd.date_range("2024-01-01", periods=500, freq="h", tz="UTC"))
print(backtest(df, "sma_cross", {"fast": 10, "slow": 30}).stats["final_equity"])
"""
VBT_COLD = """
import numpy as np, pandas as pd
import vectorbt as vbt
c = pd.Series(100 + np.cumsum(np.random.default_rng(0).normal(0, 1, 500)),
              index=pd.date_range("2024-01-01", periods=500, freq="h"))
f, s = c.rolling(10).mean(), c.rolling(30).mean()
e = (f > s) & (f.shift() < s.shift()); x = (f < s) & (f.shift() > s.shift())
print(vbt.Portfolio.from_signals(c, e, x, fees=0.001, init_cash=10_000).final_value())
"""


def fresh_python(code: str, repeat: int) -> float:
    """Best wall time of a fresh interpreter running ``code`` (first run discarded: warms caches)."""
    times = []
    for k in range(repeat + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if k:
            times.append(time.perf_counter() - start)
    return min(times)


def bench_cold_start(repeat: int) -> dict[str, Any]:
    imports = {
        name: fresh_python(f"import {name}", repeat)
        for name in ("numpy", "pandas", "numba", "tradpal_ray.market.schema", "tradpal_ray.backtest")
    }
    return {
        "ours_seconds": fresh_python(OURS_COLD, repeat),
        "vectorbt_seconds": fresh_python(VBT_COLD, repeat),
        "python_startup_seconds": fresh_python("pass", repeat),
        "import_seconds": imports,
        "target_ours_seconds": 1.0,
        "note": "a bare numba cache=True function costs ~0.35 s on its first call here (numba init)",
    }


def bench_ray_workers(symbols: int = 8, bars: int = 600_000) -> dict[str, Any]:
    """The same multi-symbol sweep through ``run_sweep`` on a 1-CPU and a 2-CPU local Ray.

    Each symbol is a ``bars``-long random walk in a temporary candle store; the 174-combination
    grid per symbol. Timed after a warm-up run (worker start-up, numba cache load), results
    written to the results store as in production.
    """
    import tempfile

    import ray

    from tradpal_ray.market import CandleStore, candles_table
    from tradpal_ray.runs import SweepRequest, run_sweep

    root = tempfile.mkdtemp(prefix="tradpal-bench-")
    names = [f"WALK{k}/USD" for k in range(symbols)]
    for k, name in enumerate(names):
        walk = random_walk(bars, seed=k + 10)
        CandleStore(root).write(candles_table(walk, exchange="bench", symbol=name, timeframe="1m"))
    request = SweepRequest(strategy="sma_cross", grid={k: list(v) for k, v in GRID.items()}, symbols=names,
                           exchange="bench", timeframe="1m", config=CONFIG)
    seconds = {}
    for cpus in (1, 2):
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            run_sweep(request, store=root, keep_best=0, executor="ray")
            start = time.perf_counter()
            outcome = run_sweep(request, store=root, keep_best=0, executor="ray")
            seconds[cpus] = time.perf_counter() - start
            assert outcome.manifest.status == "complete" and len(outcome.results) == symbols * 174
        finally:
            ray.shutdown()
    return {
        "symbols": symbols, "bars_per_symbol": bars, "combinations_per_symbol": 174,
        "workers_1_s": round(seconds[1], 3), "workers_2_s": round(seconds[2], 3),
        "speedup": round(seconds[1] / seconds[2], 2), "target_speedup": 1.8,
    }


def main() -> None:
    """Run every benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--peer-combos", type=int, default=12, help="backtesting.py combinations timed")
    args = parser.parse_args()
    report = {
        "sweep_eurusd": bench_sweep(args.repeat, args.peer_combos),
        "one_million_bars": bench_million(max(1, args.repeat // 2)),
        "cold_start": bench_cold_start(max(1, args.repeat // 2)),
        "ray_workers": bench_ray_workers(),
        "cpu_count": os.cpu_count(),
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
