"""Binance's rules for SIGNED requests, as pure functions: API key, HMAC-SHA256 signature, recvWindow.

A signed request carries the ``X-MBX-APIKEY`` header and ``timestamp`` (+ optional
``recvWindow``, default 5000 ms, at most 60000) and ``signature`` parameters. The signature
is HMAC-SHA256 (hex) keyed by the secret over ``totalParams``: the raw query string
concatenated with the raw request body, without the ``signature`` parameter itself. The
request is fresh when ``timestamp < server_ms + 1000`` and ``server_ms - timestamp <= recvWindow``.
The server time used here is the simulator host's wall clock (what ccxt stamps requests with);
the market clock runs in the past at ``speed`` times real time and would make every request stale.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from tradpal_ray.sim._errors import INVALID_KEY, STALE_REQUEST, ApiError, missing

DEFAULT_API_KEY = "tradpal-sim-key"
"""API key the simulator accepts unless told otherwise (documented in the README; test use only)."""
DEFAULT_API_SECRET = "tradpal-sim-secret"
"""Secret of :data:`DEFAULT_API_KEY`."""
DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60000
_SIGNATURE = re.compile(r"(?:^|&)signature=([^&]*)")


@dataclass(frozen=True)
class Credentials:
    """The key pair the simulated account accepts (the secret never appears in a repr)."""

    api_key: str = DEFAULT_API_KEY
    api_secret: str = field(default=DEFAULT_API_SECRET, repr=False)


def sign(secret: str, payload: str) -> str:
    """Hex HMAC-SHA256 of ``payload`` keyed by ``secret``: Binance's ``signature``."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def _without_signature(raw: str) -> tuple[str, str | None]:
    """``raw`` with its ``signature=..`` parameter cut out, and that signature (None if absent)."""
    match = _SIGNATURE.search(raw)
    if match is None:
        return raw, None
    rest = raw[: match.start()] + raw[match.end() :]
    return (rest[1:] if rest.startswith("&") else rest), match.group(1)


def check_api_key(credentials: Credentials, api_key: str | None) -> None:
    """Binance's -2015 (HTTP 401) unless ``api_key`` is the account's key."""
    if not api_key or not hmac.compare_digest(api_key.encode(), credentials.api_key.encode()):
        raise INVALID_KEY.error()


def check_fresh(params: dict[str, str], server_ms: int) -> None:
    """Binance's timing rule on ``timestamp`` / ``recvWindow`` (-1102, -1131 or -1021)."""
    if not params.get("timestamp"):
        raise missing("timestamp")
    try:
        timestamp = int(params["timestamp"])
        window = int(params.get("recvWindow") or DEFAULT_RECV_WINDOW_MS)
    except ValueError:
        raise ApiError(-1100, "Illegal characters found in parameter 'timestamp' or 'recvWindow'.") from None
    if not 0 < window <= MAX_RECV_WINDOW_MS:
        raise ApiError(-1131, f"recvWindow must be less than {MAX_RECV_WINDOW_MS}.")
    if timestamp >= server_ms + 1000:
        raise ApiError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
    if server_ms - timestamp > window:
        raise STALE_REQUEST.error()


def verify_signed(
    credentials: Credentials, api_key: str | None, query: str, body: str, server_ms: int
) -> dict[str, str]:
    """The parameters of a SIGNED REST request (raw ``query`` and ``body``), or the ApiError
    Binance answers: wrong key -2015, bad signature -1022, stale or early timestamp -1021."""
    check_api_key(credentials, api_key)
    query, query_signature = _without_signature(query)
    body, body_signature = _without_signature(body)
    signature = query_signature or body_signature
    if not signature:
        raise missing("signature")
    if not hmac.compare_digest(sign(credentials.api_secret, query + body).encode(), signature.encode()):
        raise ApiError(-1022, "Signature for this request is not valid.")
    params = dict(parse_qsl(query, keep_blank_values=True))
    params.update(parse_qsl(body, keep_blank_values=True))
    check_fresh(params, server_ms)
    return params


def verify_ws_signed(credentials: Credentials, params: dict[str, object], server_ms: int) -> None:
    """Check a signed WebSocket API request: the payload is every parameter but ``signature``,
    sorted by name and joined as ``k=v&...`` (Binance's WebSocket API rule)."""
    check_api_key(credentials, params.get("apiKey") if isinstance(params.get("apiKey"), str) else None)
    signature = params.get("signature")
    if not isinstance(signature, str) or not signature:
        raise missing("signature")
    payload = "&".join(f"{key}={params[key]}" for key in sorted(params) if key != "signature")
    if not hmac.compare_digest(sign(credentials.api_secret, payload).encode(), signature.encode()):
        raise ApiError(-1022, "Signature for this request is not valid.")
    check_fresh({key: str(value) for key, value in params.items()}, server_ms)
