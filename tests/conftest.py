"""Shared fixtures: one real Ray session per test run, temporary stores.

Tests use the real parts (Ray, ccxt against the local simulator, redis-server); fixtures
here start them once and tear them down.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TRADPAL_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A single-node Ray for the whole run (``address="local"`` so a stale cluster never hangs it)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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
