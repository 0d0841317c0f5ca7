"""The plain runner of a sweep: plan chunks, run a chunk, finish; with an in-process executor.

:class:`SweepRun` holds the state of one run (manifest, plan, what is done) and knows
nothing of Ray; an executor feeds it chunk outcomes. :func:`run_chunk` and
:func:`keep_details` are the units of work, the same in process and in a Ray task.
Chunk files (the daily returns' part, then the results, which mark the chunk done) are written by the unit of work itself,
idempotently, so a retried task or a resumed run never duplicates or loses a row. A symbol
whose bars are bad fails alone. The finish gathers the returns into ``returns.parquet`` and
computes each symbol's overfitting statistics (:func:`symbol_overfit_stats`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tradpal_ray.backtest._references import StrategyRef
from tradpal_ray.backtest.data import Bars
from tradpal_ray.backtest.engine import BacktestConfig, backtest, sizing_warning
from tradpal_ray.backtest.metrics import metric_names
from tradpal_ray.backtest.strategies import Strategy
from tradpal_ray.backtest.sweep import sweep_returns
from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.log import get_logger
from tradpal_ray.market.store import encode_key
from tradpal_ray.runs._manifest import HEARTBEAT_SECONDS, OverfitStats, RunManifest, StrategyCheck, new_run_id
from tradpal_ray.runs._plan import GridPlan
from tradpal_ray.runs._request import BarsSource, SweepRequest
from tradpal_ray.runs._schema import params_of, results_schema
from tradpal_ray.runs._store import RunStore, result_id

log = get_logger(__name__)

MIN_TASK_BAR_COMBOS = 10_000_000
"""Bar x combination steps that keep one task busy for >= ~100 ms (a task round trip is ~2 ms)."""
TASKS_PER_CPU = 3
"""Enough chunks per CPU to balance uneven ones without drowning in overhead."""
MAX_CHUNK_COMBOS = 50_000
"""Largest chunk: bounds a task's memory (its combinations and signal arrays) and its retry cost."""
LOCAL_WORK_LIMIT = 300_000_000
"""Bar x combination steps the automatic choice runs in process (a few seconds on one core)."""
MAX_RETURNS_RESULTS = 50_000
"""Results above which a run keeps its daily returns per chunk only (no ``returns.parquet``) and
computes no PBO (its days x trials matrix would not fit a driver); the DSR is still computed."""

ProgressCallback = Callable[[int, int], None]
"""``(chunks_done, chunks_total)``."""


@dataclass(frozen=True)
class ChunkJob:
    """One unit of work: a chunk of a plan's combinations on one symbol."""

    run_id: str
    store: str
    symbol: str
    number: int
    size: int
    ref: StrategyRef
    config: BacktestConfig
    param_types: dict[str, str]


@dataclass(frozen=True)
class ChunkOutcome:
    """What a chunk did: result rows written and combinations skipped (by reason)."""

    rows: int
    skipped: dict[str, int]


def run_chunk(bars: Bars, plan: GridPlan, job: ChunkJob) -> ChunkOutcome:
    """Backtest one chunk's combinations that fit the bars; publish their daily returns, then their typed rows."""
    strat = job.ref.load()
    skipped: Counter[str] = Counter()
    fit = []
    for combo in plan.chunk(job.number, job.size):
        if not strat.allows(combo):
            continue  # outside the grid's rules (e.g. fast >= slow): not a result, not a skip
        reason = strat.unfit(combo, len(bars))
        if reason:
            skipped[reason] += 1
        else:
            fit.append(combo)
    frame, returns = sweep_returns(bars, strat, fit, job.config)  # none fits: an empty frame with every column
    table = chunk_table(job.run_id, job.symbol, strat.name, frame, job.param_types)
    store = RunStore(job.store)
    store.write_returns_part(job.run_id, job.symbol, job.number, returns.index,
                             table.column("result_id").to_pylist(), returns.to_numpy())
    store.write_chunk(job.run_id, job.symbol, job.number, table, skipped)  # last: it marks the chunk done
    return ChunkOutcome(len(fit), dict(skipped))


