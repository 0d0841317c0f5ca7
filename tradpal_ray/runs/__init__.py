"""Runs as typed artifacts: requests, manifests, Arrow schemas, the run store and the runner.

Plain code, no Ray import: stats, reports and the CLI depend on this package, never on the
Ray executor, which is loaded only when a run goes to a cluster. A run lives under
``<store>/runs/<run_id>/`` (see :class:`RunStore`); ``pd.read_parquet`` on its
``results`` folder gives one typed column per parameter and per metric.

    from tradpal_ray.runs import SweepRequest, run_sweep
    outcome = run_sweep(SweepRequest("my_signals.py:golden_cross", {"fast": range(5, 50, 5)},
                                     data_file="btc.csv"), store="./tradpal-data")
    outcome.top(10)

An optimize run (kind ``optimize``, :func:`run_optimize`) searches a strategy's parameters
with Optuna's samplers instead of a grid; :func:`optimize_bars` is its in-process form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tradpal_ray.errors import ConfigError
from tradpal_ray.runs._manifest import (
    RESULT_ID_PATTERN,
    RUN_ID_PATTERN,
    RUN_KINDS,
    RUN_STATUSES,
    OverfitStats,
    RunManifest,
    StrategyCheck,
    new_run_id,
)
from tradpal_ray.runs._optimize import (
    SAMPLERS,
    OptimizeRequest,
    optimize_bars,
    run_optimize,
    trials_schema,
)
from tradpal_ray.runs._plan import DEFAULT_MAX_COMBOS, GridPlan
from tradpal_ray.runs._request import BarsSource, SweepRequest
from tradpal_ray.runs._runner import (
    LOCAL_WORK_LIMIT,
    MAX_RETURNS_RESULTS,
    ProgressCallback,
    SweepRun,
    check_lookahead,
    check_partitions,
    chunk_table,
    execute_local,
    overfit_stats,
    plan_chunk_size,
    result_warnings,
    resume_request,
    start_run,
)
from tradpal_ray.runs._schema import (
    EQUITY_SCHEMA,
    TRADES_SCHEMA,
    params_label,
    params_of,
    results_schema,
)
from tradpal_ray.runs._store import RunStore, check_result_id, check_run_id, result_id
from tradpal_ray.runs._walkforward import WalkForwardRequest, WalkForwardSpec

EXECUTORS = ("auto", "local", "ray")


class LookaheadFound(ConfigError):
    """``run_sweep(check=True)`` found look-ahead: the sweep did not run (``check`` says where)."""

    def __init__(self, check: StrategyCheck) -> None:
        super().__init__(f"the strategy looks ahead on {check.symbol} at {check.first_lookahead}; the sweep did not run")
        self.check = check


@dataclass
class RunOutcome:
    """A finished run's manifest and the store its tables are read from, on demand."""

    manifest: RunManifest
    store: RunStore

    @property
    def run_id(self) -> str:
        """The run's id (``--resume`` takes it)."""
        return self.manifest.run_id


@dataclass
class SweepOutcome(RunOutcome):
    """A finished (or partly failed) sweep: its manifest, and its results read from the store on demand."""

    @property
    def results(self) -> pd.DataFrame:
        """Every result row of the symbols that did not fail (typed columns), in plan order."""
        frame = self.store.results(self.run_id)
        return frame[~frame["symbol"].isin(self.manifest.errors)].reset_index(drop=True) if len(frame) else frame

    def top(self, n: int = 10, *, metric: str | None = None) -> pd.DataFrame:
        """The ``n`` best results by the run's metric (or ``metric``), read chunk by chunk."""
        return self.store.top(self.run_id, metric or self.manifest.metric, n, exclude=self.manifest.errors)

    def returns(self, symbol: str | None = None) -> pd.DataFrame:
        """Daily returns, one column per result id (see :meth:`RunStore.returns`)."""
        return self.store.returns(self.run_id, symbol)

    def best_per_symbol(self) -> pd.DataFrame:
        """The best result of each symbol, best first."""
        return self.store.top(self.run_id, self.manifest.metric, 1, per_symbol=True, exclude=self.manifest.errors)

    def across_symbols(self) -> pd.DataFrame:
        """Parameter sets ranked by the median of the metric over symbols (robust to one bad symbol)."""
        from tradpal_ray.backtest.sweep import rank

        frame = self.results
        names = self.manifest.param_names
        if not len(frame) or not names:
            return frame
        metric = self.manifest.metric
        table = frame.groupby(names, sort=False)[metric].agg(["median", "min", "count"])
        table = table.rename(columns={"median": metric, "min": f"min_{metric}", "count": "symbols"}).reset_index()
        return rank(table, metric)


