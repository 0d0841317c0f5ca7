"""The Ray executor of an optimize run: a thin shell over :mod:`tradpal_ray.runs._optimize`.

The driver keeps exactly ``workers`` tasks running (ask/tell): each task evaluates a batch
of trials (``optimize <run_id> #<first trial>`` in the dashboard) on bars put once in the
object store, with the strategy's code shipped as for sweeps. One more batch is always asked
in advance, so when a task returns the next one starts at once; then its trials are told
and another batch is asked while the workers run. The sampler thus learns from every result
(one batch late at most) and its own time overlaps the workers'. Objectives are computed
on the driver.
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

    def submit(asked: list[tuple[int, dict[str, Any]]]) -> None:
        ref = task.options(name=f"optimize {run.run_id} #{asked[0][0]}", **options).remote(bars_ref, run.ref, run.config, asked)
        pending[ref] = asked

    ahead = run.ask(run.per_task)  # always one batch asked in advance: a returning worker never waits for the sampler
    while ahead or pending:
        while ahead and len(pending) < workers:
            submit(ahead)
            ahead = run.ask(run.per_task)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for ref in ready:
            pending.pop(ref)
            try:
                outcomes = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, TradpalError):
                    raise exc.cause from None
                raise
            if ahead:  # the batch asked in advance starts before this one's results are told
                submit(ahead)
                ahead = []
            for outcome in outcomes:
                run.tell(outcome)
        if not ready:
            run.beat()
        ahead = ahead or run.ask(run.per_task)
