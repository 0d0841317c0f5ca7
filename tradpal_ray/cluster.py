"""Joining Ray: an existing cluster when there is one, a local single-node one otherwise.

Every entry point (CLI, ``scripts/``, the demo) calls :func:`connect` so the same command
works on a laptop, under ``ray submit`` and under ``ray job submit``.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from tradpal_ray.errors import ConfigError
from tradpal_ray.log import get_logger

log = get_logger(__name__)
_dashboard: dict[str, str] = {}


def connect(address: str | None = None, *, num_cpus: int | None = None, **init_kwargs: Any) -> str:
    """Initialise Ray once; return ``"existing"``, ``"cluster"`` or ``"local"``.

    ``address`` None means: the cluster named by ``RAY_ADDRESS``, else a running local one
    (``"auto"``) if any, else start a single-node Ray in this process. Only that discovery
    falls back to a local Ray: a named cluster (``address`` or ``RAY_ADDRESS``) that cannot
    be reached is a ConfigError naming it, never a silent laptop run.
    """
    import ray

    if ray.is_initialized():
        return "existing"
    init_kwargs.setdefault("logging_level", "WARNING")
    init_kwargs.setdefault("log_to_driver", True)
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    discovering = address is None and target == "auto"
    if target != "local":
        if not discovering:
            _check_reachable(target)
        try:
            _remember(ray.init(address=target, **init_kwargs))
            log.info("ray.connected", address=target)
            return "cluster"
        except ConnectionError as exc:
            if not discovering:
                raise ConfigError(f"cannot reach the Ray cluster at {target}: {_first_line(exc)}") from None
    _remember(ray.init(address="local", num_cpus=num_cpus, **init_kwargs))
    log.info("ray.started", mode="local", cpus=ray.cluster_resources().get("CPU"), dashboard=dashboard_url())
    return "local"


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at ``host:port`` (``ray.init`` would retry for minutes)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        raise ConfigError(f"not a Ray address: {address!r} (expected HOST:PORT, ray://HOST:PORT or auto)") from None
    if not host or port is None:
        return  # not host:port (e.g. "auto"): ray.init resolves it and reports failures itself
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)


def _remember(context: Any) -> None:
    url = getattr(context, "dashboard_url", "") or ""
    if url:
        _dashboard["url"] = url if "://" in url else f"http://{url}"


def dashboard_url() -> str | None:
    """The Ray dashboard's URL as :func:`connect` learnt it, if a dashboard runs."""
    return _dashboard.get("url")


def script_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a ``scripts/`` entry point: its docstring as help (summary, then usage
    examples) and the ``--address`` every script takes."""
    summary, _, details = doc.partition("\n\n")
    parser = argparse.ArgumentParser(prog=prog, description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, a running cluster, else local)")
    return parser


def wait_if_local(mode: str, duration: float | None = None) -> None:
    """Where :func:`connect` started Ray itself (``mode == "local"``) it dies with this process:
    keep it up until Ctrl-C or ``duration`` seconds."""
    if mode == "local":
        try:
            threading.Event().wait(duration)
        except KeyboardInterrupt:
            pass
