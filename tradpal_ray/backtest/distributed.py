"""Parameter sweeps on Ray: one named task per (symbol, chunk of combinations).

The driver plans chunks, starts one ``load-bars`` task per symbol (its result is shared by
reference with that symbol's chunk tasks and, being a task output, is rebuilt through
lineage if the node holding it dies), and collects chunk outcomes with a progress bar.
Bars from a local file are loaded and validated by the driver and ``ray.put`` once.
Chunk tasks write their rows to the :class:`ResultStore` themselves (idempotently), so a
retried task or a resumed run never duplicates or loses a row. A symbol whose data is
bad fails alone: its error goes into the manifest and the other symbols finish.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from tradpal_ray.backtest.data import Bars, load_bars, load_store_bars
from tradpal_ray.backtest.engine import BacktestConfig, backtest
from tradpal_ray.backtest.grid import strategy_combos
from tradpal_ray.backtest.metrics import STAT_NAMES
from tradpal_ray.backtest.results import ResultStore, RunManifest, new_run_id, result_id
from tradpal_ray.backtest.sweep import rank, sweep
from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.log import get_logger
from tradpal_ray.market.schema import timeframe_ms, to_ms
from tradpal_ray.market.store import encode_key

log = get_logger(__name__)

MIN_TASK_BAR_COMBOS = 10_000_000
"""Bar x combination steps that keep one task busy for >= ~100 ms (the kernel does ~100M/s
on one core here; a task round trip costs ~2 ms)."""
TASKS_PER_CPU = 3
"""Enough tasks per CPU to balance uneven chunks without drowning in overhead."""

ProgressCallback = Callable[[int, int], None]
"""``(chunks_done, chunks_total)``."""


@dataclass(frozen=True)
class SweepRequest:
    """What to sweep: a strategy's grid over symbols from the store, or over one data file."""

    strategy: str
    grid: dict[str, list[Any]]
    symbols: list[str] = field(default_factory=list)
    exchange: str = "binance"
    timeframe: str | None = None
    since: str | None = None
    until: str | None = None
    data_file: str | None = None
    """Bars from a CSV/Parquet file instead of the store (the symbol is the file's stem)."""
    config: BacktestConfig = field(default_factory=BacktestConfig)
    metric: str = "sharpe"
    samples: int | None = None
    """Random sampling: that many combinations instead of the full grid."""
    seed: int = 0

    def combos(self) -> list[dict[str, Any]]:
        """Check the whole request without touching Ray or data; its parameter combinations.

        Callers validate before connecting to Ray, so a typo costs no cluster start and
        leaves no failed run behind. Raises ConfigError naming the bad part.
        """
        if not (self.data_file or self.symbols):
            raise ConfigError("no symbols to sweep")
        if not self.data_file:
            if not self.timeframe:
                raise ConfigError("a sweep over the store needs a timeframe")
            timeframe_ms(self.timeframe)
        to_ms(self.since), to_ms(self.until)
        if self.metric not in STAT_NAMES:
            raise ConfigError(f"unknown metric {self.metric!r}; choose one of {', '.join(STAT_NAMES)}")
        combos = strategy_combos(self.strategy, self.grid, samples=self.samples, seed=self.seed)
        if not combos:
            raise ConfigError(f"the grid {self.grid} gives no valid combination for {self.strategy}")
        return combos

    def manifest(self, run_id: str, combos: int, chunk_size: int) -> RunManifest:
        """A fresh manifest recording this request."""
        return RunManifest(
            run_id=run_id, strategy=self.strategy, grid=self.grid, symbols=list(self.symbols),
            source=self.data_file or "store", exchange=self.exchange, timeframe=self.timeframe,
            since=self.since, until=self.until, costs=asdict(self.config), metric=self.metric,
            combos=combos, chunk_size=chunk_size, samples=self.samples, seed=self.seed,
        )

    @classmethod
    def from_manifest(cls, manifest: RunManifest) -> SweepRequest:
        """The request that produced ``manifest`` (for ``--resume``)."""
        return cls(
            strategy=manifest.strategy, grid=manifest.grid, symbols=list(manifest.symbols),
            exchange=manifest.exchange or "binance", timeframe=manifest.timeframe, since=manifest.since,
            until=manifest.until, data_file=None if manifest.source == "store" else manifest.source,
            config=BacktestConfig(**manifest.costs), metric=manifest.metric, samples=manifest.samples,
            seed=manifest.seed,
        )


