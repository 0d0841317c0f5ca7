"""Inline SVG charts for the HTML report: time-series lines and a parameter heatmap.

Hand-written SVG instead of a plotting library: a report is a few tens of KB instead of
megabytes of inlined JavaScript, it opens offline in any browser, and hovering shows each
value through SVG ``<title>`` tooltips. Pure functions of their inputs; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
"""Line colours, in order of the series."""
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
"""Heatmap colour stops, worst to best (perceptually uniform, readable by colour-blind people)."""
MISSING_COLOUR = "#d9d9d9"
MAX_POINTS = 1500
"""Points per drawn line; longer series keep each bucket's min and max so no extreme is lost."""

_MARGIN = (12, 16, 36, 64)  # top, right, bottom, left


@dataclass(frozen=True)
class Line:
    """One series of a line chart: ``x`` in epoch milliseconds, ``y`` in the chart's unit."""

    label: str
    x: np.ndarray
    y: np.ndarray


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points: each of ``max_points // 2`` buckets keeps its min and max, in time order."""
    if len(x) <= max_points:
        return x, y
    keep: set[int] = set()
    for bucket in np.array_split(np.arange(len(y)), max_points // 2):
        values = np.where(np.isfinite(y[bucket]), y[bucket], np.nan)
        if np.isnan(values).all():
            keep.add(int(bucket[0]))
        else:
            keep.update((int(bucket[np.nanargmin(values)]), int(bucket[np.nanargmax(values)])))
    index = np.array(sorted(keep))
    return x[index], y[index]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten) covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.ceil(low / step - 1e-9) * step
    return [round(start + k * step, 12) for k in range(int((high - start) / step + 1e-9) + 1)]


