"""Look-ahead and warm-up checks: a strategy that peeks at the next bar is caught at the right bar,
the built-ins are clean, recursive indicators report their warm-up; in process, on Ray and in the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from market_data import goog, write_goog

from tradpal_ray.errors import ConfigError
from tradpal_ray.validation import check_strategy

RunCli = Callable[..., tuple[int, str, str]]
BUILTINS = ("sma_cross", "ema_cross", "rsi_reversion", "bollinger_breakout", "macd")

PEEKING = textwrap.dedent('''
    """A user's strategy that cheats: it enters on an SMA cross only when the next bar closes higher."""
    import os

    import numpy as np

    from tradpal_ray.backtest import cross_above, cross_below, sma

    CALLS = {calls!r}


    def peeking_cross(bars, fast=10, slow=30):
        open(os.path.join(CALLS, str(os.getpid())), "a").close()  # which processes computed signals
        f, s = sma(bars.close, fast), sma(bars.close, slow)
        rises_next = np.zeros(len(bars), dtype=bool)
        rises_next[:-1] = bars.close[1:] > bars.close[:-1]
        return cross_above(f, s) & rises_next, cross_below(f, s)
''')


@pytest.fixture
def peeking(tmp_path: Path) -> Iterator[str]:
    """The cheating strategy's reference, in a file under a module name unique to the test."""
    calls = tmp_path / "calls"
    calls.mkdir()
    path = tmp_path / f"peeking_{tmp_path.name.replace('-', '_')}.py"
    path.write_text(PEEKING.format(calls=str(calls)))
    yield f"{path}:peeking_cross"
    sys.modules.pop(path.stem, None)


@pytest.fixture
def goog_csv(tmp_path: Path) -> Path:
    path = tmp_path / "goog.csv"
    goog().to_csv(path)
    return path


def cheating_bars() -> np.ndarray:
    """Where the peeking strategy looks ahead, computed with pandas: an SMA(10)/SMA(30) cross on a bar
    the next bar closes above (without the next bar the strategy cannot enter there)."""
    close = goog()["close"]
    fast, slow = close.rolling(10).mean(), close.rolling(30).mean()
    crossed = (fast.shift(1) < slow.shift(1)) & (fast > slow)
    return np.flatnonzero(crossed & (close.shift(-1) > close))


def test_a_strategy_peeking_at_the_next_bar_is_caught_at_every_bar_it_cheats(peeking: str) -> None:
    expected = cheating_bars()
    frame = goog()
    report = check_strategy(frame, peeking, prefixes=len(frame))
    assert report.exhaustive and report.prefixes_checked == len(frame)
    assert not report.clean
    assert [bar.bar for bar in report.lookahead] == expected.tolist()
    first = report.first
    assert first is not None and first.bar == expected[0]
    assert first.signal == "entry" and first.with_future and not first.without_future
    assert first.known_bars == first.bar + 1  # computed with the bars up to and including its own
    assert first.time == frame.index[first.bar].tz_localize("UTC").isoformat()


def test_the_default_budget_still_checks_every_signal_of_the_whole_series(peeking: str) -> None:
    frame = goog()
    report = check_strategy(frame, peeking)  # 1,000 prefixes < 2,148 bars: signal bars first
    assert not report.exhaustive and report.prefixes_checked == 1000
    assert [bar.bar for bar in report.lookahead] == cheating_bars().tolist()


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_is_clean(name: str) -> None:
    report = check_strategy(goog(), name)
    assert report.clean and report.first is None, report.lookahead[:3]
    assert report.prefixes_checked == 1000 and len(report.warmup) == 16


@pytest.mark.parametrize(("name", "recursive"), [("ema_cross", True), ("rsi_reversion", True), ("macd", True),
                                                 ("sma_cross", False), ("bollinger_breakout", False)])
def test_recursive_indicators_need_a_warmup_longer_than_their_window(name: str, recursive: bool) -> None:
    """EMA and RSI never forget their first bar: their signals depend on the start well past the window;
    an SMA forgets it exactly, so its signals agree within the window."""
    report = check_strategy(goog(), name)
    assert report.longest_window == max(v for k, v in report.params.items() if k in ("fast", "slow", "window", "signal"))
    if recursive:
        assert report.warmup_bars > report.longest_window
    else:
        assert 0 < report.warmup_bars <= report.longest_window


def test_warmup_of_a_strategy_that_never_forgets_its_start(tmp_path: Path) -> None:
    """Close above its expanding mean: the mean depends on the first bar forever, so from most starts the
    signals still disagree with the whole series' far beyond any window."""
    path = tmp_path / f"expanding_{tmp_path.name.replace('-', '_')}.py"
    path.write_text("import pandas as pd\n\ndef above_mean(bars):\n"
                    "    mean = pd.Series(bars.close).expanding().mean().to_numpy()\n"
                    "    return bars.close > mean, bars.close < mean\n")
    try:
        report = check_strategy(goog(), f"{path}:above_mean", starts=[100, 500])
    finally:
        sys.modules.pop(path.stem, None)
    assert report.clean and report.longest_window == 0
    assert [p.start for p in report.warmup] == [100, 500]
    assert report.warmup_bars > 1000


def test_bad_input_is_a_config_error() -> None:
    frame = goog()
    with pytest.raises(ConfigError, match="unknown strategy"):
        check_strategy(frame, "no_such_strategy")
    with pytest.raises(ConfigError, match="needs at least 5000 bars"):
        check_strategy(frame, "sma_cross", {"slow": 5000})
    with pytest.raises(ConfigError, match="prefix lengths"):
        check_strategy(frame, "sma_cross", prefixes=[0, 10])
    with pytest.raises(ConfigError, match="--executor"):
        check_strategy(frame, "sma_cross", executor="threads")


def test_a_strategy_that_fails_on_a_cut_series_names_the_cut(tmp_path: Path) -> None:
    path = tmp_path / f"fragile_{tmp_path.name.replace('-', '_')}.py"
    path.write_text("def fragile(bars):\n    assert len(bars) > 100, 'too few bars'\n"
                    "    return bars.close > bars.open, bars.close < bars.open\n")
    try:
        with pytest.raises(ConfigError, match=r"fragile failed on bars 0\.\.\d+ of 2148: AssertionError: too few bars"):
            check_strategy(goog(), f"{path}:fragile")
    finally:
        sys.modules.pop(path.stem, None)


def test_ray_tasks_find_what_the_process_finds(ray_session: None, peeking: str) -> None:
    frame = goog()
    local = check_strategy(frame, peeking, prefixes=300)
    calls = Path(peeking.partition(":")[0]).parent / "calls"
    for pid in calls.iterdir():
        pid.unlink()
    on_ray = check_strategy(frame, peeking, prefixes=300, executor="ray")
    assert on_ray == local and not on_ray.clean
    assert {p.name for p in calls.iterdir()} - {str(os.getpid())}, "the probes ran in Ray workers"
    assert check_strategy(frame, "macd", prefixes=200, executor="ray") == check_strategy(frame, "macd", prefixes=200)


def test_cli_exit_codes(run_cli: RunCli, peeking: str, goog_csv: Path) -> None:
    first = int(cheating_bars()[0])
    code, out, err = run_cli("check-strategy", peeking, "--data", str(goog_csv))
    assert code == 1 and out == ""
    assert "look-ahead" in err and f"first: bar {first} (" in err

    code, out, _ = run_cli("check-strategy", peeking, "--data", str(goog_csv), "--json", "--param", "fast=10")
    answer = json.loads(out)
    assert code == 1 and answer["clean"] is False and answer["first_lookahead"]["bar"] == first
    assert answer["first_lookahead"]["signal"] == "entry" and answer["params"] == {"fast": 10, "slow": 30}

    code, out, err = run_cli("check-strategy", "ema_cross", "--data", str(goog_csv), "--param", "fast=5", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["clean"] is True and answer["warmup_bars"] > answer["longest_window"] == 26
    code, _, err = run_cli("check-strategy", "bollinger_breakout", "--data", str(goog_csv))
    assert code == 0 and "no look-ahead" in err and "warm-up:" in err


def test_cli_reads_a_series_from_the_store(run_cli: RunCli, store_root: Path) -> None:
    write_goog(store_root, {"GOOG/USD": 1.0}, exchange="test")
    code, out, _ = run_cli("check-strategy", "ema_cross", "--store", str(store_root), "--exchange", "test",
                           "--symbol", "GOOG/USD", "--timeframe", "1d", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["bars"] == len(goog()) and answer["clean"] is True
    code, _, err = run_cli("check-strategy", "ema_cross", "--store", str(store_root), "--exchange", "test",
                           "--symbol", "GOOG/USD")
    assert code == 2 and err.startswith("error: give --data FILE, or --symbol and --timeframe")


@pytest.mark.parametrize("argv", [
    ("no_such_strategy", "--data", "{csv}"),
    ("sma_cross", "--data", "{csv}", "--param", "fast=oops"),
    ("sma_cross", "--data", "{csv}", "--param", "slow=99999"),
    ("sma_cross", "--data", "{csv}", "--executor", "threads"),
    ("sma_cross", "--data", "{csv}", "--prefixes", "0"),
    ("sma_cross", "--data", "/no/such/file.csv"),
    ("sma_cross",),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(run_cli: RunCli, goog_csv: Path, argv: tuple[str, ...]) -> None:
    code, out, err = run_cli("check-strategy", *(arg.format(csv=goog_csv) for arg in argv))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_cli_on_ray(ray_session: None, run_cli: RunCli, peeking: str, goog_csv: Path) -> None:
    code, out, _ = run_cli("check-strategy", peeking, "--data", str(goog_csv), "--executor", "ray", "--json",
                           "--prefixes", "200")
    assert code == 1 and json.loads(out)["first_lookahead"]["bar"] == cheating_bars()[0]
    code, out, _ = run_cli("check-strategy", "rsi_reversion", "--data", str(goog_csv), "--executor", "ray", "--json",
                           "--prefixes", "200")
    assert code == 0 and json.loads(out)["clean"] is True


def test_the_command_module_imports_nothing_heavy() -> None:
    """``tradpal-ray check-strategy --help`` must answer at once: the module loads Typer, not numpy/pandas/Ray."""
    code = textwrap.dedent("""
        import pathlib, sys, types
        import tradpal_ray
        package = types.ModuleType("tradpal_ray.cli")  # the module alone, not every other command
        package.__path__ = [str(pathlib.Path(tradpal_ray.__file__).parent / "cli")]
        sys.modules["tradpal_ray.cli"] = package
        import tradpal_ray.cli.check
        print(sorted(m for m in ("numpy", "pandas", "ray", "ccxt", "numba", "pyarrow") if m in sys.modules))
    """)
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"


def test_report_as_json_round_trips_its_figures() -> None:
    report = check_strategy(goog().iloc[:300], "sma_cross", {"fast": 5, "slow": 20}, starts=3)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["bars"] == 300 and data["exhaustive"] is True and data["prefixes_checked"] == 300
    assert data["warmup_bars"] == report.warmup_bars and len(data["warmup"]) == 3
    assert data["first_lookahead"] is None and data["lookahead"] == []
