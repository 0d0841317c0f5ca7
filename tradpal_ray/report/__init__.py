"""Reports of sweep runs: one self-contained HTML file with inline SVG charts (no script, no network)."""

from tradpal_ray.report.html import build_report, kept_curves
from tradpal_ray.report.svg import Line, heatmap, line_chart

__all__ = ["Line", "build_report", "heatmap", "kept_curves", "line_chart"]
