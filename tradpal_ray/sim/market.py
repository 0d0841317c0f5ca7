"""Market data model of the simulator: symbols, integer bars and trades, the source protocol.

Prices are integer ticks and quantities integer lots, so every decimal string the simulator
sends is exact and a candle's volume is exactly the sum of its trades' quantities. A
:class:`MarketSource` (synthetic or replayed) yields closed *base* bars and the trades of
one bar; :class:`MarketView` turns that into what the exchange serves at a given clock time:
candles of any timeframe (the forming one last), trades, 24h tickers.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from tradpal_ray.errors import ConfigError
from tradpal_ray.market.schema import candles_table, timeframe_ms

EXCHANGE = "binance"
QUOTE_ASSETS = (
    "USDT",
    "USDC",
    "FDUSD",
    "BUSD",
    "TUSD",
    "DAI",
    "BTC",
    "ETH",
    "BNB",
    "EUR",
    "TRY",
    "BRL",
    "JPY",
)
STABLE_QUOTES = frozenset({"USDT", "USDC", "FDUSD", "BUSD", "TUSD", "DAI"})
_SYMBOL = re.compile(r"^([A-Z0-9]{2,12})/([A-Z0-9]{2,8})$")
_NO_TRADES = np.empty(0, dtype=np.int64)

V = TypeVar("V")


def fmt_decimal(value: int, decimals: int) -> str:
    """Integer ``value`` scaled by ``10**-decimals`` as an exact decimal string (``12345, 2 -> "123.45"``)."""
    if decimals == 0:
        return str(value)
    sign, value = ("-", -value) if value < 0 else ("", value)
    whole, frac = divmod(value, 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}"


def decimals_of(values: np.ndarray, max_decimals: int = 8) -> int:
    """Fewest decimals (<= ``max_decimals``) that represent every value exactly (to 1e-9 relative)."""
    values = np.asarray(values, dtype=np.float64)
    for decimals in range(max_decimals + 1):
        scaled = values * 10.0**decimals
        if np.all(
            np.abs(scaled - np.round(scaled)) <= 1e-9 * np.maximum(1.0, np.abs(scaled))
        ):
            return decimals
    return max_decimals


def parse_symbol(symbol: str) -> tuple[str, str]:
    """``"BTC/USDT"`` -> ``("BTC", "USDT")``; a :class:`ConfigError` for anything else."""
    match = _SYMBOL.match(symbol.strip()) if isinstance(symbol, str) else None
    if not match:
        raise ConfigError(f"malformed symbol {symbol!r}; use BASE/QUOTE, e.g. BTC/USDT")
    base, quote = match.groups()
    if quote not in QUOTE_ASSETS:
        raise ConfigError(
            f"unknown quote asset in {symbol!r}; known: {', '.join(QUOTE_ASSETS)}"
        )
    if base == quote:
        raise ConfigError(f"symbol {symbol!r} has the same base and quote")
    return base, quote


def stable_key(text: str) -> int:
    """A process-independent 32-bit key of ``text`` (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode())


@dataclass(frozen=True)
class SymbolSpec:
    """One market: unified and Binance ids, assets and the tick/lot grids."""

    symbol: str
    base: str
    quote: str
    price_decimals: int
    qty_decimals: int

    @property
    def id(self) -> str:
        """Binance id, ``BTCUSDT``."""
        return self.base + self.quote

    @property
    def stream(self) -> str:
        """Lower-case id used in stream names, ``btcusdt``."""
        return self.id.lower()

    @property
    def key(self) -> int:
        """Stable integer key used to seed this symbol's random streams."""
        return stable_key(self.symbol)

    def price(self, ticks: int) -> str:
        """Decimal string of a price in ticks."""
        return fmt_decimal(int(ticks), self.price_decimals)

    def qty(self, lots: int) -> str:
        """Decimal string of a quantity in lots."""
        return fmt_decimal(int(lots), self.qty_decimals)

    def notional(self, lots: int, ticks: int) -> str:
        """Decimal string of ``qty * price``."""
        return fmt_decimal(
            int(lots) * int(ticks), self.qty_decimals + self.price_decimals
        )

    @classmethod
    def for_price(cls, symbol: str, price: float) -> SymbolSpec:
        """Spec whose grids suit ``price``: ~6 significant digits of price, ~$1 worth of lots."""
        base, quote = parse_symbol(symbol)
        magnitude = math.floor(math.log10(price))
        return cls(
            symbol=f"{base}/{quote}",
            base=base,
            quote=quote,
            price_decimals=min(8, max(0, 6 - magnitude)),
            qty_decimals=min(8, max(0, magnitude + 1)),
        )


