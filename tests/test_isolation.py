"""Isolation: a tradpal command never joins, kills or replaces what it was not told to.

The cluster tests run a stranger's ``ray.init()`` session in a subprocess (as a user's own Ray
program would) and two tradpal instances on one cluster, all real: Ray, Serve, the simulator
over ccxt, HTTP. The plain functions (names, paths, clocks) are tested without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tradpal_ray.cluster import instance_name, ray_target
from tradpal_ray.config import load_settings
from tradpal_ray.errors import ConfigError
from tradpal_ray.market import CandleStore
from tradpal_ray.market.exchange import SIMULATOR, create_exchange
from tradpal_ray.stats.local_redis import free_port, wait_for
from tradpal_ray.storage import absolute

CLI = [sys.executable, "-m", "tradpal_ray.cli"]
FOREIGN = textwrap.dedent("""
    import sys, threading, ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a user's own private session
    print(ray.get_runtime_context().gcs_address, flush=True)
    threading.Event().wait()
""")


def _env(**extra: str) -> dict[str, str]:
    """This environment without RAY_ADDRESS; Ray's token mode, which joining a cluster by address needs."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return {**env, "COLUMNS": "200", "RAY_AUTH_MODE": "token", **extra}


def _stop(process: subprocess.Popen[str], timeout: float = 120, signal_first: bool = True) -> tuple[str, str]:
    """Ctrl-C ``process`` (as a user would; ``signal_first=False``: let it end by itself), wait for it,
    return its output (killed after ``timeout`` s)."""
    if signal_first and process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


