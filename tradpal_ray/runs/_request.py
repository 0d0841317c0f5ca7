"""What a sweep run asks for, checked before any cluster or data is touched."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tradpal_ray.backtest._references import StrategyRef, strategy_ref
from tradpal_ray.backtest.data import Bars, load_bars, load_store_bars
from tradpal_ray.backtest.engine import BacktestConfig
from tradpal_ray.backtest.metrics import metric, metrics
from tradpal_ray.backtest.strategies import Strategy
from tradpal_ray.errors import ConfigError, StoreError
from tradpal_ray.market.schema import timeframe_ms, to_ms
from tradpal_ray.runs._manifest import RunManifest
from tradpal_ray.runs._plan import DEFAULT_MAX_COMBOS, GridPlan


@dataclass(frozen=True)
class BarsSource:
    """Where one symbol's bars come from: a series of the candle store, or a data file."""

    symbol: str
    store: str = ""
    exchange: str = ""
    timeframe: str | None = None
    data_file: str | None = None
    since: str | None = None
    until: str | None = None

    def check(self, work: str) -> None:
        """Check what can be without the bars: a store series' timeframe, and ``since`` before ``until``.

        ConfigError naming ``work`` (``sweep``, ``search``: what the source is for) and the bad part.
        """
        if not self.data_file:
            if not self.timeframe:
                raise ConfigError(f"a {work} over the store needs a timeframe")
            timeframe_ms(self.timeframe)
        since, until = to_ms(self.since), to_ms(self.until)
        if since is not None and until is not None and since >= until:
            raise ConfigError(f"--since {self.since} is not before --until {self.until}")

    def load(self) -> Bars:
        """Read and validate the bars (DataError when they are bad or missing)."""
        if self.data_file:
            return load_bars(self.data_file, since=self.since, until=self.until)
        assert self.timeframe is not None
        return load_store_bars(self.store, self.exchange, self.symbol, self.timeframe, since=self.since, until=self.until)