C = TypeVar("C", bound="_Columns")


class _Columns:
    """Equal-length numpy columns named by ``FIELDS``, sorted by ``t``: shared slicing and joining."""

    FIELDS: tuple[str, ...] = ()
    t: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def empty(cls: type[C]) -> C:
        """No rows."""
        raise NotImplementedError

    @classmethod
    def concat(cls: type[C], parts: list[C]) -> C:
        """The rows of ``parts`` one after another."""
        parts = [part for part in parts if len(part)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in cls.FIELDS))

    def take(self: C, index: slice | np.ndarray) -> C:
        """The rows selected by a slice or mask/index array."""
        return type(self)(*(getattr(self, name)[index] for name in self.FIELDS))

    def between(self: C, start_ms: int, end_ms: int) -> C:
        """The rows whose time is in ``[start_ms, end_ms)``."""
        i, j = np.searchsorted(self.t, [start_ms, end_ms])
        return self.take(slice(int(i), int(j)))


@dataclass(frozen=True)
class Bars(_Columns):
    """Integer OHLCV bars (open time ms, ticks, lots, trade count, first trade id)."""

    t: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray
    c: np.ndarray
    v: np.ndarray
    n: np.ndarray
    f: np.ndarray

    FIELDS = ("t", "o", "h", "l", "c", "v", "n", "f")

    @classmethod
    def empty(cls) -> Bars:
        """No bars."""
        return cls(*(_NO_TRADES for _ in cls.FIELDS))


@dataclass(frozen=True)
class Trades(_Columns):
    """Trades in time order: id, time ms, price ticks, quantity lots, buyer-is-maker."""

    id: np.ndarray
    t: np.ndarray
    p: np.ndarray
    q: np.ndarray
    m: np.ndarray

    FIELDS = ("id", "t", "p", "q", "m")

    @classmethod
    def empty(cls) -> Trades:
        """No trades."""
        return cls(_NO_TRADES, _NO_TRADES, _NO_TRADES, _NO_TRADES, np.empty(0, dtype=bool))


def aggregate(bars: Bars, period_ms: int) -> Bars:
    """Bars grouped into ``period_ms`` buckets: o first, h max, l min, c last, v/n sum."""
    if not len(bars):
        return bars
    keys = bars.t - bars.t % period_ms
    starts = np.concatenate(([0], np.flatnonzero(np.diff(keys)) + 1))
    ends = np.concatenate((starts[1:], [len(keys)])) - 1
    n = np.add.reduceat(bars.n, starts)
    traded = bars.n > 0
    # first trade id of a bucket: that of its first bar with trades
    first = np.where(traded, bars.f, np.iinfo(np.int64).max)
    f = np.minimum.reduceat(first, starts)
    return Bars(
        t=keys[starts],
        o=bars.o[starts],
        h=np.maximum.reduceat(bars.h, starts),
        l=np.minimum.reduceat(bars.l, starts),
        c=bars.c[ends],
        v=np.add.reduceat(bars.v, starts),
        n=n,
        f=np.where(n > 0, f, -1),
    )


