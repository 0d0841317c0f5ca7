"""History backfill with the real ccxt client against the simulator: exact, resumable, patient."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pyarrow as pa
import pytest

from tradpal_ray.errors import ConfigError, ExchangeUnavailable
from tradpal_ray.market import CandleStore, create_exchange, to_ms
from tradpal_ray.market.backfill import BackfillReport, backfill, ranges_to_fetch
from tradpal_ray.market.markets import MarketInfoStore
from tradpal_ray.market.retry import Backoff
from tradpal_ray.sim import SimulatorThread, open_replay, run_simulator

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
NOW = "2024-03-01T00:00:00Z"
SINCE = to_ms("2024-02-27T00:00:00Z")  # two days of 1m candles: three pages of 1000 per symbol
FAST = Backoff(retries=4, base=0.01, cap=0.05)
COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with run_simulator(SYMBOLS, speed=1.0, start=NOW) as handle:
        yield handle


def run(sim: SimulatorThread, store: CandleStore, **kwargs: object) -> list[BackfillReport]:
    async def go() -> list[BackfillReport]:
        client = create_exchange("binance", url=sim.url, pro=True)
        try:
            options = {"symbols": SYMBOLS, "timeframe": "1m", "since": SINCE, "policy": FAST, **kwargs}
            return await backfill(client, store, exchange="binance", **options)
        finally:
            await client.close()

    return asyncio.run(go())


def snapshot(store: CandleStore) -> dict[str, pa.Table]:
    return {s: store.read_table("binance", s, "1m").select(COLUMNS) for s in SYMBOLS}


def test_backfill_equals_the_exchange_and_stops_at_the_forming_candle(sim: SimulatorThread, tmp_path: Path) -> None:
    store = CandleStore(tmp_path)
    reports = run(sim, store)
    forming = sim.now_ms() // 60_000 * 60_000
    for report in reports:
        assert report.pages >= 3 and report.gaps == []
        table = store.read_table("binance", report.symbol, "1m")
        truth = sim.closed_candles(report.symbol, "1m", SINCE, table.column("open_time")[-1].value + 60_000)
        assert table.select(COLUMNS).equals(truth.select(COLUMNS))
        assert table.column("open_time")[0].value == SINCE
        assert table.column("open_time")[-1].value < forming
        assert report.rows_written == table.num_rows == (table.column("open_time")[-1].value - SINCE) // 60_000 + 1


def test_second_run_adds_nothing(sim: SimulatorThread, tmp_path: Path) -> None:
    store = CandleStore(tmp_path)
    first = run(sim, store, until=SINCE + 2500 * 60_000)
    again = run(sim, store, until=SINCE + 2500 * 60_000)
    assert [r.rows_written for r in first] == [2500] * 3
    assert [r.rows_written for r in again] == [0, 0, 0]
    assert all(store.read_table("binance", s, "1m").num_rows == 2500 for s in SYMBOLS)


def test_interrupted_then_resumed_equals_an_uninterrupted_run(sim: SimulatorThread, tmp_path: Path) -> None:
    until = SINCE + 2500 * 60_000
    reference = CandleStore(tmp_path / "reference")
    run(sim, reference, until=until)

    interrupted = CandleStore(tmp_path / "interrupted")
    pages: list[str] = []

    class Interrupted(Exception):
        pass

    def stop_half_way(symbol: str, done: int, total: int) -> None:
        pages.append(symbol)
        if len(pages) == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(sim, interrupted, until=until, on_progress=stop_half_way)
    partial = sum(interrupted.read_table("binance", s, "1m").num_rows for s in SYMBOLS)
    assert 0 < partial < 3 * 2500
    resumed = run(sim, interrupted, until=until)
    assert sum(r.rows_written for r in resumed) == 3 * 2500 - partial
    assert snapshot(interrupted) == snapshot(reference)


def test_rate_limits_and_server_errors_are_retried(sim: SimulatorThread, tmp_path: Path) -> None:
    before = sim.stats()["faults"]
    store = CandleStore(tmp_path)
    sim.inject("rest_error", count=2, status=429, retry_after=0)
    sim.inject("rest_error", count=1, status=418, retry_after=0)
    sim.inject("rest_error", count=1, status=503)
    reports = run(sim, store, until=SINCE + 1500 * 60_000)
    assert [r.rows_written for r in reports] == [1500] * 3
    assert sim.stats()["faults"]["served"].get("rest_error", 0) - before["served"].get("rest_error", 0) == 4


def test_exchange_that_keeps_failing_gives_a_clear_error(sim: SimulatorThread, tmp_path: Path) -> None:
    sim.inject("rest_error", count=50, status=503)
    try:
        with pytest.raises(ExchangeUnavailable, match="no answer after 5 attempts"):
            run(sim, CandleStore(tmp_path))
    finally:
        sim.inject("clear")


def test_unreachable_exchange(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def go() -> None:
        client = create_exchange("binance", url=f"http://127.0.0.1:{port}", pro=True)
        try:
            await backfill(client, CandleStore(tmp_path), exchange="binance", symbols=["BTC/USDT"], timeframe="1m",
                           since=SINCE, policy=FAST)
        finally:
            await client.close()

    with pytest.raises(ExchangeUnavailable, match="load_markets"):
        asyncio.run(go())


def test_bad_requests(sim: SimulatorThread, tmp_path: Path) -> None:
    store = CandleStore(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown symbol\(s\) DOGE/USDT on binance; valid: BTC/USDT, ETH/USDT, SOL/USDT"):
        run(sim, store, symbols=["BTC/USDT", "DOGE/USDT"])
    with pytest.raises(ConfigError, match="unknown timeframe '2m'; valid: 1m, 5m"):
        run(sim, store, timeframe="2m")
    with pytest.raises(ConfigError, match="must be before until"):
        run(sim, store, since=SINCE, until=SINCE - 60_000)
    assert store.series() == []


def test_ranges_to_fetch() -> None:
    assert ranges_to_fetch(0, 10, None, None, 1) == [(0, 10)]
    assert ranges_to_fetch(0, 10, 3, 6, 1) == [(0, 3), (7, 10)]
    assert ranges_to_fetch(0, 10, 0, 9, 1) == []
    assert ranges_to_fetch(5, 10, 0, 2, 1) == [(5, 10)]


def cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tradpal_ray.cli", *args, "--store", str(store)],
        capture_output=True, text=True, timeout=120,
    )


def test_fetch_command(sim: SimulatorThread, tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]) -> None:
    ok = cli("fetch", "--symbols", "BTC/USDT", "--since", "2024-02-29T20:00", "--until", "2024-02-29T22:00",
             "--exchange-url", sim.url, store=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "BTC/USDT" in ok.stderr and "120" in ok.stderr
    assert CandleStore(tmp_path).read_table("binance", "BTC/USDT", "1m").num_rows == 120

    # The market's lot step is recorded, and store backtests size orders in it by default.
    info = httpx.get(f"{sim.url}/api/v3/exchangeInfo", timeout=10).json()
    [btc] = [s for s in info["symbols"] if s["symbol"] == "BTCUSDT"]
    step = float(next(f["stepSize"] for f in btc["filters"] if f["filterType"] == "LOT_SIZE"))
    assert MarketInfoStore(tmp_path).size_unit("binance", "BTC/USDT") == step < 1
    args = ("backtest", "--symbol", "BTC/USDT", "--timeframe", "1m", "--param", "fast=3", "--param", "slow=8", "--json")
    default = cli(*args, store=tmp_path)
    assert default.returncode == 0, default.stderr
    doc = orjson.loads(default.stdout)
    assert doc["config"]["size_unit"] == step and doc["stats"]["trades"] > 0 and doc["warnings"] == []
    whole = cli(*args, "--size-unit", "1", store=tmp_path)  # 10,000 cash cannot buy one BTC
    doc = orjson.loads(whole.stdout)
    assert doc["stats"]["trades"] == 0 and doc["stats"]["unfilled_entries"] > 0
    assert doc["warnings"][0].startswith("0 trades: ") and "no size unit affordable" in doc["warnings"][0]
    assert "warning: 0 trades: " in whole.stderr

    for args, message in [
        (["--symbols", "NOPE/USDT", "--since", "2024-02-29"], "unknown symbol(s) NOPE/USDT"),
        (["--symbols", "BTC/USDT", "--since", "2024-02-29", "--timeframe", "7m"], "unknown timeframe '7m'"),
        (["--symbols", "BTC/USDT", "--since", "2024-02-29", "--until", "2024-02-28"], "must be before until"),
        (["--symbols", "BTC/USDT", "--since", "yesterday-ish"], "not a time"),
        (["--symbols", "BTC/USDT", "--since", "2024-02-29", "--exchange", "nosuchex"], "unknown exchange 'nosuchex'"),
    ]:
        code, _, err = run_cli("fetch", *args, "--exchange-url", sim.url, "--store", str(tmp_path))  # in-process: no start-up
        assert code == 2, err
        assert message in err and "Traceback" not in err


def test_two_concurrent_fetch_runs_on_one_series_lose_nothing(sim: SimulatorThread, tmp_path: Path) -> None:
    """Issue 11: two `fetch` runs of one series at once died with FileNotFoundError and left candles missing."""
    since, until = "2024-01-10T00:00", "2024-02-29T00:00"  # 72,000 candles: 72 pages each, two periods
    args = ["fetch", "--symbols", "BTC/USDT", "--since", since, "--until", until, "--exchange-url", sim.url,
            "--store", str(tmp_path)]
    runs = [subprocess.Popen([sys.executable, "-m", "tradpal_ray.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [run.communicate(timeout=240) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait(timeout=30)
    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0 and "Traceback" not in err, err
    store = CandleStore(tmp_path)
    table = store.read_table("binance", "BTC/USDT", "1m")
    truth = sim.closed_candles("BTC/USDT", "1m", to_ms(since), to_ms(until))
    assert table.num_rows == truth.num_rows == 72_000
    assert table.select(COLUMNS).equals(truth.select(COLUMNS))


def test_store_replays_through_the_simulator(sim: SimulatorThread, tmp_path: Path) -> None:
    """Backfilled candles served again by a replaying simulator come back identical over ccxt."""
    store = CandleStore(tmp_path)
    run(sim, store, symbols=["ETH/USDT"], until=SINCE + 1200 * 60_000)
    stored = store.read_table("binance", "ETH/USDT", "1m").select(COLUMNS)
    with run_simulator(source=open_replay([tmp_path]), start=SINCE + 1200 * 60_000) as replay:
        async def fetch() -> list[list[float]]:
            client = create_exchange("binance", url=replay.url, pro=True)
            try:
                return await client.fetch_ohlcv("ETH/USDT", "1m", since=SINCE, limit=1000)
            finally:
                await client.close()

        rows = asyncio.run(fetch())
    assert len(rows) == 1000
    assert [row[0] for row in rows] == stored.column("open_time").cast(pa.int64()).to_pylist()[:1000]
    assert [row[4] for row in rows] == stored.column("close").to_pylist()[:1000]
