#!/usr/bin/env python
"""Start feed actors that stream candles (and trades) into the object store and the candle store.

Symbols are split round-robin over --shards actors named feed:<exchange>:<shard>@<name> (--name,
default derived from the store). On a running Ray cluster the actors are detached: the script
starts them (or finds them already running; --replace restarts them), waits until they stream,
and exits; they keep running (restarted on failure) until killed.
When no cluster is running it starts a local Ray and streams until Ctrl-C or --duration, then
stops the feeds after they flushed every closed candle. It imports only ``tradpal_ray``:

    python scripts/stream.py --symbols BTC/USDT,ETH/USDT --exchange-url http://127.0.0.1:8765 --duration 60
    ray submit cluster.yaml scripts/stream.py -- --symbols BTC/USDT,ETH/USDT,SOL/USDT --shards 2
    ray job submit --working-dir . -- python scripts/stream.py --symbols BTC/USDT --timeframes 1m,5m
"""

from __future__ import annotations

import argparse

from tradpal_ray.cluster import connect, instance_name, script_parser, wait_if_local
from tradpal_ray.config import load_settings, split_list
from tradpal_ray.errors import ConfigError, TradpalError


def parser() -> argparse.ArgumentParser:
    """Command-line options (``--help``)."""
    cli = script_parser("stream.py", __doc__)
    cli.add_argument("--symbols", required=True, help="comma-separated unified symbols, e.g. BTC/USDT,ETH/USDT")
    cli.add_argument("--timeframes", default="1m", help="comma-separated timeframes (default 1m)")
    cli.add_argument("--exchange", help="ccxt exchange id (default TRADPAL_EXCHANGE or binance)")
    cli.add_argument("--exchange-url", help="exchange URL override, e.g. the simulator (default TRADPAL_EXCHANGE_URL)")
    cli.add_argument("--store", help="store root, a path or s3://... (default TRADPAL_STORE)")
    cli.add_argument("--connector", choices=("native", "ccxt"), default="native", help="WebSocket client (default native)")
    cli.add_argument("--shards", type=int, default=1, help="feed actors to spread the symbols over (default 1)")
    cli.add_argument("--no-trades", action="store_true", help="candles only")
    cli.add_argument("--duration", type=float, help="local mode: stop after S seconds (default: at Ctrl-C)")
    return cli


def main(argv: list[str] | None = None) -> None:
    """Start the feeds; exit (cluster) or stream until Ctrl-C / --duration (local Ray)."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        import ray

        from tradpal_ray.feeds import FeedConfig, start_feed

        settings = load_settings(store=args.store, exchange=args.exchange, exchange_url=args.exchange_url)
        symbols = split_list(args.symbols)
        if not symbols or args.shards < 1:
            raise ConfigError("give --symbols and a positive --shards")
        configs = [
            FeedConfig(symbols=tuple(symbols[k :: args.shards]), timeframes=tuple(split_list(args.timeframes)),
                       exchange=settings.exchange, url=settings.exchange_url, store=settings.store,
                       connector=args.connector, trades=not args.no_trades, shard=str(k))
            for k in range(min(args.shards, len(symbols)))
        ]
        instance = instance_name(args.name, settings.store)
        mode = connect(args.address, discover=True, log_to_driver=False)
        detached = mode != "local"
        if_running = "replace" if args.replace else "reuse" if detached else "refuse"
        feeds = [start_feed(config, instance=instance, if_running=if_running, detached=detached) for config in configs]
        for config, status in zip(configs, ray.get([feed.ready.remote() for feed in feeds], timeout=180)):
            print(f"{config.name}: {status['mode']}, {len(config.symbols)} symbols", flush=True)
    except (TradpalError, ValueError) as exc:  # a feed's own error arrives wrapped by Ray: show the cause
        cli.exit(2, f"error: {getattr(exc, 'cause', None) or exc}\n")
    if mode == "local":
        try:
            wait_if_local(mode, args.duration)
        finally:
            stopped = ray.get([feed.stop.remote() for feed in feeds], timeout=120)
            print(f"stopped; {sum(s.get('stored_rows', 0) for s in stopped)} candles stored", flush=True)
            ray.shutdown()


if __name__ == "__main__":
    main()