@pytest.fixture(scope="module")
def foreign_cluster() -> Iterator[str]:
    """A stranger's ``ray.init()`` session running during the tests; its GCS address."""
    process = subprocess.Popen([sys.executable, "-c", FOREIGN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_env(), start_new_session=True)
    try:
        address = process.stdout.readline().strip()
        assert address, process.stderr.read() if process.poll() is not None else "no address"
        yield address
    finally:
        _stop(process)


# -- plain functions ---------------------------------------------------------------------------


def test_without_an_address_commands_start_a_private_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_target(None) == "local"  # was "auto": it joined whatever Ray ran on the machine
    assert ray_target(None, discover=True) == "auto"  # the scripts `ray submit` runs on a head
    assert ray_target("10.0.0.1:6379") == "10.0.0.1:6379" and ray_target("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert ray_target(None) == ray_target(None, discover=True) == "10.0.0.2:6379"


def test_store_paths_are_absolute_on_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRADPAL_STORE", raising=False)
    assert load_settings().store == str(tmp_path / "tradpal-data")  # the default "./tradpal-data", resolved here
    assert load_settings(store="data/x").store == str(tmp_path / "data" / "x")
    assert load_settings(store="s3://bucket/prefix").store == "s3://bucket/prefix"
    assert absolute("~/store") == str(Path.home() / "store")


def test_instance_names_come_from_the_store_or_the_user() -> None:
    first, second = instance_name(None, "/data/a"), instance_name(None, "/data/b")
    assert first != second and first == instance_name(None, "/data/a") and first.startswith("tp-")
    assert instance_name("desk-1", "/data/a") == "desk-1"
    with pytest.raises(ConfigError, match="--name"):
        instance_name("a b/c", "/data/a")


def test_the_simulator_is_its_own_exchange_id() -> None:
    client = create_exchange(SIMULATOR, url="http://127.0.0.1:9")
    assert client.id == "binance" and client.urls["api"]["public"].startswith("http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="--exchange-url"):
        create_exchange(SIMULATOR)


# -- the simulator's clock and where its candles go -------------------------------------------


def test_simulator_clock_never_runs_ahead_of_the_wall_clock() -> None:
    from tradpal_ray.sim import ExchangeSimulator
    from tradpal_ray.sim.stream import SimClock, start_for_run

    clock = SimClock(int(time.time() * 1000) - 2_000, speed=10_000)  # would be 5.5 h ahead after 2 s
    clock.start()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert clock.now_ms() <= time.time() * 1000
    assert clock.now_ms() >= time.time() * 1000 - 1_000  # caught up, then runs at real time
    now = 1_700_000_000_000
    assert start_for_run(60, 600, now) == now - 600 * 59 * 1000 and start_for_run(0.5, 600, now) == now
    default = ExchangeSimulator(["BTC/USDT"], speed=60).now_ms()
    assert default <= time.time() * 1000 - 3_500_000  # an hour at 60x fits before the wall clock
    with pytest.raises(ConfigError, match="ahead of the wall clock"):
        ExchangeSimulator(["BTC/USDT"], start=int(time.time() * 1000) + 3_600_000)


def test_feed_lag_is_measured_on_the_exchange_clock(make_simulator: Any) -> None:
    """A simulator two years in the past at 600x: lag is seconds of its clock, not two years."""
    import asyncio

    from tradpal_ray.feeds import Feed, FeedConfig

    sim = make_simulator(["BTC/USDT"], speed=600.0)

    feed = Feed(FeedConfig(symbols=("BTC/USDT",), exchange=SIMULATOR, url=sim.url))

    async def run() -> dict[str, Any]:
        await feed.start()
        try:
            deadline = time.monotonic() + 60
            while feed.clock.rate is None or any(row["lag_ms"] is None for row in feed.status()["streams"]):
                assert time.monotonic() < deadline, feed.status()
                await asyncio.sleep(0.1)  # polling the feed's status for its first messages
            return feed.status()
        finally:
            await feed.stop()

    status = asyncio.run(run())
    assert status["exchange"] == SIMULATOR
    for row in status["streams"]:
        assert -60_000 < row["lag_ms"] < 120_000, row  # 600x: 0.2 s of ours is 120 s of its clock
    assert 300_000 < feed.clock.rate < 1_200_000  # its ms per second of ours: about 600x


def test_demo_history_window_is_the_same_all_day_and_streaming_resumes(tmp_path: Path) -> None:
    from tradpal_ray.cli._demo import DAY_MS, history_window, simulator_start
    from tradpal_ray.market import candles_table

    morning, evening = 1_764_547_200_000 + 3_600_000, 1_764_547_200_000 + 20 * 3_600_000  # 2025-12-01 01:00, 20:00
    window = history_window(7, 60, 30, morning)
    assert window == history_window(7, 60, 30, evening) == (1_764_547_200_000 - 7 * DAY_MS, 1_764_547_200_000)
    assert history_window(7, 60, None, morning)[1] <= morning - 3600 * 59 * 1000  # an hour at 60x fits
    store = CandleStore(tmp_path)
    assert simulator_start(store, ["BTC/USDT"], window, morning) == window[1]
    rows = [[window[1] + k * 60_000, 1.0, 1.0, 1.0, 1.0, 1.0] for k in range(30)]
    store.write(candles_table(rows, exchange=SIMULATOR, symbol="BTC/USDT", timeframe="1m"))
    assert simulator_start(store, ["BTC/USDT"], window, morning) == window[1] + 30 * 60_000  # after the stored ones
    assert simulator_start(store, ["BTC/USDT"], window, window[1] + 600_000) == window[1] + 600_000  # never ahead


# -- a stranger's Ray and a second tradpal instance ----------------------------------------------


def test_a_command_without_address_never_joins_a_strangers_ray(foreign_cluster: str, tmp_path: Path) -> None:
    probe = ("from tradpal_ray.cluster import connect; import ray; import sys; "
             "mode = connect(sys.argv[1] if len(sys.argv) > 1 else None, include_dashboard=False); "
             "print(mode, ray.get_runtime_context().gcs_address); ray.shutdown()")
    alone, told = (subprocess.Popen([sys.executable, "-c", probe, *target], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=_env(), cwd=tmp_path) for target in ([], [foreign_cluster]))
    (alone_out, alone_err), (told_out, told_err) = (_stop(p, 180, signal_first=False) for p in (alone, told))  # ran at once
    assert alone.returncode == 0, alone_err[-2000:]
    mode, address = alone_out.split()
    assert mode == "local" and address != foreign_cluster
    assert told.returncode == 0 and told_out.split() == ["cluster", foreign_cluster], told_err[-2000:]


def _serve(address: str, store: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "serve", "--address", address, "--store", str(store), "--port", str(port),
                             "--redis-url", "redis://127.0.0.1:1/0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:  # nothing listens (yet, or any more)
        return 0, None


def test_two_instances_on_one_cluster_never_replace_or_kill_each_other(
    foreign_cluster: str, make_simulator: Any, tmp_path: Path
) -> None:
    sim = make_simulator(["BTC/USDT"], speed=300.0)
    port = free_port()
    store_a, store_b = tmp_path / "a", tmp_path / "b"
    CandleStore(store_a).write(_one_candle("AAA/USDT"))
    CandleStore(store_b).write(_one_candle("BBB/USDT"))

    first = _serve(foreign_cluster, store_a, port)
    stream_cmd = [*CLI, "stream", "--address", foreign_cluster, "--symbols", "BTC/USDT", "--exchange", SIMULATOR,
                  "--exchange-url", sim.url, "--no-trades"]
    streaming = subprocess.Popen([*stream_cmd, "--store", str(store_a)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=_env())  # until Ctrl-C
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/candles/coverage")[0] == 200, timeout=150)
        assert _symbols(port) == "AAA/USDT"
        wait_for(lambda: any(s.exchange == SIMULATOR for s in CandleStore(store_a).series()), timeout=150)

        # Another instance (another store) on the same cluster: its serve refuses, its stream runs
        # beside ours under its own name and exits without touching ours; a stream under our name
        # refuses. The three are independent of each other: they run at once.
        second = _serve(foreign_cluster, store_b, free_port())
        other_stream = subprocess.Popen([*stream_cmd, "--store", str(store_b), "--duration", "3"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        same_name = subprocess.Popen([*stream_cmd, "--store", str(store_b), "--name", instance_name(None, str(store_a)),
                                      "--duration", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=_env())
        (_, err), (_, other_err), (_, same_err) = (_stop(p, 180, signal_first=False) for p in (second, other_stream, same_name))
        assert second.returncode == 2, err[-2000:]
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: Serve on this Ray cluster already runs stats-tp-")
        assert "Traceback" not in err
        assert other_stream.returncode == 0, other_err[-2000:]
        assert same_name.returncode == 2 and "error: feed actor feed:sim:0@tp-" in same_err
        assert "already runs" in same_err and "Traceback" not in same_err
        assert _symbols(port) == "AAA/USDT"  # the first API still answers with its own store
        assert streaming.poll() is None  # and the first feed still streams

        out, err = _stop(streaming)
        assert streaming.returncode == 0, err[-3000:]
        assert "stopped:" in err and int(err.split("stopped: ")[1].split()[0]) > 0
        series = {(s.exchange, s.symbol) for s in CandleStore(store_a).series()}
        assert (SIMULATOR, "BTC/USDT") in series and not any(exchange == "binance" for exchange, _ in series)
    finally:
        _stop(streaming)
        out, err = _stop(first)
    # One true start-up line, a quiet stop: no Serve chatter, no controller killed under us.
    assert err.count("stats API on http://") == 1 and "(Serve app stats-tp-" in err and "Serve started" in err, err
    for noise in ("Started Serve", "Connecting to existing Serve app", "graceful_shutdown", "killed by", "Traceback"):
        assert noise not in out + err, (out + err)[-3000:]
    assert _get(f"http://127.0.0.1:{port}/candles/coverage")[0] in (0, 404)  # its app is gone


def _symbols(port: int) -> str:
    """Which of the two test stores the API on ``port`` answers from."""
    status, body = _get(f"http://127.0.0.1:{port}/candles/coverage")
    assert status == 200, body
    text = json.dumps(body)
    return "+".join(symbol for symbol in ("AAA/USDT", "BBB/USDT") if symbol in text)


def _one_candle(symbol: str) -> Any:
    from tradpal_ray.market import candles_table

    return candles_table([[1_700_000_040_000, 1.0, 1.0, 1.0, 1.0, 1.0]], exchange="test", symbol=symbol,
                         timeframe="1m")
