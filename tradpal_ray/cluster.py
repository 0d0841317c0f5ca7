"""Joining Ray: an existing cluster when there is one, a local single-node one otherwise.

Every entry point (CLI, ``scripts/``, the demo) calls :func:`connect` so the same command
works on a laptop, under ``ray submit`` and under ``ray job submit``.
"""

from __future__ import annotations

import argparse
import os
import threading
from typing import Any

from tradpal_ray.log import get_logger

log = get_logger(__name__)
_dashboard: dict[str, str] = {}


def connect(address: str | None = None, *, num_cpus: int | None = None, **init_kwargs: Any) -> str:
    """Initialise Ray once; return ``"existing"``, ``"cluster"`` or ``"local"``.

    ``address`` None means: the cluster named by ``RAY_ADDRESS`` or a running local one
    (``"auto"``) if any, else start a single-node Ray in this process.
    """
    import ray

    if ray.is_initialized():
        return "existing"
    init_kwargs.setdefault("logging_level", "WARNING")
    init_kwargs.setdefault("log_to_driver", True)
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    if target != "local":
        try:
            _remember(ray.init(address=target, **init_kwargs))
            log.info("ray.connected", address=target)
            return "cluster"
        except ConnectionError:
            if address is not None:
                raise
    _remember(ray.init(address="local", num_cpus=num_cpus, **init_kwargs))
    log.info("ray.started", mode="local", cpus=ray.cluster_resources().get("CPU"), dashboard=dashboard_url())
    return "local"


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
