"""Smart search: Optuna's samplers over a strategy's parameters, stored as a typed, resumable run.

Plain code, no Ray: the request and its search space, the evaluation of a batch of trials
(the unit of work, the same in process and in a Ray task), the driver's ask/tell loop with
exact trial accounting, and the finish (trials table, best trial or Pareto front).

Why Optuna with its journal in the run folder and our own Ray tasks as workers, rather than
Ray Tune with its Optuna searcher:

- Resumable after the driver dies. The study lives in ``runs/<run_id>/study.journal``
  (Optuna's JournalStorage: one JSON line per operation, appended under a file lock; nothing
  pickled). A new driver reopens it and sees every trial: told, or still in flight. Tune
  restores from searcher checkpoints that are pickles written now and then, so trials after
  the last checkpoint are lost or run twice, and we never unpickle what is on disk.
- Exact trial accounting. A trial counts once it is told (complete, or failed when it cannot
  run or its objective is undefined), and new trials are asked only while told + in flight <
  N, so a run ends with exactly N. Trials in flight when the driver died are still RUNNING in
  the journal with their parameters: a resumed run re-runs them under their own numbers
  (it never asks fresh ones in their place), so none is lost or counted twice. A trial whose
  parameters were only partly written (the driver died inside ``ask``) is closed as failed
  and marked ``abandoned``; it is not counted.
- Our own task model. A task evaluates a batch of trials with one vectorised
  :func:`~tradpal_ray.backtest.sweep` call on bars put once in the object store, and the
  strategy's code reaches workers as it does for sweeps (``shipped_env``). Tune runs each
  trial in an actor of its own and would need the bars and the code shipped its own way.
- Overhead per trial. Ask and tell cost the driver about a millisecond plus the sampler's
  time; a Tune trial costs actor scheduling and several RPCs, more than a 10 ms backtest.

Objectives are evaluated on the driver (:mod:`tradpal_ray.backtest.objectives`), so a custom
one needs no shipping. With several objectives the run keeps the Pareto front.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tradpal_ray.backtest._references import StrategyRef, resolve_strategy, strategy_ref
from tradpal_ray.backtest.data import Bars, prepare_bars
from tradpal_ray.backtest.engine import BacktestConfig
from tradpal_ray.backtest.metrics import metric_names, metrics
from tradpal_ray.backtest.objectives import Objective
from tradpal_ray.backtest.objectives import objective as find_objective
from tradpal_ray.backtest.strategies import Strategy
from tradpal_ray.backtest.sweep import sweep
from tradpal_ray.errors import ConfigError
from tradpal_ray.log import get_logger
from tradpal_ray.runs._manifest import RunManifest, new_run_id
from tradpal_ray.runs._request import BarsSource
from tradpal_ray.runs._runner import ProgressCallback, chunk_table, resume_request
from tradpal_ray.runs._schema import PARAM_TYPES, metric_type
from tradpal_ray.runs._store import RunStore

if TYPE_CHECKING:
    import optuna

    from tradpal_ray.runs import OptimizeOutcome

log = get_logger(__name__)

SAMPLERS = ("tpe", "cmaes", "nsga2", "random")
SPACE_KINDS = ("int", "float", "cat")
JOURNAL = "study.journal"
"""The Optuna journal's file name in the run folder."""
MAX_TRIALS_PER_TASK = 16
"""Largest batch of trials one task evaluates (more in flight blunts what the sampler learns)."""
TASKS_PER_WORKER = 8
"""Batches per worker over a run: enough rounds of ask/tell for the sampler to learn between them."""

TRIAL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("trial", pa.int64(), nullable=False),
    pa.field("state", pa.string(), nullable=False),
    pa.field("failure", pa.string()),
)
"""The fixed columns of a trials table: Optuna's trial number, ``complete`` or ``failed``, and why it failed."""


