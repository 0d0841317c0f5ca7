"""Run an :class:`ExchangeSimulator` in a background thread with its own event loop.

For tests, the CLI and the demo: ``with run_simulator(["BTC/USDT"], speed=60) as sim:``
gives a handle whose methods are thread-safe (they run on the simulator's loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pyarrow as pa

from tradpal_ray.sim._trading import AccountSnapshot
from tradpal_ray.sim.server import ExchangeSimulator

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop if uvloop is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SimulatorThread:
    """Thread-safe handle on a simulator running in a background thread."""

    def __init__(
        self, simulator: ExchangeSimulator, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.simulator = simulator
        self._loop = loop

    @property
    def url(self) -> str:
        """Base URL of the simulator."""
        return self.simulator.url

    @property
    def symbols(self) -> list[str]:
        """Simulated unified symbols."""
        return self.simulator.symbols

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the simulator's loop and return its result."""

        async def invoke() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout=60)

    def inject(self, kind: str, **params: Any) -> dict[str, Any]:
        """See :meth:`ExchangeSimulator.inject`."""
        return self.call(self.simulator.inject, kind, **params)

    def stats(self) -> dict[str, Any]:
        """See :meth:`ExchangeSimulator.stats`."""
        return self.call(self.simulator.stats)

    def now_ms(self) -> int:
        """Current simulated time in ms."""
        return self.simulator.now_ms()

    def account(self) -> AccountSnapshot:
        """See :meth:`ExchangeSimulator.account`."""
        return self.call(self.simulator.account)

    def closed_candles(
        self, symbol: str, timeframe: str, start_ms: int | str, end_ms: int | str
    ) -> pa.Table:
        """See :meth:`ExchangeSimulator.closed_candles`."""
        return self.call(
            self.simulator.closed_candles, symbol, timeframe, start_ms, end_ms
        )


@contextmanager
def run_simulator(
    symbols: Iterable[str] | None = None, **options: Any
) -> Iterator[SimulatorThread]:
    """Start an :class:`ExchangeSimulator` (same arguments) in a thread; stop it on exit."""
    simulator = ExchangeSimulator(
        symbols, **options
    )  # argument errors surface here, in the caller
    loop = new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(simulator.start())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(simulator.stop())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=serve, name="tradpal-sim", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield SimulatorThread(simulator, loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
