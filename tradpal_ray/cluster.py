"""Joining Ray: a private local Ray unless told to join a cluster.

Every entry point (CLI, ``scripts/``, the demo) calls :func:`connect`. A command joins an
existing cluster only when told to (``--address HOST:PORT``, ``RAY_ADDRESS``, or the literal
``auto`` for a cluster started with ``ray start``); otherwise it starts its own Ray, so it
never computes on (or kills the actors of) a stranger's ``ray.init()`` session. The
``scripts/`` that ``ray submit`` runs on a head (where no RAY_ADDRESS is set) opt into
discovery instead: ``auto`` when a cluster runs, else a local Ray.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from tradpal_ray.errors import ConfigError
from tradpal_ray.log import get_logger

log = get_logger(__name__)
_dashboard: dict[str, str] = {}

LOCAL = "local"
AUTO = "auto"


def ray_target(address: str | None, *, discover: bool = False) -> str:
    """The Ray address :func:`connect` uses: ``address``, else RAY_ADDRESS, else ``"local"``
    (``"auto"`` with ``discover``, for scripts run by ``ray submit`` on a cluster's head)."""
    return address or os.environ.get("RAY_ADDRESS") or (AUTO if discover else LOCAL)


def connect(address: str | None = None, *, discover: bool = False, num_cpus: int | None = None,
            **init_kwargs: Any) -> str:
    """Initialise Ray once; return ``"existing"``, ``"cluster"`` or ``"local"``.

    ``address`` None means RAY_ADDRESS if set, else a private single-node Ray in this process.
    A named cluster (``address``, RAY_ADDRESS, ``auto``) that cannot be reached is a
    ConfigError naming it, never a silent laptop run. Only ``discover=True`` (the ``scripts/``)
    with no address given joins a running cluster if there is one and falls back to local.
    """
    import ray

    if ray.is_initialized():
        return "existing"
    init_kwargs.setdefault("logging_level", "WARNING")
    init_kwargs.setdefault("log_to_driver", True)
    target = ray_target(address, discover=discover)
    discovering = target == AUTO and not (address or os.environ.get("RAY_ADDRESS"))
    if target != LOCAL:
        if not discovering:
            _check_reachable(target)
        try:
            _remember(ray.init(address=target, **init_kwargs))
            log.info("ray.connected", address=target)
            return "cluster"
        except ConnectionError as exc:
            if not discovering:
                hint = "" if os.environ.get("RAY_AUTH_MODE") else " (a cluster with token auth needs RAY_AUTH_MODE=token)"
                raise ConfigError(f"cannot reach the Ray cluster at {target}: {_first_line(exc)}{hint}") from None
    _remember(ray.init(address=LOCAL, num_cpus=num_cpus, **init_kwargs))
    log.info("ray.started", mode=LOCAL, cpus=ray.cluster_resources().get("CPU"), dashboard=dashboard_url())
    return LOCAL


_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


def instance_name(name: str | None, store: str) -> str:
    """The instance id every named actor and Serve app of a command carries: ``name`` (``--name``),
    else ``tp-`` and 8 hex digits of the store's location, so two tradpal processes on one
    cluster with different stores never share (nor replace, nor kill) an actor or an app."""
    if name is None:
        return "tp-" + hashlib.sha256(store.encode()).hexdigest()[:8]
    if not _INSTANCE.fullmatch(name):
        raise ConfigError(f"--name {name!r}: use 1-40 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


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
    examples) and the ``--address``, ``--name`` and ``--replace`` every script takes."""
    summary, _, details = doc.partition("\n\n")
    parser = argparse.ArgumentParser(prog=prog, description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="Ray address: HOST:PORT, auto or local (default: RAY_ADDRESS, "
                                          "else the running cluster, else a local Ray)")
    parser.add_argument("--name", help="instance id in the names of its actors and Serve app (default: from the store)")
    parser.add_argument("--replace", action="store_true",
                        help="replace a running actor or app of another process instead of refusing")
    return parser


def wait_if_local(mode: str, duration: float | None = None) -> None:
    """Where :func:`connect` started Ray itself (``mode == "local"``) it dies with this process:
    keep it up until Ctrl-C or ``duration`` seconds."""
    if mode == "local":
        try:
            threading.Event().wait(duration)
        except KeyboardInterrupt:
            pass
