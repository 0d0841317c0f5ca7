"""Parameter parsing (``--param fast=10``, ``--grid fast=5:50:5``) and grid / random combinations.

Range syntax ``start:stop:step`` includes ``stop`` when it lies on the grid, so
``fast=5:50:5`` is 5, 10, ..., 50 and ``fast=5:50:5 slow=20:200:10`` with ``fast < slow``
gives 174 combinations. ``fast=5,10,20`` is a list; ``fast=10`` a single value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from tradpal_ray.backtest.strategies import Strategy, get_strategy
from tradpal_ray.errors import ConfigError

Number = int | float
Combo = dict[str, Any]
_FULL_ENUMERATION = 1_000_000  # above this many raw combinations, sample by rejection


def _number(text: str, what: str) -> Number:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what}: {text!r} is not a finite number")
    return value


def _split(item: str, flag: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ConfigError(f"bad {flag} {item!r}: expected NAME=VALUE")
    return name.strip(), value.strip()


def parse_params(items: Iterable[str]) -> dict[str, Number]:
    """``["fast=10", "slow=30"]`` -> ``{"fast": 10, "slow": 30}``; ConfigError on bad syntax or repeats."""
    out: dict[str, Number] = {}
    for item in items:
        name, value = _split(item, "--param")
        if name in out:
            raise ConfigError(f"--param {name} given twice")
        out[name] = _number(value, f"--param {name}")
    return out


def parse_range(text: str, what: str = "range") -> list[Number]:
    """``"5:50:5"`` -> [5, 10, ..., 50] (stop included when on the grid); ``"1,2,3"``; ``"7"``."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"{what}: {text!r} must be START:STOP:STEP")
        start, stop, step = (_number(p, what) for p in parts)
        if step <= 0 or stop < start:
            raise ConfigError(f"{what}: {text!r} needs STEP > 0 and START <= STOP")
        count = math.floor((stop - start) / step + 1e-9) + 1
        if all(isinstance(v, int) for v in (start, stop, step)):
            return [start + k * step for k in range(count)]  # type: ignore[operator]
        return [round(start + k * step, 12) for k in range(count)]
    values = [_number(part, what) for part in text.split(",") if part.strip()]
    if not values:
        raise ConfigError(f"{what}: no values in {text!r}")
    return values


def parse_grid(items: Iterable[str]) -> dict[str, list[Number]]:
    """``["fast=5:50:5", "slow=20,30"]`` -> ``{"fast": [5, ..., 50], "slow": [20, 30]}``."""
    out: dict[str, list[Number]] = {}
    for item in items:
        name, value = _split(item, "--grid")
        if name in out:
            raise ConfigError(f"--grid {name} given twice")
        out[name] = parse_range(value, f"--grid {name}")
    return out


def _axes(spec: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    names = list(spec)
    axes = [list(v) if isinstance(v, (list, tuple, range, np.ndarray)) else [v] for v in spec.values()]
    for name, values in zip(names, axes):
        if not values:
            raise ConfigError(f"parameter {name} has no values")
    return names, axes


def param_grid(spec: Mapping[str, Any], constraint: Callable[[Combo], bool] | None = None) -> list[Combo]:
    """Every combination of ``spec`` (name -> values or a single value) that passes ``constraint``.

    Order is that of ``itertools.product`` over ``spec``'s keys (the last key varies fastest).
    """
    names, axes = _axes(spec)
    combos = (dict(zip(names, values)) for values in itertools.product(*axes))
    return [c for c in combos if constraint is None or constraint(c)]


def sample_params(
    spec: Mapping[str, Any], n: int, seed: int = 0, constraint: Callable[[Combo], bool] | None = None
) -> list[Combo]:
    """``n`` distinct random combinations of ``spec`` passing ``constraint`` (fewer if fewer exist).

    Reproducible for a given ``seed``. Draws without replacement from the valid grid, or by
    rejection when the raw grid has more than a million points.
    """
    if n <= 0:
        raise ConfigError(f"number of samples must be positive, got {n}")
    rng = np.random.default_rng(seed)
    names, axes = _axes(spec)
    total = math.prod(len(a) for a in axes)
    if total <= _FULL_ENUMERATION:
        valid = param_grid(spec, constraint)
        picks = rng.choice(len(valid), size=min(n, len(valid)), replace=False) if valid else []
        return [valid[int(k)] for k in picks]
    seen: set[tuple[int, ...]] = set()
    out: list[Combo] = []
    for _ in range(100 * n):
        key = tuple(int(rng.integers(len(a))) for a in axes)
        if key in seen:
            continue
        seen.add(key)
        combo = {name: axis[k] for name, axis, k in zip(names, axes, key)}
        if constraint is None or constraint(combo):
            out.append(combo)
            if len(out) == n:
                break
    return out


def strategy_combos(
    strategy: str | Strategy, spec: Mapping[str, Any], *, samples: int | None = None, seed: int = 0
) -> list[Combo]:
    """Full, typed parameter sets of ``strategy`` over ``spec`` (defaults for the rest).

    Values are checked against each parameter's declaration (ConfigError naming it);
    combinations breaking the strategy's rules (e.g. fast >= slow) are left out. With
    ``samples``, that many random combinations (see :func:`sample_params`).
    """
    strat = get_strategy(strategy)
    unknown = sorted(set(spec) - set(strat.params))
    if unknown:
        raise ConfigError(
            f"unknown parameter {', '.join(unknown)} for strategy {strat.name}; valid: {', '.join(strat.params)}"
        )
    names, axes = _axes(spec)
    typed: dict[str, list[Any]] = {name: [p.default] for name, p in strat.params.items()}
    for name, values in zip(names, axes):
        typed[name] = sorted({strat.params[name].coerce(name, v) for v in values})
    if samples is None:
        return param_grid(typed, strat.allows)
    return sample_params(typed, samples, seed, strat.allows)