@dataclass
class SweepOutcome:
    """A finished (or partly failed) run: its manifest and every result row."""

    manifest: RunManifest
    results: pd.DataFrame

    @property
    def run_id(self) -> str:
        """The run's id (``--resume`` takes it)."""
        return self.manifest.run_id

    def ranked(self) -> pd.DataFrame:
        """Every result, best first by the run's metric."""
        return rank(self.results, self.manifest.metric) if len(self.results) else self.results

    def best_per_symbol(self) -> pd.DataFrame:
        """The best result of each symbol, best first."""
        ranked = self.ranked()
        return ranked.groupby("symbol", sort=False).head(1).reset_index(drop=True) if len(ranked) else ranked

    def across_symbols(self) -> pd.DataFrame:
        """Parameter sets ranked by the metric's mean over symbols (robustness across the universe)."""
        if not len(self.results):
            return self.results
        metric = self.manifest.metric
        grouped = self.results.groupby("params", sort=False)
        table = grouped[metric].agg(["mean", "min", "count"]).rename(columns={"mean": metric, "min": f"min_{metric}", "count": "symbols"})
        return rank(table.reset_index(), metric)


def plan_chunk_size(combos: int, bars: int, symbols: int, cpus: float) -> int:
    """Combinations per task: enough tasks to fill the CPUs, each with >= ~100 ms of work."""
    if combos <= 0:
        return 1
    per_symbol_tasks = max(1, math.ceil(TASKS_PER_CPU * max(cpus, 1) / max(symbols, 1)))
    balanced = math.ceil(combos / per_symbol_tasks)
    busy = math.ceil(MIN_TASK_BAR_COMBOS / max(bars, 1))
    return max(1, min(combos, max(balanced, busy)))


