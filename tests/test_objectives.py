"""Objectives: named ones, metrics, custom references; undefined values rank last."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tradpal_ray.backtest.objectives import NAMED_OBJECTIVES, objective
from tradpal_ray.errors import ConfigError

STATS = {
    "sharpe": np.array([0.5, np.nan, 1.5]),
    "return_pct": np.array([10.0, 30.0, 20.0]),
    "max_drawdown_pct": np.array([5.0, 0.0, 20.0]),
    "trades": np.array([4.0, 9.0, 1.0]),
}


def test_every_named_objective_resolves() -> None:
    for name in NAMED_OBJECTIVES:
        assert objective(name).name == name


def test_best_skips_undefined_values() -> None:
    assert objective("sharpe").best(STATS) == 2
    assert objective("return").best(STATS) == 1


def test_profit_drawdown_is_undefined_without_drawdown() -> None:
    values = objective("profit_drawdown").values(STATS)
    np.testing.assert_allclose(values[[0, 2]], [2.0, 1.0])
    assert math.isnan(values[1])
    assert objective("profit_drawdown").best(STATS) == 0


def test_a_metric_to_minimise_is_minimised() -> None:
    assert not objective("max_drawdown_pct").higher_is_better
    assert objective("max_drawdown_pct").best(STATS) == 1


def test_custom_objective_from_a_file(tmp_path) -> None:
    path = tmp_path / "goals_for_test.py"
    path.write_text('import numpy as np\n\ndef robust(stats):\n    """Return per trade."""\n'
                    '    return stats["return_pct"] / np.sqrt(stats["trades"])\n')
    goal = objective(f"{path}:robust")
    assert goal.description == "Return per trade."
    assert goal.best(STATS) == 2
    assert goal.value({"return_pct": 8.0, "trades": 4.0}) == 4.0


def test_nothing_defined_gives_no_best() -> None:
    assert objective("sharpe").best({"sharpe": np.array([np.nan, np.nan])}) == -1


@pytest.mark.parametrize("ref, message", [
    ("sharp", "unknown objective 'sharp'"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    ("math:not_there", "has no function 'not_there'"),
])
def test_bad_references_are_one_clear_error(ref: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        objective(ref)


def test_missing_statistic_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs statistic 'sortino'"):
        objective("sortino").values(STATS)
