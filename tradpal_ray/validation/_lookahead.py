"""Look-ahead and warm-up checks of a strategy, by recomputing its signals on cut data.

Look-ahead: the signal at bar ``i`` must depend on bars ``0..i`` only. The check recomputes
the signals on prefixes ``bars[:L]`` and compares them with the signals of the whole series
on the same bars; a bar whose signal differs was computed with bars ``>= L``, from the future.

Warm-up: recursive indicators (EMA, RSI) never quite forget the bar they started from. The
check recomputes the signals from later start offsets ``bars[s:]`` and counts the bars after
``s`` until they agree with the whole series' signals for good; the largest count over the
offsets is the warm-up to give the strategy before trusting its signals (e.g. in a fold).

Pure numpy code: :func:`probe` runs one :class:`ProbeJob`; :func:`check_strategy` plans the
jobs, runs them in process or as Ray tasks (a thin shell), and folds them into a
:class:`LookaheadReport`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tradpal_ray.backtest._references import StrategyRef, resolve_strategy, strategy_ref
from tradpal_ray.backtest.data import Bars, prepare_bars
from tradpal_ray.backtest.strategies import Signals, Strategy
from tradpal_ray.errors import ConfigError, TradpalError
from tradpal_ray.log import get_logger

log = get_logger(__name__)

DEFAULT_PREFIXES = 1000
"""Prefixes recomputed by default: every one when the series has no more bars than this."""
DEFAULT_STARTS = 16
"""Start offsets, spread over the first half of the series, from which the warm-up is measured."""
PROBES_PER_TASK = 50
"""At least this many prefixes and offsets per Ray task (each a signal computation): ~100 ms of work or more."""
SIGNAL_NAMES = ("entry", "exit")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class LookaheadBar:
    """A bar whose signal changes once later bars are known: the strategy looks ahead there."""

    bar: int
    """Position of the bar in the series (0 = the first bar)."""
    time: str
    """The bar's time, ISO 8601 UTC."""
    signal: str
    """``entry`` or ``exit``."""
    with_future: bool
    """The signal computed on the whole series."""
    known_bars: int
    """The shortest prefix found to change it: computed on bars ``0..known_bars-1`` only, it is the opposite."""

    @property
    def without_future(self) -> bool:
        """The signal computed without the bars after ``known_bars - 1`` (a boolean that differs)."""
        return not self.with_future

    def describe(self) -> str:
        """One line for people."""
        return (f"bar {self.bar} ({self.time}): {self.signal} is {self.with_future} on the whole series, "
                f"{self.without_future} on its first {self.known_bars} bars")


@dataclass(frozen=True)
class WarmupProbe:
    """Signals recomputed from bar ``start`` on: ``bars_until_agree`` bars after it they match the whole series' for good."""

    start: int
    bars_until_agree: int


@dataclass(frozen=True)
class ProbeJob:
    """One unit of work: recompute the signals on these prefixes and from these start offsets."""

    strategy: Strategy | StrategyRef
    values: dict[str, Any]
    prefix_lengths: tuple[int, ...]
    starts: tuple[int, ...]


@dataclass(frozen=True)
class ProbeOutcome:
    """What one :class:`ProbeJob` found."""

    lookahead: tuple[LookaheadBar, ...]
    warmup: tuple[WarmupProbe, ...]