def line_chart(
    lines: Sequence[Line], *, y_label: str, width: int = 960, height: int = 320,
    y_format: Callable[[float], str] = lambda v: f"{v:,.0f}",
) -> str:
    """An SVG line chart of ``lines`` over a shared time axis, with a legend; ``""`` without data."""
    drawn = [downsample(np.asarray(line.x, dtype=float), np.asarray(line.y, dtype=float)) for line in lines]
    finite_y = np.concatenate([y[np.isfinite(y)] for _, y in drawn]) if drawn else np.array([])
    if not len(finite_y):
        return ""
    x_low = min(float(x.min()) for x, _ in drawn)
    x_high = max(float(x.max()) for x, _ in drawn)
    y_low, y_high = float(finite_y.min()), float(finite_y.max())
    pad = (y_high - y_low) * 0.05 or abs(y_high) * 0.05 or 1.0
    y_low, y_high = y_low - pad, y_high + pad
    top, right, bottom, left = _MARGIN
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(value: np.ndarray | float) -> np.ndarray | float:
        return left + (value - x_low) / ((x_high - x_low) or 1.0) * plot_w

    def sy(value: np.ndarray | float) -> np.ndarray | float:
        return top + (y_high - value) / (y_high - y_low) * plot_h

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>')
    for tick in nice_ticks(y_low, y_high):
        y = sy(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(y_format(tick))}</text>')
    for k, tick in enumerate(np.linspace(x_low, x_high, 6)):
        label = datetime.fromtimestamp(tick / 1000, UTC).strftime("%Y-%m-%d" if x_high - x_low > 3 * 86_400_000 else "%m-%d %H:%M")
        anchor = "start" if k == 0 else "end" if k == 5 else "middle"
        parts.append(f'<text x="{sx(tick):.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}">{label}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2:.0f}" transform="rotate(-90 14 {top + plot_h / 2:.0f})" text-anchor="middle">{escape(y_label)}</text>')
    for k, ((x, y), line) in enumerate(zip(drawn, lines)):
        ok = np.isfinite(y)
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in zip(sx(x[ok]), sy(y[ok])))
        colour = PALETTE[k % len(PALETTE)]
        parts.append(
            f'<polyline class="trace" data-label="{escape(line.label)}" fill="none" stroke="{colour}" stroke-width="1.4" '
            f'points="{points}"><title>{escape(line.label)}</title></polyline>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{PALETTE[k % len(PALETTE)]}"></i>{escape(line.label)}</span>'
        for k, line in enumerate(lines)
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def colour(fraction: float) -> str:
    """Hex colour of ``fraction`` in [0, 1] on the viridis scale (0 worst, 1 best); grey for NaN."""
    if not math.isfinite(fraction):
        return MISSING_COLOUR
    position = min(max(fraction, 0.0), 1.0) * (len(VIRIDIS) - 1)
    k = min(int(position), len(VIRIDIS) - 2)
    t = position - k
    rgb = (round(a + (b - a) * t) for a, b in zip(VIRIDIS[k], VIRIDIS[k + 1]))
    return "#" + "".join(f"{c:02x}" for c in rgb)


def heatmap(
    x_values: Sequence[object], y_values: Sequence[object], cells: Mapping[tuple[object, object], tuple[float, str]],
    *, x_label: str, y_label: str, higher_is_better: bool = True, value_format: Callable[[float], str] = lambda v: f"{v:.2f}",
    cell_size: int = 34,
) -> str:
    """An SVG heatmap: one ``<rect class="cell">`` per ``cells[(x, y)] = (value, tooltip)``; absent pairs stay blank.

    Colour runs from the worst to the best value (reversed when lower is better); NaN is grey.
    Values are printed in the cells when they fit.
    """
    finite = [value for value, _ in cells.values() if math.isfinite(value)]
    low, high = (min(finite), max(finite)) if finite else (math.nan, math.nan)
    top, right, bottom, left = 12, 90, 44, 64
    size = max(12, min(cell_size, 900 // max(len(x_values), 1)))
    width, height = left + size * len(x_values) + right, top + size * len(y_values) + bottom
    label_every = math.ceil(30 / size)  # room for a label of ~4 characters
    show_values = size >= 30
    xi = {value: k for k, value in enumerate(x_values)}
    yi = {value: k for k, value in enumerate(y_values)}
    parts = [f'<svg class="chart heatmap" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    for (x, y), (value, tooltip) in cells.items():
        fraction = (value - low) / ((high - low) or 1.0) if math.isfinite(value) else math.nan
        fraction = fraction if higher_is_better else 1.0 - fraction
        px, py = left + xi[x] * size, top + (len(y_values) - 1 - yi[y]) * size
        parts.append(
            f'<rect class="cell" x="{px}" y="{py}" width="{size}" height="{size}" fill="{colour(fraction)}">'
            f"<title>{escape(tooltip)}</title></rect>"
        )
        if show_values and math.isfinite(value):
            ink = "#000" if fraction > 0.55 else "#fff"
            parts.append(f'<text x="{px + size / 2}" y="{py + size / 2 + 4}" text-anchor="middle" fill="{ink}" font-size="10">{escape(value_format(value))}</text>')
    for value, k in xi.items():
        if k % label_every == 0:
            parts.append(f'<text x="{left + k * size + size / 2}" y="{top + len(y_values) * size + 14}" text-anchor="middle">{escape(str(value))}</text>')
    for value, k in yi.items():
        parts.append(f'<text x="{left - 6}" y="{top + (len(y_values) - 1 - k) * size + size / 2 + 4}" text-anchor="end">{escape(str(value))}</text>')
    parts.append(f'<text x="{left + len(x_values) * size / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{top + len(y_values) * size / 2}" transform="rotate(-90 14 {top + len(y_values) * size / 2})" text-anchor="middle">{escape(y_label)}</text>')
    if finite:
        bar_x, bar_h = left + len(x_values) * size + 16, len(y_values) * size
        for k in range(20):  # colour bar, best at the top
            parts.append(f'<rect x="{bar_x}" y="{top + k * bar_h / 20:.1f}" width="14" height="{bar_h / 20 + 0.5:.1f}" fill="{colour(1 - k / 19)}"/>')
        best, worst = (high, low) if higher_is_better else (low, high)
        parts.append(f'<text x="{bar_x + 18}" y="{top + 10}">{escape(value_format(best))}</text>')
        parts.append(f'<text x="{bar_x + 18}" y="{top + bar_h}">{escape(value_format(worst))}</text>')
    parts.append("</svg>")
    return "".join(parts)