@dataclass(frozen=True)
class SweepRequest:
    """A strategy's grid over symbols of the store, or over one data file.

    ``strategy`` is a reference: a registered name, ``module.path:function`` or
    ``path/to/file.py:function`` (see :class:`~tradpal_ray.backtest.StrategyRef`).
    """

    strategy: str | StrategyRef
    grid: dict[str, list[Any]]
    symbols: list[str] = field(default_factory=list)
    exchange: str = "binance"
    timeframe: str | None = None
    since: str | None = None
    until: str | None = None
    data_file: str | None = None
    """Bars from a CSV/Parquet file instead of the store (the symbol is the file's stem)."""
    config: BacktestConfig = field(default_factory=BacktestConfig)
    metric: str = "sharpe"
    samples: int | None = None
    """Random sampling: that many combinations instead of the full grid."""
    seed: int = 0
    max_combos: int = DEFAULT_MAX_COMBOS
    """Refuse grids (or samples) larger than this."""
    size_units: dict[str, float] = field(default_factory=dict)
    """Per-symbol tradable increment overriding ``config.size_unit`` (see :meth:`with_market_units`)."""

    def config_for(self, symbol: str) -> BacktestConfig:
        """The backtest settings of one symbol (its own size unit when one is known)."""
        unit = self.size_units.get(symbol)
        return self.config if unit is None else replace(self.config, size_unit=unit)

    def with_market_units(self, store: str) -> tuple[SweepRequest, list[str]]:
        """This request with each store symbol's recorded lot step as its size unit; and the symbols without one.

        A data file keeps ``config.size_unit`` (1 unless given).
        """
        if self.data_file:
            return self, []
        from tradpal_ray.market.markets import MarketInfoStore

        recorded = MarketInfoStore(store).read(self.exchange)
        units = {s: recorded[s].amount_step for s in self.symbols if s in recorded}
        return replace(self, size_units=units), [s for s in self.symbols if s not in recorded]

    def check(self) -> tuple[StrategyRef, Strategy, GridPlan]:
        """Check the whole request without Ray or market data; the strategy and the grid's plan.

        Raises ConfigError naming the bad part, so a typo costs no cluster start and leaves
        no failed run behind.
        """
        if not (self.data_file or self.symbols):
            raise ConfigError("no symbols to sweep")
        self.sources("")[0].check("sweep")  # the symbols' sources differ only in their symbol
        metric(self.metric)
        ref = strategy_ref(self.strategy)
        strat = ref.load()
        plan = GridPlan.build(strat, self.grid, samples=self.samples, seed=self.seed, max_combos=self.max_combos)
        return ref, strat, plan

    def absolute(self) -> SweepRequest:
        """The request with its data file as an absolute path (workers may run elsewhere)."""
        return replace(self, data_file=str(Path(self.data_file).resolve())) if self.data_file else self

    def symbol_names(self) -> list[str]:
        """The symbols swept: the store's, or the data file's stem."""
        return [Path(self.data_file).stem] if self.data_file else list(self.symbols)

    def sources(self, store: str) -> list[BarsSource]:
        """Where each symbol's bars come from."""
        if self.data_file:
            return [BarsSource(self.symbol_names()[0], data_file=self.data_file, since=self.since, until=self.until)]
        return [BarsSource(s, store=store, exchange=self.exchange, timeframe=self.timeframe, since=self.since,
                           until=self.until) for s in self.symbols]

    def check_data(self, store: str) -> tuple[int, dict[str, Bars]]:
        """Check the data before any run: the most bars of one symbol, and the bars already loaded.

        A data file is read and validated here, by the driver, the only process sure to see
        it (DataError when it is bad). Store series must exist: ConfigError listing what
        the store holds for the exchange and timeframe otherwise.
        """
        if self.data_file:
            bars = self.sources("")[0].load()
            return len(bars), {self.symbol_names()[0]: bars}
        from tradpal_ray.market.store import CandleStore

        try:
            listing = CandleStore(store).series()
        except StoreError:  # a corrupt file elsewhere in the store: its symbol fails alone when loaded
            return 0, {}
        stored = {info.symbol: info.rows for info in listing
                  if info.exchange == self.exchange and info.timeframe == self.timeframe}
        missing = [s for s in self.symbols if s not in stored]
        if missing:
            have = ", ".join(sorted(stored)) or "none"
            raise ConfigError(f"no {self.exchange} {self.timeframe} candles for {', '.join(missing)} in the store "
                              f"at {store}; stored {self.exchange} {self.timeframe} series: {have}")
        return max(stored[s] for s in self.symbols), {}

    def manifest(self, run_id: str, ref: StrategyRef, strat: Strategy, plan: GridPlan, chunk_size: int) -> RunManifest:
        """A fresh manifest recording this request."""
        return RunManifest(
            run_id=run_id, strategy=strat.name, grid=self.grid, symbols=list(self.symbols),
            source=self.data_file or "store", strategy_ref=ref.to_dict(),
            param_types={name: p.type.__name__ for name, p in strat.params.items()},
            exchange=None if self.data_file else self.exchange, timeframe=self.timeframe,
            since=self.since, until=self.until, costs=asdict(self.config), metric=self.metric,
            combos=plan.total, chunk_size=chunk_size, chunks=plan.chunk_count(chunk_size),
            samples=self.samples, seed=self.seed, size_units=dict(self.size_units),
            metrics=[m.name for m in metrics() if m.derive is None],
        )

    @classmethod
    def from_manifest(cls, manifest: RunManifest) -> SweepRequest:
        """The request that produced ``manifest`` (for ``--resume``)."""
        ref = StrategyRef.from_dict(manifest.strategy_ref) if manifest.strategy_ref else manifest.strategy
        return cls(
            strategy=ref, grid=manifest.grid, symbols=list(manifest.symbols),
            exchange=manifest.exchange or "binance", timeframe=manifest.timeframe, since=manifest.since,
            until=manifest.until, data_file=None if manifest.source == "store" else manifest.source,
            config=BacktestConfig(**manifest.costs), metric=manifest.metric, samples=manifest.samples,
            seed=manifest.seed, max_combos=max(DEFAULT_MAX_COMBOS, manifest.combos),
            size_units=dict(manifest.size_units),
        )
