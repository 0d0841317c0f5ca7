"""Sweep speed: tradpal-ray's engine vs vectorbt and backtesting.py, from the same run.

Prints one JSON object on stdout:

- ``sweep_eurusd``: the 174-combination sma_cross grid (fast 5..50/5 x slow 20..200/10,
  fast < slow) on backtesting.py's EURUSD hourly bars, one process. Ours is the whole
  ``sweep()`` call (indicators, signals, kernel, result frame). vectorbt is one
  ``Portfolio.from_signals`` call over all 174 columns plus ``final_value()``, with signals
  we precompute and hand over (shifted one bar, filled at the open, whole units, same fee),
  so its figure excludes signal generation. Three runs, ours and vectorbt's interleaved
  (each the best of ``--repeat`` calls): min / median / max of each and of the speed-up.
  backtesting.py runs a subset of combinations (``--peer-combos``) and is extrapolated.
  Final equity is checked against both peers.
- ``end_to_end_eurusd``: the same sweep as whole processes, three runs each after a warm-up:
  ``tradpal-ray sweep --data EURUSD.csv --grid fast=5:50:5 --grid slow=20:200:10 --json``
  vs a Python script doing it with vectorbt (read the CSV, SMA crossovers with pandas,
  ``from_signals``, statistics as JSON). Final equities of the two are compared.
- ``one_million_bars``: one sma_cross(10, 30) backtest on a 1,000,000-bar random walk,
  ours (``backtest()``: signals + kernel + trade list) vs vectorbt (``from_signals``).
- ``cold_start``: a fresh ``python -c`` that imports the engine and returns its first
  result (numba cache warm), ours and vectorbt's; plus the import cost breakdown.
- ``ray_workers``: the same multi-symbol sweep on Ray with 1 and with 2 CPUs, three runs
  each, and the same work on 1 and 2 plain processes as the peer (see :func:`bench_ray_workers`).

Run: ``.venv/bin/python benchmarks/sweep.py [--repeat 5] [--peer-combos 12] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
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


def spread(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """min / median / max of ``values`` (one per run)."""
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


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


def bench_sweep(repeat: int, peer_combos: int, runs: int) -> dict[str, Any]:
    from backtesting.test import EURUSD

    bars = prepare_bars(EURUSD)
    combos = strategy_combos("sma_cross", GRID)
    entries, exits = vectorbt_inputs(bars, combos)
    ours_s, vbt_s = [], []
    for _ in range(runs):  # interleaved, so that both see the same machine
        seconds, ours = best_of(lambda: sweep(bars, "sma_cross", combos, CONFIG), repeat)
        ours_s.append(seconds)
        seconds, vbt_final = best_of(lambda: vectorbt_final_values(bars, entries, exits), repeat)
        vbt_s.append(seconds)
    subset = [combos[k] for k in np.linspace(0, len(combos) - 1, peer_combos).astype(int)]
    bt_per, bt_final = backtesting_py_final_equity(EURUSD, subset)
    ours_by_combo = dict(zip(zip(ours.fast, ours.slow), ours.final_equity))
    ours_subset = np.array([ours_by_combo[(c["fast"], c["slow"])] for c in subset])
    n = len(combos)
    return {
        "bars": len(bars),
        "combinations": n,
        "runs": runs,
        "ours": {"seconds": spread(ours_s, 5), "backtests_per_s": spread([n / s for s in ours_s], 0)},
        "vectorbt": {
            "seconds": spread(vbt_s, 5),
            "backtests_per_s": spread([n / s for s in vbt_s], 0),
            "note": "from_signals over all columns + final_value(); signal generation not timed",
            "final_equity_max_rel_diff_vs_ours": float(np.max(np.abs(vbt_final / ours.final_equity.to_numpy() - 1))),
        },
        "backtesting_py": {
            "combos_timed": len(subset),
            "seconds_extrapolated": bt_per * n,
            "backtests_per_s": 1 / bt_per,
            "final_equity_max_rel_diff_vs_ours": float(np.max(np.abs(bt_final / ours_subset - 1))),
        },
        "speedup_vs_vectorbt": spread([v / o for o, v in zip(ours_s, vbt_s)], 2),
        "speedup_vs_backtesting_py": bt_per * n / statistics.median(ours_s),
    }


VBT_SWEEP = """
import json, sys
import numpy as np, pandas as pd
import vectorbt as vbt
frame = pd.read_csv(sys.argv[1], index_col=0, parse_dates=True)
close, open_ = frame["Close"], frame["Open"]
pairs = [(f, s) for f in range(5, 51, 5) for s in range(20, 201, 10) if f < s]
sma = {w: close.rolling(w).mean() for w in {w for pair in pairs for w in pair}}
def crossed(a, b):
    return (a.shift() < b.shift()) & (a > b)
