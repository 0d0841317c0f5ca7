"""Shared fixtures: one real Ray session per test run, temporary stores.

Tests use the real parts (Ray, ccxt against the local simulator, redis-server); fixtures
here start them once and tear them down.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (import now: a late import under pytest's assertion rewriting trips a CPython 3.11 AST bug)
import pytest

os.environ.setdefault("TRADPAL_LOG_LEVEL", "WARNING")

# A suite started in the background by a shell without job control inherits Ctrl-C (SIGINT) ignored, and
# so would every CLI it starts: the tests that stop one with Ctrl-C would hang. Python's handler again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["redis_fixtures", "pg_server"]


def _start_local_ray() -> None:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A single-node Ray for the whole run (``address="local"`` so a stale cluster never hangs it)."""
    import ray

    if not ray.is_initialized():
        _start_local_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A real multi-node Ray: a head with 0 CPUs plus two 1-CPU worker nodes (``ray.cluster_utils.Cluster``).

    The driver is connected to it for the module; a single-node session Ray that was running
    is stopped first and started again afterwards, so later modules still find one.
    """
    import ray
    from ray.cluster_utils import Cluster

    had_session = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            # Notice a killed node in ~2 s instead of ~15 s (ray-notes.md).
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500},
        },
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if had_session:
            _start_local_ray()


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``tradpal-ray ARGS`` in-process: ``run_cli("sweep", ...) -> (exit code, stdout, stderr)``."""
    from tradpal_ray.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
        out, err = capsys.readouterr()
        return int(exit_info.value.code or 0), out, err

    return run


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    """An empty store root for one test."""
    root = tmp_path / "store"
    root.mkdir()
    return root


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., Any]]:
    """Factory: ``make_simulator(["BTC/USDT"], speed=600, ...)`` starts a local exchange simulator
    in a background thread (see :func:`tradpal_ray.sim.run_simulator`); all stop after the test."""
    from contextlib import ExitStack

    from tradpal_ray.sim import run_simulator

    with ExitStack() as stack:

        def make(symbols: list[str] | None = None, **options: Any) -> Any:
            options.setdefault("speed", 600.0)
            if options.get("source") is None:
                options.setdefault("start", "2024-03-01")
            return stack.enter_context(run_simulator(symbols, **options))

        yield make


@pytest.fixture
def simulator(make_simulator: Callable[..., Any]) -> Any:
    """A running simulator of BTC/USDT and ETH/USDT, seed 7, 600x speed, starting 2024-03-01."""
    return make_simulator(["BTC/USDT", "ETH/USDT"], seed=7)


@pytest.fixture
def isolated_strategies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test registers strategies into its own copy of the registry (gone after it)."""
    import sys

    import tradpal_ray.backtest  # noqa: F401  (loads the registry module)

    registry = sys.modules["tradpal_ray.backtest.strategies"]
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture
def goog_csv(tmp_path: Path) -> str:
    """backtesting.py's GOOG daily bars as a CSV file in the test's directory."""
    from market_data import goog

    path = tmp_path / "GOOG.csv"
    goog().to_csv(path)
    return str(path)
