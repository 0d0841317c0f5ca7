"""Deterministic synthetic market: a random walk with plausible volume, generated lazily.

Time is cut into UTC days of 1440 one-minute bars starting at a genesis day. A day's bars
come from an RNG keyed by (seed, symbol, day) and its open price / first trade id from a
cached cumulative pass over the days before it; a minute's trades come from an RNG keyed by
(seed, symbol, minute) and are constrained to reproduce that minute's o/h/l/c/v/n exactly.
Both levels sit in bounded LRU caches, so months of history cost milliseconds and little memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tradpal_ray.errors import ConfigError
from tradpal_ray.market.schema import to_ms
from tradpal_ray.sim.market import (
    LRU,
    STABLE_QUOTES,
    Bars,
    SymbolSpec,
    Trades,
    ceil_to,
    floor_to,
    parse_symbol,
    stable_key,
)

MINUTE_MS = 60_000
DAY_MS = 86_400_000
MINUTES_PER_DAY = 1440
MIN_TRADES = 4  # open, high, low and close each need a trade
DEFAULT_GENESIS_MS = 1_704_067_200_000  # 2024-01-01T00:00Z
KNOWN_USD_PRICES = {
    "BTC": 42_000.0, "ETH": 2_300.0, "BNB": 310.0, "SOL": 100.0, "XRP": 0.6,
    "ADA": 0.5, "DOGE": 0.09, "LTC": 70.0, "DOT": 7.5, "LINK": 15.0, "AVAX": 35.0,
}  # fmt: skip


def initial_price(symbol: str) -> float:
    """A plausible start price for ``symbol`` (known coins near their 2024 level, else from its name)."""
    base, quote = parse_symbol(symbol)
    fallback = 10 ** (-1 + 4 * (stable_key(base) % 10_000) / 10_000)
    usd = KNOWN_USD_PRICES.get(base, fallback)
    if quote in STABLE_QUOTES:
        return usd
    return usd / KNOWN_USD_PRICES.get(quote, 1.0)


@dataclass(frozen=True)
class WalkParams:
    """Shape of the synthetic market."""

    volatility: float = 0.0008
    """Standard deviation of one minute's log return (scaled per day by a random regime)."""
    trades_per_minute: float = 30.0
    """Mean trade count of a minute (at least 4); raise it for a firehose."""
    notional_per_minute: float = 1.0e6
    """Mean traded value of a minute in the quote asset (for USD-like quotes)."""


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


def generate_day(
    spec: SymbolSpec,
    params: WalkParams,
    seed: int,
    day: int,
    day_ms: int,
    open_ticks: int,
    first_id: int,
) -> Bars:
    """The 1440 one-minute bars of day number ``day`` (since genesis) opening at ``open_ticks``."""
    rng = _rng(seed, spec.key, 0, day)
    sigma = params.volatility * math.exp(0.35 * rng.standard_normal())
    returns = rng.standard_normal(MINUTES_PER_DAY) * sigma
    close = np.maximum(
        np.rint(open_ticks * np.exp(np.cumsum(returns))).astype(np.int64), 1
    )
    opens = np.concatenate(([open_ticks], close[:-1])).astype(np.int64)
    wicks = rng.exponential(0.5 * sigma, (2, MINUTES_PER_DAY))
    top, bottom = np.maximum(opens, close), np.minimum(opens, close)
    high = top + np.rint(top * wicks[0]).astype(np.int64)
    low = np.maximum(bottom - np.rint(bottom * wicks[1]).astype(np.int64), 1)
    counts = MIN_TRADES + rng.poisson(
        max(params.trades_per_minute - MIN_TRADES, 0.0), MINUTES_PER_DAY
    )
    activity = rng.lognormal(0.0, 0.4, MINUTES_PER_DAY) * (
        1.0 + np.abs(returns) / sigma
    )
    price = open_ticks / 10**spec.price_decimals
    notional = (
        params.notional_per_minute
        if spec.quote in STABLE_QUOTES
        else params.notional_per_minute / 40_000
    )
    mean_lots = notional / price * 10**spec.qty_decimals / 2.0  # E[activity] is about 2
    volume = np.maximum(np.rint(mean_lots * activity).astype(np.int64), counts)
    first = first_id + np.concatenate(([0], np.cumsum(counts)[:-1]))
    times = day_ms + np.arange(MINUTES_PER_DAY, dtype=np.int64) * MINUTE_MS
    return Bars(
        t=times,
        o=opens,
        h=high,
        l=low,
        c=close,
        v=volume,
        n=counts.astype(np.int64),
        f=first,
    )


