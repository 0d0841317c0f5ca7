"""The run manifest: what was asked, by which code, how it went, and what was kept.

Written by the driver only (orjson; nothing is pickled). A run whose driver died reads as
``interrupted``: the driver records its host and pid and refreshes a heartbeat while it
works, and :meth:`RunManifest.current_status` checks both.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

import tradpal_ray

RUN_STATUSES = ("running", "complete", "partial", "failed", "interrupted")
"""``partial``: some symbols failed, the others' results stand. ``interrupted``: the driver
died (or was stopped) before the end; ``--resume`` finishes it."""
RUN_KINDS = ("sweep", "optimize", "walkforward")
"""``sweep``: a grid of parameters; ``optimize``: trials chosen by a sampler (see :mod:`tradpal_ray.runs._optimize`);
``walkforward``: folds optimised in sample and tested out of sample (:mod:`tradpal_ray.runs._walkforward`)."""
LEGACY_METRICS = (
    "trades", "final_equity", "return_pct", "max_drawdown_pct", "win_rate_pct", "profit_factor", "expectancy",
    "sharpe", "sortino", "exposure_pct", "fees", "best_trade_pct", "worst_trade_pct",
)
"""The metric columns of runs written before manifests listed them."""
HEARTBEAT_SECONDS = 5.0
"""How often a working driver refreshes its manifest."""
STALE_AFTER = timedelta(seconds=120)
"""A ``running`` manifest whose heartbeat is older than this (and whose driver is not
visibly alive on this host) belongs to a dead driver."""

RUN_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$"
"""What :func:`new_run_id` makes: ``<strategy>-<YYYYmmddTHHMMSS>-<6 hex>`` (never ``..`` or a path)."""
RESULT_ID_PATTERN = r"^[0-9a-f]{16}$"
"""What a result id looks like: 16 hex digits."""


@dataclass(frozen=True)
class OverfitStats:
    """Overfitting statistics of one symbol's results (its trials), computed at the end of a run.

    From ``returns.parquet`` and the results' ``sharpe`` column, so anyone can recompute them
    with :mod:`tradpal_ray.validation`. A statistic that cannot be computed (too few days or
    trials, no dispersion) is None, and its reading says why.
    """

    n_trials: int
    """The symbol's results: the trials the best was chosen from."""
    n_days: int
    """Days of returns of the symbol."""
    best_result_id: str | None
    """The best result by the run's metric: the one the DSR is about."""
    dsr: float | None
    """Deflated Sharpe ratio: P(the best's true Sharpe beats the best of ``n_trials`` skill-less trials)."""
    psr: float | None
    """Probabilistic Sharpe ratio of the best against 0."""
    sharpe: float | None
    """The best's annualised Sharpe ratio (from its daily returns)."""
    expected_max_sharpe: float | None
    """Annualised Sharpe the best of ``n_trials`` skill-less trials would reach by luck."""
    reading_dsr: str
    pbo: float | None
    """Probability of backtest overfitting by CSCV."""
    pbo_partitions: int
    logits_median: float | None
    """Median of the CSCV logits (above 0: the in-sample best tends to stay above median)."""
    reading_pbo: str

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OverfitStats:
        """From its JSON form (unknown keys ignored)."""
        return cls(**{key: value for key, value in raw.items() if key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class StrategyCheck:
    """The look-ahead check run before a sweep (``--check``): on which bars and parameters, and its verdict."""

    clean: bool
    symbol: str
    params: dict[str, Any]
    bars: int
    prefixes_checked: int
    warmup_bars: int
    first_lookahead: str | None = None
    """The first look-ahead bar, described for people (None when clean)."""

    def describe(self) -> str:
        """One line for people."""
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        where = f"{self.symbol} ({params}), {self.bars:,} bars, {self.prefixes_checked:,} prefixes"
        if self.clean:
            return f"no look-ahead: {where}; warm-up {self.warmup_bars:,} bars"
        return f"look-ahead on {where}: {self.first_lookahead}"


@dataclass
class RunManifest:
    """Everything needed to reproduce, resume or describe a run."""

    run_id: str
    strategy: str
    """Display name of the strategy (its registered or function name)."""
    grid: dict[str, list[Any]]
    symbols: list[str]
    source: str
    """``store``, or the data file the bars came from."""
    kind: str = "sweep"
    strategy_ref: dict[str, str] = field(default_factory=dict)
    """The strategy reference (:class:`~tradpal_ray.backtest.StrategyRef` as a dict) with its source hash."""
    param_types: dict[str, str] = field(default_factory=dict)
    """Each parameter's type (``int``/``float``), in the strategy's order: the typed result columns."""
    metrics: list[str] = field(default_factory=lambda: list(LEGACY_METRICS))
    """The metric columns its result files store (derived metrics are computed when read)."""
    exchange: str | None = None
    timeframe: str | None = None
    since: str | None = None
    until: str | None = None
    costs: dict[str, Any] = field(default_factory=dict)
    size_units: dict[str, float] = field(default_factory=dict)
    """Per-symbol size units (the market's lot step) overriding ``costs["size_unit"]``."""
    metric: str = "sharpe"
    combos: int = 0
    """Parameter combinations asked for: the raw grid size, or the sample size."""
    chunk_size: int = 0
    chunks: int = 0
    """Chunks per symbol."""
    samples: int | None = None
    seed: int = 0
    executor: str = ""
    """``local`` (in process) or ``ray``."""
    status: str = "running"
    errors: dict[str, str] = field(default_factory=dict)
    """Symbols that failed, with their error; the other symbols' results stand."""
    error: str | None = None
    """Why the whole run stopped early, when it did."""
    results: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Combinations left out because they do not fit the data, by reason (over all symbols)."""
    kept: dict[str, str] = field(default_factory=dict)
    """Result ids whose trades and equity curve were kept, with their symbol."""
    warnings: list[str] = field(default_factory=list)
    space: dict[str, str] = field(default_factory=dict)
    """Optimize runs: each searched parameter's range as given (``int:5:200``, ``float:0.5:3:log``, ``cat:a,b``)."""
    objectives: list[str] = field(default_factory=list)
    """Optimize runs: the objective references, in the order of the trials' ``objective_<i>`` columns."""
    directions: list[str] = field(default_factory=list)
    """Optimize runs: ``maximize`` or ``minimize`` per objective."""
    sampler: str = ""
    trials: int = 0
    """Optimize runs: trials asked for (the run ends when exactly this many were evaluated)."""
    trials_per_task: int = 0
    best: list[dict[str, Any]] = field(default_factory=list)
    """Optimize runs: the best trial, or the Pareto front of several objectives
    (``{"trial", "params", "values", "stats"}`` each)."""
    walkforward: dict[str, Any] = field(default_factory=dict)
    """Kind ``walkforward``: ``{"spec": the walk-forward settings, "warmup", "folds", "summary"}``."""
    pbo_partitions: int = 16
    """CSCV partitions of the probability of backtest overfitting (``--pbo-partitions``)."""
    overfitting: dict[str, OverfitStats] = field(default_factory=dict)
    """Per symbol: the deflated Sharpe ratio of its best result and the PBO of its results (empty
    in runs written before they were computed)."""
    check: StrategyCheck | None = None
    """The look-ahead check run before the sweep (``--check``), or None."""
    driver: dict[str, Any] = field(default_factory=dict)
    """``{"host", "pid"}`` of the process running the run."""
    heartbeat: str | None = None
    code_version: str = field(default_factory=lambda: code_version())
    created_at: str = field(default_factory=lambda: now())
    updated_at: str = field(default_factory=lambda: now())

    def to_json(self) -> bytes:
        """orjson bytes of the manifest."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> RunManifest:
        """Parse a manifest; unknown keys from newer versions are ignored, old ones get defaults."""
        raw = orjson.loads(data)
        if not isinstance(raw, dict):
            raise TypeError("a manifest is a JSON object")
        manifest = cls(**{key: value for key, value in raw.items() if key in cls.__dataclass_fields__})
        manifest.overfitting = {symbol: OverfitStats.from_dict(stats) for symbol, stats in manifest.overfitting.items()}
        if isinstance(manifest.check, dict):
            manifest.check = StrategyCheck(**manifest.check)
        if not manifest.param_types and manifest.grid:  # version 1: types from the grid's values
            manifest.param_types = {k: "float" if any(isinstance(v, float) for v in vs) else "int"
                                    for k, vs in manifest.grid.items()}
        return manifest

    @property
    def param_names(self) -> list[str]:
        """The strategy's parameter names, in its order."""
        return list(self.param_types)

    def claim(self) -> None:
        """Mark this process as the run's driver (before it starts working)."""
        self.driver = {"host": socket.gethostname(), "pid": os.getpid()}
        self.status = "running"
        self.beat()

    def beat(self) -> None:
        """Refresh the heartbeat."""
        self.heartbeat = now()

    def current_status(self) -> str:
        """The status, with a ``running`` run whose driver is gone read as ``interrupted``."""
        if self.status != "running":
            return self.status
        host, pid = self.driver.get("host"), self.driver.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            return "interrupted"
        beat = _parse_time(self.heartbeat or self.updated_at)
        return "interrupted" if beat is None or datetime.now(UTC) - beat > STALE_AFTER else "running"


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(tradpal_ray.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{tradpal_ray.__version__}+{commit}" if commit else tradpal_ray.__version__


def now() -> str:
    """UTC now, ISO seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id(strategy: str) -> str:
    """A sortable, readable run id: ``<strategy>-<UTC time>-<random>``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", strategy)[:64] or "run"
    return f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.urandom(3).hex()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
