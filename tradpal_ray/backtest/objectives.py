"""Objectives: the one number walk-forward folds and ``optimize`` trials choose by.

An objective is named (``sharpe``, ``sortino``, ``calmar``, ``return``, ``profit_drawdown``,
``sqn``), any metric of the registry by its column name (``max_drawdown_pct`` is minimised, as
the metric says), or a reference to the user's own function of the statistics, written as
strategies are (``mypkg.goals:robust`` or ``path/to/goals.py:robust``)::

    def robust(stats):
        return stats["sharpe"] * np.sqrt(stats["trades"])   # higher is better

A function receives a mapping of metric name to a float array (one value per result) and
returns an array (or a float for a single result); plain arithmetic and numpy work on both.
Objectives are evaluated where results are gathered (the driver), never on workers, so a
custom one needs no shipping. Like metrics, this module loads no numpy at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tradpal_ray.backtest.metrics import metric, metric_names, ratio
from tradpal_ray.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Objective:
    """What to optimise: a function of the statistics and its direction."""

    name: str
    """The reference it was built from: a name, a metric, or ``module:function``."""
    description: str
    function: Callable[[Mapping[str, Any]], Any]
    higher_is_better: bool = True

    def values(self, stats: Mapping[str, Any]) -> np.ndarray:
        """The objective of every result in ``stats`` (name -> array), as float64; non-finite -> NaN."""
        import numpy as np

        with np.errstate(all="ignore"):
            try:
                raw = self.function(stats)
            except KeyError as exc:
                raise ConfigError(f"objective {self.name!r} needs statistic {exc.args[0]!r}, which the results lack") from None
        values = np.atleast_1d(np.asarray(raw, dtype=np.float64))
        return np.where(np.isfinite(values), values, np.nan)

    def value(self, stats: Mapping[str, float]) -> float:
        """The objective of one result (a stats dict of floats); NaN when undefined."""
        import numpy as np

        return float(self.values({k: np.asarray([v], dtype=np.float64) for k, v in stats.items()})[0])

    def scores(self, stats: Mapping[str, Any]) -> np.ndarray:
        """Values turned so that larger is better; NaN (undefined) ranks below every defined value."""
        import numpy as np

        values = self.values(stats)
        signed = values if self.higher_is_better else -values
        return np.where(np.isnan(signed), -np.inf, signed)

    def best(self, stats: Mapping[str, Any]) -> int:
        """Index of the best result (the first among ties); -1 when no result has a defined value."""
        import numpy as np

        scores = self.scores(stats)
        return int(np.argmax(scores)) if scores.size and np.isfinite(scores).any() else -1


def _metric_objective(name: str, label: str | None = None, description: str | None = None) -> Objective:
    m = metric(name)
    return Objective(label or name, description or m.description, lambda s: s[name], m.higher_is_better)


def _named() -> dict[str, Objective]:
    return {
        "sharpe": _metric_objective("sharpe"),
        "sortino": _metric_objective("sortino"),
        "calmar": _metric_objective("calmar"),
        "return": _metric_objective("return_pct", "return"),
        "sqn": _metric_objective("sqn"),
        "profit_drawdown": Objective(
            "profit_drawdown", "return % / max drawdown % (NaN without drawdown)",
            lambda s: ratio(s["return_pct"], s["max_drawdown_pct"]),
        ),
    }


NAMED_OBJECTIVES = ("sharpe", "sortino", "calmar", "return", "profit_drawdown", "sqn")
"""The named objectives; every metric name is accepted too."""


def objective(reference: str | Objective) -> Objective:
    """The objective a name, metric or ``module:function`` / ``file.py:function`` reference stands for.

    ConfigError (one line, listing the choices) when the reference resolves to nothing.
    """
    if isinstance(reference, Objective):
        return reference
    text = reference.strip()
    named = _named()
    if text in named:
        return named[text]
    if ":" not in text:
        if text in metric_names():
            return _metric_objective(text)
        raise ConfigError(
            f"unknown objective {text!r}; choose one of {', '.join(NAMED_OBJECTIVES)}, a metric "
            f"({', '.join(metric_names())}) or module:function / file.py:function"
        )
    return _custom(text)


def _custom(text: str) -> Objective:
    from pathlib import Path

    from tradpal_ray.backtest._references import _import, _load_file

    target, _, name = text.rpartition(":")
    if not name.isidentifier():
        raise ConfigError(f"bad objective reference {text!r}: {name!r} is not a Python name")
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"bad objective reference {text!r}: no such file {path}")
        module = _load_file(path)
    else:
        module = _import(target, text)
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"bad objective reference {text!r}: {module.__name__} has no function {name!r}")
    doc = (function.__doc__ or "").strip().splitlines()
    return Objective(text, doc[0] if doc else f"{name} (custom)", function)


__all__ = ["NAMED_OBJECTIVES", "Objective", "objective"]