# ------------------------------------------------------------------- the search space
@dataclass(frozen=True)
class SpaceDim:
    """One searched parameter: ``int``/``float`` between inclusive bounds (``log`` scale optional), or ``cat`` choices."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> str:
        """The range as written after ``NAME=`` (what the manifest records)."""
        if self.kind == "cat":
            return "cat:" + ",".join(str(c) for c in self.choices)
        return f"{self.kind}:{self.low:g}:{self.high:g}" + (":log" if self.log else "")

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution of this parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log)
        return CategoricalDistribution(self.choices)


def parse_dim(text: str) -> SpaceDim:
    """``fast=int:5:200``, ``k=float:0.5:3[:log]`` or ``mode=cat:a,b`` as a :class:`SpaceDim`; ConfigError otherwise."""
    usage = "use NAME=int:LOW:HIGH, NAME=float:LOW:HIGH[:log] or NAME=cat:A,B,..."
    name, equals, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not equals or not name.isidentifier():
        raise ConfigError(f"bad --space {text!r}: {usage}")
    kind, _, rest = spec.partition(":")
    if kind not in SPACE_KINDS or not rest:
        raise ConfigError(f"bad --space {text!r}: {usage}")
    if kind == "cat":
        choices = tuple(_number_or_text(c.strip()) for c in rest.split(","))
        if any(c == "" for c in choices) or len(set(choices)) != len(choices):
            raise ConfigError(f"bad --space {text!r}: choices must be distinct and non-empty")
        return SpaceDim(name, kind, choices=choices)
    parts = rest.split(":")
    log_scale = len(parts) == 3 and parts[2] == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log_scale):
        raise ConfigError(f"bad --space {text!r}: {usage}")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"bad --space {text!r}: bounds must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"bad --space {text!r}: need finite LOW < HIGH")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"bad --space {text!r}: int bounds must be whole numbers")
    if log_scale and low <= 0:
        raise ConfigError(f"bad --space {text!r}: a log scale needs LOW > 0")
    return SpaceDim(name, kind, low, high, log_scale)


def parse_space(texts: Iterable[str]) -> dict[str, SpaceDim]:
    """Every ``--space`` text parsed, by parameter name; ConfigError on a repeated or bad one."""
    space: dict[str, SpaceDim] = {}
    for text in texts:
        dim = parse_dim(text)
        if dim.name in space:
            raise ConfigError(f"--space {dim.name} given twice")
        space[dim.name] = dim
    if not space:
        raise ConfigError("give at least one --space NAME=int:LOW:HIGH (or float:LOW:HIGH, cat:A,B)")
    return space


def bind_space(strat: Strategy, space: Mapping[str, SpaceDim]) -> dict[str, SpaceDim]:
    """``space`` checked against the strategy: known names, int ranges for int parameters, bounds
    and choices within the parameters' limits and typed as they declare; ConfigError otherwise."""
    unknown = sorted(set(space) - set(strat.params))
    if unknown:
        raise ConfigError(f"unknown parameter {', '.join(unknown)} for strategy {strat.name}; "
                          f"valid: {', '.join(strat.params) or 'none'}")
    bound = {}
    for name, dim in space.items():
        param = strat.params[name]
        if dim.kind == "cat":
            bound[name] = replace(dim, choices=tuple(param.coerce(name, c) for c in dim.choices))
            continue
        if dim.kind == "float" and param.type is int:
            raise ConfigError(f"parameter {name} of {strat.name} is an integer: use {name}=int:LOW:HIGH")
        param.coerce(name, dim.low), param.coerce(name, dim.high)  # within the parameter's limits
        bound[name] = dim
    return bound