def generate_minute_trades(spec: SymbolSpec, seed: int, bar: Bars) -> Trades:
    """The trades of a one-bar ``bar``: first at o, last at c, one at h and one at l, volume v exactly."""
    open_ms, o, h, l, c, v, n, f = (int(getattr(bar, name)[0]) for name in Bars.FIELDS)
    rng = _rng(seed, spec.key, 1, open_ms // MINUTE_MS)
    prices = rng.integers(l, h + 1, n, dtype=np.int64)
    prices[0], prices[-1] = o, c
    at_high, at_low = 1 + rng.choice(n - 2, 2, replace=False)
    prices[at_high], prices[at_low] = h, l
    weights = rng.exponential(1.0, n)
    spare = v - n
    qty = np.floor(weights / weights.sum() * spare).astype(np.int64)
    rest = spare - int(qty.sum())
    if rest >= 0:
        qty[:rest] += 1
    else:  # float rounding overshot by a lot
        qty[int(np.argmax(qty))] += rest
    qty += 1
    times = open_ms + np.sort(rng.integers(0, MINUTE_MS, n, dtype=np.int64))
    maker = rng.random(n) < 0.5
    return Trades(
        id=f + np.arange(n, dtype=np.int64), t=times, p=prices, q=qty, m=maker
    )


class SyntheticSource:
    """A :class:`~tradpal_ray.sim.market.MarketSource` of deterministic random-walk markets."""

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        seed: int = 7,
        genesis: int | str | None = None,
        params: WalkParams | None = None,
        cache_days: int = 256,
        cache_trades: int = 2_000_000,
    ) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.params = params or WalkParams()
        if self.params.trades_per_minute < MIN_TRADES:
            raise ConfigError(f"trades_per_minute must be at least {MIN_TRADES}")
        self.genesis_ms = floor_to(
            to_ms(genesis) if genesis is not None else DEFAULT_GENESIS_MS, DAY_MS
        )
        self._specs: dict[str, SymbolSpec] = {}
        self._start_ticks: dict[str, int] = {}
        for symbol in symbols:
            price = initial_price(symbol)
            spec = SymbolSpec.for_price(symbol, price)
            self._specs[spec.symbol] = spec
            self._start_ticks[spec.symbol] = max(
                1, round(price * 10**spec.price_decimals)
            )
        if not self._specs:
            raise ConfigError("no symbols to simulate")
        # per symbol: open ticks and first trade id of day 0, 1, 2, ... (grown on demand)
        self._chain: dict[str, tuple[list[int], list[int]]] = {
            s: ([self._start_ticks[s]], [1]) for s in self._specs
        }
        self._days = LRU(cache_days)
        self._trades = LRU(cache_trades, weigh=len)

    def specs(self) -> dict[str, SymbolSpec]:
        """Markets by unified symbol."""
        return dict(self._specs)

    def base_ms(self, symbol: str) -> int:
        """One minute: the synthetic market's bars are 1m."""
        return MINUTE_MS

    def first_ms(self, symbol: str) -> int:
        """The genesis day; nothing trades before it."""
        return self.genesis_ms

    def end_ms(self, symbol: str) -> int | None:
        """None: the walk goes on forever."""
        return None

    def day(self, symbol: str, day: int) -> Bars:
        """All 1440 minute bars of day number ``day`` since genesis (cached)."""
        return self._days.get((symbol, day), lambda: self._make_day(symbol, day))

    def _make_day(self, symbol: str, day: int) -> Bars:
        opens, first_ids = self._chain[symbol]
        while (
            len(opens) <= day
        ):  # cumulative pass: each day opens where the previous closed
            previous = self.day(symbol, len(opens) - 1)
            opens.append(int(previous.c[-1]))
            first_ids.append(int(previous.f[-1] + previous.n[-1]))
        return generate_day(
            self._specs[symbol],
            self.params,
            self.seed,
            day,
            self.genesis_ms + day * DAY_MS,
            opens[day],
            first_ids[day],
        )

    def bars(self, symbol: str, start_ms: int, end_ms: int) -> Bars:
        """Minute bars with open time in ``[start_ms, end_ms)``; none before genesis."""
        start = max(ceil_to(start_ms, MINUTE_MS), self.genesis_ms)
        if end_ms <= start:
            return Bars.empty()
        first_day = (start - self.genesis_ms) // DAY_MS
        last_day = (end_ms - 1 - self.genesis_ms) // DAY_MS
        return Bars.concat(
            [
                self.day(symbol, d).between(start, end_ms)
                for d in range(first_day, last_day + 1)
            ]
        )

    def bar_trades(self, symbol: str, open_ms: int) -> Trades:
        """Trades of the minute opening at ``open_ms`` (cached)."""
        if open_ms < self.genesis_ms or open_ms % MINUTE_MS:
            return Trades.empty()
        return self._trades.get(
            (symbol, open_ms), lambda: self._make_trades(symbol, open_ms)
        )

    def _make_trades(self, symbol: str, open_ms: int) -> Trades:
        index = (open_ms - self.genesis_ms) // MINUTE_MS
        day = self.day(symbol, index // MINUTES_PER_DAY)
        minute = index % MINUTES_PER_DAY
        return generate_minute_trades(
            self._specs[symbol], self.seed, day.take(slice(minute, minute + 1))
        )