class OptimizeOutcome(SweepOutcome):
    """A finished optimize run: a sweep's outcome (its complete trials are its results) plus its trials and best."""

    @property
    def trials(self) -> pd.DataFrame:
        """One row per counted trial, complete or failed (see :func:`trials_schema`)."""
        return self.store.trials(self.run_id)

    @property
    def best(self) -> list[dict[str, Any]]:
        """The best trial, or the Pareto front: ``{"trial", "params", "values", "stats"}`` each."""
        return self.manifest.best


def choose_executor(executor: str, work: int, *, address: str | None = None) -> str:
    """``local`` or ``ray`` for ``executor`` (``auto``: Ray when a cluster is given or running, or
    when the work, in bar x combination steps, is more than a few seconds on one core)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor != "auto":
        return executor
    import os
    import sys

    ray_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if address or os.environ.get("RAY_ADDRESS") or ray_running:
        return "ray"
    return "local" if work <= LOCAL_WORK_LIMIT else "ray"


def run_sweep(
    request: SweepRequest | None = None,
    *,
    store: str,
    resume: str | None = None,
    executor: str = "auto",
    address: str | None = None,
    keep_best: int = 3,
    chunk_size: int | None = None,
    allow_changed_code: bool = False,
    on_progress: ProgressCallback | None = None,
    pbo_partitions: int | None = None,
    check: bool = False,
    on_check: Callable[[StrategyCheck], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) a sweep and return its outcome.

    ``executor``: ``local`` runs in this process, ``ray`` on the connected cluster (starting
    a private local Ray, or joining ``address``, when none is connected), ``auto`` picks.
    ``resume`` takes a run id: the request comes from its manifest, only missing chunks
    run, and a strategy whose source changed since is refused unless ``allow_changed_code``.
    ConfigError for bad requests; a symbol's bad data is recorded in the manifest instead.
    At the end, each symbol's deflated Sharpe ratio and PBO (``pbo_partitions`` CSCV
    partitions, default 16) go into the manifest. ``check``: first run the look-ahead check
    once (first symbol, the grid's first combination, the sweep's executor), recorded in the
    manifest and passed to ``on_check``; :class:`LookaheadFound` when the strategy looks ahead.
    """
    store_obj = RunStore(store)
    manifest = None
    if resume:
        request, manifest = resume_request(store, resume, allow_changed_code=allow_changed_code)
    elif request is None:
        raise ConfigError("a sweep needs a request or a run id to resume")
    request = request.absolute()
    checked = request.check()
    plan = checked[2]
    if pbo_partitions is not None:
        check_partitions(pbo_partitions)
    bars, loaded = request.check_data(store)
    chosen = choose_executor(executor, plan.total * max(bars, 1) * len(request.symbol_names()), address=address)
    cpus = 1.0
    if chosen == "ray":
        import ray

        from tradpal_ray.cluster import connect

        connect(address)
        cpus = ray.cluster_resources().get("CPU", 1.0)
    strategy_check = None
    if check:
        first = request.sources(store)[0]
        first_bars = loaded[first.symbol] if first.symbol in loaded else first.load()
        strategy_check = check_lookahead(first_bars, first.symbol, checked[0], checked[1], plan,
                                         executor=chosen, address=address)
        if not strategy_check.clean:
            raise LookaheadFound(strategy_check)
        if on_check:
            on_check(strategy_check)
    run = start_run(request, checked, store=store, manifest=manifest, chunk_size=chunk_size, cpus=cpus,
                    bars_hint=bars or 1000, executor=chosen, on_progress=on_progress, pbo_partitions=pbo_partitions,
                    strategy_check=strategy_check)
    run.loaded.update(loaded)
    try:
        if chosen == "ray":
            from tradpal_ray.runs._ray import execute_ray

            manifest = execute_ray(run, keep_best)
        else:
            manifest = execute_local(run, keep_best)
    except BaseException as exc:  # Ctrl-C, a lost cluster, a bug: never leave the run "running"
        run.abort(exc)
        raise
    if manifest.status == "failed" and not manifest.errors and manifest.error:
        raise ConfigError(f"run {manifest.run_id}: {manifest.error}")
    return SweepOutcome(manifest, store_obj)


