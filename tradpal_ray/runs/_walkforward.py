"""Walk-forward runs: optimise on each training window, evaluate on the test window after it.

Plain code, no Ray import (the Ray executor is :mod:`tradpal_ray.runs._walkforward_ray`).
A run's units of work are (fold, chunk of the grid) pairs: :func:`run_unit` backtests one
chunk of combinations on one fold's training window and publishes the rows as one chunk file
(``runs/<run_id>/folds/fold-NNNNN/chunk-NNNNN.parquet``), idempotently, so a retried task or a
resumed run (``--resume``) rewrites the same file. :meth:`WalkForwardRun.finish` then, on the
driver, chooses each fold's parameters by the objective (:func:`choose_in_sample`), backtests
them on the test window (:func:`window_backtest`), stitches the out-of-sample equity and
writes the typed tables (:data:`OOS_EQUITY_SCHEMA`, :func:`folds_schema`).

No look-ahead, no cold start: the signals of a window ``[start, end)`` are computed on the bars
``[start - warmup, end)`` (indicators warm up on the bars before the window, and nothing after
its end is ever seen), and trading starts flat at ``start``. A position still open at a test
window's end is valued at that window's last close (the engine's ``open`` trade, no exit fee)
and does not carry over: the next test window starts flat with that equity (compounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tradpal_ray.backtest._references import StrategyRef
from tradpal_ray.backtest.data import Bars, slice_bars
from tradpal_ray.backtest.engine import (
    BacktestConfig,
    BacktestResult,
    daily_ratios,
    run_signals,
)
from tradpal_ray.backtest.metrics import metric_names
from tradpal_ray.backtest.objectives import Objective, objective
from tradpal_ray.backtest.strategies import Strategy
from tradpal_ray.backtest.sweep import sweep
from tradpal_ray.errors import ConfigError
from tradpal_ray.log import get_logger
from tradpal_ray.runs._manifest import RunManifest, new_run_id
from tradpal_ray.runs._plan import GridPlan
from tradpal_ray.runs._request import SweepRequest
from tradpal_ray.runs._runner import (
    ProgressCallback,
    SweepRun,
    chunk_table,
    plan_chunk_size,
    resume_request,
    start_run,
)
from tradpal_ray.runs._schema import PARAM_TYPES, TRADES_SCHEMA, metric_type, params_of
from tradpal_ray.runs._store import RunStore
from tradpal_ray.validation._folds import (
    Fold,
    Window,
    cpcv_groups,
    cpcv_paths,
    cpcv_splits,
    parse_duration,
    walk_forward_folds,
)

log = get_logger(__name__)

OOS_EQUITY_SCHEMA = pa.schema([
    pa.field("time", pa.timestamp("ns", tz="UTC")),
    pa.field("fold", pa.int64()),
    pa.field("equity", pa.float64()),
])
"""The stitched out-of-sample equity: one row per test bar, compounded across folds."""

OOS_TRADES_SCHEMA = pa.schema([pa.field("fold", pa.int64()), *TRADES_SCHEMA])
"""Every out-of-sample trade, with its fold (bars are positions within the fold's test window)."""

WINDOW_FIELDS = tuple(
    pa.field(name, kind) for name, kind in (
        ("fold", pa.int64()), ("train_from", pa.timestamp("ns", tz="UTC")), ("train_to", pa.timestamp("ns", tz="UTC")),
        ("test_from", pa.timestamp("ns", tz="UTC")), ("test_to", pa.timestamp("ns", tz="UTC")),
        ("train_bars", pa.int64()), ("test_bars", pa.int64()), ("candidates", pa.int64()),
        ("is_objective", pa.float64()), ("oos_objective", pa.float64()),
    )
)
"""The fixed columns of a folds table (``*_to`` is the window's last bar, inclusive)."""


def folds_schema(param_types: Mapping[str, str], metrics: Sequence[str]) -> pa.Schema:
    """The per-fold table: window columns, the chosen parameters (null when a fold chose none),
    then each metric in sample (``is_<metric>``) and out of sample (``oos_<metric>``)."""
    fields = list(WINDOW_FIELDS)
    fields += [pa.field(name, PARAM_TYPES[kind]) for name, kind in param_types.items()]
    fields += [pa.field(f"{side}_{name}", metric_type(name)) for side in ("is", "oos") for name in metrics]
    return pa.schema(fields)


@dataclass(frozen=True)
class WalkForwardSpec:
    """How to walk forward: window lengths (durations such as ``180d``), the objective, the warm-up."""

    train: str
    test: str
    step: str | None = None
    """Default: ``test`` (the test windows tile the data)."""
    anchored: bool = False
    """Every training window starts at the first bar (after warm-up) instead of rolling."""
    objective: str = "sharpe"
    warmup: int | None = None
    """Bars before every window for indicators; default: the grid's longest window parameter."""
    search: str = "grid"
    """The in-sample optimiser: ``grid`` (every combination), or an Optuna sampler (``tpe``, ``cmaes``,
    ``random``, ``nsga2``) searching the grid's ranges with ``trials`` trials per fold."""
    trials: int = 0
    seed: int = 0
    """Seeds the sampler; fold ``f`` uses ``seed + f``, so a run is reproducible."""

    def check(self) -> Objective:
        """The objective; ConfigError for a bad duration, objective or search."""
        from tradpal_ray.runs._optimize import SAMPLERS

        for option, text in (("--train", self.train), ("--test", self.test), ("--step", self.step)):
            if text is not None:
                parse_duration(text, option)
        if self.warmup is not None and self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if self.search != "grid" and self.search not in SAMPLERS:
            raise ConfigError(f"--search must be grid or one of {', '.join(SAMPLERS)}, got {self.search!r}")
        if self.search != "grid" and self.trials <= 0:
            raise ConfigError(f"--search {self.search} needs --trials N (trials per fold), N > 0")
        return objective(self.objective)

    def folds(self, bars: Bars, warmup: int) -> list[Fold]:
        """The folds over ``bars``, the first training window starting after ``warmup`` bars."""
        step = parse_duration(self.step, "--step") if self.step else None
        return walk_forward_folds(bars.index, train=parse_duration(self.train, "--train"),
                                  test=parse_duration(self.test, "--test"), step=step, anchored=self.anchored,
                                  first=warmup)


def default_warmup(strat: Strategy, grid: Mapping[str, Sequence[Any]]) -> int:
    """The longest window parameter the grid can give (its indicators' look-back), else 0."""
    values = [int(max(grid[name])) for name, p in strat.params.items() if p.window and grid.get(name)]
    defaults = [int(p.default) for name, p in strat.params.items() if p.window and name not in grid]
    return max(values + defaults, default=0)


@dataclass(frozen=True)
class WalkForwardRequest:
    """A strategy's grid walked forward over one symbol (its data, costs and sizing as a sweep's)."""

    sweep: SweepRequest
    spec: WalkForwardSpec

    def check(self) -> tuple[StrategyRef, Strategy, GridPlan, Objective]:
        """Everything checkable before data or a cluster; ConfigError naming the bad part."""
        if len(self.sweep.symbol_names()) != 1:
            raise ConfigError("walk-forward takes one symbol (run one per symbol)")
        chosen = self.spec.check()
        return (*self.sweep.check(), chosen)

    @classmethod
    def from_manifest(cls, manifest: RunManifest) -> WalkForwardRequest:
        """The request that produced a walk-forward run's manifest (for ``--resume``)."""
        return cls(SweepRequest.from_manifest(manifest), WalkForwardSpec(**manifest.walkforward["spec"]))


@dataclass(frozen=True)
class WalkForwardUnit:
    """One unit of work: one chunk of the grid on one fold's training window."""

    run_id: str
    store: str
    symbol: str
    fold: Fold
    warmup: int
    number: int
    size: int
    ref: StrategyRef
    config: BacktestConfig
    param_types: dict[str, str]
    spec: WalkForwardSpec


def run_unit(bars: Bars, plan: GridPlan, unit: WalkForwardUnit) -> pd.DataFrame:
    """Backtest one chunk's combinations on the fold's training window (after its warm-up) and
    publish them as one chunk file; the rows (parameters and metrics), so the driver need not read them back.

    With a sampler (``spec.search``) the fold is one unit: its trials, searched in the grid's ranges.
    """
    strat = unit.ref.load()
    start = unit.fold.train.start - unit.warmup
    window = slice_bars(bars, start, unit.fold.train.end)
    if unit.spec.search != "grid":
        frame = searched_trials(window, unit.warmup, strat, plan, unit.config, unit.spec, unit.fold.number)
        table = chunk_table(unit.run_id, unit.symbol, strat.name, frame, unit.param_types)
        RunStore(unit.store).write_fold_chunk(unit.run_id, unit.fold.number, unit.number, table)
        return frame
    fit, skipped = [], {}
    for combo in plan.chunk(unit.number, unit.size):
        if not strat.allows(combo):
            continue
        reason = strat.unfit(combo, len(window))
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            fit.append(combo)
    frame = sweep(window, strat, fit, unit.config, warmup=unit.warmup)
    table = chunk_table(unit.run_id, unit.symbol, strat.name, frame, unit.param_types)
    RunStore(unit.store).write_fold_chunk(unit.run_id, unit.fold.number, unit.number, table, skipped)
    return frame


@dataclass(frozen=True)
class InSampleChoice:
    """What a fold's in-sample step chose: the parameters, their objective and statistics, out of how many."""

    params: dict[str, Any]
    objective: float
    stats: dict[str, float]
    candidates: int


def choose_in_sample(frame: pd.DataFrame, goal: Objective, names: Sequence[str]) -> InSampleChoice | None:
    """The best row of a fold's in-sample results by ``goal`` (the first of ties, in grid order);
    None when no row has a defined objective."""
    stats = [name for name in metric_names() if name in frame.columns]
    best = goal.best({name: frame[name].to_numpy(dtype=np.float64) for name in stats}) if len(frame) else -1
    if best < 0:
        return None
    row = frame.iloc[best]
    values = {name: float(row[name]) for name in stats}
    return InSampleChoice(params_of(row, names), goal.value(values), values, len(frame))


def grid_search(bars: Bars, warmup: int, strat: Strategy, combos: Sequence[Mapping[str, Any]],
                config: BacktestConfig, goal: Objective) -> InSampleChoice | None:
    """The grid's in-sample step in one call: every combination backtested, the best chosen.

    Its shape, (training bars with ``warmup`` bars before them, candidate combinations) ->
    choice, is what a smarter in-sample optimiser replaces. A run splits it over (fold x chunk)
    units and chooses on the driver; the choice is the same.
    """
    frame = sweep(bars, strat, [c for c in combos if not strat.unfit(c, len(bars))], config, warmup=warmup)
    return choose_in_sample(frame, goal, list(strat.params))


def grid_space(plan: GridPlan) -> list[str]:
    """The search space a sampler explores instead of the grid: each axis's range (``int:lo:hi`` when
    its values are integers, else ``float:lo:hi``), a one-value axis as that value."""
    space = []
    for name, axis in zip(plan.names, plan.axes):
        if len(axis) == 1:
            space.append(f"{name}=cat:{axis[0]}")
        elif all(isinstance(v, (int, np.integer)) for v in axis):
            space.append(f"{name}=int:{min(axis)}:{max(axis)}")
        else:
            space.append(f"{name}=float:{min(axis)}:{max(axis)}")
    return space


def searched_trials(bars: Bars, warmup: int, strat: Strategy, plan: GridPlan, config: BacktestConfig,
                    spec: WalkForwardSpec, fold: int) -> pd.DataFrame:
    """A sampler's in-sample step (``spec.search``, ``spec.trials``): the complete trials on the training
    bars as rows of parameters and metrics, as a grid chunk's; the best is then chosen as among grid rows."""
    from tradpal_ray.runs._optimize import search_bars

    search = search_bars(bars, strat, grid_space(plan), spec.trials, spec.search, spec.objective, config,
                         spec.seed + fold, warmup=warmup)
    trials = search.trials_table().to_pandas()
    trials = trials[trials["state"] == "complete"].reset_index(drop=True)
    return trials[[*plan.names, *(name for name in metric_names() if name in trials.columns)]]


def window_backtest(bars: Bars, strat: Strategy, params: Mapping[str, Any] | None, config: BacktestConfig,
                    window: Window, warmup: int) -> BacktestResult:
    """``params`` backtested on ``window``: signals from the bars ``[start - warmup, end)``, trading flat
    from ``start``. No parameters (a fold that chose none) or a window too short for them: no trades."""
    lead = min(warmup, window.start)
    seen = slice_bars(bars, window.start - lead, window.end)
    traded = slice_bars(bars, window.start, window.end)
    resolved = strat.resolve(params) if params is not None else None
    if resolved is None or strat.unfit(resolved, len(seen)):
        flat = np.zeros(len(traded), dtype=np.bool_)
        return run_signals(traded, flat, flat, config, strategy=strat.name, params=resolved)
    entries, exits = strat.signals(seen, resolved)
    return run_signals(traded, np.asarray(entries)[lead:], np.asarray(exits)[lead:], config,
                       strategy=strat.name, params=resolved)


@dataclass(frozen=True)
class FoldOutcome:
    """One fold's windows, choice and out-of-sample backtest."""

    fold: Fold
    choice: InSampleChoice | None
    oos: BacktestResult
    oos_objective: float


def stitch(outcomes: Sequence[FoldOutcome], cash: float) -> pd.DataFrame:
    """The compounded out-of-sample equity (``time``, ``fold``, ``equity``): each test window's curve
    scaled so it starts from the previous window's ending equity."""
    parts, level = [], cash
    for out in outcomes:
        equity = out.oos.equity * (level / cash)
        parts.append(pd.DataFrame({"time": equity.index, "fold": out.fold.number, "equity": equity.to_numpy()}))
        level = float(equity.iloc[-1])
    return pd.concat(parts, ignore_index=True)


def curve_stats(curve: pd.DataFrame, day_end: np.ndarray, cash: float, ppy: float) -> dict[str, float]:
    """Return, CAGR, max drawdown, Sharpe, Sortino and Calmar of an equity curve, as the engine computes
    them (daily returns between day-end equities; ``day_end`` marks the day-end rows)."""
    equity = curve["equity"].to_numpy(dtype=np.float64)
    daily = equity[day_end]
    returns = daily[1:] / daily[:-1] - 1.0 if len(daily) > 1 else np.empty(0)
    returns = returns[np.isfinite(returns)]
    growth = daily[-1] / daily[0] if len(daily) else math.nan
    sharpe, sortino, cagr = daily_ratios(np.ascontiguousarray(returns), len(returns), growth, ppy)
    peaks = np.maximum.accumulate(np.concatenate(([cash], equity)))[1:]
    max_dd = float(np.max(1.0 - equity / peaks)) * 100.0 if len(equity) else math.nan
    cagr_pct = cagr * 100.0
    return {"final_equity": float(equity[-1]), "return_pct": (float(equity[-1]) - cash) / cash * 100.0,
            "cagr_pct": cagr_pct, "max_drawdown_pct": max_dd, "sharpe": sharpe, "sortino": sortino,
            "calmar": cagr_pct / max_dd if max_dd > 0 else math.nan}


def summarise(outcomes: Sequence[FoldOutcome], curve: pd.DataFrame, day_end: np.ndarray,
              config: BacktestConfig) -> dict[str, Any]:
    """The stitched curve's statistics and walk-forward efficiency.

    ``wfe`` is Pardo's: the stitched out-of-sample annualised return (CAGR) over the mean
    annualised return of the chosen parameters on their training windows. ``objective_ratio``
    is the mean out-of-sample objective over the mean in-sample objective (folds that chose).
    """
    oos = curve_stats(curve, day_end, config.cash, config.periods_per_year)
    oos["trades"] = int(sum(o.oos.stats["trades"] for o in outcomes))
    chose = [o for o in outcomes if o.choice is not None]
    is_cagr = _mean([o.choice.stats.get("cagr_pct", math.nan) for o in chose if o.choice])
    is_goal = _mean([o.choice.objective for o in chose if o.choice])
    oos_goal = _mean([o.oos_objective for o in chose])
    return {"folds": len(outcomes), "folds_chosen": len(chose), "oos": oos, "is_cagr_pct": is_cagr,
            "wfe": _ratio(oos["cagr_pct"], is_cagr), "is_objective": is_goal, "oos_objective": oos_goal,
            "objective_ratio": _ratio(oos_goal, is_goal)}


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return math.nan
    return numerator / denominator


def folds_table(outcomes: Sequence[FoldOutcome], bars: Bars, param_types: Mapping[str, str]) -> pa.Table:
    """The typed per-fold table (:func:`folds_schema`)."""
    metrics = list(metric_names())
    schema = folds_schema(param_types, metrics)
    rows = []
    for out in outcomes:
        fold, choice = out.fold, out.choice
        row: dict[str, Any] = {
            "fold": fold.number, "train_from": bars.index[fold.train.start], "train_to": bars.index[fold.train.end - 1],
            "test_from": bars.index[fold.test.start], "test_to": bars.index[fold.test.end - 1],
            "train_bars": len(fold.train), "test_bars": len(fold.test),
            "candidates": choice.candidates if choice else 0,
            "is_objective": choice.objective if choice else None, "oos_objective": out.oos_objective,
        }
        row.update({name: (choice.params[name] if choice else None) for name in param_types})
        row.update({f"is_{m}": _cell(choice.stats.get(m)) if choice else None for m in metrics})
        row.update({f"oos_{m}": _cell(out.oos.stats.get(m)) for m in metrics})
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def _cell(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def trades_table(outcomes: Sequence[FoldOutcome]) -> pa.Table:
    """Every out-of-sample trade with its fold (:data:`OOS_TRADES_SCHEMA`)."""
    frames = [o.oos.trades.assign(fold=o.fold.number, exit_reason=o.oos.trades["exit_reason"].astype(str))
              for o in outcomes if len(o.oos.trades)]
    if not frames:
        return OOS_TRADES_SCHEMA.empty_table()
    frame = pd.concat(frames, ignore_index=True)[OOS_TRADES_SCHEMA.names]
    return pa.Table.from_pandas(frame, schema=OOS_TRADES_SCHEMA, preserve_index=False)


@dataclass(frozen=True)
class WalkForwardPlan:
    """A checked request with its bars, warm-up and folds: everything a run needs before it starts."""

    request: WalkForwardRequest
    ref: StrategyRef
    strat: Strategy
    plan: GridPlan
    goal: Objective
    bars: Bars
    warmup: int
    folds: list[Fold]

    @classmethod
    def build(cls, request: WalkForwardRequest, store: str) -> WalkForwardPlan:
        """Check ``request``, load its bars (the driver: it alone surely sees a data file) and plan the folds."""
        request = WalkForwardRequest(request.sweep.absolute(), request.spec)
        ref, strat, plan, goal = request.check()
        _, loaded = request.sweep.check_data(store)
        symbol = request.sweep.symbol_names()[0]
        bars = loaded[symbol] if symbol in loaded else request.sweep.sources(store)[0].load()
        spec = request.spec
        warmup = spec.warmup if spec.warmup is not None else default_warmup(strat, request.sweep.grid)
        return cls(request, ref, strat, plan, goal, bars, warmup, spec.folds(bars, warmup))

    @property
    def work(self) -> int:
        """Bar x combination steps of the in-sample backtests (what sizes the executor)."""
        per_fold = self.plan.total if self.request.spec.search == "grid" else self.request.spec.trials
        return sum(len(f.train) + self.warmup for f in self.folds) * per_fold


@dataclass
class WalkForwardRun:
    """The driver's state of one walk-forward run; executors feed it finished units."""

    store: str
    manifest: RunManifest
    planned: WalkForwardPlan
    sweep_run: SweepRun
    """The sweep run's bookkeeping (manifest heartbeat, abort) shared with plain sweeps."""
    done: set[tuple[int, int]] = field(default_factory=set)
    on_progress: ProgressCallback | None = None
    rows: dict[tuple[int, int], pd.DataFrame] = field(default_factory=dict)
    """In-sample rows of the units this process ran (units of an earlier, resumed driver are read from the store)."""

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.manifest.run_id

    @property
    def total(self) -> int:
        """Units of work in the whole run (folds x chunks per fold)."""
        return len(self.planned.folds) * self.manifest.chunks

    def units(self) -> Iterator[WalkForwardUnit]:
        """The units still to run, fold by fold."""
        m = self.manifest
        symbol = self.planned.request.sweep.symbol_names()[0]
        for fold in self.planned.folds:
            for number in range(m.chunks):
                if (fold.number, number) not in self.done:
                    yield WalkForwardUnit(m.run_id, self.store, symbol, fold, self.planned.warmup, number, m.chunk_size,
                                          self.planned.ref, self.planned.request.sweep.config_for(symbol), m.param_types,
                                          self.planned.request.spec)

    def unit_done(self, unit: WalkForwardUnit, rows: pd.DataFrame) -> None:
        """Record a finished unit (its rows are in the store too) and report progress."""
        self.done.add((unit.fold.number, unit.number))
        self.rows[(unit.fold.number, unit.number)] = rows
        self.progress()

    def in_sample(self, fold: Fold) -> pd.DataFrame:
        """A fold's in-sample rows in chunk and grid order: from memory, or the store after a resume."""
        keys = [(fold.number, number) for number in range(self.manifest.chunks)]
        if all(key in self.rows for key in keys):
            return pd.concat([self.rows[key] for key in keys], ignore_index=True)
        return RunStore(self.store).fold_results(self.run_id, fold.number)

    def progress(self) -> None:
        """Report units done to the callback and refresh the manifest's heartbeat when due."""
        if self.on_progress:
            self.on_progress(len(self.done), self.total)
        self.sweep_run.beat()

    def outcomes(self) -> list[FoldOutcome]:
        """Each fold's choice (from its chunk files) and out-of-sample backtest."""
        config = self.planned.request.sweep.config_for(self.planned.request.sweep.symbol_names()[0])
        names = self.manifest.param_names
        out = []
        for fold in self.planned.folds:
            choice = choose_in_sample(self.in_sample(fold), self.planned.goal, names)
            oos = window_backtest(self.planned.bars, self.planned.strat, choice.params if choice else None, config, fold.test,
                                  self.planned.warmup)
            out.append(FoldOutcome(fold, choice, oos, self.planned.goal.value(oos.stats)))
        return out

    def finish(self) -> RunManifest:
        """Choose, test out of sample, stitch, write the tables and the summary; the manifest, complete."""
        outcomes = self.outcomes()
        config = self.planned.request.sweep.config
        curve = stitch(outcomes, config.cash)
        day_end = np.concatenate([slice_bars(self.planned.bars, f.test.start, f.test.end).day_end for f in self.planned.folds])
        summary = summarise(outcomes, curve, day_end, config)
        RunStore(self.store).write_walkforward(
            self.run_id, folds_table(outcomes, self.planned.bars, self.manifest.param_types),
            pa.Table.from_pandas(curve, schema=OOS_EQUITY_SCHEMA, preserve_index=False), trades_table(outcomes))
        m = self.manifest
        m.walkforward = {**m.walkforward, "summary": summary}
        m.results = sum(o.choice.candidates for o in outcomes if o.choice)
        m.status = "complete"
        RunStore(self.store).write_manifest(m)
        log.info("walkforward.done", run_id=self.run_id, folds=len(outcomes), wfe=summary["wfe"])
        return m


def resume_walkforward(store: str, run_id: str, *, allow_changed_code: bool = False) -> tuple[WalkForwardRequest, RunManifest]:
    """The request and manifest of walk-forward run ``run_id``, to finish it (as :func:`resume_request`)."""
    sweep_request, manifest = resume_request(store, run_id, allow_changed_code=allow_changed_code, kind="walkforward")
    return WalkForwardRequest(sweep_request, WalkForwardSpec(**manifest.walkforward["spec"])), manifest


def start_walkforward(
    planned: WalkForwardPlan, *, store: str, manifest: RunManifest | None = None, chunk_size: int | None = None,
    cpus: float = 1.0, executor: str = "local", on_progress: ProgressCallback | None = None,
) -> WalkForwardRun:
    """Write the run's manifest (a new one, or ``manifest`` to resume) and return its state."""
    p = planned
    if manifest is None:
        longest = max(len(f.train) for f in p.folds) + p.warmup
        size = chunk_size or plan_chunk_size(p.plan.total, longest, len(p.folds), cpus)
        if p.request.spec.search != "grid":
            size = p.plan.total  # a sampler searches a fold in one unit
        manifest = p.request.sweep.manifest(new_run_id(p.strat.name), p.ref, p.strat, p.plan, size)
        manifest.kind = "walkforward"
        manifest.walkforward = {"spec": asdict(p.request.spec), "warmup": p.warmup, "folds": len(p.folds)}
    sweep_run = start_run(p.request.sweep, (p.ref, p.strat, p.plan), store=store, manifest=manifest, executor=executor)
    run = WalkForwardRun(store, sweep_run.manifest, p, sweep_run, RunStore(store).done_fold_chunks(sweep_run.run_id),
                         on_progress)
    run.progress()
    return run


def execute_local(run: WalkForwardRun) -> RunManifest:
    """Every missing unit in this process, then the finish step."""
    for unit in run.units():
        run.unit_done(unit, run_unit(run.planned.bars, run.planned.plan, unit))
    return run.finish()


QUANTILES = {"min": 0.0, "p5": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}
"""The quantiles of the out-of-sample Sharpe across CPCV paths that a report gives."""


def returns_stats(returns: np.ndarray, ppy: float) -> dict[str, np.ndarray]:
    """Per column of daily returns (rows: days): what an objective can use without trades.

    Sharpe and Sortino as the engine annualises them, return and CAGR from the compounded
    returns, max drawdown of the day-end equity, Calmar = CAGR / max drawdown.
    """
    from tradpal_ray.validation._overfit import sharpe_ratio

    r = np.asarray(returns, dtype=np.float64)
    days = r.shape[0]
    equity = np.cumprod(1.0 + r, axis=0)
    growth = equity[-1] if days else np.ones(r.shape[1])
    peaks = np.maximum.accumulate(np.vstack([np.ones((1, r.shape[1])), equity]), axis=0)[1:]
    with np.errstate(all="ignore"):
        downside = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2, axis=0))
        sortino = np.where(downside > 0, r.mean(axis=0) / downside * math.sqrt(ppy), np.nan)
        cagr = (growth ** (ppy / days) - 1.0) * 100.0 if days else np.full(r.shape[1], np.nan)
        max_dd = np.max(1.0 - equity / peaks, axis=0) * 100.0 if days else np.full(r.shape[1], np.nan)
        calmar = np.where(max_dd > 0, cagr / max_dd, np.nan)
    return {"sharpe": sharpe_ratio(r) * math.sqrt(ppy), "sortino": sortino, "return_pct": (growth - 1.0) * 100.0,
            "cagr_pct": cagr, "max_drawdown_pct": max_dd, "calmar": calmar}