def chunk_table(run_id: str, symbol: str, strategy: str, frame: pd.DataFrame, param_types: Mapping[str, str]) -> pa.Table:
    """The typed Arrow form of one chunk's rows (see :func:`~tradpal_ray.runs.results_schema`)."""
    metrics = [name for name in metric_names() if name in frame.columns]
    schema = results_schema(param_types, metrics)
    names = list(param_types)
    ids = [result_id(symbol, dict(zip(names, values))) for values in frame[names].itertuples(index=False, name=None)]
    columns: dict[str, Any] = {"run_id": [run_id] * len(frame), "result_id": ids, "symbol": [symbol] * len(frame),
                               "strategy": [strategy] * len(frame)}
    columns.update({name: frame[name].to_numpy() for name in (*names, *metrics)})
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema)


def keep_details(bars: Bars, store: str, run_id: str, ref: StrategyRef, config: BacktestConfig,
                 picks: list[tuple[str, dict[str, Any]]]) -> int:
    """Backtest the picked results again with trades and equity, and keep them."""
    strat = ref.load()
    results = RunStore(store)
    for rid, params in picks:
        outcome = backtest(bars, strat, params, config)
        results.write_detail(run_id, rid, outcome.trades, outcome.equity)
    return len(picks)


def plan_chunk_size(combos: int, bars: int, symbols: int, cpus: float) -> int:
    """Combinations per chunk: enough chunks to fill the CPUs, each with >= ~100 ms of work, none huge."""
    if combos <= 0:
        return 1
    per_symbol_tasks = max(1, math.ceil(TASKS_PER_CPU * max(cpus, 1) / max(symbols, 1)))
    balanced = math.ceil(combos / per_symbol_tasks)
    busy = math.ceil(MIN_TASK_BAR_COMBOS / max(bars, 1))
    return max(1, min(combos, max(balanced, busy), MAX_CHUNK_COMBOS))