@dataclass(frozen=True)
class LookaheadReport:
    """The verdict on one strategy and parameters over one series."""

    strategy: str
    params: dict[str, Any]
    n_bars: int
    prefixes_checked: int
    """How many prefixes were recomputed (``n_bars`` when :attr:`exhaustive`)."""
    exhaustive: bool
    """True when every prefix was recomputed: every bar's signal was checked without its future."""
    longest_window: int
    """The longest window parameter (0 when the strategy declares none), to read the warm-up against."""
    lookahead: tuple[LookaheadBar, ...]
    """Every look-ahead bar found, by bar then signal."""
    warmup: tuple[WarmupProbe, ...]
    """One probe per start offset, by start."""

    @property
    def clean(self) -> bool:
        """No look-ahead found."""
        return not self.lookahead

    @property
    def first(self) -> LookaheadBar | None:
        """The first look-ahead bar, or None when clean."""
        return self.lookahead[0] if self.lookahead else None

    @property
    def warmup_bars(self) -> int:
        """Bars the signals need, from any start, before they stop depending on it (the largest probe)."""
        return max((p.bars_until_agree for p in self.warmup), default=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``tradpal-ray check-strategy --json``)."""
        def bar(found: LookaheadBar) -> dict[str, Any]:
            return {**dataclasses.asdict(found), "without_future": found.without_future}

        return {
            "strategy": self.strategy, "params": dict(self.params), "bars": self.n_bars, "clean": self.clean,
            "prefixes_checked": self.prefixes_checked, "exhaustive": self.exhaustive,
            "first_lookahead": bar(self.first) if self.first else None,
            "lookahead": [bar(found) for found in self.lookahead],
            "warmup_bars": self.warmup_bars, "longest_window": self.longest_window,
            "warmup": [dataclasses.asdict(p) for p in self.warmup],
        }


def check_strategy(
    bars: pd.DataFrame | Bars,
    strategy: str | StrategyRef | Strategy,
    params: Mapping[str, Any] | None = None,
    *,
    prefixes: int | Sequence[int] = DEFAULT_PREFIXES,
    starts: int | Sequence[int] = DEFAULT_STARTS,
    executor: str = "local",
    address: str | None = None,
) -> LookaheadReport:
    """Check ``strategy`` with ``params`` on ``bars`` for look-ahead and measure its warm-up.

    ``prefixes``: how many prefixes to recompute (all of them when the series is no longer;
    else every bar the whole series signals on, thinned evenly to half the budget, then bars
    spread evenly), or the prefix lengths themselves. ``starts``: how many start offsets over
    the first half of the series, or the offsets. ``executor``: ``local`` in this process,
    ``ray`` as parallel Ray tasks (joining ``address``, else a private local Ray, when Ray is
    not initialised; the strategy's file is shipped to the workers). ConfigError/DataError on
    bad input, or when the strategy fails on a cut series.
    """
    check_executor(executor)
    ref = None if isinstance(strategy, Strategy) else strategy_ref(strategy)
    strat = strategy if isinstance(strategy, Strategy) else resolve_strategy(ref)  # type: ignore[arg-type]
    bars = prepare_bars(bars)
    n_bars = len(bars)
    values = strat.resolve(params or {}, n_bars=n_bars)
    whole = _signals(strat, bars, values, 0, n_bars)
    lengths = _prefix_lengths(prefixes, n_bars, whole)
    offsets = _starts(starts, n_bars)
    if executor == "ray":
        outcomes = _probe_on_ray(bars, whole, ref or strategy_ref(strat.name), values, lengths, offsets, address)
    else:
        outcomes = [probe(bars, whole, ProbeJob(strat, values, lengths, offsets))]
    report = _report(strat, values, n_bars, lengths, outcomes)
    log.debug("check_strategy.done", strategy=strat.name, bars=n_bars, prefixes=len(lengths), executor=executor,
             lookahead=len(report.lookahead), warmup=report.warmup_bars)
    return report


def check_executor(executor: str) -> str:
    """``executor`` when it is ``local`` or ``ray``; ConfigError otherwise."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    return executor


def probe(bars: Bars, whole: Signals, job: ProbeJob) -> ProbeOutcome:
    """Recompute the job's prefixes and start offsets and compare each with ``whole``, the whole series' signals."""
    strat = resolve_strategy(job.strategy)
    n_bars = len(bars)
    exposed = np.zeros((len(SIGNAL_NAMES), n_bars), dtype=np.int64)  # shortest prefix exposing a bar; 0: none
    for length in sorted(job.prefix_lengths):
        for row, cut, reference in zip(exposed, _signals(strat, bars, job.values, 0, length), whole, strict=True):
            differ = np.flatnonzero(cut != reference[:length])
            fresh = differ[row[differ] == 0]
            row[fresh] = length
    lookahead = tuple(
        LookaheadBar(int(i), bars.index[i].isoformat(), name, bool(reference[i]), int(row[i]))
        for i in np.flatnonzero(exposed.any(axis=0))
        for name, row, reference in zip(SIGNAL_NAMES, exposed, whole, strict=True)
        if row[i]
    )
    warmup = []
    for start in job.starts:
        differ = np.zeros(n_bars - start, dtype=np.bool_)
        for cut, reference in zip(_signals(strat, bars, job.values, start, n_bars), whole, strict=True):
            differ |= cut != reference[start:]
        last = np.flatnonzero(differ)
        warmup.append(WarmupProbe(start, int(last[-1]) + 1 if len(last) else 0))
    return ProbeOutcome(lookahead, tuple(warmup))


def _signals(strat: Strategy, bars: Bars, values: Mapping[str, Any], start: int, stop: int) -> Signals:
    """The strategy's signals on ``bars[start:stop]``; a strategy that fails there is a ConfigError naming the cut."""
    part = bars if (start, stop) == (0, len(bars)) else Bars(
        **{field.name: getattr(bars, field.name)[start:stop] for field in dataclasses.fields(Bars)})
    try:
        return strat.signals(part, values)
    except TradpalError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code failed on a cut series: say where, in one line
        raise ConfigError(f"strategy {strat.name} failed on bars {start}..{stop - 1} of {len(bars)}: "
                          f"{type(exc).__name__}: {exc}") from None


def _spread(candidates: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of the sorted ``candidates``, evenly spaced, first and last included."""
    if len(candidates) <= count:
        return candidates
    if count <= 0:
        return candidates[:0]
    return np.unique(candidates[np.linspace(0, len(candidates) - 1, count).round().astype(np.int64)])


def _prefix_lengths(prefixes: int | Sequence[int], n_bars: int, whole: Signals) -> tuple[int, ...]:
    if not isinstance(prefixes, int):
        lengths = sorted({int(length) for length in prefixes})
        if not lengths or lengths[0] < 1 or lengths[-1] > n_bars:
            raise ConfigError(f"prefix lengths must be between 1 and the {n_bars} bars, got {lengths[:3]}...")
        return tuple(lengths)
    if prefixes < 1:
        raise ConfigError(f"--prefixes must be at least 1, got {prefixes}")
    every = np.arange(1, n_bars + 1)
    if prefixes >= n_bars:
        return tuple(every.tolist())
    signalled = _spread(np.flatnonzero(whole[0] | whole[1]) + 1, prefixes // 2)
    spaced = _spread(np.setdiff1d(every, signalled), prefixes - len(signalled))
    return tuple(np.union1d(signalled, spaced).tolist())


def _starts(starts: int | Sequence[int], n_bars: int) -> tuple[int, ...]:
    if not isinstance(starts, int):
        offsets = sorted({int(start) for start in starts})
        if offsets and (offsets[0] < 1 or offsets[-1] >= n_bars):
            raise ConfigError(f"start offsets must be between 1 and {n_bars - 1}, got {offsets[:3]}...")
        return tuple(offsets)
    if starts < 0:
        raise ConfigError(f"--starts must be at least 0, got {starts}")
    if n_bars < 2 or starts == 0:
        return ()
    return tuple(np.unique(np.linspace(1, n_bars // 2, starts).astype(np.int64)).tolist())


def _report(strat: Strategy, values: dict[str, Any], n_bars: int, lengths: tuple[int, ...],
            outcomes: Sequence[ProbeOutcome]) -> LookaheadReport:
    """Fold the jobs' outcomes: per bar and signal the shortest exposing prefix; probes by start."""
    found: dict[tuple[int, str], LookaheadBar] = {}
    for outcome in outcomes:
        for bar in outcome.lookahead:
            key = (bar.bar, bar.signal)
            if key not in found or bar.known_bars < found[key].known_bars:
                found[key] = bar
    longest = max((values[name] for name, p in strat.params.items() if p.window), default=0)
    return LookaheadReport(
        strategy=strat.name, params=dict(values), n_bars=n_bars, prefixes_checked=len(lengths),
        exhaustive=len(lengths) == n_bars, longest_window=int(longest),
        lookahead=tuple(found[key] for key in sorted(found, key=lambda k: (k[0], SIGNAL_NAMES.index(k[1])))),
        warmup=tuple(sorted((p for o in outcomes for p in o.warmup), key=lambda p: p.start)),
    )


def _probe_on_ray(bars: Bars, whole: Signals, ref: StrategyRef, values: dict[str, Any], lengths: tuple[int, ...],
                  offsets: tuple[int, ...], address: str | None) -> list[ProbeOutcome]:
    """The jobs as parallel Ray tasks (``check-strategy <name> #k``), the strategy's code shipped once."""
    import ray

    from tradpal_ray.cluster import connect
    from tradpal_ray.runs._ray import shipped_env

    if not ref.portable:
        raise ConfigError(f"strategy {ref.name} exists only in this process (defined in __main__ or inside a "
                          "function): Ray workers cannot import it; put it in a file and pass path/to/file.py:function")
    connect(address)
    env = shipped_env(ref)
    task = ray.remote(max_retries=3)(probe)
    shipping: dict[str, Any] = {"runtime_env": env} if env else {}
    work = len(lengths) + len(offsets)
    count = max(1, min(work // PROBES_PER_TASK, int(2 * ray.cluster_resources().get("CPU", 1))))
    bars_ref, whole_ref = ray.put(bars), ray.put(whole)
    refs = [task.options(name=f"check-strategy {ref.name} #{k}", **shipping).remote(
                bars_ref, whole_ref, ProbeJob(ref, values, lengths[k::count], offsets[k::count]))
            for k in range(count)]
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, TradpalError):
            raise exc.cause from None
        raise