@dataclass(frozen=True)
class CpcvReport:
    """A combinatorial purged cross-validation: each split's choice, each path's out-of-sample Sharpe."""

    groups: int
    test_groups: int
    purge: int
    embargo: int
    days: int
    choices: tuple[dict[str, Any], ...]
    """Per split: ``{"split", "test_groups", "params", "is_objective"}`` (params None when nothing was defined)."""
    path_sharpes: tuple[float, ...]

    def quantiles(self) -> dict[str, float | None]:
        """:data:`QUANTILES` of the paths' out-of-sample Sharpe (NaN paths left out; None without any)."""
        finite = np.asarray([s for s in self.path_sharpes if math.isfinite(s)])
        return {k: (float(np.quantile(finite, q)) if len(finite) else None) for k, q in QUANTILES.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN as None)."""
        return {"cv": "cpcv", "groups": self.groups, "test_groups": self.test_groups, "purge": self.purge,
                "embargo": self.embargo, "days": self.days, "splits": len(self.choices),
                "paths": len(self.path_sharpes), "choices": list(self.choices),
                "path_sharpes": [_cell(s) for s in self.path_sharpes], "sharpe_quantiles": self.quantiles()}


def cpcv_evaluate(returns: np.ndarray, params: Sequence[Mapping[str, Any]], goal: Objective, *, groups: int,
                  test_groups: int, purge: int, embargo: int, ppy: float) -> CpcvReport:
    """CPCV on a (days x combinations) daily returns matrix (López de Prado, AFML ch. 12).

    Each split chooses the combination whose training days (purged and embargoed, in days)
    score best by ``goal`` (:func:`returns_stats`); each path strings together, group by group,
    the test-day returns of the split that covers it, and its Sharpe is annualised by ``ppy``.
    """
    r = np.asarray(returns, dtype=np.float64)
    splits = cpcv_splits(r.shape[0], groups, test_groups, purge=purge, embargo=embargo)
    chosen, choices = [], []
    for split in splits:
        stats = returns_stats(r[split.train_index()], ppy)
        best = goal.best(stats) if r.shape[1] else -1
        chosen.append(best)
        value = float(goal.values(stats)[best]) if best >= 0 else math.nan
        choices.append({"split": split.number, "test_groups": list(split.test_groups),
                        "params": dict(params[best]) if best >= 0 else None, "is_objective": _cell(value)})
    sharpes = []
    for path in cpcv_paths(groups, splits):
        parts = [r[w.start:w.end, chosen[s]] if chosen[s] >= 0 else np.zeros(len(w))
                 for w, s in zip(cpcv_groups(r.shape[0], groups), path)]
        sharpes.append(float(returns_stats(np.concatenate(parts)[:, None], ppy)["sharpe"][0]))
    return CpcvReport(groups, test_groups, purge, embargo, r.shape[0], tuple(choices), tuple(sharpes))


def run_cpcv(request: WalkForwardRequest, store: str, *, groups: int, test_groups: int, purge: int = 0,
             embargo: int = 0) -> CpcvReport:
    """CPCV of a request's grid on its symbol, in process, from one full-series :func:`sweep_returns`."""
    from tradpal_ray.backtest.sweep import sweep_returns

    sweep_request = request.sweep.absolute()
    if len(sweep_request.symbol_names()) != 1:
        raise ConfigError("CPCV takes one symbol (run one per symbol)")
    goal = request.spec.check()
    _, strat, plan = sweep_request.check()
    _, loaded = sweep_request.check_data(store)
    symbol = sweep_request.symbol_names()[0]
    bars = loaded[symbol] if symbol in loaded else sweep_request.sources(store)[0].load()
    combos = [c for c in plan.chunk(0, plan.total) if strat.allows(c) and not strat.unfit(c, len(bars))]
    if not combos:
        raise ConfigError("no combination of the grid fits the data")
    config = sweep_request.config_for(symbol)
    _, returns = sweep_returns(bars, strat, combos, config)
    return cpcv_evaluate(returns.to_numpy(), combos, goal, groups=groups, test_groups=test_groups, purge=purge,
                         embargo=embargo, ppy=config.periods_per_year)