class SweepRun:
    """The driver's state of one run: its manifest, plan and progress; executors report into it."""

    def __init__(self, store: str, manifest: RunManifest, request: SweepRequest, ref: StrategyRef,
                 plan: GridPlan, on_progress: ProgressCallback | None = None) -> None:
        self.store = store
        self.results = RunStore(store)
        self.manifest = manifest
        self.request = request
        self.ref = ref
        self.plan = plan
        self.sources = {s.symbol: s for s in request.sources(store)}
        self.loaded: dict[str, Bars] = {}
        """Bars the driver already read (a data file), by symbol."""
        self._on_progress = on_progress
        self._done = self.results.done_chunks(manifest.run_id)
        self.total = len(self.sources) * manifest.chunks
        self._finished = Counter({s: sum(1 for n in range(manifest.chunks) if (encode_key(s), n) in self._done)
                                  for s in self.sources})
        self._last_beat = 0.0
        if on_progress:
            on_progress(self.completed, self.total)

    @property
    def completed(self) -> int:
        """Chunks done (or abandoned with their failed symbol)."""
        return sum(self._finished.values())

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    def jobs(self) -> Iterator[ChunkJob]:
        """The chunks still to run, symbol by symbol, generated on demand (skipping failed symbols)."""
        m = self.manifest
        for symbol in self.sources:
            for number in range(m.chunks):
                if (encode_key(symbol), number) in self._done or symbol in m.errors:
                    continue
                yield ChunkJob(m.run_id, self.store, symbol, number, m.chunk_size, self.ref,
                               self.request.config_for(symbol), m.param_types)

    def chunk_done(self, job: ChunkJob) -> None:
        """Record a finished chunk (its rows are already in the store)."""
        self._finished[job.symbol] += 1
        self._progress()

    def symbol_failed(self, symbol: str, error: TradpalError) -> None:
        """Record that ``symbol``'s data is bad: its error in the manifest, its other chunks dropped."""
        self.manifest.errors.setdefault(symbol, str(error).splitlines()[0])
        self._finished[symbol] = self.manifest.chunks
        log.warning("sweep.symbol_failed", run_id=self.run_id, symbol=symbol, error=self.manifest.errors[symbol])
        self._progress()

    def _progress(self) -> None:
        if self._on_progress:
            self._on_progress(self.completed, self.total)
        self.beat()

    def beat(self) -> None:
        """Refresh the manifest's heartbeat when it is due (a reader can tell the driver is alive)."""
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            self.manifest.beat()
            self.results.write_manifest(self.manifest)

    def best(self, keep: int) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """The ``keep`` best results of each symbol that did not fail: ``{symbol: [(result_id, params)]}``."""
        if keep <= 0:
            return {}
        top = self.results.top(self.run_id, self.manifest.metric, keep, per_symbol=True, exclude=self.manifest.errors)
        names = self.manifest.param_names
        picks: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for symbol, rows in (top.groupby("symbol", sort=False) if len(top) else ()):
            picks[symbol] = [(row["result_id"], params_of(row, names)) for row in rows.to_dict("records")]
        return picks

    def finish(self, kept: Mapping[str, str], run_overfit: OverfitRunner | None = None) -> RunManifest:
        """Final counts, the returns matrix, the overfitting statistics and the status into the manifest, written.

        ``run_overfit`` computes the per-symbol statistics (default: one after another here).
        """
        m = self.manifest
        failed = {encode_key(s) for s in m.errors}
        counts = self.results.row_count(self.run_id)
        m.results = sum(n for key, n in counts.items() if key not in failed)
        m.skipped = self.results.skipped(self.run_id)
        m.kept = dict(kept)
        m.warnings = run_warnings(m)
        if m.results > MAX_RETURNS_RESULTS:
            m.warnings.append(f"{m.results:,} results is over {MAX_RETURNS_RESULTS:,}: daily returns kept per chunk "
                              "only (no returns.parquet), no PBO")
        elif m.results:
            self.results.write_returns(self.run_id, exclude=m.errors)
        top = self.results.top(self.run_id, m.metric, 1, per_symbol=True, exclude=m.errors) if m.results else None
        best = dict(zip(top["symbol"], top["result_id"])) if top is not None and len(top) else {}
        jobs = [OverfitJob(self.store, self.run_id, symbol, best[symbol], m.results > MAX_RETURNS_RESULTS,
                           self.request.config.periods_per_year, m.pbo_partitions)
                for symbol in self.sources if symbol in best]
        stats = (run_overfit or self._overfit_here)(jobs)
        m.overfitting = {job.symbol: found for job, found in zip(jobs, stats, strict=True)}
        m.status = "complete" if not m.errors else ("partial" if m.results else "failed")
        if not m.results and not m.errors and m.skipped:
            m.status = "failed"
            m.error = "no combination fits the data: " + "; ".join(
                f"{count:,} {reason}" for reason, count in sorted(m.skipped.items()))
        self.results.write_manifest(m)
        log.info("sweep.done", run_id=self.run_id, status=m.status, results=m.results, failed=len(m.errors),
                 skipped=sum(m.skipped.values()))
        return m

    def _overfit_here(self, jobs: list[OverfitJob]) -> list[OverfitStats]:
        stats = []
        for job in jobs:
            stats.append(symbol_overfit_stats(job))
            self.beat()  # a large PBO takes seconds: the driver is alive
        return stats

    def abort(self, exc: BaseException) -> None:
        """Record why the run stopped early (Ctrl-C, a lost cluster, a bug): never left "running"."""
        m = self.manifest
        interrupted = isinstance(exc, KeyboardInterrupt)
        m.status = "interrupted" if interrupted else "failed"
        m.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.results.write_manifest(m)
        log.error("sweep.aborted", run_id=self.run_id, error=m.error)


@dataclass(frozen=True)
class OverfitJob:
    """One symbol's overfitting statistics to compute at the end of a run (in the driver or a Ray task)."""

    store: str
    run_id: str
    symbol: str
    best_result_id: str
    """The symbol's best result by the run's metric (picked by the driver, which knows every metric): the DSR's."""
    huge: bool
    """The run is over :data:`MAX_RETURNS_RESULTS`: read the best's returns only, no PBO."""
    periods_per_year: float
    partitions: int


OverfitRunner = Callable[[list[OverfitJob]], list[OverfitStats]]
"""Computes the jobs' statistics, in order."""


def symbol_overfit_stats(job: OverfitJob) -> OverfitStats:
    """The DSR of a symbol's best result and the PBO of its results, from the stored results and returns."""
    store = RunStore(job.store)
    frame = store.results(job.run_id, job.symbol)
    best = job.best_result_id
    if job.huge:  # no returns.parquet: the best's column only, no PBO
        returns, matrix = store.returns(job.run_id, job.symbol, results=[best]), None
    else:
        returns = store.returns(job.run_id, job.symbol)
        matrix = returns[frame["result_id"]].to_numpy()
    return overfit_stats(frame["sharpe"].to_numpy(), returns[best].to_numpy(), matrix, best_result_id=best,
                         periods_per_year=job.periods_per_year, partitions=job.partitions)


