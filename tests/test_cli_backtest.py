"""``tradpal-ray backtest`` end to end through ``tradpal_ray.cli.main``: output and errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from backtesting.test import GOOG

from tradpal_ray.backtest import BacktestConfig, backtest
from tradpal_ray.cli.app import console
from tradpal_ray.market.schema import to_ms

Runner = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def run(run_cli: Callable[..., tuple[int, str, str]]) -> Runner:
    return lambda argv: run_cli("backtest", *argv)


@pytest.fixture(scope="module")
def goog_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "goog.csv"
    GOOG.to_csv(path)  # capitalised columns and an unnamed date index column
    return path


def test_json_output_is_one_object_matching_the_api(goog_csv: Path, run: Runner) -> None:
    code, out, _ = run(["--data", str(goog_csv), "--param", "fast=10", "--param", "slow=30", "--json", "--trades"])
    assert code == 0
    doc = json.loads(out)
    expected = backtest(GOOG, "sma_cross", {"fast": 10, "slow": 30}, BacktestConfig())
    assert doc["stats"]["trades"] == expected.stats["trades"] == 32
    assert doc["stats"]["final_equity"] == pytest.approx(expected.stats["final_equity"], rel=1e-12)
    assert {"return_pct", "max_drawdown_pct", "win_rate_pct", "sharpe"} <= set(doc["stats"])
    first = doc["trades"][0]
    assert {"entry_time", "exit_time", "entry_price", "exit_price", "units", "pnl"} <= set(first)
    assert pd.Timestamp(first["entry_time"]) == expected.trades.entry_time.iloc[0]
    assert doc["trades"][-1]["exit_time"] is None  # the position still open at the end


def test_nan_statistics_are_null_and_trades_key_only_on_request(tmp_path: Path, run: Runner) -> None:
    flat = GOOG.iloc[:200].copy()
    flat[["Open", "High", "Low", "Close"]] = 100.0
    path = tmp_path / "flat.parquet"
    flat.to_parquet(path)
    code, out, _ = run(["--data", str(path), "--json"])
    doc = json.loads(out)
    assert code == 0 and "trades" not in doc
    assert doc["stats"]["trades"] == 0 and doc["stats"]["win_rate_pct"] is None


def test_human_output_goes_to_stderr(goog_csv: Path, run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 160)
    code, out, err = run(["--data", str(goog_csv), "--trades", "--since", "2010-01-01"])
    assert code == 0 and out == ""
    assert "final_equity" in err and "exit_reason" in err
    assert err.count(" signal ") == 13  # one row per closed trade since 2010


def test_since_and_until_take_epoch_ms_as_the_help_says(goog_csv: Path, run: Runner) -> None:
    assert to_ms("1262304000000") == to_ms("2010-01-01") == 1262304000000
    assert to_ms("2010") == to_ms("20100101") == 1262304000000  # short digit strings stay ISO dates
    iso = run(["--data", str(goog_csv), "--since", "2010-01-01", "--until", "2012-01-01", "--json"])
    ms = run(["--data", str(goog_csv), "--since", "1262304000000", "--until", str(to_ms("2012-01-01")), "--json"])
    assert ms[0] == iso[0] == 0, ms[2]
    assert json.loads(ms[1]) == json.loads(iso[1])


def test_store_source(store_root: Path, run: Runner) -> None:
    from tradpal_ray.market.schema import candles_table
    from tradpal_ray.market.store import CandleStore

    frame = GOOG.iloc[:300].rename(columns=str.lower)
    frame.index = pd.date_range("2024-01-01", periods=len(frame), freq="h", tz="UTC")
    CandleStore(store_root).write(candles_table(frame.astype(np.float64), exchange="binance", symbol="BTC/USDT", timeframe="1h"))
    code, out, _ = run(["--store", str(store_root), "--exchange", "binance", "--symbol", "BTC/USDT",
                        "--timeframe", "1h", "--json"])
    assert code == 0
    assert json.loads(out)["stats"]["final_equity"] == pytest.approx(backtest(frame).stats["final_equity"], rel=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "nope"], "unknown strategy 'nope'"),
        (["--param", "fats=3"], "unknown parameter fats"),
        (["--param", "fast"], "bad --param 'fast': expected NAME=VALUE"),
        (["--param", "fast=ten"], "'ten' is not a number"),
        (["--param", "fast=40"], "fast must be below slow"),
        (["--fee", "-1"], "fee must be in"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(goog_csv: Path, args: list[str], message: str, run: Runner) -> None:
    code, out, err = run(["--data", str(goog_csv), *args])
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_files_exit_2(tmp_path: Path, run: Runner) -> None:
    no_volume = tmp_path / "nv.csv"
    GOOG.drop(columns=["Volume"]).to_csv(no_volume)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    cases = [
        (no_volume, "missing column(s) volume"),
        (garbage, "cannot read"),
        (tmp_path / "absent.csv", "cannot read"),
    ]
    for path, message in cases:
        code, _, err = run(["--data", str(path)])
        assert code == 2 and message in err, err
    code, _, err = run(["--symbol", "BTC/USDT"])
    assert code == 2 and "--timeframe" in err
