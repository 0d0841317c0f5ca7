"""Structured logging: one line per event, logfmt key=value (or JSON), secrets masked.

Library code calls ``get_logger(__name__).info("event.name", key=value)``; it never prints.
Configuration is idempotent and happens on first use in every process (driver, Ray
worker, Serve replica), reading ``TRADPAL_LOG_LEVEL`` / ``TRADPAL_LOG_FORMAT``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"(password|secret|token|api_?key|auth)", re.IGNORECASE)
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|cred|sig", re.IGNORECASE)
"""URL query parameter names whose values are masked: password, ssl_password, token, secret,
access_key, api_key, auth, credentials, signature... (a key *file* name is masked too: harmless)."""
_URL_AUTHORITY = re.compile(r"://(?P<authority>[^/?#\s]+)")
_QUERY_PARAM = re.compile(r"(?P<name>[?&;][^=&#;?\s]+=)(?P<value>[^&#;\s]*)")
_configured = False


def _mask_userinfo(match: re.Match[str]) -> str:
    # As urllib (so redis-py) splits it: the userinfo ends at the authority's last "@",
    # the password starts after the userinfo's first ":".
    userinfo, at, host = match["authority"].rpartition("@")
    user, colon, password = userinfo.partition(":")
    return f"://{user}:***@{host}" if at and colon and password else match[0]


def _mask_param(match: re.Match[str]) -> str:
    secret = _SECRET_PARAM.search(match["name"]) and match["value"]
    return f"{match['name']}***" if secret else match[0]


def redact(value: Any) -> Any:
    """Mask URL secrets in a string (or text quoting URLs, such as a traceback): the userinfo
    password (``redis://u:p@ss@host`` -> ``redis://u:***@host``) and every secret-bearing
    query parameter (``rediss://host/0?password=***&ssl_password=***&ssl_ca_certs=ca.pem``).
    Non-strings pass as they are."""
    if not isinstance(value, str):
        return value
    return _QUERY_PARAM.sub(_mask_param, _URL_AUTHORITY.sub(_mask_userinfo, value))


def _mask_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        event[key] = "***" if _SECRET_KEY.search(key) and value else redact(value)
    return event


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """(Re)configure structlog for this process; later calls override earlier ones.

    An unknown level falls back to INFO here; :class:`~tradpal_ray.config.Settings`
    reports it to the user.
    """
    global _configured
    level = (level or os.environ.get("TRADPAL_LOG_LEVEL", "INFO")).upper()
    fmt = fmt or os.environ.get("TRADPAL_LOG_FORMAT", "text")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "logger", "event"])
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # before masking: tracebacks quote URLs too
            _mask_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping().get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str, **context: Any) -> Any:
    """A bound structlog logger named ``name`` carrying ``context`` on every line."""
    if not _configured:
        configure_logging()
    return structlog.get_logger().bind(logger=name, **context)