def overfit_stats(
    trial_sharpes: np.ndarray, best_returns: np.ndarray, returns: np.ndarray | None, *, best_result_id: str,
    periods_per_year: float, partitions: int,
) -> OverfitStats:
    """Deflated Sharpe ratio of the best trial and PBO of all (``returns``: days x trials, None to skip it).

    What cannot be computed (too few days or trials, no dispersion) is None, its reading says why.
    """
    from tradpal_ray.validation import deflated_sharpe_ratio, probability_of_backtest_overfitting

    dsr = psr = sharpe = expected = pbo = logits_median = None
    try:
        deflated = deflated_sharpe_ratio(trial_sharpes, best_returns, periods_per_year=periods_per_year)
        dsr, psr, sharpe, expected = (_defined(deflated.dsr), _defined(deflated.psr), _defined(deflated.sharpe),
                                      _defined(deflated.expected_max_sharpe))
        reading_dsr = deflated.reading()
    except ConfigError as exc:
        reading_dsr = f"DSR not computed: {exc}"
    if returns is None:
        reading_pbo = f"PBO not computed: over {MAX_RETURNS_RESULTS:,} results"
    else:
        try:
            overfit = probability_of_backtest_overfitting(returns, partitions=partitions)
            pbo, reading_pbo = _defined(overfit.pbo), overfit.reading()
            defined = overfit.logits[np.isfinite(overfit.logits)]
            logits_median = float(np.median(defined)) if len(defined) else None
        except ConfigError as exc:
            reading_pbo = f"PBO not computed: {exc}"
    return OverfitStats(
        n_trials=len(trial_sharpes), n_days=len(best_returns), best_result_id=best_result_id, dsr=dsr, psr=psr,
        sharpe=sharpe, expected_max_sharpe=expected, reading_dsr=reading_dsr, pbo=pbo, pbo_partitions=partitions,
        logits_median=logits_median, reading_pbo=reading_pbo,
    )


def _defined(value: float) -> float | None:
    return value if math.isfinite(value) else None


def result_warnings(manifest: RunManifest, row: Mapping[str, Any]) -> list[str]:
    """What a reader of one result row should know: entry signals unfilled because no unit was affordable."""
    config = SweepRequest.from_manifest(manifest).config_for(str(row["symbol"]))
    warning = sizing_warning(row, config)
    return [warning] if warning else []


def run_warnings(manifest: RunManifest) -> list[str]:
    """What a reader of the run should know: combinations skipped because they do not fit the data."""
    return [f"{count:,} combination(s) skipped: {reason}" for reason, count in sorted(manifest.skipped.items())]


def resume_request(store: str, run_id: str, *, allow_changed_code: bool = False,
                   kind: str = "sweep") -> tuple[SweepRequest, RunManifest]:
    """The request and manifest of run ``run_id`` (a run of ``kind``), to finish it.

    ConfigError when the run is of another kind, still running, or when its strategy's source
    changed since it started (unless ``allow_changed_code``: the run then goes on with the new source).
    """
    manifest = RunStore(store).manifest(run_id)
    if manifest.kind != kind:
        raise ConfigError(f"run {run_id} is a {manifest.kind} run: resume it with `tradpal-ray {manifest.kind}`")
    if manifest.current_status() == "running":
        raise ConfigError(f"run {run_id} is still running (driver {manifest.driver.get('host')} pid {manifest.driver.get('pid')})")
    if manifest.status == "complete":
        raise ConfigError(f"run {run_id} is complete: nothing to resume")
    request = SweepRequest.from_manifest(manifest)
    if isinstance(request.strategy, StrategyRef):
        fresh = StrategyRef.parse(request.strategy.text)
        if fresh.source_hash != request.strategy.source_hash:
            if not allow_changed_code:
                raise ConfigError(f"strategy {fresh.text} changed since run {run_id} started; "
                                  "resume with --allow-changed-code to finish it with the new code")
            log.warning("sweep.code_changed", run_id=run_id, strategy=fresh.text)
            manifest.strategy_ref = fresh.to_dict()
            request = SweepRequest.from_manifest(manifest)
    return request, manifest


