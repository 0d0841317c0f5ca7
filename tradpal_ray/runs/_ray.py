"""The Ray executor of a sweep run: a thin shell over :mod:`tradpal_ray.runs._runner`.

One ``load-bars`` task per store symbol (its output is shared by reference with that
symbol's chunk tasks and rebuilt through lineage if its node dies); bars from a local file
are loaded by the driver, the only process sure to see it, and put once. Chunk tasks
(``sweep <run_id> <symbol> #<n>`` in the dashboard) are submitted lazily, a bounded window
at a time, so a 10^7-combination grid never lists its tasks at once. The user's strategy
code reaches every worker as a ``py_modules`` package uploaded once at the start of the run.
Each chunk task writes its results' daily returns beside its rows; at the end, one
``overfitting <run_id> <symbol>`` task per symbol computes its DSR and PBO in parallel.
"""

from __future__ import annotations

import functools
import tempfile
import time
from typing import Any

from tradpal_ray.backtest._references import StrategyRef
from tradpal_ray.backtest.data import Bars
from tradpal_ray.backtest.engine import BacktestConfig
from tradpal_ray.errors import TradpalError
from tradpal_ray.runs._manifest import OverfitStats, RunManifest
from tradpal_ray.runs._plan import GridPlan
from tradpal_ray.runs._request import BarsSource
from tradpal_ray.runs._runner import (
    TASKS_PER_CPU,
    ChunkJob,
    OverfitJob,
    SweepRun,
    keep_details,
    run_chunk,
    symbol_overfit_stats,
)


@functools.cache
def _metrics() -> dict[str, Any]:
    from ray.util import metrics

    return {
        "backtests": metrics.Counter("tradpal_sweep_backtests", "Backtests run by sweep tasks.", tag_keys=("strategy",)),
        "chunk_seconds": metrics.Histogram(
            "tradpal_sweep_chunk_seconds", "Wall time of one sweep chunk task.",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30], tag_keys=("strategy",),
        ),
    }


def _load_task(source: BarsSource) -> Bars:
    return source.load()


def _chunk_task(bars: Bars, plan: GridPlan, job: ChunkJob) -> int:
    started = time.perf_counter()
    outcome = run_chunk(bars, plan, job)
    metric = _metrics()
    if outcome.rows:  # a chunk whose combinations all break the rules or do not fit runs none
        metric["backtests"].inc(outcome.rows, tags={"strategy": job.ref.name})
    metric["chunk_seconds"].observe(time.perf_counter() - started, tags={"strategy": job.ref.name})
    return outcome.rows


def _keep_task(bars: Bars, store: str, run_id: str, ref: StrategyRef, config: BacktestConfig,
               picks: list[tuple[str, dict[str, Any]]]) -> int:
    return keep_details(bars, store, run_id, ref, config, picks)


def shipped_env(ref: StrategyRef) -> dict[str, Any] | None:
    """The task ``runtime_env`` carrying the strategy's code, uploaded to the cluster now (once)."""
    env = ref.runtime_env()
    if not env:
        return None
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    with tempfile.TemporaryDirectory(prefix="tradpal-ship-") as scratch:
        return upload_py_modules_if_needed(env, include_gitignore=True, scratch_dir=scratch)


def execute_ray(run: SweepRun, keep_best: int) -> RunManifest:
    """Run every missing chunk as Ray tasks on the connected cluster, then keep the best results."""
    import ray

    env = shipped_env(run.ref)
    options: dict[str, Any] = {"runtime_env": env} if env else {}
    load = ray.remote(max_retries=3)(_load_task)
    chunk = ray.remote(max_retries=3)(_chunk_task)
    plan_ref = ray.put(run.plan)
    bars: dict[str, Any] = {}

    def bars_of(symbol: str) -> Any:
        if symbol not in bars:
            if symbol in run.loaded:  # a data file: only the driver is sure to see it
                bars[symbol] = ray.put(run.loaded[symbol])
            else:
                bars[symbol] = load.options(name=f"load-bars {symbol}").remote(run.sources[symbol])
        return bars[symbol]

    window = max(8, int(2 * TASKS_PER_CPU * ray.cluster_resources().get("CPU", 1)))
    pending: dict[Any, ChunkJob] = {}
    jobs = run.jobs()
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < window:
            job = next(jobs, None)
            if job is None:
                exhausted = True
                break
            ref = chunk.options(name=f"sweep {run.run_id} {job.symbol} #{job.number}", **options).remote(
                bars_of(job.symbol), plan_ref, job)
            pending[ref] = job
        if not pending:
            continue
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for ref in ready:
            job = pending.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if not isinstance(exc.cause, TradpalError):
                    raise
                doomed = [r for r, j in pending.items() if j.symbol == job.symbol]
                for r in doomed:
                    ray.cancel(r)
                    pending.pop(r)
                run.symbol_failed(job.symbol, exc.cause)
                continue
            run.chunk_done(job)
        if not ready:
            run.beat()
    keep = ray.remote(max_retries=3)(_keep_task)
    kept: dict[str, str] = {}
    refs = []
    for symbol, picks in run.best(keep_best).items():
        refs.append(keep.options(name=f"keep-best {run.run_id} {symbol}", **options).remote(
            bars_of(symbol), run.store, run.run_id, run.ref, run.request.config_for(symbol), picks))
        kept.update({rid: symbol for rid, _ in picks})
    ray.get(refs)

    def overfit_on_ray(jobs: list[OverfitJob]) -> list[OverfitStats]:
        """One task per symbol (``overfitting <run_id> <symbol>``), in parallel; the driver beats while they run."""
        task = ray.remote(max_retries=3)(symbol_overfit_stats)
        pending = [task.options(name=f"overfitting {run.run_id} {job.symbol}").remote(job) for job in jobs]
        while pending and ray.wait(pending, num_returns=len(pending), timeout=5.0)[1]:
            run.beat()
        return ray.get(pending)

    return run.finish(kept, overfit_on_ray)
