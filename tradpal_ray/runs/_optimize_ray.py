"""The Ray executor of an optimize run: a thin shell over :mod:`tradpal_ray.runs._optimize`.

The driver keeps exactly ``workers`` tasks in flight (ask/tell): each task evaluates a batch
of trials (``optimize <run_id> #<first trial>`` in the dashboard) on bars put once in the
object store, with the strategy's code shipped as for sweeps. As soon as one task returns,
its trials are told and a new batch is asked and submitted, so the sampler learns from
every result while the other workers go on. Objectives are computed on the driver.
"""

from __future__ import annotations

from typing import Any

from tradpal_ray.backtest._references import StrategyRef
from tradpal_ray.backtest.data import Bars
from tradpal_ray.backtest.engine import BacktestConfig
from tradpal_ray.errors import TradpalError
from tradpal_ray.runs._optimize import OptimizeRun, TrialOutcome, evaluate_trials
from tradpal_ray.runs._ray import shipped_env


def _trials_task(bars: Bars, ref: StrategyRef, config: BacktestConfig,
                 asked: list[tuple[int, dict[str, Any]]]) -> list[TrialOutcome]:
    return evaluate_trials(bars, ref, config, asked)


def search_ray(run: OptimizeRun, bars: Bars, workers: int) -> None:
    """Evaluate the run's trials as Ray tasks, ``workers`` at a time, until its budget is told.

    A task that fails on the user's mistake (e.g. a strategy returning arrays of the wrong
    shape) raises that error here; anything else propagates as the Ray error it is.
    """
    import ray

    env = shipped_env(run.ref)
    options: dict[str, Any] = {"runtime_env": env} if env else {}
    task = ray.remote(max_retries=3)(_trials_task)
    bars_ref = ray.put(bars)
    pending: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    while True:
        while len(pending) < workers and (asked := run.ask(run.per_task)):
            ref = task.options(name=f"optimize {run.run_id} #{asked[0][0]}", **options).remote(
                bars_ref, run.ref, run.config, asked)
            pending[ref] = asked
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for ref in ready:
            pending.pop(ref)
            try:
                outcomes = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, TradpalError):
                    raise exc.cause from None
                raise
            for outcome in outcomes:
                run.tell(outcome)
        if not ready:
            run.beat()