def chunks(combos: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Split the ordered combinations into consecutive chunks of ``size``."""
    return [combos[start : start + size] for start in range(0, len(combos), size)]


def results_table(run_id: str, symbol: str, strategy: str, frame: pd.DataFrame, param_names: list[str]) -> pa.Table:
    """The stored form of one chunk's rows: ids, the parameters as JSON, then the statistics."""
    params = [dict(zip(param_names, values)) for values in frame[param_names].itertuples(index=False, name=None)]
    params = [{k: (v.item() if hasattr(v, "item") else v) for k, v in p.items()} for p in params]
    stats = frame.drop(columns=param_names)
    head = pd.DataFrame({
        "run_id": run_id,
        "result_id": [result_id(symbol, p) for p in params],
        "symbol": symbol,
        "strategy": strategy,
        "params": [orjson.dumps(p, option=orjson.OPT_SORT_KEYS).decode() for p in params],
    })
    return pa.Table.from_pandas(pd.concat([head, stats.reset_index(drop=True)], axis=1), preserve_index=False)


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


def _load_store_bars_task(store: str, request: SweepRequest, symbol: str) -> Bars:
    if not request.timeframe:
        raise ConfigError("a sweep over the store needs a timeframe")
    return load_store_bars(store, request.exchange, symbol, request.timeframe, since=request.since, until=request.until)


def _sweep_chunk_task(
    bars: Bars, store: str, run_id: str, symbol: str, chunk: int, strategy: str,
    combos: list[dict[str, Any]], config: BacktestConfig,
) -> int:
    started = time.perf_counter()
    frame = sweep(bars, strategy, combos, config)
    names = list(combos[0]) if combos else []
    ResultStore(store).write_chunk(run_id, symbol, chunk, results_table(run_id, symbol, strategy, frame, names))
    metric = _metrics()
    metric["backtests"].inc(len(combos), tags={"strategy": strategy})
    metric["chunk_seconds"].observe(time.perf_counter() - started, tags={"strategy": strategy})
    return len(frame)


def _keep_details_task(
    bars: Bars, store: str, run_id: str, strategy: str, config: BacktestConfig, picks: list[tuple[str, dict[str, Any]]]
) -> int:
    results = ResultStore(store)
    for rid, params in picks:
        outcome = backtest(bars, strategy, params, config)
        results.write_detail(run_id, rid, outcome.trades, outcome.equity)
    return len(picks)


def _remote(fn: Callable[..., Any], **options: Any) -> Any:
    import ray

    return ray.remote(**options)(fn)


def run_sweep(
    request: SweepRequest | None = None,
    *,
    store: str,
    resume: str | None = None,
    keep_best: int = 3,
    chunk_size: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> SweepOutcome:
    """Run (or resume) a sweep on the connected Ray cluster and return its ranked results.

    ``resume`` takes a run id: the request then comes from its manifest and only the
    chunks not yet written run. ``keep_best`` results per symbol keep their trades and
    equity curve. Raises ConfigError for bad requests; per-symbol data errors are recorded
    in the manifest instead of raised.
    """
    import ray

    results = ResultStore(store)
    if resume:
        manifest = results.manifest(resume)
        request = SweepRequest.from_manifest(manifest)
        chunk_size = manifest.chunk_size
    elif request is None:
        raise ConfigError("run_sweep needs a request or a run id to resume")
    else:
        manifest = None
    combos = request.combos()
    symbols = [Path(request.data_file).stem] if request.data_file else list(request.symbols)

    if request.data_file:  # only the driver is sure to see the file: load (and validate) it here, once
        bars_refs = {symbols[0]: ray.put(load_bars(request.data_file, since=request.since, until=request.until))}
    else:
        load = _remote(_load_store_bars_task, max_retries=3)
        bars_refs = {s: load.options(name=f"load-bars {s}").remote(store, request, s) for s in symbols}
    if chunk_size is None:
        chunk_size = plan_chunk_size(len(combos), _bar_estimate(bars_refs), len(symbols), ray.cluster_resources().get("CPU", 1))
    if manifest is None:
        manifest = request.manifest(new_run_id(request.strategy), len(combos), chunk_size)
    run_id = manifest.run_id
    manifest.status, manifest.errors, manifest.error = "running", {}, None
    results.write_manifest(manifest)
    log.info("sweep.start", run_id=run_id, strategy=request.strategy, symbols=len(symbols), combos=len(combos),
             chunk_size=chunk_size, resume=bool(resume))

    try:
        frame = _collect(results, manifest, symbols, combos, chunk_size, bars_refs, store, request, on_progress)
        outcome = SweepOutcome(manifest, frame)
        if keep_best and len(frame):
            _keep_details(outcome, bars_refs, store, request, keep_best)
    except BaseException as exc:  # Ctrl-C, a lost cluster, a bug: never leave the run "running"
        manifest.status, manifest.error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        results.write_manifest(manifest)
        log.error("sweep.aborted", run_id=run_id, error=manifest.error)
        raise
    manifest.results = len(frame)
    manifest.status = "complete" if not manifest.errors else ("partial" if len(frame) else "failed")
    results.write_manifest(manifest)
    log.info("sweep.done", run_id=run_id, status=manifest.status, results=len(frame), failed=len(manifest.errors))
    return outcome


def _collect(
    results: ResultStore, manifest: RunManifest, symbols: list[str], combos: list[dict[str, Any]], chunk_size: int,
    bars_refs: dict[str, Any], store: str, request: SweepRequest, on_progress: ProgressCallback | None,
) -> pd.DataFrame:
    """Run the chunks not yet written and wait for them; the run's rows of the symbols that did not fail.

    A symbol whose task raised a TradpalError is recorded in ``manifest.errors`` and its
    other chunks are cancelled; any other task error is raised.
    """
    import ray

    run_id = manifest.run_id
    done = results.done_chunks(run_id)
    plan = [(s, i, part) for s in symbols for i, part in enumerate(chunks(combos, chunk_size))]
    todo = [(s, i, part) for s, i, part in plan if (encode_key(s), i) not in done]
    chunk_task = _remote(_sweep_chunk_task, max_retries=3)
    pending = {
        chunk_task.options(name=f"sweep {run_id} {s} #{i}").remote(
            bars_refs[s], store, run_id, s, i, request.strategy, part, request.config
        ): s
        for s, i, part in todo
    }
    completed = len(plan) - len(todo)
    if on_progress:
        on_progress(completed, len(plan))
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        symbol = pending.pop(ready[0])
        try:
            ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause  # the exception raised in the task (or in the load task it depended on)
            if not isinstance(cause, TradpalError):
                raise
            manifest.errors.setdefault(symbol, str(cause).splitlines()[0])
            for ref in [ref for ref, s in pending.items() if s == symbol]:
                ray.cancel(ref)
                pending.pop(ref)
                completed += 1
            log.warning("sweep.symbol_failed", run_id=run_id, symbol=symbol, error=manifest.errors[symbol])
        completed += 1
        if on_progress:
            on_progress(completed, len(plan))
    frame = results.results(run_id)
    frame = frame[~frame["symbol"].isin(manifest.errors)] if len(frame) else frame
    return frame.reset_index(drop=True)


def _keep_details(outcome: SweepOutcome, bars_refs: dict[str, Any], store: str, request: SweepRequest, keep: int) -> None:
    import ray

    task = _remote(_keep_details_task, max_retries=3)
    best = outcome.ranked().groupby("symbol", sort=False).head(keep)
    refs = [
        task.options(name=f"keep-best {outcome.run_id} {symbol}").remote(
            bars_refs[symbol], store, outcome.run_id, request.strategy, request.config,
            [(rid, orjson.loads(params)) for rid, params in zip(rows["result_id"], rows["params"])],
        )
        for symbol, rows in best.groupby("symbol", sort=False)
    ]
    ray.get(refs)


def _bar_estimate(bars_refs: dict[str, Any]) -> int:
    import ray

    first = next(iter(bars_refs.values()))
    try:
        return len(ray.get(first))
    except ray.exceptions.RayTaskError:
        return 1
