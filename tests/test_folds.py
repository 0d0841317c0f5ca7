"""Pure fold planning against hand-computed cases: walk-forward windows, CPCV splits, purge, embargo, paths."""

from __future__ import annotations

import pandas as pd
import pytest

from tradpal_ray.errors import ConfigError
from tradpal_ray.validation._folds import (
    Fold,
    Window,
    cpcv_groups,
    cpcv_path_count,
    cpcv_paths,
    cpcv_splits,
    parse_duration,
    walk_forward_folds,
)

DAYS = pd.date_range("2024-01-01", periods=20, freq="D", tz="UTC")
D = pd.Timedelta


def spans(folds: list[Fold]) -> list[tuple[int, int, int, int]]:
    return [(f.train.start, f.train.end, f.test.start, f.test.end) for f in folds]


def test_rolling_windows_move_by_the_step_and_keep_only_whole_test_windows() -> None:
    folds = walk_forward_folds(DAYS, train=D("5d"), test=D("3d"))
    # train [3k, 3k+5), test [3k+5, 3k+8) while 3k+8 <= 20 (the day after the last bar)
    assert spans(folds) == [(0, 5, 5, 8), (3, 8, 8, 11), (6, 11, 11, 14), (9, 14, 14, 17), (12, 17, 17, 20)]
    assert [f.number for f in folds] == [0, 1, 2, 3, 4]


def test_warm_up_bars_come_before_the_first_training_window() -> None:
    folds = walk_forward_folds(DAYS, train=D("5d"), test=D("3d"), first=2)
    assert spans(folds) == [(2, 7, 7, 10), (5, 10, 10, 13), (8, 13, 13, 16), (11, 16, 16, 19)]


def test_anchored_windows_all_start_at_the_first_bar() -> None:
    folds = walk_forward_folds(DAYS, train=D("5d"), test=D("3d"), anchored=True, first=1)
    assert spans(folds) == [(1, 6, 6, 9), (1, 9, 9, 12), (1, 12, 12, 15), (1, 15, 15, 18)]


def test_a_step_longer_than_the_test_leaves_gaps_and_a_shorter_one_is_refused() -> None:
    folds = walk_forward_folds(DAYS, train=D("5d"), test=D("3d"), step=D("7d"))
    assert spans(folds) == [(0, 5, 5, 8), (7, 12, 12, 15)]
    with pytest.raises(ConfigError, match="--step 2 days 00:00:00 is shorter than --test 3 days"):
        walk_forward_folds(DAYS, train=D("5d"), test=D("3d"), step=D("2d"))


def test_windows_are_times_not_bar_counts() -> None:
    hours = pd.date_range("2024-01-01", periods=24 * 6, freq="h", tz="UTC").delete(range(24, 48))  # day 2 missing
    folds = walk_forward_folds(hours, train=D("2d"), test=D("1d"))
    # day 0 is bars 0-23, days 2..5 bars 24-119: fold 1 trains on days 1-2, which hold day 2 only
    assert spans(folds) == [(0, 24, 24, 48), (24, 48, 48, 72), (24, 72, 72, 96), (48, 96, 96, 120)]


def test_no_fold_and_bad_durations_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="no walk-forward fold fits: the data after warm-up spans 20 days"):
        walk_forward_folds(DAYS, train=D("18d"), test=D("3d"))
    with pytest.raises(ConfigError, match="no bars left after 20 warm-up bars"):
        walk_forward_folds(DAYS, train=D("1d"), test=D("1d"), first=20)
    assert parse_duration("180d", "--train") == D(days=180)
    for bad in ("soon", "-3d", "0d"):
        with pytest.raises(ConfigError, match="--train must be a positive duration"):
            parse_duration(bad, "--train")


def test_groups_are_contiguous_and_near_equal() -> None:
    assert cpcv_groups(13, 6) == (Window(0, 3), Window(3, 5), Window(5, 7), Window(7, 9), Window(9, 11), Window(11, 13))
    with pytest.raises(ConfigError):
        cpcv_groups(5, 6)


def test_six_groups_two_test_groups_make_fifteen_splits_and_five_paths() -> None:
    splits = cpcv_splits(12, 6, 2)
    assert len(splits) == 15 and cpcv_path_count(6, 2) == 5
    assert [s.test_groups for s in splits][:6] == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 2)]
    assert splits[14].test_groups == (4, 5) and list(splits[14].test_index()) == [8, 9, 10, 11]
    assert list(splits[14].train_index()) == list(range(8))  # no purge, no embargo: everything else
    # Group g is tested by these splits, in order; path j takes the j-th of each.
    assert cpcv_paths(6, splits) == [
        (0, 0, 1, 2, 3, 4),
        (1, 5, 5, 6, 7, 8),
        (2, 6, 9, 9, 10, 11),
        (3, 7, 10, 12, 12, 13),
        (4, 8, 11, 13, 14, 14),
    ]
    used = sorted((s, g) for path in cpcv_paths(6, splits) for g, s in enumerate(path))
    assert used == sorted((s.number, g) for s in splits for g in s.test_groups)  # each (split, group) once


def test_purge_and_embargo_drop_training_items_around_each_test_group() -> None:
    split = cpcv_splits(12, 6, 2, purge=1, embargo=1)[7]
    assert split.test_groups == (1, 4) and split.test == (Window(2, 4), Window(8, 10))
    # group 1 [2, 4): drop [1, 6); group 4 [8, 10): drop [7, 12)
    assert split.train == (Window(0, 1), Window(6, 7))
    first = cpcv_splits(12, 6, 2, purge=2, embargo=0)[0]
    assert first.test_groups == (0, 1) and first.train == (Window(6, 12),)
    with pytest.raises(ConfigError, match="--test-groups must be between 1 and --groups - 1"):
        cpcv_splits(12, 6, 6)