def _number_or_text(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


# ----------------------------------------------------------------------- the request
@dataclass(frozen=True)
class CheckedSearch:
    """What :meth:`OptimizeRequest.check` found: the strategy, its bound space, the objectives and the sampler."""

    ref: StrategyRef
    strategy: Strategy
    space: dict[str, SpaceDim]
    objectives: list[Objective]
    sampler: str


@dataclass(frozen=True)
class OptimizeRequest:
    """A strategy's parameters searched by a sampler on one symbol's bars (a data file or the store)."""

    strategy: str | StrategyRef
    space: dict[str, str]
    """Each searched parameter's range as written after ``NAME=``: ``int:5:200``, ``float:0.5:3:log``, ``cat:10,20``."""
    source: BarsSource
    objectives: tuple[str, ...] = ("sharpe",)
    """Objective references (see :func:`~tradpal_ray.backtest.objective`); several: a Pareto front."""
    trials: int = 100
    sampler: str | None = None
    """``tpe``, ``cmaes``, ``nsga2`` or ``random``; default ``tpe`` (``nsga2`` with several objectives)."""
    seed: int = 0
    config: BacktestConfig = field(default_factory=BacktestConfig)
    trials_per_task: int | None = None
    """Trials one unit of work evaluates; default from the budget and the workers (:func:`plan_trials_per_task`)."""

    def check(self) -> CheckedSearch:
        """Check everything but the data, without Ray; ConfigError naming the bad part."""
        if self.trials <= 0:
            raise ConfigError(f"--trials must be positive, got {self.trials}")
        if not self.objectives:
            raise ConfigError("give at least one --objective")
        sampler = self.sampler or ("nsga2" if len(self.objectives) > 1 else "tpe")
        if sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if sampler == "cmaes" and len(self.objectives) > 1:
            raise ConfigError("the cmaes sampler optimises one objective; use nsga2 or tpe for several")
        if self.trials_per_task is not None and self.trials_per_task <= 0:
            raise ConfigError(f"--trials-per-task must be positive, got {self.trials_per_task}")
        self.source.check("search")
        goals = [find_objective(ref) for ref in self.objectives]
        ref = strategy_ref(self.strategy)
        strat = ref.load()
        space = bind_space(strat, {name: parse_dim(f"{name}={spec}") for name, spec in self.space.items()})
        if not space:
            raise ConfigError("give at least one --space NAME=int:LOW:HIGH (or float:LOW:HIGH, cat:A,B)")
        return CheckedSearch(ref, strat, space, goals, sampler)

    def absolute(self) -> OptimizeRequest:
        """The request with its data file as an absolute path (workers may run elsewhere)."""
        data = self.source.data_file
        return replace(self, source=replace(self.source, data_file=str(Path(data).resolve()))) if data else self

    def manifest(self, run_id: str, checked: CheckedSearch, trials_per_task: int) -> RunManifest:
        """A fresh manifest (kind ``optimize``) recording this request."""
        source, strat = self.source, checked.strategy
        first = self.objectives[0]
        return RunManifest(
            run_id=run_id, strategy=strat.name, grid={}, symbols=[source.symbol], source=source.data_file or "store",
            kind="optimize", strategy_ref=checked.ref.to_dict(),
            param_types={name: p.type.__name__ for name, p in strat.params.items()},
            metrics=[m.name for m in metrics() if m.derive is None],
            exchange=None if source.data_file else source.exchange, timeframe=source.timeframe,
            since=source.since, until=source.until, costs=asdict(self.config),
            metric=first if first in metric_names() else "sharpe", combos=self.trials, seed=self.seed,
            space={name: dim.spec for name, dim in checked.space.items()}, objectives=list(self.objectives),
            directions=[_direction(g) for g in checked.objectives], sampler=checked.sampler, trials=self.trials,
            trials_per_task=trials_per_task,
        )

    @classmethod
    def from_manifest(cls, manifest: RunManifest, store: str) -> OptimizeRequest:
        """The request that produced ``manifest`` (for ``--resume``)."""
        ref = StrategyRef.from_dict(manifest.strategy_ref) if manifest.strategy_ref else manifest.strategy
        data_file = None if manifest.source == "store" else manifest.source
        source = BarsSource(manifest.symbols[0], store=store, exchange=manifest.exchange or "",
                            timeframe=manifest.timeframe, data_file=data_file, since=manifest.since,
                            until=manifest.until)
        return cls(strategy=ref, space=dict(manifest.space), source=source, objectives=tuple(manifest.objectives),
                   trials=manifest.trials, sampler=manifest.sampler, seed=manifest.seed,
                   config=BacktestConfig(**manifest.costs), trials_per_task=manifest.trials_per_task or None)


def plan_trials_per_task(trials: int, workers: int) -> int:
    """Trials per task: one round of ask/tell per ~1/8 of a worker's share of the budget, at most 16."""
    return max(1, min(MAX_TRIALS_PER_TASK, trials // (TASKS_PER_WORKER * max(workers, 1))))


def _direction(goal: Objective) -> str:
    return "maximize" if goal.higher_is_better else "minimize"


# ------------------------------------------------------------------ unit of work
@dataclass(frozen=True)
class TrialOutcome:
    """One evaluated trial: every metric, or why it could not run."""

    number: int
    stats: dict[str, float]
    failure: str = ""


def evaluate_trials(bars: Bars, strategy: Strategy | StrategyRef, config: BacktestConfig,
                    asked: Sequence[tuple[int, Mapping[str, Any]]], *, warmup: int = 0) -> list[TrialOutcome]:
    """Backtest a batch of ``(trial number, parameters)`` in one sweep call; outcomes in the same order.

    Parameters that break the strategy's rules, or windows that do not fit the bars, give a
    failed outcome naming the problem instead of a backtest. The first ``warmup`` bars only
    warm the indicators up (as :func:`~tradpal_ray.backtest.sweep`'s ``warmup``).
    """
    strat = strategy.load() if isinstance(strategy, StrategyRef) else strategy
    n = len(bars)
    outcomes: dict[int, TrialOutcome] = {}
    runnable: list[tuple[int, dict[str, Any]]] = []
    for number, params in asked:
        try:
            values = strat.resolve(params, n_bars=n)
        except ConfigError as exc:
            outcomes[number] = TrialOutcome(number, {}, str(exc))
            continue
        problem = strat.window_problem(values, n)
        if problem:
            outcomes[number] = TrialOutcome(number, {}, problem)
        else:
            runnable.append((number, values))
    frame = sweep(bars, strat, [values for _, values in runnable], config, warmup=warmup)
    columns = {name: frame[name].to_numpy().tolist() for name in metric_names() if name in frame.columns}
    for row, (number, _) in enumerate(runnable):
        outcomes[number] = TrialOutcome(number, {name: _metric_value(name, float(column[row])) for name, column in columns.items()})
    return [outcomes[number] for number, _ in asked]


# ------------------------------------------------------------- the ask/tell loop
def _optuna() -> Any:
    """Optuna, with its per-trial INFO lines and experimental-feature warnings silenced."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``name`` seeded with ``seed`` (NSGA-II's population sized to give a few generations)."""
    samplers = _optuna().samplers
    if name == "tpe":
        return samplers.TPESampler(seed=seed)
    if name == "cmaes":
        return samplers.CmaEsSampler(seed=seed)
    if name == "nsga2":
        return samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 4)))
    return samplers.RandomSampler(seed=seed)


