"""The Ray executor of a walk-forward run: (fold x chunk) units as Ray tasks, a thin shell.

The bars are put once and shared by reference; units are submitted a bounded window at a
time (``walkforward <run_id> fold <f> #<n>`` in the dashboard); the finish step (choices,
out-of-sample backtests, stitching) runs on the driver, where objectives are evaluated.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tradpal_ray.backtest.data import Bars
from tradpal_ray.errors import TradpalError
from tradpal_ray.runs._manifest import RunManifest
from tradpal_ray.runs._plan import GridPlan
from tradpal_ray.runs._ray import shipped_env
from tradpal_ray.runs._runner import TASKS_PER_CPU
from tradpal_ray.runs._walkforward import WalkForwardRun, WalkForwardUnit, run_unit


def _unit_task(bars: Bars, plan: GridPlan, unit: WalkForwardUnit) -> pd.DataFrame:
    return run_unit(bars, plan, unit)


def execute_ray(run: WalkForwardRun) -> RunManifest:
    """Every missing unit as a Ray task on the connected cluster, then the finish step."""
    import ray

    env = shipped_env(run.planned.ref)
    options: dict[str, Any] = {"runtime_env": env} if env else {}
    task = ray.remote(max_retries=3)(_unit_task)
    bars, plan = ray.put(run.planned.bars), ray.put(run.planned.plan)
    window = max(8, int(2 * TASKS_PER_CPU * ray.cluster_resources().get("CPU", 1)))
    units = run.units()
    pending: dict[Any, WalkForwardUnit] = {}
    while True:
        while len(pending) < window and (unit := next(units, None)) is not None:
            name = f"walkforward {run.run_id} fold {unit.fold.number} #{unit.number}"
            pending[task.options(name=name, **options).remote(bars, plan, unit)] = unit
        if not pending:
            break
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for ref in ready:
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the run fails (recorded by the driver; --resume retries)
                if isinstance(exc.cause, TradpalError):
                    raise exc.cause from None  # a user's mistake: one error line, not a task traceback
                raise
            run.unit_done(pending.pop(ref), rows)
        if not ready:
            run.progress()
    return run.finish()
