"""Explicit Arrow schemas of a run's tables: results, trades, equity.

A results table has fixed id columns, then one typed column per strategy parameter (int64
or float64, as the strategy declares it), then one column per metric of the registry
(``trades`` int64, the rest float64). Columns are matched by name, never by position, so
adding a metric to the registry adds a column and shifts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from tradpal_ray.backtest.metrics import metric_names
from tradpal_ray.errors import ConfigError

SCHEMA_VERSION = 2
"""Version 1 stored the parameters as one JSON string column ``params``; readers convert it."""

ID_FIELDS: tuple[pa.Field, ...] = (
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("result_id", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("strategy", pa.string(), nullable=False),
)
ID_COLUMNS = tuple(f.name for f in ID_FIELDS)

PARAM_TYPES: dict[str, pa.DataType] = {"int": pa.int64(), "float": pa.float64()}
"""Arrow type of a parameter by its declared Python type name."""

TRADES_SCHEMA = pa.schema([
    pa.field("entry_time", pa.timestamp("ns", tz="UTC")),
    pa.field("exit_time", pa.timestamp("ns", tz="UTC")),
    pa.field("entry_bar", pa.int64()),
    pa.field("exit_bar", pa.int64()),
    pa.field("entry_price", pa.float64()),
    pa.field("exit_price", pa.float64()),
    pa.field("units", pa.float64()),
    pa.field("entry_fee", pa.float64()),
    pa.field("exit_fee", pa.float64()),
    pa.field("pnl", pa.float64()),
    pa.field("return_pct", pa.float64()),
    pa.field("exit_reason", pa.string()),
])
"""One row per trade of a kept result; ``exit_reason`` ``open`` marks the position held at the end."""

EQUITY_SCHEMA = pa.schema([pa.field("time", pa.timestamp("ns", tz="UTC")), pa.field("equity", pa.float64())])
"""The equity curve of a kept result, one row per bar."""


def metric_type(name: str) -> pa.DataType:
    """Arrow type of a metric column: counts are int64, everything else float64."""
    return pa.int64() if name == "trades" else pa.float64()


def results_schema(param_types: Mapping[str, str], metrics: Sequence[str] | None = None) -> pa.Schema:
    """The results schema of a run whose strategy has ``param_types`` (name -> ``int``/``float``).

    ConfigError when a parameter's name collides with an id or metric column.
    """
    metrics = tuple(metrics if metrics is not None else metric_names())
    taken = set(ID_COLUMNS) | set(metrics)
    clash = sorted(set(param_types) & taken)
    if clash:
        raise ConfigError(f"strategy parameter name(s) {', '.join(clash)} clash with result columns; rename them")
    fields = list(ID_FIELDS)
    fields += [pa.field(name, PARAM_TYPES[kind]) for name, kind in param_types.items()]
    fields += [pa.field(name, metric_type(name)) for name in metrics]
    return pa.schema(fields)




def params_of(row: Mapping[str, object], names: Sequence[str]) -> dict[str, object]:
    """The parameters of one result row as plain Python values."""
    return {name: _plain(row[name]) for name in names}


def params_label(params: Mapping[str, object]) -> str:
    """Parameters as a label: ``{"fast": 10, "slow": 30}`` -> ``"fast=10 slow=30"``."""
    return " ".join(f"{key}={value}" for key, value in params.items())


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value
