"""A lazy plan of a parameter grid: chunks of combinations generated on demand.

The grid is never listed in full. A combination is addressed by its index in the product
of the parameter axes (``itertools.product`` order: the last parameter varies fastest), a
chunk is a range of those indices (or of a random sample of them), and the strategy's rules
(e.g. ``fast < slow``) are applied inside the chunk. A 10^7-point grid therefore costs the
driver a few numbers, and a grid over :data:`DEFAULT_MAX_COMBOS` is refused up front.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tradpal_ray.backtest.strategies import Strategy
from tradpal_ray.errors import ConfigError

DEFAULT_MAX_COMBOS = 10_000_000
"""Largest grid (or sample) a run accepts unless told otherwise (``--max-combos``)."""
_SAMPLE_DRAWS = 100
"""Random draws per wanted sample before giving up on a grid whose rules reject nearly all."""


@dataclass(frozen=True, eq=False)
class GridPlan:
    """The typed axes of a strategy's grid, and which of their combinations a run covers."""

    names: tuple[str, ...]
    axes: tuple[tuple[Any, ...], ...]
    """Each parameter's sorted, typed values (the default alone when the grid leaves it out)."""
    sample: np.ndarray | None = None
    """Indices of a random sample of valid combinations, or None for the whole grid."""

    @classmethod
    def build(
        cls, strategy: Strategy, grid: Mapping[str, Any], *, samples: int | None = None, seed: int = 0,
        max_combos: int = DEFAULT_MAX_COMBOS,
    ) -> GridPlan:
        """Check ``grid`` against the strategy's parameters and plan it; ConfigError naming the problem."""
        unknown = sorted(set(grid) - set(strategy.params))
        if unknown:
            raise ConfigError(
                f"unknown parameter {', '.join(unknown)} for strategy {strategy.name}; "
                f"valid: {', '.join(strategy.params) or 'none'}"
            )
        axes = []
        for name, param in strategy.params.items():
            values = grid.get(name, [param.default])
            values = list(values) if isinstance(values, (list, tuple, range, np.ndarray)) else [values]
            if not values:
                raise ConfigError(f"parameter {name} has no values")
            axes.append(tuple(sorted({param.coerce(name, v) for v in values})))
        plan = cls(tuple(strategy.params), tuple(axes))
        if samples is not None:
            if samples <= 0:
                raise ConfigError(f"number of samples must be positive, got {samples}")
            if samples > max_combos:
                raise ConfigError(f"{samples:,} samples is over the limit of {max_combos:,} (--max-combos)")
            plan = cls(plan.names, plan.axes, plan._draw(strategy, samples, seed))
            if not len(plan.sample):
                raise ConfigError(f"the grid gives no valid combination for {strategy.name}")
        elif plan.total > max_combos:
            raise ConfigError(
                f"the grid has {plan.total:,} combinations, over the limit of {max_combos:,}: "
                "narrow it, use --samples N, or raise --max-combos"
            )
        elif not plan.any_valid(strategy):
            raise ConfigError(f"the grid gives no valid combination for {strategy.name} (check its rules)")
        return plan

    @property
    def total(self) -> int:
        """Combinations covered: the raw grid size, or the sample's."""
        return len(self.sample) if self.sample is not None else math.prod(len(a) for a in self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    def chunk_count(self, size: int) -> int:
        """How many chunks of ``size`` combinations cover the plan."""
        return max(1, math.ceil(self.total / size))

    def chunk(self, number: int, size: int) -> list[dict[str, Any]]:
        """The combinations of chunk ``number`` (before the strategy's rules are applied)."""
        start, stop = number * size, min((number + 1) * size, self.total)
        if self.sample is not None:
            indices = self.sample[start:stop]
        else:
            indices = np.arange(start, stop, dtype=np.int64)
        return self.combos(indices)

    def combos(self, indices: np.ndarray) -> list[dict[str, Any]]:
        """Decode grid indices into parameter dicts (plain Python ints and floats)."""
        if not len(indices):
            return []
        positions = np.unravel_index(indices, self.shape)
        columns = [[axis[k] for k in pos.tolist()] for axis, pos in zip(self.axes, positions)]
        return [dict(zip(self.names, values)) for values in zip(*columns)]

    def iter_chunks(self, size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """``(number, combinations)`` of every chunk, generated one at a time."""
        for number in range(self.chunk_count(size)):
            yield number, self.chunk(number, size)

    def any_valid(self, strategy: Strategy, probe: int = 100_000) -> bool:
        """True when some combination passes the strategy's rules (checks at most ``probe`` spread-out points)."""
        if not strategy.rules:
            return True
        step = max(1, self.total // probe)
        return any(strategy.allows(c) for c in self.combos(np.arange(0, self.total, step, dtype=np.int64)))

    def _draw(self, strategy: Strategy, n: int, seed: int) -> np.ndarray:
        """``n`` distinct random valid grid indices (fewer when fewer exist), reproducible for ``seed``."""
        rng = np.random.default_rng(seed)
        total = math.prod(self.shape)
        picked: list[int] = []
        seen: set[int] = set()
        budget = _SAMPLE_DRAWS * n
        while len(picked) < n and len(seen) < total and budget > 0:
            want = min(total - len(seen), max(2 * (n - len(picked)), 64), budget)
            draw = rng.choice(total, size=want, replace=False) if total <= 4 * want else rng.integers(total, size=want)
            budget -= want
            fresh = [int(i) for i in draw if int(i) not in seen]
            seen.update(fresh)
            picked += [i for i, c in zip(fresh, self.combos(np.asarray(fresh, dtype=np.int64))) if strategy.allows(c)]
        return np.asarray(picked[:n], dtype=np.int64)
