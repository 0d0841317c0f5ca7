"""Local Binance-spot exchange simulator: REST + WebSocket on one port, for ccxt and ccxt.pro.

``with run_simulator(["BTC/USDT"], speed=60) as sim:`` then
``create_exchange("binance", url=sim.url, pro=True)`` gives an unmodified ccxt client on it; with ``api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET``
it also trades against the simulator's spot account (``sim.account()`` is the simulator's record).
``SimulatorActor`` (a Ray actor) is imported lazily so that importing this package stays light.
"""

from typing import Any

from tradpal_ray.market.exchange import create_exchange
from tradpal_ray.sim._account import Balance, Fill, Order
from tradpal_ray.sim._signing import DEFAULT_API_KEY, DEFAULT_API_SECRET
from tradpal_ray.sim._trading import AccountSnapshot
from tradpal_ray.sim.faults import FAULT_PARAMS, Fault
from tradpal_ray.sim.market import MarketSource, MarketView, SymbolSpec
from tradpal_ray.sim.replay import ReplaySource, open_replay
from tradpal_ray.sim.runner import SimulatorThread, run_simulator
from tradpal_ray.sim.server import ExchangeSimulator
from tradpal_ray.sim.synthetic import SyntheticSource, WalkParams


def __getattr__(name: str) -> Any:
    if name == "SimulatorActor":
        from tradpal_ray.sim.actor import SimulatorActor

        return SimulatorActor
    raise AttributeError(name)


__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "FAULT_PARAMS",
    "AccountSnapshot",
    "Balance",
    "Fill",
    "Order",
    "ExchangeSimulator",
    "Fault",
    "MarketSource",
    "MarketView",
    "ReplaySource",
    "SimulatorActor",
    "SimulatorThread",
    "SymbolSpec",
    "SyntheticSource",
    "WalkParams",
    "create_exchange",
    "open_replay",
    "run_simulator",
]
