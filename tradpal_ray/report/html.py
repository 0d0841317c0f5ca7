"""One self-contained HTML page about a sweep run: curves, parameter heatmap, tables.

The page has no script and no external resource (charts are inline SVG, see
:mod:`tradpal_ray.report.svg`), so it opens offline and can be mailed or kept as a CI
artifact. It is built from the :class:`~tradpal_ray.runs.RunStore` alone; no Ray needed.
"""

from __future__ import annotations

import math
from dataclasses import replace
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from tradpal_ray.backtest.metrics import metric as find_metric
from tradpal_ray.backtest.metrics import metrics
from tradpal_ray.backtest.sweep import rank
from tradpal_ray.errors import ConfigError
from tradpal_ray.report.svg import Line, heatmap, line_chart
from tradpal_ray.runs import RunManifest, RunStore, SweepOutcome, params_label, params_of

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1080px;color:#222;padding:0 12px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555}.meta b{color:#222}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}
.chart text{font-size:11px;fill:#333}.legend{margin:4px 0 0 64px}.key{margin-right:16px;white-space:nowrap}
.key i{display:inline-block;width:14px;height:3px;margin:0 6px 3px 0;vertical-align:middle}
.note{color:#666;font-style:italic}.error{color:#b00}
"""
ACROSS_ROWS = 20
"""Parameter sets listed in the across-symbols table."""


def build_report(results: RunStore, run_id: str, *, top: int = 5, metric: str | None = None) -> str:
    """The HTML report of ``run_id``: ConfigError for an unknown run or metric.

    ``top`` kept results get equity and drawdown curves (the best result of each symbol
    first, then each symbol's runners-up); ``metric`` (default: the run's) colours the
    heatmap and ranks the tables.
    """
    manifest = results.manifest(run_id)
    if manifest.kind == "walkforward":
        return _document(manifest.run_id, walkforward_sections(results, manifest))
    metric = find_metric(metric or manifest.metric).name
    if top < 0:
        raise ConfigError("--top must be >= 0")
    frame = results.results(run_id)
    if len(frame):
        frame = frame[~frame["symbol"].isin(manifest.errors)].reset_index(drop=True)
    outcome = SweepOutcome(replace(manifest, metric=metric), results)
    sections = [_header(manifest, metric, len(frame))]
    if manifest.overfitting:
        sections.append(_overfitting_section(manifest))
    if len(frame):
        sections += [
            _curves_section(results, manifest, frame, top),
            _heatmap_section(outcome),
            _best_table(outcome),
            _across_table(outcome),
        ]
    else:
        sections.append('<p class="note">This run has no results.</p>')
    return _document(manifest.run_id, sections)


def _document(run_id: str, sections: list[str]) -> str:
    title = f"tradpal-ray report: {run_id}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )


def walkforward_sections(results: RunStore, manifest: RunManifest) -> list[str]:
    """A walk-forward run's report: settings, stitched out-of-sample summary and curve, the folds table."""
    wf = manifest.walkforward
    spec, summary = wf["spec"], wf.get("summary", {})
    goal = spec["objective"]
    windows = (f"train {spec['train']}, test {spec['test']}, step {spec['step'] or spec['test']}"
               + (", anchored" if spec["anchored"] else ", rolling"))
    grid = "; ".join(f"{name} = {_values(values)}" for name, values in manifest.grid.items())
    facts = [("strategy", manifest.strategy), ("status", manifest.status), ("objective", goal), ("windows", windows),
             ("warm-up bars", wf.get("warmup")), ("folds", wf.get("folds")), ("grid", grid),
             ("data", manifest.source if manifest.source != "store" else f"{manifest.exchange} {manifest.timeframe}"),
             ("created", manifest.created_at), ("code", manifest.code_version)]
    meta = "".join(f"<div><b>{escape(name)}</b>: {escape(str(value))}</div>" for name, value in facts)
    sections = [f'<h1>Walk-forward {escape(manifest.run_id)}</h1><div class="meta">{meta}</div>']
    try:
        tables = results.walkforward(manifest.run_id)
    except ConfigError:
        return [*sections, '<p class="note">This walk-forward has not finished: no folds yet.</p>']
    oos = summary.get("oos", {})
    figures = [("return %", oos.get("return_pct")), ("CAGR %", oos.get("cagr_pct")), ("Sharpe", oos.get("sharpe")),
               ("Sortino", oos.get("sortino")), ("max drawdown %", oos.get("max_drawdown_pct")),
               ("trades", oos.get("trades")), ("walk-forward efficiency", summary.get("wfe")),
               (f"{goal} OOS / IS", summary.get("objective_ratio"))]
    cells = "".join(f"<tr><th class=\"l\">{escape(name)}</th><td class=\"wf\">{_number(value)}</td></tr>" for name, value in figures)
    curve = tables["oos_equity"]
    x = pd.to_datetime(curve["time"], utc=True).to_numpy(dtype="datetime64[ms]").astype(np.int64).astype(float)
    sections.append(
        "<h2>Stitched out-of-sample equity</h2>"
        + line_chart([Line("out of sample, compounded across folds", x, curve["equity"].to_numpy(dtype=float))],
                     y_label="equity")
        + f'<table id="wf-summary">{cells}</table><p class="note">Walk-forward efficiency: the stitched '
        "out-of-sample CAGR over the mean in-sample CAGR of the chosen parameters (Pardo).</p>")
    head = "".join(f"<th>{escape(h)}</th>" for h in ("fold", "train", "test", "params", f"IS {goal}", f"OOS {goal}",
                                                       "IS return %", "OOS return %", "OOS trades"))
    rows = "".join(
        f'<tr class="fold" data-fold="{row["fold"]}"><td>{row["fold"]}</td>'
        f'<td class="l">{row["train_from"]:%Y-%m-%d} .. {row["train_to"]:%Y-%m-%d}</td>'
        f'<td class="l">{row["test_from"]:%Y-%m-%d} .. {row["test_to"]:%Y-%m-%d}</td>'
        f'<td class="l">{escape(_label(row, manifest) if row["candidates"] else "none fits")}</td>'
        + "".join(f"<td>{_number(row[c])}</td>" for c in ("is_objective", "oos_objective", "is_return_pct",
                                                            "oos_return_pct", "oos_trades")) + "</tr>"
        for _, row in tables["folds"].iterrows()
    )
    sections.append(f"<h2>Folds</h2><table><tr>{head}</tr>{rows}</table>")
    return sections


def _header(manifest: RunManifest, metric: str, results: int) -> str:
    grid = "; ".join(f"{name} = {_values(values)}" for name, values in manifest.grid.items())
    costs = ", ".join(f"{key}={value}" for key, value in manifest.costs.items() if value is not None)
    facts = [
        ("strategy", manifest.strategy), ("status", manifest.status), ("metric", metric),
        ("symbols", f"{len(manifest.symbols) or 1} ({manifest.exchange or '-'}, {manifest.timeframe or manifest.source})"),
        ("combinations", f"{manifest.combos:,}" + (f" (sampled, seed {manifest.seed})" if manifest.samples else "")),
        ("results", f"{results:,}"), ("grid", grid), ("costs", costs),
        ("period", f"{manifest.since or 'start'} .. {manifest.until or 'end'}"),
        ("created", manifest.created_at), ("code", manifest.code_version),
    ]
    rows = "".join(f"<div><b>{escape(name)}</b>: {escape(str(value))}</div>" for name, value in facts)
    errors = "".join(f'<div class="error">failed {escape(symbol)}: {escape(error)}</div>' for symbol, error in manifest.errors.items())
    return f"<h1>Sweep {escape(manifest.run_id)}</h1><div class=\"meta\">{rows}{errors}</div>"


def _overfitting_section(manifest: RunManifest) -> str:
    """Per symbol: the deflated Sharpe ratio of the best result, the PBO of all, and their readings."""
    rows = "".join(
        f'<tr class="overfitting" data-symbol="{escape(symbol)}"><td class="l">{escape(symbol)}</td>'
        f"<td>{stats.n_trials:,}</td><td>{stats.n_days:,}</td><td>{_number(stats.dsr)}</td><td>{_number(stats.pbo)}</td>"
        f'<td class="l">{escape(stats.reading_dsr)}<br>{escape(stats.reading_pbo)}</td></tr>'
        for symbol, stats in manifest.overfitting.items()
    )
    header = '<th class="l">symbol</th><th>trials</th><th>days</th><th>DSR</th><th>PBO</th><th class="l">reading</th>'
    return (f"<h2>Overfitting: deflated Sharpe ratio of the best (by {escape(manifest.metric)}) and PBO "
            f"({manifest.pbo_partitions} CSCV partitions)</h2><table><tr>{header}</tr>{rows}</table>"
            '<p class="note">Recompute both from returns.parquet with tradpal_ray.validation.</p>')


def _values(values: list[Any]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 8 else f"{values[0]} .. {values[-1]} ({len(values)} values)"


def kept_curves(results: RunStore, manifest: RunManifest, frame: pd.DataFrame, top: int) -> list[tuple[pd.Series, pd.DataFrame]]:
    """Up to ``top`` (result row, equity frame) pairs among the kept details, best per symbol first.

    Details are kept for each symbol's best results by the run's own metric, so candidates are
    tried in that order (every symbol's best, then every symbol's second...) and a symbol is
    dropped at its first result without detail.
    """
    ranked = rank(frame, manifest.metric)
    ranked = ranked.assign(level=ranked.groupby("symbol", sort=False).cumcount()).sort_values("level", kind="stable")
    picked, exhausted = [], set()
    for _, row in ranked.iterrows():
        if len(picked) >= top:
            break
        if row["symbol"] in exhausted:
            continue
        try:
            _, equity = results.detail(manifest.run_id, row["result_id"])
        except ConfigError:
            exhausted.add(row["symbol"])
            continue
        picked.append((row, equity))
    return picked


def _curves_section(results: RunStore, manifest: RunManifest, frame: pd.DataFrame, top: int) -> str:
    picked = kept_curves(results, manifest, frame, top)
    head = f"<h2>Equity and drawdown of the best {len(picked)} kept results (by {escape(manifest.metric)})</h2>"
    if not picked:
        return head + '<p class="note">No details were kept for this run.</p>'
    equity_lines, drawdown_lines = [], []
    for row, equity in picked:
        label = f"{row['symbol']} {_label(row, manifest)} ({manifest.metric} {_number(row[manifest.metric])})"
        x = pd.to_datetime(equity["time"], utc=True).to_numpy(dtype="datetime64[ms]").astype(np.int64).astype(float)
        values = equity["equity"].to_numpy(dtype=float)
        equity_lines.append(Line(label, x, values))
        drawdown_lines.append(Line(label, x, (values / np.maximum.accumulate(values) - 1.0) * 100.0))
    return (
        head + line_chart(equity_lines, y_label="equity")
        + line_chart(drawdown_lines, y_label="drawdown %", height=220, y_format=lambda v: f"{v:.0f}%")
    )


def _label(row: Any, manifest: RunManifest) -> str:
    return params_label(params_of(row, manifest.param_names))


def _heatmap_section(outcome: SweepOutcome) -> str:
    metric = outcome.manifest.metric
    across = outcome.across_symbols()
    names = outcome.manifest.param_names
    varying = [name for name in names if across[name].nunique(dropna=False) > 1]
    head = f"<h2>Parameter grid: median {escape(metric)} over symbols</h2>"
    if len(varying) != 2:
        return head + (
            f'<p class="note">A heatmap needs exactly two varying parameters; this run varies {len(varying)} '
            f"({escape(', '.join(varying) or 'none')}). See the ranked parameter sets below.</p>"
        )
    x_name, y_name = varying
    cells = {
        (x, y): (_float(mid), f"{x_name}={x} {y_name}={y}: median {metric} {_number(mid)}, min {_number(low)} over {count} symbol(s)")
        for x, y, mid, low, count in zip(across[x_name], across[y_name], across[metric], across[f"min_{metric}"], across["symbols"])
    }
    svg = heatmap(
        sorted(across[x_name].unique()), sorted(across[y_name].unique()), cells, x_label=x_name, y_label=y_name,
        higher_is_better=find_metric(metric).higher_is_better, value_format=_number,
    )
    note = f'<p class="note">{len(cells)} combinations; blank cells are combinations the strategy rejects; grey: no value.</p>'
    return head + svg + note


def _stat_columns(metric: str) -> list[tuple[str, str]]:
    headline = [(m.name, m.label) for m in metrics() if m.headline]
    return ([] if metric in dict(headline) else [(metric, find_metric(metric).label)]) + headline


def _best_table(outcome: SweepOutcome) -> str:
    columns = _stat_columns(outcome.manifest.metric)
    header = '<th class="l">symbol</th><th class="l">params</th>' + "".join(f"<th>{escape(title)}</th>" for _, title in columns)
    rows = "".join(
        f'<tr class="best" data-symbol="{escape(row["symbol"])}"><td class="l">{escape(row["symbol"])}</td>'
        f'<td class="l">{escape(_label(row, outcome.manifest))}</td>'
        + "".join(f"<td>{_number(row[name])}</td>" for name, _ in columns) + "</tr>"
        for _, row in outcome.best_per_symbol().iterrows()
    )
    return f"<h2>Best result per symbol (by {escape(outcome.manifest.metric)})</h2><table><tr>{header}</tr>{rows}</table>"


def _across_table(outcome: SweepOutcome) -> str:
    metric = outcome.manifest.metric
    across = outcome.across_symbols().head(ACROSS_ROWS)
    header = f'<th class="l">params</th><th>median {escape(metric)}</th><th>min {escape(metric)}</th><th>symbols</th>'
    rows = "".join(
        f'<tr class="across"><td class="l">{escape(_label(row, outcome.manifest))}</td><td>{_number(row[metric])}</td>'
        f'<td>{_number(row[f"min_{metric}"])}</td><td>{row["symbols"]}</td></tr>'
        for _, row in across.iterrows()
    )
    return f"<h2>Top {len(across)} parameter sets across symbols</h2><table><tr>{header}</tr>{rows}</table>"


def _float(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _number(value: Any) -> str:
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    number = _float(value)
    return "-" if not math.isfinite(number) else f"{number:,.2f}"
