"""``SimulatorActor``: an async Ray actor that hosts an :class:`ExchangeSimulator`.

A thin shell: ``sim = SimulatorActor.remote(["BTC/USDT"], speed=60)``,
``url = ray.get(sim.start.remote())``; the server runs on the actor's event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import ray

from tradpal_ray.sim._trading import AccountSnapshot
from tradpal_ray.sim.server import ExchangeSimulator


@ray.remote(num_cpus=0)
class SimulatorActor:
    """Ray actor shell over :class:`ExchangeSimulator` (same constructor arguments)."""

    def __init__(self, symbols: Iterable[str] | None = None, **options: Any) -> None:
        self._sim = ExchangeSimulator(symbols, **options)

    async def start(self) -> str:
        """Bind and start; returns the URL."""
        return await self._sim.start()

    async def stop(self) -> None:
        """Close connections and release the port."""
        await self._sim.stop()

    async def url(self) -> str:
        """Base URL of the simulator."""
        return self._sim.url

    async def inject(self, kind: str, **params: Any) -> dict[str, Any]:
        """Inject a fault."""
        return self._sim.inject(kind, **params)

    async def stats(self) -> dict[str, Any]:
        """Simulator statistics."""
        return self._sim.stats()

    async def account(self) -> AccountSnapshot:
        """The simulator's record of the account: balances, orders and fills."""
        return self._sim.account()

    async def now_ms(self) -> int:
        """Current simulated time in ms."""
        return self._sim.now_ms()

    async def closed_candles(
        self, symbol: str, timeframe: str, start_ms: int | str, end_ms: int | str
    ) -> pa.Table:
        """The simulator's closed candles (the truth) as CANDLE_SCHEMA."""
        return self._sim.closed_candles(symbol, timeframe, start_ms, end_ms)
