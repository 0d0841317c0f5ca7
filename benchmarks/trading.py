"""Trading benchmark: decision latency and scale of paper traders on the live simulator. Prints one JSON object.

Set-up (everything private, removed at the end): the exchange simulator in its own process
(``--symbols`` synthetic symbols, ``--speed`` times real time: at 60x a 1-minute candle closes
every wall second per symbol), one feed actor for them (as ``tradpal-ray trade start`` makes
it), ``--traders`` paper traders (``sma_cross``, each with its own parameters:
:func:`trader_params`) in trader hosts of ``--per-host`` each, the SQLite ledger under the
store root (the default a laptop gets), a private Ray with 2 CPUs.
Scenarios (:data:`SCENARIOS`): ``latency`` (100 traders, one symbol), ``scale`` (200 traders,
each on 20 symbols), ``scale-spread`` (200 traders, ten a symbol).

* Decision latency: candle close at the exchange to the decision recorded. The close is the
  candle's close time on the simulator's clock, mapped to the wall clock (the simulator
  reports one (sim, wall) pair at start; its clock runs ``speed`` times real time); the
  decision is the trader's ``decision`` event in the ledger, whose time is the wall clock
  when the trader wrote it (after its order and fills of that candle). Candles closing in the
  first ``--warm-up`` seconds (actor start, feed backfill) are not counted. p50 / p99 / max.
* Falling behind: the lag of each decision over the run; the slope of the per-candle median
  lag (s of lag per s of run) and the first-third vs last-third medians. A run keeps up when
  the slope is under 0.05 and every trader decided on every candle closed up to 3 s before
  the end.
* Memory: per trader host process, RSS and USS (private memory; what each extra process costs).

Peer: none. No other trading framework runs here under the same conditions (see ``PEER``).
Findings on the 2-core, 24 GB reference machine: see README's Benchmarks section.
Usage: ``python benchmarks/trading.py [--scenario latency] [--scenario scale] [--per-host 50] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _serving import spawn

STEP_MS = 60_000


def trader_params(i: int) -> dict[str, int]:
    """Trader ``i``'s ``sma_cross`` parameters: 200 distinct pairs (fast 3-12, slow 20-39), as an
    incubator's top results differ, so no two of the first 200 traders compute the same signal."""
    return {"fast": 3 + i % 10, "slow": 20 + (i // 10) % 20}
PEER = {"figure": None, "reason": "no peer measured under the same conditions: freqtrade 2026.9 does install from "
        "the package registry, but it polls the exchange's REST API on its own throttle (default 5 s) and pointing "
        "it at the simulator was not done; a bare ccxt loop is not a trader"}


def _serve_simulator(ports: Any, symbols: list[str], speed: float) -> None:
    """The simulator at ``speed``; reports its port and one (sim ms, wall ms) pair of its clock."""
    from tradpal_ray.sim import ExchangeSimulator
    from tradpal_ray.sim.runner import new_event_loop

    async def serve() -> None:
        # Updates of forming candles every 50 ms (3 simulated s at 60x; Binance pushes a kline every 2 s);
        # a closing kline goes out at its close either way.
        sim = ExchangeSimulator(symbols, speed=speed, emit_interval=0.05)
        await sim.start()
        ports.put({"port": sim.port, "sim_ms": sim.now_ms(), "wall_ms": time.time() * 1000.0})
        await asyncio.Event().wait()

    new_event_loop().run_until_complete(serve())


def _memory(pids: list[int]) -> dict[str, float]:
    """RSS and USS of the trader processes in MB: per process (median) and in total."""
    import psutil

    infos = [psutil.Process(pid).memory_full_info() for pid in pids]
    rss, uss = [i.rss / 2**20 for i in infos], [i.uss / 2**20 for i in infos]
    return {"processes": len(pids), "rss_mb_median": round(statistics.median(rss), 1),
            "uss_mb_median": round(statistics.median(uss), 1), "uss_mb_total": round(sum(uss)),
            "rss_mb_total": round(sum(rss))}


def _lags(store: Path, names: list[str], close_wall_ms: Any) -> dict[str, np.ndarray]:
    """Per trader and symbol, its decisions as rows (candle close wall ms, decision lag ms)."""
    from tradpal_ray.stats._live import DECISION_EVENT
    from tradpal_ray.trading import open_ledger

    ledger = open_ledger(None, store)
    try:
        out: dict[str, list[tuple[float, float]]] = {}
        for name in names:
            for event in ledger.events(name, kind=DECISION_EVENT):
                close = close_wall_ms(event.detail["time_ms"] + STEP_MS)
                out.setdefault(f"{name} {event.detail['symbol']}", []).append((close, event.time_ms - close))
        return {series: np.array(rows, dtype=float) for series, rows in out.items()}
    finally:
        ledger.close()


def _behind(decisions: dict[str, np.ndarray], start_ms: float, end_ms: float) -> dict[str, Any]:
    """Latency percentiles and the lag trend of the decisions on candles closing in [start_ms, end_ms).

    A candle closed 3 s before the end without a decision recorded by the end counts as missing
    (its trader is behind); decisions the traders made after the end (the catch-up of ``stop``)
    count with their real lag.
    """
    series = {k: v[(v[:, 0] >= start_ms) & (v[:, 0] < end_ms)] for k, v in decisions.items()}
    rows = np.concatenate(list(series.values()))
    if not len(rows):
        return {"decisions": 0}
    closes = np.unique(rows[:, 0])
    per_candle = np.array([np.median(rows[rows[:, 0] == c, 1]) for c in closes])
    slope = float(np.polyfit((closes - closes[0]) / 1000.0, per_candle / 1000.0, 1)[0]) if len(closes) > 2 else 0.0
    third = max(1, len(closes) // 3)
    due = closes[closes < end_ms - 3000]
    missing = sum(int(np.isin(due, v[v[:, 0] + v[:, 1] <= end_ms, 0], invert=True).sum()) for v in series.values())
    lag = rows[:, 1]
    worst = max(series, key=lambda k: float(series[k][:, 1].max()) if len(series[k]) else 0.0)
    return {
        "decisions": len(rows), "candle_closes": len(closes),
        "p50_ms": round(float(np.percentile(lag, 50)), 1), "p99_ms": round(float(np.percentile(lag, 99)), 1),
        "max_ms": round(float(lag.max()), 1), "worst_series": worst,
        "lag_slope_s_per_s": round(slope, 4),
        "first_third_median_ms": round(float(np.median(per_candle[:third])), 1),
        "last_third_median_ms": round(float(np.median(per_candle[-third:])), 1),
        "missing_decisions": missing,
        "keeps_up": bool(slope < 0.05 and missing == 0),
    }


def session_capacity(sessions: int, symbols: int, candles: int) -> dict[str, Any]:
    """Decisions per second of :class:`TraderSession` itself: ``sessions`` paper traders on ``symbols``
    synthetic symbols in this one process, their books in one SQLite ledger, ``candles`` candles each.

    What one process spends per decision (strategy, paper fill, ledger writes) without Ray or the
    feed: the bound for several traders per actor process. Traders a core sustains at 60x on 20
    symbols: decisions/s / 20.
    """
    from tradpal_ray.sim import SyntheticSource
    from tradpal_ray.trading import open_ledger
    from tradpal_ray.trading._paper import Candle
    from tradpal_ray.trading._session import TraderSession, TraderSpec
    from tradpal_ray.trading._trader import SharedSignals

    names = [f"S{k}/USDT" for k in range(symbols)]
    source = SyntheticSource(names)
    start = source.first_ms(names[0])
    series = {}
    for name in names:
        bars = source.bars(name, start, start + candles * STEP_MS)
        tick, lot = 10.0 ** -source.specs()[name].price_decimals, 10.0 ** -source.specs()[name].qty_decimals
        series[name] = [Candle(int(t), o * tick, h * tick, lo * tick, c * tick, v * lot)
                        for t, o, h, lo, c, v in zip(bars.t, bars.o, bars.h, bars.l, bars.c, bars.v, strict=True)]
    with tempfile.TemporaryDirectory(prefix="tradebench-") as tmp:
        ledger = open_ledger(None, tmp)
        shared = SharedSignals()  # as a trader host: its sessions share bars and indicators
        books = [TraderSession(TraderSpec(name=f"c{i}", strategy="sma_cross", symbols=tuple(names), timeframe="1m",
                                          store=tmp, params=trader_params(i)), ledger, shared=shared)
                 for i in range(sessions)]
        for book in books:
            book.start()
        wall, cpu = time.perf_counter(), time.process_time()
        for k in range(candles):
            for name in names:  # as a trader host: a candle of a symbol to every session, their rows in one commit
                with ledger.deferred():
                    for book in books:
                        book.on_candles(name, series[name][k:k + 1])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        fills = ledger.fill_count()
        ledger.close()
    decisions = sessions * symbols * candles
    return {"sessions": sessions, "symbols": symbols, "decisions": decisions, "fills": fills,
            "decisions_per_s": round(decisions / wall), "decisions_per_cpu_s": round(decisions / cpu),
            "ms_per_decision": round(wall / decisions * 1000, 3),
            "traders_per_core_20_symbols_60x": round(decisions / wall / 20)}


def run(traders: int, symbols: int, speed: float, seconds: float, warm_up: float, per_host: int,
        layout: str) -> dict[str, Any]:
    """One run: simulator, feed, ``traders`` paper traders in hosts of ``per_host`` for ``seconds`` after they
    are up; the figures. ``layout``: ``all`` (every trader on every symbol) or ``spread`` (trader i on symbol i mod n)."""
    import ray

    from tradpal_ray.feeds.actor import actor_name
    from tradpal_ray.trading._session import TraderSpec
    from tradpal_ray.trading.actor import ensure_feed, feed_config, start_trader

    names = [f"S{k}/USDT" for k in range(symbols)]
    sim, clock = spawn(_serve_simulator, names, speed)
    instance = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory(prefix="tradebench-") as tmp:
        store = Path(tmp)
        url = f"http://127.0.0.1:{clock['port']}"

        def close_wall_ms(sim_ms: float) -> float:
            return clock["wall_ms"] + (sim_ms - clock["sim_ms"]) / speed

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            series = TraderSpec(name="feed", strategy="sma_cross", symbols=tuple(names), timeframe="1m", store=str(store),
                                exchange_url=url)
            feed = ensure_feed(series, instance)  # the store's history first: what the traders warm up on
            ray.get(feed.ready.remote())
            ray.get(feed.stop.remote())
            ray.kill(feed)
            specs = [TraderSpec(name=f"t{i}", strategy="sma_cross", timeframe="1m", store=str(store),
                                symbols=tuple(names) if layout == "all" else (names[i % symbols],),
                                params=trader_params(i), exchange_url=url) for i in range(traders)]
            started = time.monotonic()
            feed_name = actor_name(feed_config(series), instance)
            handles = [start_trader(spec, instance=instance, max_restarts=0, per_host=per_host, feed=feed_name)
                       for spec in specs]
            ray.get([h.ready() for h in handles])
            up_s = time.monotonic() - started
            feed = ensure_feed(series, instance)  # as `trade start`: the traders are ready, then one feed streams
            ray.get(feed.ready.remote())
            hosts = list({h.host._actor_id: h.host for h in handles}.values())
            pids = ray.get([h.__ray_call__.remote(lambda self: os.getpid()) for h in hosts])
            # The feed fills the gap since its first start (the traders' start-up): measure once they caught up.
            latest = {h.host._actor_id: h for h in handles}.values()  # the last trader started in each host
            caught_up_s = _catch_up(list(latest), lambda: (clock["sim_ms"] + (time.time() * 1000.0 - clock["wall_ms"]) * speed))
            begin_ms = time.time() * 1000.0 + warm_up * 1000.0
            deadline = time.monotonic() + warm_up + seconds
            memory = None
            while time.monotonic() < deadline:  # the run; memory sampled once, mid-way
                if memory is None and time.monotonic() > deadline - seconds / 2:
                    memory = _memory(pids)
                time.sleep(0.5)
            end_ms = time.time() * 1000.0
            ray.get(feed.stop.remote())
        finally:
            ray.shutdown()
            sim.terminate()
            sim.join(10)
        figures = _behind(_lags(store, [s.name for s in specs], close_wall_ms), begin_ms, end_ms)
    return {"traders": traders, "symbols": symbols, "layout": layout, "per_host": per_host, "hosts": len(hosts),
            "speed": speed, "seconds": seconds, "traders_up_s": round(up_s, 1), "caught_up_s": caught_up_s, **figures,
            "memory": memory,
            "load_average_1m": round(os.getloadavg()[0], 2)}


def _catch_up(traders: list[Any], sim_now_ms: Any, timeout_s: float = 120.0) -> float | None:
    """Seconds until every given trader has decided on the last closed candle but one of each of its symbols
    (None: not within ``timeout_s``; the run is then measured behind)."""
    import ray

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        due = (sim_now_ms() // STEP_MS - 2) * STEP_MS  # open time of the candle before the last closed one
        statuses = ray.get([t.status() for t in traders])
        if all((s["symbols"][k]["last_candle_ms"] or 0) >= due for s in statuses for k in s["symbols"]):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)  # polling the traders' progress
    return None


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


SCENARIOS = {
    "latency": {"traders": 100, "symbols": 1, "layout": "all"},
    "scale": {"traders": 200, "symbols": 20, "layout": "all"},
    "scale-spread": {"traders": 200, "symbols": 20, "layout": "spread"},
}
"""The issue's two targets: p99 decision latency with 100 traders; 200 traders on 20 symbols at 60x
(``scale``: each on all 20, 4,000 decisions a second; ``scale-spread``: ten on each symbol)."""


def main() -> None:
    """Parse the options, run each scenario ``--runs`` times, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="what to run (repeatable; default: latency and scale)")
    parser.add_argument("--traders", type=int, help="override the scenario's number of paper traders")
    parser.add_argument("--symbols", type=int, help="override the scenario's number of simulated symbols")
    parser.add_argument("--per-host", type=int, default=50, help="traders a host process runs (TRADPAL_TRADERS_PER_HOST)")
    parser.add_argument("--speed", type=float, default=60.0, help="simulator speed (60: a 1m candle per second)")
    parser.add_argument("--seconds", type=float, default=40.0, help="measured seconds per run")
    parser.add_argument("--warm-up", type=float, default=10.0, help="seconds of candles not counted")
    parser.add_argument("--sessions", type=int, default=10, help="in-process sessions for the capacity figure")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TRADPAL_LOG_LEVEL", "WARNING")
    scenarios: dict[str, Any] = {}
    for name in args.scenario or ["latency", "scale"]:
        shape = {**SCENARIOS[name], **{k: v for k in ("traders", "symbols") if (v := getattr(args, k)) is not None}}
        runs = [run(shape["traders"], shape["symbols"], args.speed, args.seconds, args.warm_up, args.per_host,
                    shape["layout"]) for _ in range(args.runs)]
        measured = [r for r in runs if r.get("decisions")]
        summary = {key: spread([r[key] for r in measured]) for key in ("p50_ms", "p99_ms", "lag_slope_s_per_s",
                                                                        "missing_decisions")} if measured else {}
        summary["keeps_up"] = [r.get("keeps_up") for r in runs]
        if uss := [r["memory"]["uss_mb_median"] for r in runs if r.get("memory")]:
            summary["host_uss_mb"] = spread(uss)
        scenarios[name] = {"shape": shape, "summary": summary, "runs": runs}
    capacity = [session_capacity(args.sessions, 20, 60) for _ in range(args.runs)]
    print(json.dumps({"benchmark": "trading", "scenarios": scenarios, "session_capacity": capacity,
                      "capacity_traders_per_core_20_symbols_60x": spread([c["traders_per_core_20_symbols_60x"]
                                                                          for c in capacity]),
                      "peer": PEER, "targets": {"p99_ms_100_traders": 50, "paper_traders_20_symbols_60x": 200}}))


if __name__ == "__main__":
    main()
