"""User mistakes and failing services end in one clear line, fast, with nothing left behind.

No test here starts Ray: the unreachable-cluster cases run the CLI as a child process so
that a regression (``ray.init`` retrying for minutes, or a second Ray in pytest) stays out
of the test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from market_data import goog

from tradpal_ray.cli import _demo as demo
from tradpal_ray.cli import backtest as backtest_cli
from tradpal_ray.stats.local_redis import RedisProcess, free_port

RunCli = Callable[..., tuple[int, str, str]]
GRID_ARGS = ["--grid", "fast=5,10", "--grid", "slow=20,30"]


def flat(text: str) -> str:
    """Console output without rich's line wrapping."""
    return " ".join(text.split())


@pytest.fixture
def goog_csv(tmp_path: Path) -> Path:
    path = tmp_path / "GOOG.csv"
    goog().to_csv(path)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--since", "last tuesday"], "not a time: 'last tuesday'"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--until", "soon"], "not a time: 'soon'"),
        (["--symbols", "GOOG/USD", "--timeframe", "7m", *GRID_ARGS], "unknown timeframe '7m'"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--metric", "luck"], "unknown metric 'luck'"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--samples", "0"], "samples must be positive"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--strategy", "nope"], "unknown strategy 'nope'"),
        (["--resume", "no-such-run"], "unknown run 'no-such-run'"),
        (["--resume", ".."], "unknown run '..': run ids look like"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--since", "2024-02-01", "--until", "2024-01-01"],
         "--since 2024-02-01 is not before --until 2024-01-01"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", "--grid", "fast=1:10000:1", "--grid", "slow=2:20000:1"],
         "the grid has 199,990,000 combinations, over the limit of 10,000,000"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--executor", "gpu"], "--executor must be one of"),
        (["--symbols", "GOOG/USD", "--timeframe", "1d", *GRID_ARGS, "--strategy", "no/such/file.py:f"], "no such file"),
        (["--symbols", "NOPE/USD", "--timeframe", "1d", *GRID_ARGS], "no test 1d candles for NOPE/USD in the store at"),
    ],
)
def test_sweep_rejects_a_bad_request_before_connecting_to_ray(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    def no_ray(*args: object, **kwargs: object) -> str:
        raise AssertionError("connect() called for a request that cannot run")

    monkeypatch.setattr("tradpal_ray.cluster.connect", no_ray)
    store = tmp_path / "store"
    code, out, err = run_cli("sweep", "--store", str(store), "--exchange", "test", *args)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (store / "runs").exists()  # no run left behind as "failed"


@pytest.mark.parametrize("via", ["--address", "RAY_ADDRESS"])
def test_an_unreachable_cluster_is_a_one_line_error_not_a_local_ray(goog_csv: Path, tmp_path: Path, via: str) -> None:
    address = f"127.0.0.1:{free_port()}"  # nobody listens there
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    argv = [sys.executable, "-m", "tradpal_ray.cli", "sweep", "--store", str(tmp_path / "store"), "--data", str(goog_csv),
            *GRID_ARGS]
    if via == "RAY_ADDRESS":
        env["RAY_ADDRESS"] = address
    else:
        argv += ["--address", address]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"error: cannot reach the Ray cluster at {address}: Connection refused"]


def test_ctrl_c_exits_130_quietly(run_cli: RunCli, goog_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Typer turns KeyboardInterrupt into exit 130 itself; ``main`` needs no handler of its own."""

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(backtest_cli, "load_cli_bars", interrupted)
    code, out, err = run_cli("backtest", "--data", str(goog_csv))
    assert code == 130 and out == "" and "Traceback" not in err


def test_demo_answers_from_the_store_when_redis_never_comes_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spawned: list[subprocess.Popen[bytes]] = []

    class NeverAnswers(RedisProcess):
        def start(self) -> RedisProcess:
            self.proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # runs until stopped, never answers PING
            spawned.append(self.proc)
            raise AssertionError(f"timed out after 10.0 s waiting for redis-server on port {self.port}")

    monkeypatch.setattr(demo, "redis_available", lambda: True)
    monkeypatch.setattr(demo, "RedisProcess", NeverAnswers)
    try:
        with ExitStack() as stack:
            assert demo.start_redis(stack) is None
        [proc] = spawned
        assert proc.poll() is not None  # stopped and reaped, not leaked
        err = flat(capsys.readouterr().err)
        assert "redis-server did not start (timed out" in err and "the API answers from the store, uncached" in err
    finally:
        for proc in spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_demo_says_so_when_the_leaderboard_is_empty(capsys: pytest.CaptureFixture[str]) -> None:
    class EmptyLeaderboard(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"results": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), EmptyLeaderboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rows = demo.leaderboard_from_api(f"http://127.0.0.1:{server.server_port}", "run-1", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert rows == []
    assert "the leaderboard of run run-1 is empty" in flat(capsys.readouterr().err)
