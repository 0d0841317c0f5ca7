#!/usr/bin/env python
"""Deploy the statistics API (Ray Serve over the store, cached in Redis).

On a running Ray cluster it deploys the app (named "stats-<name>", --name defaulting to one
derived from the store; deploying again updates it) and exits: Serve keeps it up (`serve
shutdown` or `ray down` stops it). Another instance's statistics app is refused unless --replace. When no cluster is running it starts a local Ray
and serves until Ctrl-C. It imports only the installed ``tradpal_ray`` package:

    python scripts/serve_stats.py --port 8000 --store ./tradpal-data
    ray submit cluster.yaml scripts/serve_stats.py -- --host 0.0.0.0 --fast
    ray job submit --working-dir . -- python scripts/serve_stats.py --host 0.0.0.0 --fast

Off loopback (and with --fast) the API requires a key: set TRADPAL_API_KEYS (clients send
X-API-Key). The Redis URL comes from TRADPAL_REDIS_URL or --redis-url and is never logged.
"""

from __future__ import annotations

import argparse

from tradpal_ray.cluster import connect, instance_name, script_parser, wait_if_local
from tradpal_ray.config import load_settings
from tradpal_ray.errors import TradpalError
from tradpal_ray.serve.launch import ServeOptions, app_name, deploy_stats, prepare_environment


def parser() -> argparse.ArgumentParser:
    """Command-line options (``--help``)."""
    cli = script_parser("serve_stats.py", __doc__)
    cli.add_argument("--host", help="bind address (default TRADPAL_SERVE_HOST or 127.0.0.1)")
    cli.add_argument("--port", type=int, help="HTTP port (default TRADPAL_SERVE_PORT or 8000)")
    cli.add_argument("--store", help="store root, a path or s3://... (default TRADPAL_STORE)")
    cli.add_argument("--redis-url", help="redis:// or rediss:// URL (default TRADPAL_REDIS_URL)")
    cli.add_argument("--replicas", type=int, help="replicas (default TRADPAL_SERVE_REPLICAS or 1)")
    cli.add_argument("--autoscale-max", type=int, help="autoscale between --replicas and this many")
    cli.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                     help="HAProxy + throughput-optimized Serve (default: on off loopback)")
    return cli


def main(argv: list[str] | None = None) -> None:
    """Deploy, then exit (cluster) or serve until Ctrl-C (local Ray)."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        settings = load_settings(store=args.store, redis_url=args.redis_url)
        options = prepare_environment(settings, ServeOptions(args.host, args.port, args.replicas, args.autoscale_max,
                                                             None, args.fast))
        app = app_name(instance_name(args.name, settings.store))
        mode = connect(args.address, discover=True, log_to_driver=False)
        url = deploy_stats(options, settings.store, app=app, replace=args.replace, redeploy=mode != "local").url
    except (TradpalError, ValueError) as exc:
        cli.exit(2, f"error: {exc}\n")
    print(url, flush=True)
    wait_if_local(mode)


if __name__ == "__main__":
    main()