@dataclass(frozen=True)
class BestTrial:
    """A best trial (or one point of the Pareto front)."""

    trial: int
    params: dict[str, Any]
    values: list[float]
    stats: dict[str, float]


class Search:
    """An Optuna study asked and told in batches, counting every trial exactly once.

    ``told`` counts trials told (complete or failed); :meth:`ask` gives nothing once told plus
    in flight reaches ``budget``. Trials a dead driver left RUNNING with all their parameters
    are handed out again first, under their own numbers.
    """

    def __init__(self, study: optuna.Study, strat: Strategy, space: Mapping[str, SpaceDim],
                 objectives: Sequence[Objective], budget: int) -> None:
        optuna = _optuna()
        self.study = study
        self.strat = strat
        self.space = dict(space)
        self.objectives = list(objectives)
        self.budget = budget
        self._distributions = {name: dim.distribution() for name, dim in self.space.items()}
        self._flight: dict[int, optuna.Trial] = {}
        self._reruns: list[optuna.Trial] = []
        running = optuna.trial.TrialState.RUNNING
        self.told = 0
        for frozen in study.get_trials(deepcopy=False):
            if frozen.state != running:
                self.told += not frozen.user_attrs.get("abandoned", False)
                continue
            trial = optuna.Trial(study, frozen._trial_id)  # a live handle on a trial another driver asked
            if set(frozen.params) == set(self._distributions):
                self._reruns.append(trial)
            else:
                trial.set_user_attr("abandoned", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if self._reruns:
            log.info("optimize.rerun", trials=[t.number for t in self._reruns])

    def ask(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``n`` trials to evaluate, ``(number, searched parameters)``; empty when the budget is reached."""
        asked = []
        while len(asked) < n and self.told + len(self._flight) < self.budget:
            trial = self._reruns.pop(0) if self._reruns else self.study.ask(self._distributions)
            self._flight[trial.number] = trial
            asked.append((trial.number, dict(trial.params)))
        return asked

    def tell(self, outcome: TrialOutcome) -> None:
        """Record one outcome: its metrics on the trial, and its objective values (failed when undefined)."""
        optuna = _optuna()
        trial = self._flight.pop(outcome.number)
        trial.set_user_attr("stats", outcome.stats)
        values = [goal.value(outcome.stats) for goal in self.objectives] if outcome.stats else []
        failure = outcome.failure or ("" if values and all(math.isfinite(v) for v in values) else "objective undefined")
        if failure:
            trial.set_user_attr("failure", failure)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, values)
        self.told += 1

    def params_of(self, searched: Mapping[str, Any]) -> dict[str, Any]:
        """Every strategy parameter of a trial: its searched values, the defaults for the rest, typed."""
        return {name: p.coerce(name, searched.get(name, p.default)) for name, p in self.strat.params.items()}

    def best(self) -> list[BestTrial]:
        """The best complete trial, or the Pareto front of several objectives (by trial number); empty if none."""
        optuna = _optuna()
        if not self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            return []
        front = self.study.best_trials if len(self.objectives) > 1 else [self.study.best_trial]
        return [BestTrial(t.number, self.params_of(t.params), list(t.values), dict(t.user_attrs.get("stats", {})))
                for t in sorted(front, key=lambda t: t.number)]

    def trials_table(self) -> pa.Table:
        """Every counted trial as a typed table (see :func:`trials_schema`), by trial number."""
        optuna = _optuna()
        schema = trials_schema({n: p.type.__name__ for n, p in self.strat.params.items()}, len(self.objectives))
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            if t.state == optuna.trial.TrialState.RUNNING or t.user_attrs.get("abandoned"):
                continue
            complete = t.state == optuna.trial.TrialState.COMPLETE
            stats = t.user_attrs.get("stats") or {}
            row: dict[str, Any] = {"trial": t.number, "state": "complete" if complete else "failed",
                                   "failure": t.user_attrs.get("failure"), **self.params_of(t.params)}
            row.update({f"objective_{i}": v for i, v in enumerate(t.values)} if complete else {})
            row.update({name: _metric_value(name, stats[name]) for name in metric_names() if name in stats})
            rows.append(row)
        rows.sort(key=lambda r: r["trial"])
        return pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema}, schema=schema)


def trials_schema(param_types: Mapping[str, str], objectives: int) -> pa.Schema:
    """Trial number, state and failure; each parameter typed as the strategy declares it;
    ``objective_<i>`` per objective (null when failed); every metric of the registry."""
    fields = list(TRIAL_FIELDS)
    names = {f.name for f in fields} | {f"objective_{i}" for i in range(objectives)} | set(metric_names())
    clash = sorted(set(param_types) & names)
    if clash:
        raise ConfigError(f"strategy parameter name(s) {', '.join(clash)} clash with trial columns; rename them")
    fields += [pa.field(name, PARAM_TYPES[kind]) for name, kind in param_types.items()]
    fields += [pa.field(f"objective_{i}", pa.float64()) for i in range(objectives)]
    fields += [pa.field(name, metric_type(name)) for name in metric_names()]
    return pa.schema(fields)


def _metric_value(name: str, value: float) -> Any:
    return int(value) if metric_type(name) == pa.int64() and math.isfinite(value) else value


def create_study(storage: Any, name: str, objectives: Sequence[Objective], sampler: str, seed: int,
                 trials: int) -> optuna.Study:
    """The study ``name`` in ``storage`` (created, or loaded to resume) with the objectives' directions."""
    optuna = _optuna()
    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                               directions=[_direction(g) for g in objectives],
                               sampler=make_sampler(sampler, seed, trials))


def search_local(search: Search, bars: Bars, config: BacktestConfig, per_task: int,
                 on_told: Callable[[], None] | None = None, *, warmup: int = 0) -> None:
    """Ask, evaluate in this process and tell, ``per_task`` trials at a time, until the budget is told."""
    while asked := search.ask(per_task):
        for outcome in evaluate_trials(bars, search.strat, config, asked, warmup=warmup):
            search.tell(outcome)
            if on_told:
                on_told()


def search_bars(
    bars: pd.DataFrame | Bars, strategy: str | Strategy | StrategyRef, space: Mapping[str, str] | Sequence[str],
    trials: int, sampler: str = "tpe", objective: str | Objective = "sharpe", config: BacktestConfig | None = None,
    seed: int = 0, *, warmup: int = 0,
) -> Search:
    """``trials`` trials of ``strategy`` on ``bars``, searched in process (no Ray, no files); the finished search.

    Deterministic for a seed (trials run one after the other). ``space`` is ``{"fast":
    "int:5:200"}`` or ``["fast=int:5:200"]``; the first ``warmup`` bars only warm indicators up.
    """
    optuna = _optuna()
    texts = [f"{k}={v}" for k, v in space.items()] if isinstance(space, Mapping) else list(space)
    strat = resolve_strategy(strategy)
    goal = find_objective(objective)
    if sampler not in SAMPLERS or trials <= 0:
        raise ConfigError(f"need a sampler in {', '.join(SAMPLERS)} and a positive number of trials")
    study = create_study(optuna.storages.InMemoryStorage(), "in-sample", [goal], sampler, seed, trials)
    search = Search(study, strat, bind_space(strat, parse_space(texts)), [goal], trials)
    search_local(search, prepare_bars(bars), config or BacktestConfig(), 1, warmup=warmup)
    return search


def optimize_bars(
    bars: pd.DataFrame | Bars, strategy: str | Strategy | StrategyRef, space: Mapping[str, str] | Sequence[str],
    trials: int, sampler: str = "tpe", objective: str | Objective = "sharpe", config: BacktestConfig | None = None,
    seed: int = 0, *, warmup: int = 0,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The best parameters of ``strategy`` on ``bars`` after ``trials`` trials (:func:`search_bars`), and their
    statistics: an in-sample optimiser (e.g. for walk-forward folds). ConfigError when no trial has a defined objective.
    """
    search = search_bars(bars, strategy, space, trials, sampler, objective, config, seed, warmup=warmup)
    best = search.best()
    if not best:
        raise ConfigError(f"no trial of {search.strat.name} gave a defined {search.objectives[0].name} in {trials} trials")
    return best[0].params, best[0].stats


# ------------------------------------------------------------------- the run
class OptimizeRun(Search):
    """The driver's state of one optimize run: a :class:`Search` whose study is the run folder's journal."""

    def __init__(self, store: str, manifest: RunManifest, request: OptimizeRequest, checked: CheckedSearch,
                 on_progress: ProgressCallback | None = None) -> None:
        optuna = _optuna()
        self.store = store
        self.results = RunStore(store)
        self.manifest = manifest
        self.request = request
        self.ref = checked.ref
        self.config = request.config
        path = self.results.local_path(manifest.run_id, JOURNAL)
        repair_journal(path)
        storage = optuna.storages.JournalStorage(run_journal(path))
        existing = _count_trials(storage, manifest.run_id)
        # a resumed run reseeds past the trials it has: the same seed would ask the first trials' points again
        study = create_study(storage, manifest.run_id, checked.objectives, checked.sampler, request.seed + existing,
                             request.trials)
        super().__init__(study, checked.strategy, checked.space, checked.objectives, request.trials)
        self.per_task = manifest.trials_per_task
        self._on_progress = on_progress
        self._last_beat = 0.0
        self._progress()

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    def tell(self, outcome: TrialOutcome) -> None:
        super().tell(outcome)
        self._progress()

    def _progress(self) -> None:
        if self._on_progress:
            self._on_progress(self.told, self.budget)
        self.beat()

    def beat(self) -> None:
        """Refresh the manifest's heartbeat when it is due (a reader can tell the driver is alive)."""
        self._last_beat = self.results.heartbeat(self.manifest, self._last_beat)

    def finish(self) -> RunManifest:
        """Trials table, the complete trials as result rows (for ``/runs`` and reports), best trial(s) and status."""
        m = self.manifest
        table = self.trials_table()
        self.results.write_trials(self.run_id, table)
        ran = table.filter(pc.is_valid(table.column("trades"))).to_pandas()
        ran = ran.drop_duplicates(subset=list(m.param_types))
        symbol = m.symbols[0]
        self.results.write_chunk(self.run_id, symbol, 0, chunk_table(self.run_id, symbol, m.strategy, ran, m.param_types))
        m.results = table.num_rows
        m.best = [asdict(b) for b in self.best()]
        m.status = "complete" if m.best else "failed"
        m.error = None if m.best else f"no trial gave a defined objective in {table.num_rows} trials"
        self.results.write_manifest(m)
        log.info("optimize.done", run_id=self.run_id, status=m.status, trials=m.results, best=len(m.best))
        return m

    def abort(self, exc: BaseException) -> None:
        """Record why the run stopped early: never left "running" (``--resume`` finishes it)."""
        m = self.manifest
        m.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        m.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.results.write_manifest(m)
        log.error("optimize.aborted", run_id=self.run_id, error=m.error)


def run_journal(path: str) -> optuna.storages.journal.BaseJournalBackend:
    """Optuna's journal file backend for a study with one writer: the run's driver.

    Optuna's own locks the file and fsyncs it on every operation (~5 ms each, five operations
    a trial: more than a 10 ms trial). The run's manifest already admits one driver at a time,
    so no lock is needed; and each operation is one ``O_APPEND`` write of whole lines, which a
    SIGKILLed driver cannot half-do in the page cache. Only an OS crash can lose the last
    lines or leave a torn one, which :func:`repair_journal` drops: those trials re-run.
    """
    import json

    journal = _optuna().storages.journal

    class SingleWriterJournal(journal.JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            lines = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs).encode()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines)
            finally:
                os.close(fd)

    return SingleWriterJournal(path)


def repair_journal(path: str) -> None:
    """Make a journal a dead driver (or a crashed machine) left usable: drop a torn last line.

    Only called while no other driver runs the study (the manifest's status says so).
    """
    if not os.path.exists(path):
        return
    with open(path, "rb+") as journal:
        data = journal.read()
        if data and not data.endswith(b"\n"):
            journal.truncate(data.rfind(b"\n") + 1)


def _count_trials(storage: Any, run_id: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(run_id)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def run_optimize(
    request: OptimizeRequest | None = None, *, store: str, resume: str | None = None, executor: str = "auto",
    address: str | None = None, workers: int | None = None, allow_changed_code: bool = False,
    on_progress: ProgressCallback | None = None,
) -> OptimizeOutcome:
    """Run (or resume) an optimize run and return its outcome.

    ``executor``: ``local`` evaluates trials in this process one batch at a time, ``ray`` keeps
    ``workers`` tasks in flight on the connected cluster (default: its CPUs), ``auto`` picks
    Ray when a cluster is given or running or more than one worker is asked for. ``resume``
    takes a run id: the request comes from its manifest, and the run goes on to exactly its
    number of trials. ConfigError for bad requests.
    """
    from tradpal_ray.runs import OptimizeOutcome, choose_executor

    manifest = None
    if resume:
        _, manifest = resume_request(store, resume, allow_changed_code=allow_changed_code, kind="optimize")
        request = OptimizeRequest.from_manifest(manifest, store)
    elif request is None:
        raise ConfigError("optimize needs a request or a run id to resume")
    if workers is not None and workers <= 0:
        raise ConfigError(f"--workers must be positive, got {workers}")
    request = request.absolute()
    checked = request.check()
    bars = request.source.load()
    work = request.trials * len(bars)
    chosen = "ray" if executor == "auto" and (workers or 1) > 1 else choose_executor(executor, work, address=address)
    if chosen == "local" and (workers or 1) > 1:
        raise ConfigError("--workers above 1 needs the ray executor (the local one evaluates trials in this process)")
    if chosen == "ray":
        import ray

        from tradpal_ray.cluster import connect

        connect(address)
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    if chosen == "ray" and not checked.ref.portable:
        raise ConfigError(f"strategy {checked.ref.name} exists only in this process: Ray workers cannot import it; "
                          "put it in a file and pass path/to/file.py:function")
    if manifest is None:
        per_task = request.trials_per_task or (plan_trials_per_task(request.trials, workers or 1) if chosen == "ray" else 1)
        manifest = request.manifest(new_run_id(checked.strategy.name), checked, per_task)
    manifest.executor = chosen
    manifest.error = None
    manifest.claim()
    RunStore(store).write_manifest(manifest)
    log.info("optimize.start", run_id=manifest.run_id, strategy=checked.ref.text, trials=request.trials,
             sampler=checked.sampler, executor=chosen, workers=workers or 1)
    run = OptimizeRun(store, manifest, request, checked, on_progress)
    try:
        if chosen == "ray":
            from tradpal_ray.runs._optimize_ray import search_ray

            search_ray(run, bars, workers or 1)
        else:
            search_local(run, bars, run.config, run.per_task)
        manifest = run.finish()
    except BaseException as exc:  # Ctrl-C, a lost cluster, a bug: never leave the run "running"
        run.abort(exc)
        raise
    return OptimizeOutcome(manifest, RunStore(store))