columns = pd.MultiIndex.from_tuples(pairs, names=["fast", "slow"])
entries = pd.concat([crossed(sma[f], sma[s]) for f, s in pairs], axis=1, keys=columns)
exits = pd.concat([crossed(sma[s], sma[f]) for f, s in pairs], axis=1, keys=columns)
pf = vbt.Portfolio.from_signals(  # a signal at a close fills at the next open
    close, entries.shift(fill_value=False), exits.shift(fill_value=False), price=open_, fees=0.001,
    size=np.inf, size_granularity=1, init_cash=10_000, freq="1h",
)
stats = pd.DataFrame({
    "final_equity": pf.final_value(), "return_pct": pf.total_return() * 100,
    "max_drawdown_pct": -pf.max_drawdown() * 100, "sharpe": pf.sharpe_ratio(), "trades": pf.trades.count(),
})
print(json.dumps(stats.reset_index().to_dict("records")))
"""


def _timed_process(argv: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a whole process; a failure raises with its stderr."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stdout


def bench_end_to_end(runs: int) -> dict[str, Any]:
    """The 174-combination EURUSD sweep as a whole ``tradpal-ray`` process vs a vectorbt script."""
    from backtesting.test import EURUSD

    cli = str(Path(sys.executable).with_name("tradpal-ray"))
    with tempfile.TemporaryDirectory(prefix="tradpal-bench-") as root:
        csv = Path(root, "EURUSD.csv")
        EURUSD.to_csv(csv)
        ours_argv = [cli, "sweep", "--data", str(csv), "--grid", "fast=5:50:5", "--grid", "slow=20:200:10",
                     "--json", "--store", str(Path(root, "store"))]  # --executor auto: in process
        vbt_argv = [sys.executable, "-c", VBT_SWEEP, str(csv)]
        ours_s, vbt_s = [], []
        for k in range(runs + 1):  # the first run of each warms file and numba caches: not counted
            seconds, ours_out = _timed_process(ours_argv)
            if k:
                ours_s.append(seconds)
            seconds, vbt_out = _timed_process(vbt_argv)
            if k:
                vbt_s.append(seconds)
    ours_rows = json.loads(ours_out)["results"]
    vbt_equity = {(row["fast"], row["slow"]): row["final_equity"] for row in json.loads(vbt_out)}
    diffs = [abs(vbt_equity[(r["params"]["fast"], r["params"]["slow"])] / r["stats"]["final_equity"] - 1) for r in ours_rows]
    return {
        "command": " ".join(["tradpal-ray", *ours_argv[1:]]).replace(root, "<tmp>"),
        "runs": runs,
        "ours_seconds": spread(ours_s, 3),
        "vectorbt_seconds": spread(vbt_s, 3),
        "speedup_vs_vectorbt": spread([v / o for o, v in zip(ours_s, vbt_s)], 2),
        "final_equity_max_rel_diff": max(diffs),
        "results_compared": len(diffs),
        "note": "whole processes: interpreter start, imports, CSV read, sweep, JSON out",
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


def _sweep_stored_symbol(root: str, symbol: str) -> int:
    """One symbol's whole 174-combination sweep in this process (the plain-processes peer)."""
    from tradpal_ray.backtest import load_store_bars

    bars = load_store_bars(root, "bench", symbol, "1m")
    return len(sweep(bars, "sma_cross", strategy_combos("sma_cross", GRID), CONFIG))


