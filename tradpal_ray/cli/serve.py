"""``tradpal-ray serve``: the statistics API on Ray Serve, until Ctrl-C.

Off loopback (or with ``--fast``, whose HAProxy binds all interfaces) an API key is
required (TRADPAL_API_KEYS). ``--fast`` sets RAY_SERVE_ENABLE_HA_PROXY=1 and
RAY_SERVE_THROUGHPUT_OPTIMIZED=1 before Ray starts: about 10x the requests/s of Serve's
default proxy. The store and the Redis URL reach the replicas through the environment of
the Ray this command starts, so the password never shows in Serve's config.
"""

from __future__ import annotations

import os
import threading
from typing import Annotated

import typer

from tradpal_ray.cli.app import StoreOption, app, console, settings_for
from tradpal_ray.errors import ConfigError


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Bind address. Env: TRADPAL_SERVE_HOST (default 127.0.0.1).", show_default=False)] = None,
    port: Annotated[int | None, typer.Option("--port", help="HTTP port. Env: TRADPAL_SERVE_PORT (default 8000).", show_default=False)] = None,
    store: StoreOption = None,
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Redis for the cache (redis:// or rediss://). Env: TRADPAL_REDIS_URL.", show_default=False)] = None,
    replicas: Annotated[int | None, typer.Option("--replicas", min=1, help="Replicas (default TRADPAL_SERVE_REPLICAS or 1).", show_default=False)] = None,
    autoscale_max: Annotated[int | None, typer.Option("--autoscale-max", min=1, help="Autoscale between --replicas and this many replicas.", show_default=False)] = None,
    max_ongoing_requests: Annotated[int | None, typer.Option("--max-ongoing-requests", min=1, help="Per replica (default 256).", show_default=False)] = None,
    fast: Annotated[bool | None, typer.Option("--fast/--no-fast", help="HAProxy + throughput-optimized Serve (default: on off loopback).", show_default=False)] = None,
) -> None:
    """Serve run statistics, candle coverage, feeds and trades over HTTP (Ray Serve, Redis cache)."""
    from tradpal_ray.serve.settings import ServeSettings, is_loopback

    settings = settings_for(store=store, redis_url=redis_url)
    api = ServeSettings()
    host, port = host or api.serve_host, port or api.serve_port
    fast = (not is_loopback(host)) if fast is None else fast
    if (fast or not is_loopback(host)) and not api.keys():
        raise ConfigError("serving off loopback (or --fast, which binds all interfaces) needs TRADPAL_API_KEYS")
    os.environ["TRADPAL_STORE"] = settings.store
    os.environ["TRADPAL_REDIS_URL"] = settings.redis_url.get_secret_value()
    if fast:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    for drain in ("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S"):
        os.environ.setdefault(drain, "2")  # one node: Ctrl-C need not wait 30 s for load balancers

    import ray
    from ray import serve as ray_serve

    from tradpal_ray.serve import app as stats_app

    replicas = replicas or api.serve_replicas
    args: dict[str, object] = {"host": "0.0.0.0" if fast else host,
                               "max_ongoing_requests": max_ongoing_requests or api.serve_max_ongoing_requests}
    if autoscale_max:
        args["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max(autoscale_max, replicas),
                                      "target_ongoing_requests": 32}
    else:
        args["num_replicas"] = replicas
    ray.init(log_to_driver=False)
    try:
        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(stats_app(args), name="stats", route_prefix="/")
        console.print(f"stats API on http://{host}:{port} (docs: /docs); Ctrl-C to stop", highlight=False)
        threading.Event().wait()
    finally:
        ray_serve.shutdown()
        ray.shutdown()
