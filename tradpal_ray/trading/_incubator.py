"""The incubator: paper traders for the best results of a sweep or walk-forward run, to watch them live.

``trade start --from-run RUN_ID --top K`` turns the run's K best results into
:class:`~tradpal_ray.trading._session.TraderSpec` s: the run's strategy, costs and size
units, the result's parameters and symbol. For a sweep, the K best by its metric; for a
walk-forward, the parameters its K latest folds chose (newest first, each set once: what
it would trade now), with that fold's out-of-sample figures. Each spec carries the result's backtest figures,
so the trader's status shows the divergence of its live trades and return from them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tradpal_ray.backtest.engine import BacktestConfig
from tradpal_ray.errors import ConfigError
from tradpal_ray.runs import RunStore, check_run_id
from tradpal_ray.trading._risk import RiskLimits
from tradpal_ray.trading._session import TraderSpec

BACKTEST_FIGURES = ("trades", "return_pct", "sharpe", "max_drawdown_pct", "win_rate_pct")
"""The result columns a trader's status repeats for comparison (when the run has them)."""


def incubate(store: str, run_id: str, top: int, *, limits: RiskLimits, broker: str = "paper", exchange: str = "binance",
             exchange_url: str | None = None, window: int | None = None, prefix: str | None = None) -> list[TraderSpec]:
    """Specs of paper traders for the ``top`` best results of sweep run ``run_id`` (named ``<prefix>-<run>-<rank>``)."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    runs = RunStore(store)
    manifest = runs.manifest(check_run_id(run_id))
    if not manifest.timeframe:
        raise ConfigError(f"run {run_id} was not on store series (no timeframe): nothing live to trade")
    best = _walkforward_choices(runs, run_id, manifest.param_names, manifest.symbols[0], top) \
        if manifest.kind == "walkforward" else runs.top(run_id, manifest.metric, top, exclude=manifest.errors)
    if not len(best):
        raise ConfigError(f"run {run_id} has no results to incubate")
    config = BacktestConfig(**manifest.costs)
    strategy = manifest.strategy_ref.get("text") or manifest.strategy
    specs = []
    for rank, row in enumerate(best.to_dict("records"), start=1):
        figures: dict[str, Any] = {name: row[name] for name in (*BACKTEST_FIGURES, manifest.metric) if name in row}
        specs.append(TraderSpec(
            name=f"{prefix or 'incubator'}-{run_id[-6:]}-{rank}", strategy=strategy, symbols=(row["symbol"],),
            timeframe=manifest.timeframe, store=store, params={name: row[name] for name in manifest.param_names},
            config=config, size_units=dict(manifest.size_units), limits=limits, broker=broker, exchange=exchange,
            exchange_url=exchange_url, window=window,
            backtest={"run_id": run_id, "rank": rank, "metric": manifest.metric, **figures},
        ))
    return specs


def _walkforward_choices(runs: RunStore, run_id: str, names: list[str], symbol: str, top: int) -> pd.DataFrame:
    """The ``top`` latest distinct parameter sets the folds chose, with their out-of-sample figures as columns."""
    folds = runs.walkforward(run_id)["folds"].dropna(subset=names).sort_values("fold", ascending=False)
    chosen = folds.drop_duplicates(subset=names).head(top)
    figures = {f"oos_{name}": name for name in BACKTEST_FIGURES}
    return chosen[[*names, *(c for c in figures if c in chosen)]].rename(columns=figures).assign(symbol=symbol)