def _process_pool_seconds(root: str, names: list[str], cpus: int, runs: int) -> list[float]:
    """Wall times of the same sweep on a pool of ``cpus`` plain processes (no Ray), after a warm-up."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=cpus) as pool:
        list(pool.map(_sweep_stored_symbol, [root] * len(names), names))
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            assert sum(pool.map(_sweep_stored_symbol, [root] * len(names), names)) == 174 * len(names)
            seconds.append(time.perf_counter() - start)
    return seconds


def bench_ray_workers(runs: int, symbols: int = 8, bars: int = 600_000) -> dict[str, Any]:
    """The same multi-symbol sweep through ``run_sweep`` on a 1-CPU and a 2-CPU local Ray.

    Each symbol is a ``bars``-long random walk in a temporary candle store; the 174-combination
    grid per symbol. ``runs`` timed runs per CPU count after a warm-up run (worker start-up,
    numba cache load), results written to the results store as in production. The peer is
    the same work on a pool of 1 and 2 plain processes from the same run: its speed-up is
    what this machine allows at that moment (other load, shared memory bandwidth), Ray's
    overhead is the difference.
    """
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
    seconds: dict[int, list[float]] = {}
    plain: dict[int, list[float]] = {}
    for cpus in (1, 2):
        plain[cpus] = _process_pool_seconds(root, names, cpus, runs)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            run_sweep(request, store=root, keep_best=0, executor="ray")
            seconds[cpus] = []
            for _ in range(runs):
                start = time.perf_counter()
                outcome = run_sweep(request, store=root, keep_best=0, executor="ray")
                seconds[cpus].append(time.perf_counter() - start)
                assert outcome.manifest.status == "complete" and len(outcome.results) == symbols * 174
        finally:
            ray.shutdown()
    return {
        "symbols": symbols, "bars_per_symbol": bars, "combinations_per_symbol": 174, "runs": runs,
        "workers_1_s": spread(seconds[1], 3), "workers_2_s": spread(seconds[2], 3),
        "speedup": round(statistics.median(seconds[1]) / statistics.median(seconds[2]), 2),
        "plain_processes_1_s": spread(plain[1], 3), "plain_processes_2_s": spread(plain[2], 3),
        "plain_processes_speedup": round(statistics.median(plain[1]) / statistics.median(plain[2]), 2),
        "speedup_note": "median over median", "target_speedup": 1.8,
    }


def main() -> None:
    """Run every benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="calls per timing (the best counts)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs reported as min / median / max")
    parser.add_argument("--peer-combos", type=int, default=12, help="backtesting.py combinations timed")
    parser.add_argument("--only", choices=["sweep", "end_to_end", "million", "cold", "ray"], action="append",
                        help="run only these parts (repeatable); default all")
    args = parser.parse_args()
    parts: dict[str, tuple[str, Callable[[], Any]]] = {
        "sweep": ("sweep_eurusd", lambda: bench_sweep(args.repeat, args.peer_combos, args.runs)),
        "end_to_end": ("end_to_end_eurusd", lambda: bench_end_to_end(args.runs)),
        "million": ("one_million_bars", lambda: bench_million(max(1, args.repeat // 2))),
        "cold": ("cold_start", lambda: bench_cold_start(max(1, args.repeat // 2))),
        "ray": ("ray_workers", lambda: bench_ray_workers(args.runs)),
    }
    report: dict[str, Any] = {}
    for key in args.only or list(parts):
        label, bench = parts[key]
        report[label] = bench()
    report["cpu_count"] = os.cpu_count()
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