def start_run(
    request: SweepRequest, checked: tuple[StrategyRef, Strategy, GridPlan], *, store: str,
    manifest: RunManifest | None = None, chunk_size: int | None = None, cpus: float = 1.0, bars_hint: int = 1000,
    executor: str = "local", on_progress: ProgressCallback | None = None, pbo_partitions: int | None = None,
    strategy_check: StrategyCheck | None = None,
) -> SweepRun:
    """Write the run's manifest (a new one, or ``manifest`` to resume) and return its state.

    ``checked`` is what :meth:`SweepRequest.check` returned for ``request`` (absolute paths);
    ``bars_hint`` (bars per symbol) and ``cpus`` size the chunks of a new run.
    ``pbo_partitions`` (default: the manifest's, 16 for a new run) and ``strategy_check`` (the
    look-ahead check's verdict) go into the manifest.
    """
    ref, strat, plan = checked
    if manifest is None:
        size = chunk_size or plan_chunk_size(plan.total, bars_hint, len(request.symbol_names()), cpus)
        manifest = request.manifest(new_run_id(strat.name), ref, strat, plan, size)
    if pbo_partitions is not None:
        manifest.pbo_partitions = check_partitions(pbo_partitions)
    if strategy_check is not None:
        manifest.check = strategy_check
    if executor == "ray" and not ref.portable:
        raise ConfigError(f"strategy {ref.name} exists only in this process (defined in __main__ or inside a "
                          "function): Ray workers cannot import it; put it in a file and pass path/to/file.py:function")
    manifest.executor = executor
    manifest.errors, manifest.error = {}, None
    manifest.claim()
    RunStore(store).write_manifest(manifest)
    log.info("sweep.start", run_id=manifest.run_id, strategy=ref.text, symbols=len(request.symbol_names()),
             combos=plan.total, chunk_size=manifest.chunk_size, executor=executor)
    return SweepRun(store, manifest, request, ref, plan, on_progress)


def check_partitions(partitions: int) -> int:
    """``partitions`` when it is a valid CSCV partition count (even, 2 to 20); ConfigError otherwise."""
    from tradpal_ray.validation._overfit import MAX_PARTITIONS

    if not 2 <= partitions <= MAX_PARTITIONS or partitions % 2:
        raise ConfigError(f"--pbo-partitions must be an even number from 2 to {MAX_PARTITIONS}, got {partitions}")
    return partitions


def first_combination(strat: Strategy, plan: GridPlan, probe: int = 10_000) -> dict[str, Any]:
    """The grid's first combination the strategy's rules allow (its defaults when none of the first ``probe`` is)."""
    for combo in plan.chunk(0, min(plan.total, probe)):
        if strat.allows(combo):
            return combo
    return {name: param.default for name, param in strat.params.items()}


def check_lookahead(bars: Bars, symbol: str, ref: StrategyRef, strat: Strategy, plan: GridPlan, *,
                    executor: str, address: str | None = None) -> StrategyCheck:
    """Run the look-ahead check once on ``symbol``'s bars with the grid's first combination (``--check``)."""
    from tradpal_ray.validation import check_strategy

    params = first_combination(strat, plan)
    report = check_strategy(bars, ref, params, executor=executor, address=address)
    log.info("sweep.check", strategy=ref.text, symbol=symbol, clean=report.clean, warmup=report.warmup_bars)
    return StrategyCheck(clean=report.clean, symbol=symbol, params=dict(report.params), bars=report.n_bars,
                         prefixes_checked=report.prefixes_checked, warmup_bars=report.warmup_bars,
                         first_lookahead=report.first.describe() if report.first else None)


def execute_local(run: SweepRun, keep_best: int) -> RunManifest:
    """Run every missing chunk in this process, one symbol's bars in memory at a time."""
    loaded: tuple[str, Bars | TradpalError] | None = None
    for job in run.jobs():
        if job.symbol in run.manifest.errors:
            continue
        if loaded is None or loaded[0] != job.symbol:
            loaded = (job.symbol, run.loaded[job.symbol] if job.symbol in run.loaded else _load(run.sources[job.symbol]))
        bars = loaded[1]
        try:
            if isinstance(bars, TradpalError):
                raise bars
            run_chunk(bars, run.plan, job)
        except TradpalError as exc:
            run.symbol_failed(job.symbol, exc)
            continue
        run.chunk_done(job)
    kept: dict[str, str] = {}
    for symbol, picks in run.best(keep_best).items():
        bars = run.loaded[symbol] if symbol in run.loaded else run.sources[symbol].load()
        keep_details(bars, run.store, run.run_id, run.ref, run.request.config_for(symbol), picks)
        kept.update({rid: symbol for rid, _ in picks})
    return run.finish(kept)


def _load(source: BarsSource) -> Bars | TradpalError:
    try:
        return source.load()
    except TradpalError as exc:
        return exc