def trades_bar(trades: Trades, open_ms: int, open_ticks: int) -> Bars:
    """One bar made of ``trades`` (flat at ``open_ticks`` with no volume when there are none)."""
    if not len(trades):
        o = h = l = c = open_ticks
        v, n, f = 0, 0, -1
    else:
        o, c = int(trades.p[0]), int(trades.p[-1])
        h, l = int(trades.p.max()), int(trades.p.min())
        v, n, f = int(trades.q.sum()), len(trades), int(trades.id[0])
    return Bars(
        *(np.array([x], dtype=np.int64) for x in (open_ms, o, h, l, c, v, n, f))
    )


class MarketSource(Protocol):
    """Where the simulator's market comes from: closed base bars and the trades inside them.

    ``bars`` must agree with ``bar_trades`` exactly (o/h/l/c/v/n/f of a bar are what its
    trades give); trade ids increase by one across a symbol's whole history.
    """

    def specs(self) -> dict[str, SymbolSpec]:
        """Markets by unified symbol."""
        ...

    def base_ms(self, symbol: str) -> int:
        """Length of the source's bars for ``symbol`` (60000 for the synthetic market)."""
        ...

    def first_ms(self, symbol: str) -> int:
        """Open time of the first bar; nothing exists before it."""
        ...

    def end_ms(self, symbol: str) -> int | None:
        """Close (exclusive) of the last bar, or None for an endless market."""
        ...

    def bars(self, symbol: str, start_ms: int, end_ms: int) -> Bars:
        """Base bars with open time in ``[start_ms, end_ms)`` (aligned to the base grid)."""
        ...

    def bar_trades(self, symbol: str, open_ms: int) -> Trades:
        """All trades of the base bar opening at ``open_ms`` (empty if there is no bar)."""
        ...


