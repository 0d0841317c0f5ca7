"""Pure fold planning: walk-forward windows and combinatorial purged cross-validation (CPCV).

No engine, no Ray: positions in a time axis in, frozen dataclasses out, so every plan can be
checked by hand.

- :func:`walk_forward_folds`: training and test windows (half-open bar ranges) that roll
  (the training window moves with the step) or are anchored (it always starts at the first
  bar), each test window right after its training window.
- :func:`cpcv_splits` and :func:`cpcv_paths` (López de Prado, *Advances in Financial Machine
  Learning*, ch. 12): ``N`` contiguous groups, every choice of ``k`` test groups, training on
  the rest minus the purged and embargoed items, and the ``phi = k/N * C(N, k)`` backtest
  paths assembled from the splits' test groups.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from tradpal_ray.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """Bars ``[start, end)`` of a series (positions, half-open)."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: optimise on ``train``, evaluate on ``test`` (which follows it)."""

    number: int
    train: Window
    test: Window


def parse_duration(text: str, option: str) -> pd.Timedelta:
    """A positive duration such as ``180d``, ``12h`` or ``90min``; ConfigError naming ``option`` otherwise."""
    try:
        value = pd.Timedelta(str(text).strip())
    except ValueError:
        value = None
    if value is None or pd.isna(value) or value <= pd.Timedelta(0):
        raise ConfigError(f"{option} must be a positive duration such as 180d, 12h or 90min, got {text!r}")
    return value


def walk_forward_folds(
    times: pd.DatetimeIndex,
    *,
    train: pd.Timedelta,
    test: pd.Timedelta,
    step: pd.Timedelta | None = None,
    anchored: bool = False,
    first: int = 0,
) -> list[Fold]:
    """The folds of a walk-forward over bar ``times`` (strictly increasing), starting at bar ``first``.

    Fold ``i``'s training window covers ``[t0 + i*step, t0 + i*step + train)`` (anchored:
    ``[t0, t0 + i*step + train)``), where ``t0 = times[first]``; its test window the ``test``
    that follows. ``step`` defaults to ``test`` (test windows tile the data); a shorter step
    would let test windows overlap, which no stitched out-of-sample curve allows (ConfigError).
    Only whole test windows count: a fold is kept while its test window ends no later than
    one bar after the last bar. Bars before ``first`` are left for indicator warm-up.
    """
    step = test if step is None else step
    if step < test:
        raise ConfigError(f"--step {step} is shorter than --test {test}: test windows would overlap")
    if not 0 <= first < len(times):
        raise ConfigError(f"no bars left after {first} warm-up bars ({len(times)} bars in all)")
    values = times.as_unit("ns").asi8
    spacing = int(np.min(np.diff(values))) if len(values) > 1 else 0
    end_of_data = values[-1] + spacing
    t0 = values[first]
    folds: list[Fold] = []
    for k in itertools.count():
        shift = k * step.value
        train_end = t0 + shift + train.value
        test_end = train_end + test.value
        if test_end > end_of_data:
            break
        cut = np.searchsorted(values, [t0 if anchored else t0 + shift, train_end, test_end], side="left")
        train_window, test_window = Window(int(cut[0]), int(cut[1])), Window(int(cut[1]), int(cut[2]))
        if len(train_window) and len(test_window):  # a gap in the data can empty a window: nothing to learn or test
            folds.append(Fold(len(folds), train_window, test_window))
    if not folds:
        span = pd.Timedelta(end_of_data - t0)
        raise ConfigError(f"no walk-forward fold fits: the data after warm-up spans {span}, "
                          f"less than --train {train} plus --test {test}")
    return folds


@dataclass(frozen=True)
class CpcvSplit:
    """One CPCV split: its test groups, their items, and the training items left after purge and embargo."""

    number: int
    test_groups: tuple[int, ...]
    test: tuple[Window, ...]
    train: tuple[Window, ...]

    def train_index(self) -> np.ndarray:
        """Positions of the training items, ascending."""
        return _positions(self.train)

    def test_index(self) -> np.ndarray:
        """Positions of the test items, ascending."""
        return _positions(self.test)


def _positions(windows: tuple[Window, ...]) -> np.ndarray:
    if not windows:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.arange(w.start, w.end, dtype=np.int64) for w in windows])


def cpcv_groups(items: int, groups: int) -> tuple[Window, ...]:
    """``groups`` contiguous groups of ``items`` positions, sizes differing by at most one (larger first)."""
    if groups < 2:
        raise ConfigError(f"--groups must be at least 2, got {groups}")
    if items < groups:
        raise ConfigError(f"{items} days cannot make {groups} groups")
    size, extra = divmod(items, groups)
    bounds = [0]
    for g in range(groups):
        bounds.append(bounds[-1] + size + (1 if g < extra else 0))
    return tuple(Window(a, b) for a, b in itertools.pairwise(bounds))


def cpcv_splits(items: int, groups: int, test_groups: int, *, purge: int = 0, embargo: int = 0) -> list[CpcvSplit]:
    """Every choice of ``test_groups`` of ``groups`` as a split, in lexicographic order.

    Training keeps every item outside the test groups except, around each test group
    ``[a, b)``, the ``purge`` items before ``a`` and the ``purge + embargo`` items from
    ``b`` on: purging drops training items whose outcome overlaps the test group (a
    position held across the boundary), the embargo drops more after it (serial correlation).
    """
    if not 1 <= test_groups < groups:
        raise ConfigError(f"--test-groups must be between 1 and --groups - 1 ({groups - 1}), got {test_groups}")
    if purge < 0 or embargo < 0:
        raise ConfigError("--purge and --embargo must be >= 0")
    parts = cpcv_groups(items, groups)
    splits = []
    for number, chosen in enumerate(combinations(range(groups), test_groups)):
        dropped = np.zeros(items, dtype=np.bool_)
        for g in chosen:
            a, b = parts[g].start, parts[g].end
            dropped[max(0, a - purge):min(items, b + purge + embargo)] = True
        splits.append(CpcvSplit(number, chosen, tuple(parts[g] for g in chosen), _runs(~dropped)))
    return splits


def _runs(mask: np.ndarray) -> tuple[Window, ...]:
    """The maximal runs of True in ``mask`` as windows."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return tuple(Window(int(a), int(b)) for a, b in zip(starts, ends))


def cpcv_path_count(groups: int, test_groups: int) -> int:
    """``phi = k/N * C(N, k) = C(N-1, k-1)``: how many complete backtest paths the splits make."""
    return math.comb(groups - 1, test_groups - 1)


def cpcv_paths(groups: int, splits: list[CpcvSplit]) -> list[tuple[int, ...]]:
    """The backtest paths: for each path, the split whose test result covers each group.

    Every group is tested in ``phi`` splits; path ``j`` takes each group from the ``j``-th
    split (in split order) that tests it, so every (split, test group) pair is used once.
    """
    testing = [[s.number for s in splits if g in s.test_groups] for g in range(groups)]
    count = len(testing[0])
    if any(len(t) != count for t in testing):
        raise ConfigError("CPCV splits do not test every group equally often")
    return [tuple(testing[g][j] for g in range(groups)) for j in range(count)]


__all__ = [
    "CpcvSplit",
    "Fold",
    "Window",
    "cpcv_groups",
    "cpcv_path_count",
    "cpcv_paths",
    "cpcv_splits",
    "parse_duration",
    "walk_forward_folds",
]
