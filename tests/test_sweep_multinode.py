"""Sweeps on a multi-node cluster: a lost worker node changes nothing; a user's strategy file is shipped."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from market_data import write_goog

from tradpal_ray.backtest import sweep
from tradpal_ray.runs import SweepRequest, run_sweep

pytestmark = pytest.mark.slow
SYMBOLS = ["GOOG/USD", "GOOG2/USD", "GOOG3/USD"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_goog(tmp_path_factory.mktemp("store"), {symbol: 1 + 0.1 * k for k, symbol in enumerate(SYMBOLS)})


def sweep_once(store: str, on_progress: Any = None) -> pd.DataFrame:
    request = SweepRequest(
        strategy="sma_cross", grid={"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))},
        symbols=SYMBOLS, exchange="test", timeframe="1d",
    )
    outcome = run_sweep(request, store=store, chunk_size=6, keep_best=1, on_progress=on_progress, executor="ray")
    assert outcome.manifest.status == "complete", outcome.manifest.errors
    return outcome.results.drop(columns=["run_id"]).sort_values("result_id").reset_index(drop=True)


GOLDEN_CROSS = textwrap.dedent('''
    from tradpal_ray.backtest import Param, cross_above, cross_below, sma, strategy

    @strategy(fast=Param(int, 10, min=1, window=True), slow=Param(int, 50, min=2, window=True),
              rules=((lambda p: p["fast"] < p["slow"], "fast must be below slow"),))
    def golden_cross_multinode(bars, fast, slow):
        """Long when SMA(fast) crosses above SMA(slow); out when it crosses back below."""
        f, s = sma(bars.close, fast), sma(bars.close, slow)
        return cross_above(f, s), cross_below(f, s)
''')


def test_a_strategy_file_reaches_every_node_after_it_is_deleted(ray_cluster: Any, store: str, tmp_path: Path) -> None:
    """The file lives outside the project and sys.path, and is gone once the first chunks are in flight."""
    import ray
    from market_data import goog

    home = tmp_path / "elsewhere"
    home.mkdir()
    path = home / "golden_multinode.py"
    path.write_text(GOLDEN_CROSS)
    grid = {"fast": list(range(5, 51, 5)), "slow": list(range(20, 201, 10))}
    request = SweepRequest(strategy=f"{path}:golden_cross_multinode", grid=grid, symbols=SYMBOLS[:2],
                           exchange="test", timeframe="1d")

    def delete_once_submitted(done: int, total: int) -> None:
        if done >= 1 and path.exists():
            path.unlink()

    outcome = run_sweep(request, store=store, chunk_size=10, keep_best=1, executor="ray", on_progress=delete_once_submitted)
    assert not path.exists()
    m = outcome.manifest
    assert m.status == "complete" and m.results == 2 * 174, m.errors
    assert m.strategy == "golden_cross_multinode" and m.strategy_ref["kind"] == "file"
    assert len(m.strategy_ref["source_hash"]) == 64
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
    assert len(nodes) == 2  # both worker nodes were there to run chunks
    ours = outcome.results[outcome.results["symbol"] == "GOOG/USD"]
    reference = sweep(goog(), "sma_cross", grid)
    merged = ours.merge(reference, on=["fast", "slow"], suffixes=("", "_ref"))
    assert len(merged) == 174 and (merged["final_equity"] == merged["final_equity_ref"]).all()


def test_worker_node_killed_mid_sweep(ray_cluster: Any, store: str) -> None:
    reference = sweep_once(store)
    assert len(reference) == 3 * 174

    victim = next(node for node in ray_cluster.list_all_nodes() if node is not ray_cluster.head_node)
    killed: list[int] = []

    def kill_a_third_of_the_way(done: int, total: int) -> None:
        if not killed and done >= total // 3:
            killed.append(done)
            ray_cluster.remove_node(victim, allow_graceful=False)

    disturbed = sweep_once(store, on_progress=kill_a_third_of_the_way)
    assert killed and killed[0] < 3 * 29  # the node died while most chunks were still to run
    assert disturbed["result_id"].is_unique
    pd.testing.assert_frame_equal(disturbed, reference)