@dataclass
class WalkForwardOutcome(RunOutcome):
    """A finished walk-forward: its manifest (the summary is ``manifest.walkforward["summary"]``) and tables."""

    @property
    def summary(self) -> dict[str, Any]:
        """Stitched out-of-sample statistics, walk-forward efficiency and the objective's OOS/IS ratio."""
        return dict(self.manifest.walkforward.get("summary", {}))

    @property
    def folds(self) -> pd.DataFrame:
        """One row per fold: windows, chosen parameters, in-sample and out-of-sample statistics."""
        return self.store.walkforward(self.run_id)["folds"]

    @property
    def equity(self) -> pd.DataFrame:
        """The stitched out-of-sample equity (``time``, ``fold``, ``equity``)."""
        return self.store.walkforward(self.run_id)["oos_equity"]

    @property
    def trades(self) -> pd.DataFrame:
        """Every out-of-sample trade with its fold."""
        return self.store.walkforward(self.run_id)["oos_trades"]


def run_walkforward(
    request: WalkForwardRequest | None = None,
    *,
    store: str,
    resume: str | None = None,
    executor: str = "auto",
    address: str | None = None,
    chunk_size: int | None = None,
    allow_changed_code: bool = False,
    on_progress: ProgressCallback | None = None,
) -> WalkForwardOutcome:
    """Run (or resume) a walk-forward and return its outcome (executors as :func:`run_sweep`'s).

    Each fold's grid runs as (fold x chunk) units, in process or as Ray tasks; ``resume``
    takes a run id and runs only the missing units. ConfigError for bad requests.
    """
    from tradpal_ray.runs._walkforward import WalkForwardPlan, execute_local, resume_walkforward, start_walkforward

    manifest = None
    if resume:
        request, manifest = resume_walkforward(store, resume, allow_changed_code=allow_changed_code)
    elif request is None:
        raise ConfigError("a walk-forward needs a request or a run id to resume")
    planned = WalkForwardPlan.build(request, store)
    chosen = choose_executor(executor, planned.work, address=address)
    cpus = _connect(address) if chosen == "ray" else 1.0
    run = start_walkforward(planned, store=store, manifest=manifest, chunk_size=chunk_size, cpus=cpus,
                            executor=chosen, on_progress=on_progress)
    try:
        if chosen == "ray":
            from tradpal_ray.runs._walkforward_ray import execute_ray

            manifest = execute_ray(run)
        else:
            manifest = execute_local(run)
    except BaseException as exc:  # Ctrl-C, a lost cluster, a bug: never leave the run "running"
        run.sweep_run.abort(exc)
        raise
    return WalkForwardOutcome(manifest, RunStore(store))


def _connect(address: str | None) -> float:
    """Connect to Ray (a private local one unless ``address``); the cluster's CPUs."""
    import ray

    from tradpal_ray.cluster import connect

    connect(address)
    return float(ray.cluster_resources().get("CPU", 1.0))


__all__ = [
    "DEFAULT_MAX_COMBOS",
    "EQUITY_SCHEMA",
    "EXECUTORS",
    "MAX_RETURNS_RESULTS",
    "RESULT_ID_PATTERN",
    "RUN_ID_PATTERN",
    "RUN_KINDS",
    "RUN_STATUSES",
    "SAMPLERS",
    "TRADES_SCHEMA",
    "BarsSource",
    "GridPlan",
    "OptimizeOutcome",
    "OptimizeRequest",
    "LookaheadFound",
    "OverfitStats",
    "RunManifest",
    "RunOutcome",
    "RunStore",
    "StrategyCheck",
    "SweepOutcome",
    "SweepRequest",
    "SweepRun",
    "WalkForwardOutcome",
    "WalkForwardRequest",
    "WalkForwardSpec",
    "check_lookahead",
    "check_partitions",
    "check_result_id",
    "check_run_id",
    "choose_executor",
    "chunk_table",
    "new_run_id",
    "optimize_bars",
    "overfit_stats",
    "params_label",
    "params_of",
    "plan_chunk_size",
    "result_id",
    "result_warnings",
    "results_schema",
    "run_optimize",
    "run_sweep",
    "trials_schema",
    "run_walkforward",
]
