"""One place that builds ccxt clients, for a real exchange or one at a local URL.

``create_exchange("binance", url="http://127.0.0.1:8765")`` returns the unmodified ccxt
client with its REST and WebSocket endpoints rewritten to that server: this is how the
simulator (:mod:`tradpal_ray.sim`, which speaks Binance spot's protocol) is used. The
simulator has its own exchange id, :data:`SIMULATOR` (``"sim"``): a Binance client under
the hood, but its candles are stored under ``exchange=sim``, never where real Binance data goes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import ccxt
import ccxt.pro

from tradpal_ray.errors import ConfigError

SIMULATOR = "sim"
"""Exchange id of tradpal's local simulator (``--exchange sim --exchange-url http://...``)."""
_PROTOCOL = {SIMULATOR: "binance"}


def exchange_ids() -> list[str]:
    """Exchange ids ccxt supports, and the simulator's."""
    return [*ccxt.exchanges, SIMULATOR]


def protocol(exchange_id: str) -> str:
    """The ccxt exchange whose protocol ``exchange_id`` speaks: itself, ``binance`` for the simulator."""
    return _PROTOCOL.get(exchange_id, exchange_id)


def create_exchange(
    exchange_id: str = "binance",
    *,
    url: str | None = None,
    pro: bool = False,
    api_key: str | None = None,
    secret: str | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """A ccxt (``pro=False``) or ccxt.pro (``pro=True``) client for ``exchange_id`` (``sim``: a Binance
    client, which needs the simulator's ``url``).

    With ``url`` every REST endpoint is moved to that host (path kept) and the WebSocket
    to ``ws://host/stream/ws``; rate limiting is then off (local servers need none).
    A pro client must be created and closed inside the event loop that uses it.
    """
    if exchange_id == SIMULATOR and url is None:
        raise ConfigError("exchange 'sim' is the local simulator: give its URL, e.g. --exchange-url http://127.0.0.1:8765")
    exchange_id = protocol(exchange_id)
    module = ccxt.pro if pro else ccxt
    if exchange_id not in ccxt.exchanges or not hasattr(module, exchange_id):
        kind = "ccxt.pro" if pro else "ccxt"
        raise ConfigError(f"unknown exchange {exchange_id!r} for {kind}; e.g. binance, okx, kraken")
    config: dict[str, Any] = {"enableRateLimit": url is None, "options": dict(options or {})}
    if api_key:
        config["apiKey"] = api_key
    if secret:
        config["secret"] = secret
    if exchange_id == "binance":
        config["options"].update(
            {
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
                "fetchMargins": False,
                "adjustForTimeDifference": False,
            }
        )
    client = getattr(module, exchange_id)(config)
    if url is not None:
        _point_at(client, url)
    return client


def _point_at(client: Any, url: str) -> None:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"exchange URL must look like http://HOST:PORT, got {url!r}")
    http_base = f"{parts.scheme}://{parts.netloc}"
    ws_base = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}/stream/ws"

    def rewrite(node: Any, in_ws: bool) -> Any:
        if isinstance(node, dict):
            return {key: rewrite(value, in_ws or key == "ws") for key, value in node.items()}
        if isinstance(node, str) and "://" in node:
            if in_ws:
                return ws_base
            path = urlsplit(node).path
            return f"{http_base}{path}"
        return node

    client.urls["api"] = rewrite(client.urls["api"], False)
