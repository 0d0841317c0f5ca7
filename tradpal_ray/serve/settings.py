"""Settings of the HTTP API (``TRADPAL_*`` environment variables), apart from the shared ones."""

from __future__ import annotations

import ipaddress

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tradpal_ray.config import split_list


class ServeSettings(BaseSettings):
    """API keys, CORS, cache timeout and the Serve deployment's defaults."""

    model_config = SettingsConfigDict(env_prefix="TRADPAL_", env_file=".env", extra="ignore")

    api_keys: SecretStr = SecretStr("")
    """Comma-separated keys accepted in the ``X-API-Key`` header (required off loopback)."""
    cors_origins: str = ""
    """Comma-separated origins allowed by CORS (``*`` for any); empty: no CORS headers."""
    cache_timeout_ms: int = 100
    """Budget of one Redis call; beyond it the answer comes from the stores."""
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_replicas: int = 1
    serve_max_ongoing_requests: int = 256

    def keys(self) -> list[str]:
        """The accepted API keys."""
        return split_list(self.api_keys.get_secret_value())

    def origins(self) -> list[str]:
        """The CORS origins."""
        return split_list(self.cors_origins)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
