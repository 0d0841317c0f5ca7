"""A sweep survives losing a worker node: same results as an undisturbed run, no duplicates."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from market_data import write_goog

from tradpal_ray.backtest.distributed import SweepRequest, run_sweep

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
    outcome = run_sweep(request, store=store, chunk_size=6, keep_best=1, on_progress=on_progress)
    assert outcome.manifest.status == "complete", outcome.manifest.errors
    return outcome.results.drop(columns=["run_id"]).sort_values("result_id").reset_index(drop=True)


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
