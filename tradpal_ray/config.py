"""One settings object for every command, actor and deployment.

Values come from ``TRADPAL_*`` environment variables (and a ``.env`` file if present);
CLI flags override them through :meth:`Settings.override`. Secrets are ``SecretStr`` so
they never show up in a repr or a log line.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Settings(BaseSettings):
    """Runtime configuration; see README "Configuration" for each field."""

    model_config = SettingsConfigDict(env_prefix="TRADPAL_", env_file=".env", extra="ignore")

    store: str = "./tradpal-data"
    """Store root (local path or pyarrow URI): candles under ``candles/``, runs under ``runs/``.
    A local path is made absolute where the settings are made (the driver), never in a worker."""
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    """Redis for the stats cache; may hold a password, hence secret."""
    db_url: SecretStr = SecretStr("")
    """The trade ledger's database (``postgresql://user:pass@host/db``); empty: ``<store>/ledger.sqlite``.
    May hold a password, hence secret."""
    traders_per_host: int = 50
    """Traders one Ray actor process runs (a process costs ~240 MB; one host shares feed reads and commits)."""
    exchange: str = "binance"
    exchange_url: str | None = None
    """Override of the exchange's REST/WS base URL, e.g. the local simulator."""
    exchange_api_key: SecretStr | None = None
    exchange_secret: SecretStr | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    """``text`` (key=value) or ``json``: one line per event either way."""
    api_keys: SecretStr = SecretStr("")
    """Comma-separated keys the statistics API accepts in ``X-API-Key`` (required off loopback)."""
    cors_origins: str = ""
    """Comma-separated origins allowed by CORS (``*`` for any); empty: no CORS headers."""
    cache_timeout_ms: int = 100
    """Budget of one Redis call; beyond it the answer comes from the stores."""
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_replicas: int = 1
    serve_max_ongoing_requests: int = 256

    @field_validator("store")
    @classmethod
    def _absolute_store(cls, value: str) -> str:
        from tradpal_ray.storage import absolute  # pyarrow: only once settings are made

        return absolute(value)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError("log format must be 'text' or 'json'")
        return value

    def keys(self) -> list[str]:
        """The API keys the statistics API accepts."""
        return split_list(self.api_keys.get_secret_value())

    def origins(self) -> list[str]:
        """The CORS origins of the statistics API."""
        return split_list(self.cors_origins)

    def override(self, **flags: Any) -> Settings:
        """Return a copy with the CLI flags that were given (``None`` means "not given")."""
        given = {key: value for key, value in flags.items() if value is not None}
        return self.model_validate({**self.model_dump(), **given}) if given else self


def split_list(value: str | None) -> list[str]:
    """A comma-separated setting as a list: ``"a, b,c"`` -> ``["a", "b", "c"]``; empty -> ``[]``."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def load_settings(**flags: Any) -> Settings:
    """Settings from the environment, with explicit CLI flags on top."""
    return Settings().override(**flags)