class LRU:
    """A small least-recently-used cache bounded by the total weight of its values."""

    def __init__(
        self, max_weight: int, weigh: Callable[[Any], int] = lambda _value: 1
    ) -> None:
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._weight = 0
        self._max = max_weight
        self._weigh = weigh

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The cached value of ``key``, made (and cached) on a miss."""
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
            return hit[0]
        value = make()
        weight = self._weigh(value)
        self._data[key] = (value, weight)
        self._weight += weight
        while self._weight > self._max and len(self._data) > 1:
            _, (_, dropped) = self._data.popitem(last=False)
            self._weight -= dropped
        return value

    def __len__(self) -> int:
        return len(self._data)


def floor_to(ms: int, period: int) -> int:
    """``ms`` rounded down to a multiple of ``period``."""
    return ms - ms % period


def ceil_to(ms: int, period: int) -> int:
    """``ms`` rounded up to a multiple of ``period``."""
    return -((-ms) // period) * period


class MarketView:
    """What the exchange serves at a clock time, built from a :class:`MarketSource`.

    The candle containing ``now`` is the forming one: made of its closed base bars plus the
    current base bar's trades up to ``now``. Nothing after ``now`` is ever returned.
    """

    def __init__(self, source: MarketSource) -> None:
        self.source = source
        self.specs = source.specs()
        self.by_id = {spec.id: spec for spec in self.specs.values()}

    def spec(self, symbol: str) -> SymbolSpec:
        """The spec of a unified symbol; ConfigError if not simulated."""
        try:
            return self.specs[symbol]
        except KeyError:
            raise ConfigError(
                f"symbol {symbol!r} is not simulated; have {', '.join(self.specs)}"
            ) from None

    def check_timeframe(self, symbol: str, timeframe: str) -> int:
        """Length of ``timeframe`` if it can be served for ``symbol``, else ConfigError."""
        period = timeframe_ms(timeframe)
        base = self.source.base_ms(symbol)
        if period % base:
            raise ConfigError(
                f"timeframe {timeframe} is finer than the data of {symbol} ({base // 60000}m)"
            )
        return period

    def candles(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int
    ) -> Bars:
        """Candles with open time in ``[start_ms, end_ms)`` and at or before ``now_ms``; last may be forming."""
        period = self.check_timeframe(symbol, timeframe)
        base = self.source.base_ms(symbol)
        start = max(
            ceil_to(start_ms, period), floor_to(self.source.first_ms(symbol), period)
        )
        end = min(ceil_to(end_ms, period), floor_to(now_ms, period) + period)
        if end <= start:
            return Bars.empty()
        current = floor_to(now_ms, base)
        closed = self.source.bars(symbol, start, min(end, current))
        parts = [closed]
        if start <= current < end:
            parts.append(self._forming_bar(symbol, current, now_ms))
        bars = Bars.concat(parts)
        return aggregate(bars, period) if period != base else bars

    def _forming_bar(self, symbol: str, open_ms: int, now_ms: int) -> Bars:
        base = self.source.base_ms(symbol)
        full = self.source.bars(symbol, open_ms, open_ms + base)
        if not len(full):
            return Bars.empty()
        trades = self.source.bar_trades(symbol, open_ms).between(open_ms, now_ms + 1)
        return trades_bar(trades, open_ms, int(full.o[0]))

    def closed_candles(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int
    ) -> Bars:
        """Only the candles in ``[start_ms, end_ms)`` that have closed by ``now_ms``."""
        period = self.check_timeframe(symbol, timeframe)
        bars = self.candles(symbol, timeframe, start_ms, end_ms, now_ms)
        return bars.take(bars.t + period - 1 <= now_ms)

    def latest_candles(
        self,
        symbol: str,
        timeframe: str,
        limit: int,
        now_ms: int,
        end_ms: int | None = None,
    ) -> Bars:
        """The last ``limit`` candles opening at or before ``min(end_ms, now_ms)``."""
        period = self.check_timeframe(symbol, timeframe)
        last_open = floor_to(
            min(now_ms, end_ms if end_ms is not None else now_ms), period
        )
        return self.candles(
            symbol, timeframe, last_open - (limit - 1) * period, last_open + 1, now_ms
        )

    def trades(
        self,
        symbol: str,
        start_ms: int,
        end_ms: int,
        now_ms: int,
        limit: int | None = None,
    ) -> Trades:
        """Trades with time in ``[start_ms, min(end_ms, now_ms + 1))``, the first ``limit`` of them."""
        base = self.source.base_ms(symbol)
        end = min(end_ms, now_ms + 1)
        parts: list[Trades] = []
        count = 0
        open_ms = max(
            floor_to(start_ms, base), floor_to(self.source.first_ms(symbol), base)
        )
        while open_ms < end and (limit is None or count < limit):
            part = self.source.bar_trades(symbol, open_ms).between(start_ms, end)
            parts.append(part)
            count += len(part)
            open_ms += base
        trades = Trades.concat(parts)
        return trades.take(slice(0, limit)) if limit is not None else trades

    def recent_trades(self, symbol: str, limit: int, now_ms: int) -> Trades:
        """The last ``limit`` trades at or before ``now_ms``."""
        base = self.source.base_ms(symbol)
        first = self.source.first_ms(symbol)
        parts: list[Trades] = []
        count = 0
        open_ms = floor_to(now_ms, base)
        while open_ms >= first and count < limit:
            part = self.source.bar_trades(symbol, open_ms).between(open_ms, now_ms + 1)
            parts.append(part)
            count += len(part)
            open_ms -= base
        trades = Trades.concat(parts[::-1])
        return trades.take(slice(max(0, len(trades) - limit), None))

    def table(self, symbol: str, timeframe: str, bars: Bars) -> pa.Table:
        """``bars`` as a CANDLE_SCHEMA table (exchange "binance"), floats parsed from the decimals."""
        spec = self.spec(symbol)
        price_scale = 10.0**spec.price_decimals
        qty_scale = 10.0**spec.qty_decimals
        rows = np.column_stack(
            [
                bars.t.astype(np.float64),
                *(getattr(bars, name) / price_scale for name in ("o", "h", "l", "c")),
                bars.v / qty_scale,
            ]
        )
        return candles_table(
            rows, exchange=EXCHANGE, symbol=symbol, timeframe=timeframe, validate=False
        )
