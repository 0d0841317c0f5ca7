"""Strategies by reference: built-in names, module paths and files, the same in the API and the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from market_data import goog

from tradpal_ray.backtest import StrategyRef, backtest, get_strategy, strategy
from tradpal_ray.errors import ConfigError

RunCli = Callable[..., tuple[int, str, str]]

GOLDEN_CROSS = textwrap.dedent('''
    """A user's strategy file, outside the project."""
    from tradpal_ray.backtest import Param, cross_above, cross_below, sma, strategy

    @strategy(fast=Param(int, 10, min=1, window=True, help="fast SMA"), slow=Param(int, 50, min=2, window=True),
              rules=((lambda p: p["fast"] < p["slow"], "fast must be below slow"),))
    def golden_cross(bars, fast, slow):
        """Long when SMA(fast) crosses above SMA(slow); out when it crosses back below."""
        f, s = sma(bars.close, fast), sma(bars.close, slow)
        return cross_above(f, s), cross_below(f, s)


    def plain_cross(bars, fast=10, slow=30):
        """An undecorated function: parameters from its defaults."""
        f, s = sma(bars.close, fast), sma(bars.close, slow)
        return cross_above(f, s), cross_below(f, s)
''')


@pytest.fixture
def strategy_file(tmp_path: Path, isolated_strategies: None) -> Path:
    """``golden_cross`` and ``plain_cross`` in a file outside sys.path, under a module name unique to the test.

    The registry is the test's own copy, so what the file registers is gone afterwards.
    """
    home = tmp_path / "elsewhere"
    home.mkdir()
    path = home / f"user_signals_{tmp_path.name.replace('-', '_')}.py"
    path.write_text(GOLDEN_CROSS)
    yield path
    sys.modules.pop(path.stem, None)


def test_three_forms_resolve_to_strategies_that_trade_alike(strategy_file: Path) -> None:
    data = goog()
    builtin = backtest(data, "sma_cross", {"fast": 10, "slow": 50})
    by_file = backtest(data, f"{strategy_file}:golden_cross", {"fast": 10, "slow": 50})
    plain = backtest(data, f"{strategy_file}:plain_cross", {"fast": 10, "slow": 50})
    assert by_file.stats["trades"] == builtin.stats["trades"] == plain.stats["trades"] > 0
    assert by_file.stats["final_equity"] == builtin.stats["final_equity"] == plain.stats["final_equity"]
    ref = StrategyRef.parse(f"{strategy_file}:golden_cross")
    assert ref.kind == "file" and ref.target == str(strategy_file) and len(ref.source_hash) == 64
    assert StrategyRef.parse("golden_cross").kind == "file"  # registered by a file: refer to the file
    assert StrategyRef.parse("sma_cross").kind == "builtin"


def test_an_importable_module_is_a_reference_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "mypkg_refs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "signals.py").write_text(GOLDEN_CROSS.replace("golden_cross", "pkg_cross"))
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = StrategyRef.parse("mypkg_refs.signals:pkg_cross")
    assert ref.kind == "module" and ref.load().name == "pkg_cross"
    assert ref.runtime_env() == {"py_modules": [str(package)]}  # not installed: shipped with the job
    assert StrategyRef.parse("sma_cross").runtime_env() is None


def test_an_undecorated_function_gets_parameters_from_its_defaults(strategy_file: Path) -> None:
    strat = get_strategy(f"{strategy_file}:plain_cross")
    assert strat.resolve({}) == {"fast": 10, "slow": 30}
    assert strat.params["fast"].window and strat.params["fast"].type is int
    assert strat.doc.startswith("An undecorated function")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nope", "unknown strategy 'nope'"),
        ("no/such/file.py:f", "no such file"),
        ("os.path:no_such_function", "has no 'no_such_function'"),
        ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
        ("os:path", "is not a function"),
        ("mod:1bad", "is not a Python name"),
        ("", "empty strategy reference"),
    ],
)
def test_bad_references_are_one_line_errors(reference: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_strategy(reference)


def test_a_name_registered_twice_names_both_places(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"strategy name 'sma_cross' registered twice: at tradpal_ray\.backtest\.strategies:sma_cross \(.*strategies\.py:\d+\) and at .*test_strategy_refs"):
        @strategy("sma_cross")
        def sma_cross(bars):  # noqa: ARG001
            return np.zeros(len(bars), bool), np.zeros(len(bars), bool)
    assert get_strategy("sma_cross").func.__module__ == "tradpal_ray.backtest.strategies"  # never replaced


def test_a_file_whose_source_changes_is_refused_where_the_hash_is_checked(strategy_file: Path) -> None:
    ref = StrategyRef.parse(f"{strategy_file}:golden_cross")
    strategy_file.write_text(GOLDEN_CROSS + "\n# edited\n")
    assert ref.current_hash() != ref.source_hash
    sys.modules.pop(strategy_file.stem, None)
    with pytest.raises(ConfigError, match="changed: its source is not the one this run started with"):
        ref.load()


def test_backtest_command_takes_a_file_reference(strategy_file: Path, tmp_path: Path, run_cli: RunCli) -> None:
    data = tmp_path / "GOOG.csv"
    goog().to_csv(data)
    code, out, err = run_cli("backtest", "--data", str(data), "--strategy", f"{strategy_file}:golden_cross",
                             "--param", "fast=10", "--param", "slow=50", "--json")
    assert code == 0, err
    doc = json.loads(out)
    reference = backtest(goog(), "sma_cross", {"fast": 10, "slow": 50})
    assert doc["strategy"] == "golden_cross" and doc["stats"]["trades"] == reference.stats["trades"]


def test_strategies_command_lists_builtins_and_strategy_path_modules(strategy_file: Path, run_cli: RunCli) -> None:
    code, out, _ = run_cli("strategies", "--strategy-path", str(strategy_file), "--json")
    assert code == 0
    listed = {item["name"]: item for item in json.loads(out)["strategies"]}
    assert {"sma_cross", "ema_cross", "rsi_reversion", "bollinger_breakout", "macd", "golden_cross"} <= set(listed)
    assert listed["golden_cross"]["params"]["fast"] == {"type": "int", "default": 10, "min": 1, "max": None,
                                                         "window": True, "help": "fast SMA"}
    assert listed["golden_cross"]["doc"] == "Long when SMA(fast) crosses above SMA(slow); out when it crosses back below."
    assert listed["rsi_reversion"]["params"]["upper"]["max"] == 100.0
    code, _, err = run_cli("strategies", "--strategy-path", "/no/such/dir/x.py")
    assert code == 2 and "no such file" in err
