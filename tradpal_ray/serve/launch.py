"""Starting the stats app on Ray Serve: shared by ``tradpal-ray serve``, the demo and scripts.

The store and the Redis URL reach the replicas through the environment of the Ray that the
caller starts (or, on a cluster, of its nodes: ``cluster.yaml`` exports them), so a Redis
password never shows in Serve's config or the dashboard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tradpal_ray.config import Settings
from tradpal_ray.errors import ConfigError
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


APP_NAME = "stats"
"""The Serve application the statistics API runs as."""


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


def deploy_stats(options: ServeOptions, store: str | None = None) -> str:
    """Run the stats app (named :data:`APP_NAME`) on the connected Ray; return its base URL.

    ``store`` is passed to the replicas explicitly (it is no secret); the Redis URL only
    through the environment.
    """
    from ray import serve as ray_serve

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
    ray_serve.start(http_options={"host": options.host, "port": options.port})
    ray_serve.run(stats_app(args), name=APP_NAME, route_prefix="/")
    return f"http://{options.host}:{options.port}"
