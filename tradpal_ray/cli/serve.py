"""``tradpal-ray serve``: the statistics API on Ray Serve, until Ctrl-C.

Off loopback (or with ``--fast``, whose HAProxy binds all interfaces) an API key is
required (TRADPAL_API_KEYS). ``--fast`` sets RAY_SERVE_ENABLE_HA_PROXY=1 and
RAY_SERVE_THROUGHPUT_OPTIMIZED=1 before Ray starts: about 10x the requests/s of Serve's
default proxy. See :mod:`tradpal_ray.serve.launch`. The app is ``stats-<instance>``
(``--name``, default derived from the store); on a cluster whose Serve already runs another
instance's statistics app it refuses unless ``--replace``. On Ctrl-C a Ray started here is
shut down (our app deleted through Serve's API first); on a joined cluster only our app is
deleted, other Serve apps keep running.
"""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from tradpal_ray.cli.app import AddressOption, NameOption, ReplaceOption, StoreOption, app, console, settings_for


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
    address: AddressOption = None,
    name: NameOption = None,
    replace: ReplaceOption = False,
) -> None:
    """Serve run statistics, candle coverage, feeds and trades over HTTP (Ray Serve, Redis cache)."""
    import ray

    from tradpal_ray.cluster import connect, instance_name
    from tradpal_ray.log import redact
    from tradpal_ray.serve.launch import ServeOptions, app_name, deploy_stats, prepare_environment, stop_stats
    from tradpal_ray.stats.cache import redis_problem

    settings = settings_for(store=store, redis_url=redis_url)
    app_id = app_name(instance_name(name, settings.store))
    options = prepare_environment(settings, ServeOptions(host, port, replicas, autoscale_max, max_ongoing_requests, fast))
    cache_url = settings.redis_url.get_secret_value()
    if (problem := redis_problem(cache_url)) is not None:  # the replicas' own logs never reach this terminal
        where = redact(cache_url) or "(TRADPAL_REDIS_URL is empty)"
        console.print(f"[yellow]warning:[/yellow] Redis {where} is not reachable ({problem}): the API answers "
                      "from the store, uncached, and /ready says 503 until Redis answers", highlight=False, soft_wrap=True)
    mode = connect(address, log_to_driver=False)
    deployed = None
    try:
        deployed = deploy_stats(options, settings.store, app=app_id, replace=replace)
        console.print(f"{deployed.describe()}; docs at /docs; Ctrl-C to stop", highlight=False)
        threading.Event().wait()
    finally:
        if deployed is not None:  # only what we deployed: a refused start leaves the running app alone
            stop_stats(app_id)
        if mode != "existing":
            ray.shutdown()  # our own Ray stops; a joined cluster stays up (this driver detaches)
