"""Starting the stats app on Ray Serve: shared by ``tradpal-ray serve``, the demo and scripts.

The store and the Redis URL reach the replicas through the environment of the Ray that the
caller starts (or, on a cluster, of its nodes: ``cluster.yaml`` exports them), so a Redis
password never shows in Serve's config or the dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tradpal_ray.config import Settings
from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.serve.settings import is_loopback


@dataclass(frozen=True)
class ServeOptions:
    """How to expose the stats app; ``None`` fields fall back to :class:`~tradpal_ray.config.Settings`."""

    host: str | None = None
    port: int | None = None
    replicas: int | None = None
    autoscale_max: int | None = None
    max_ongoing_requests: int | None = None
    fast: bool | None = None
    """HAProxy + throughput-optimized Serve (~10x req/s); binds all interfaces. Default: on off loopback."""


def app_name(instance: str) -> str:
    """The Serve application name of the statistics API of instance ``instance``: ``stats-<instance>``
    (see :func:`tradpal_ray.cluster.instance_name`)."""
    return f"stats-{instance}"


@dataclass(frozen=True)
class DeployedStats:
    """Where the statistics API answers, as Serve really runs it."""

    url: str
    app: str
    started_serve: bool
    """True when this call started Serve; False when it joined the Serve running on the cluster
    (whose host and port apply, whatever was asked)."""

    def describe(self) -> str:
        """One true line for the terminal."""
        how = "Serve started" if self.started_serve else "joined the Serve already running on this Ray cluster"
        return f"stats API on {self.url} (Serve app {self.app}, {how})"


def prepare_environment(settings: Settings, options: ServeOptions) -> ServeOptions:
    """Check the API-key rule and export what replicas need; call before Ray starts.

    Returns the options with every default resolved.
    """
    host, port = options.host or settings.serve_host, options.port or settings.serve_port
    fast = (not is_loopback(host)) if options.fast is None else options.fast
    if (fast or not is_loopback(host)) and not settings.keys():
        raise ConfigError("serving off loopback (or fast mode, which binds all interfaces) needs TRADPAL_API_KEYS")
    os.environ["TRADPAL_STORE"] = settings.store
    os.environ["TRADPAL_REDIS_URL"] = settings.redis_url.get_secret_value()
    if settings.db_url.get_secret_value():
        os.environ["TRADPAL_DB_URL"] = settings.db_url.get_secret_value()  # the trade ledger of /live/*
    if fast:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    for drain in ("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S"):
        os.environ.setdefault(drain, "2")  # one node: shutting down need not wait 30 s for load balancers
    return ServeOptions(
        host=host, port=port, replicas=options.replicas or settings.serve_replicas,
        autoscale_max=options.autoscale_max,
        max_ongoing_requests=options.max_ongoing_requests or settings.serve_max_ongoing_requests, fast=fast,
    )


def deploy_stats(options: ServeOptions, store: str | None = None, *, app: str, replace: bool = False,
                 redeploy: bool = False) -> DeployedStats:
    """Run the stats app as ``app`` on the connected Ray, at route ``/``; where it answers.

    Serve's own start-up chatter is silenced: the caller prints :meth:`DeployedStats.describe`.
    When Serve runs already (a joined cluster), an app of that name or any other app at route
    ``/`` (another instance's) is refused with a ConfigError unless ``replace`` (then it is
    deleted first): deploying over it would make its port answer with another store's data. ``redeploy``
    updates an app of our very name in place (a script deploying again on its cluster). ``store`` is
    passed to the replicas explicitly (it is no secret); the Redis URL only through the environment.
    """
    from ray import serve as ray_serve
    from ray.serve.exceptions import RayServeException

    from tradpal_ray.serve.deployment import app as stats_app

    args: dict[str, object] = {"host": "0.0.0.0" if options.fast else options.host,
                               "max_ongoing_requests": options.max_ongoing_requests}
    if store is not None:
        args["store"] = store
    if options.autoscale_max:
        replicas = options.replicas or 1
        args["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max(options.autoscale_max, replicas),
                                      "target_ongoing_requests": 32}
    else:
        args["num_replicas"] = options.replicas
    with quiet_serve():
        started = not serve_running()
        if started:
            _check_port_free(options.host or "127.0.0.1", options.port or 8000)
        # A running Serve keeps its own host and port: asking for others only earns a warning.
        client = _serve_start({"host": options.host, "port": options.port} if started else None)
        if not started:
            _make_room(app, client.get_serve_details().get("applications", {}), replace=replace, redeploy=redeploy)
        try:
            ray_serve.run(stats_app(args), name=app, route_prefix="/")
        except RayServeException as exc:  # e.g. another (non-tradpal) app holds the route "/"
            raise ConfigError(f"Serve refused app {app}: {str(exc).strip().splitlines()[0]}") from None
    http = client.http_config
    return DeployedStats(url=f"http://{options.host if started else http.host}:{http.port}", app=app,
                         started_serve=started)


PROXY_START_ATTEMPTS = 3


def _serve_start(http_options: dict[str, object] | None) -> Any:
    """``serve_start``, again when its HTTP proxy died while starting. A Serve shut down just before (a
    script's, another command's) may still be killing its proxy, and a new controller takes the proxy
    of that name if it is still there; once it is gone, the controller starts its own."""
    import ray
    from ray.serve._private.api import serve_start

    attempt = 1
    while True:
        try:
            return serve_start(http_options=http_options)
        except ray.exceptions.RayActorError as exc:
            if attempt == PROXY_START_ATTEMPTS:
                raise TradpalError(f"Serve could not start its HTTP proxy ({type(exc).__name__}, {attempt} tries)") from None
        time.sleep(attempt)  # the previous proxy's teardown
        attempt += 1
        http_options = None  # the controller runs now, with these options


def stop_stats(app: str) -> None:
    """Take the stats app down through Serve's API, before Ray stops: delete ``app`` if it is still there.

    Serve itself is left to Ray: a private Ray takes it down with everything else, a shared
    cluster keeps it for its other apps. (``serve.shutdown()`` makes the controller kill
    itself under its own shutdown call, which the raylet reports on every exit.)
    """
    from ray import serve as ray_serve

    with quiet_serve():
        if serve_running() and app in ray_serve.status().applications:
            ray_serve.delete(app)


def serve_running() -> bool:
    """Whether a Serve controller runs on the connected Ray."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def quiet_serve() -> Iterator[None]:
    """Silence Serve's INFO lines ("Started Serve", "Connecting to existing Serve app"...) in this
    process for the block: the caller says what happened, once."""
    from ray.serve._private.constants import SERVE_LOGGER_NAME

    logger = logging.getLogger(SERVE_LOGGER_NAME)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _make_room(app: str, running: dict[str, dict[str, object]], *, replace: bool, redeploy: bool) -> None:
    """Refuse (or, with ``replace``, delete) on a shared Serve: an app of our name (unless
    ``redeploy``) and any other app at route ``/``, where ours goes."""
    from ray import serve as ray_serve

    taken = [name for name, details in running.items()
             if (name == app and not redeploy) or (name != app and details.get("route_prefix") == "/")]
    if taken and not replace:
        raise ConfigError(f"Serve on this Ray cluster already runs {', '.join(taken)} at / (another tradpal "
                          "process?); stop it, or --replace it")
    for name in taken:
        ray_serve.delete(name)


def _check_port_free(host: str, port: int) -> None:
    """A ConfigError when something listens on ``host:port`` already (Serve would fail deep inside)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"port {port} on {host} is in use ({exc.strerror or exc}); give another --port") from None
