"""HTML report of real sweep runs (run on the session's Ray), its SVG charts, and the CLI command."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from market_data import write_goog

from tradpal_ray.errors import ConfigError
from tradpal_ray.report import build_report
from tradpal_ray.report.svg import (
    MAX_POINTS,
    MISSING_COLOUR,
    VIRIDIS,
    colour,
    downsample,
    heatmap,
    nice_ticks,
)
from tradpal_ray.runs import RunStore, SweepOutcome, SweepRequest, run_sweep

SYMBOLS = ["GOOG/USD", "GOOG2/USD"]
GRID = {"fast": [5, 10, 15, 20], "slow": [10, 20, 30, 40]}  # 12 combinations with fast < slow
RunCli = Callable[..., tuple[int, str, str]]



@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("store")
    return write_goog(root, dict(zip(SYMBOLS, (1.0, 0.37))))


@pytest.fixture(scope="module")
def run(ray_session: None, store: str) -> SweepOutcome:
    """A complete 2-parameter run: 2 symbols x 12 combinations, the best 3 per symbol kept."""
    request = SweepRequest(strategy="sma_cross", grid=GRID, symbols=SYMBOLS, exchange="test", timeframe="1d")
    return run_sweep(request, store=store, executor="ray")


def cells(page: str) -> list[str]:
    """Tooltips of the heatmap cells."""
    return [html.unescape(t) for t in re.findall(r'<rect class="cell"[^>]*><title>(.*?)</title>', page)]


def test_report_of_a_real_run_has_curves_heatmap_and_tables(run: SweepOutcome, store: str) -> None:
    page = build_report(RunStore(store), run.run_id, top=4)

    # Self-contained: no script, stylesheet or any other resource fetched from anywhere.
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(|(src|href)\s*=", page, flags=re.IGNORECASE)

    # Curves: the 4 best kept results, each symbol's best first, in both charts.
    labels = [html.unescape(label) for label in re.findall(r'<polyline class="trace" data-label="([^"]*)"', page)]
    assert len(labels) == 8 and labels[:4] == labels[4:]
    best = run.best_per_symbol()
    assert [label.split(" ")[0] for label in labels[:2]] == list(best["symbol"])
    assert labels[0].startswith(f"{best['symbol'][0]} fast={best['fast'][0]} ")

    # Heatmap: one cell per combination, each the median sharpe over the two symbols.
    tooltips = cells(page)
    median = run.results.groupby(["fast", "slow"])["sharpe"].median()
    assert len(tooltips) == len(median) == 12
    for (fast, slow), value in median.items():
        assert any(t.startswith(f"fast={fast} slow={slow}: median sharpe {value:,.2f}, ") for t in tooltips)

    # Tables: the best result of each symbol, and the 12 parameter sets across symbols.
    assert re.findall(r'<tr class="best" data-symbol="([^"]*)"', page) == list(best["symbol"])
    assert page.count('<tr class="across">') == 12
    assert "<b>metric</b>: sharpe" in page


def test_another_metric_ranks_and_colours_by_it(run: SweepOutcome, store: str) -> None:
    page = build_report(RunStore(store), run.run_id, metric="max_drawdown_pct")
    lowest = run.results.groupby("symbol")["max_drawdown_pct"].min()
    for symbol, value in lowest.items():
        row = re.search(rf'<tr class="best" data-symbol="{re.escape(symbol)}">(.*?)</tr>', page)
        assert row and f"<td>{value:,.2f}</td>" in row.group(1)  # lowest drawdown is best
    best_cell = min(run.results.groupby(["fast", "slow"])["max_drawdown_pct"].median())
    best_colour = "#{:02x}{:02x}{:02x}".format(*VIRIDIS[-1])
    assert re.search(rf'fill="{best_colour}"><title>[^<]*median max_drawdown_pct {best_cell:,.2f},', page)


def test_other_arities_fall_back_to_the_ranked_table(ray_session: None, store: str) -> None:
    grid = {"window": [10, 14], "lower": [25, 30], "upper": [70, 75]}
    request = SweepRequest(strategy="rsi_reversion", grid=grid, symbols=SYMBOLS[:1], exchange="test", timeframe="1d")
    outcome = run_sweep(request, store=store, keep_best=0)
    page = build_report(RunStore(store), outcome.run_id)
    assert cells(page) == []
    assert "needs exactly two varying parameters; this run varies 3 (lower, upper, window)" in page
    assert page.count('<tr class="across">') == 8
    assert "No details were kept for this run." in page


def test_unknown_run_or_metric_is_a_config_error(run: SweepOutcome, store: str) -> None:
    with pytest.raises(ConfigError, match="unknown run 'nope'"):
        build_report(RunStore(store), "nope")
    with pytest.raises(ConfigError, match="unknown metric 'alpha'"):
        build_report(RunStore(store), run.run_id, metric="alpha")


def test_cli_writes_the_file_and_fails_in_one_line(run: SweepOutcome, store: str, tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "r.html"
    code, _, err = run_cli("report", run.run_id, "--store", store, "--out", str(out), "--top", "2")
    assert code == 0 and f"wrote {out}" in " ".join(err.split())  # rich wraps a long path onto its own line
    assert out.read_text().count('class="trace"') == 4 and len(cells(out.read_text())) == 12

    code, _, err = run_cli("report", "no-such-run", "--store", store)
    assert code == 2 and err.strip().count("\n") == 0 and "unknown run 'no-such-run'" in err


# ------------------------------------------------------------------ SVG parts, no Ray


def test_downsample_keeps_extremes_and_order() -> None:
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 5000) * 100
    y[12_345], y[67_890] = 1000.0, -1000.0
    dx, dy = downsample(x, y)
    assert len(dx) <= MAX_POINTS and np.all(np.diff(dx) > 0)
    assert dy.max() == 1000.0 and dy.min() == -1000.0
    short = np.arange(10.0)
    assert downsample(short, short)[0] is short


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 10) == [0, 5, 10]
    assert nice_ticks(-31.4, 2.7) == [-30, -20, -10, 0]
    assert nice_ticks(0.013, 0.052) == [0.02, 0.03, 0.04, 0.05]
    assert nice_ticks(math.nan, 1) == []


def test_heatmap_colours_best_worst_missing_and_skips_absent_pairs() -> None:
    svg = heatmap(
        [1, 2], ["a", "b"], {(1, "a"): (0.0, "low"), (2, "a"): (5.0, "high"), (1, "b"): (math.nan, "none")},
        x_label="x", y_label="y",
    )
    fills = {title: fill for fill, title in re.findall(r'fill="(#[0-9a-f]{6})"><title>(\w+)</title>', svg)}
    assert fills == {"low": colour(0), "high": colour(1), "none": MISSING_COLOUR}
    assert svg.count('class="cell"') == 3
    reversed_svg = heatmap([1, 2], ["a"], {(1, "a"): (0.0, "low"), (2, "a"): (5.0, "high")}, x_label="x", y_label="y", higher_is_better=False)
    assert f'fill="{colour(1)}"><title>low</title>' in reversed_svg
