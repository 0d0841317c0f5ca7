"""Concurrent writers and compactions on one series lose nothing: local path and a real S3 store.

Four writer processes upsert disjoint candles of one series (spanning two monthly periods),
each batch revising earlier candles of the writer with a higher value; a fifth process
compacts in a loop, and the writers compact too (``compact_after=4``). Every batch a writer
acknowledges (prints after ``write`` returned) is counted: at the end each candle holds the
value of the last acknowledged batch that wrote it. Meanwhile this process reads: no read
fails and no candle's value ever goes back.

Before write ids (the store of issue 11) this lost 810-1,100 acknowledged rows per trial.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from s3_server import SeaweedS3

from tradpal_ray.market.store import CandleStore

MIN = 60_000
START = 1_706_745_600_000 - 300 * MIN  # 2024-02-01 minus 5 hours: slots straddle two periods
SLOTS = 800
WRITERS = 4
BATCHES = 40
PER_BATCH = 60

WRITER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from tradpal_ray.market.schema import candles_table
    from tradpal_ray.market.store import CandleStore
    root, k, writers, batches, slots, per_batch, start = sys.argv[1], *map(int, sys.argv[2:])
    store = CandleStore(root, compact_after=4)
    rng = np.random.default_rng(k)
    mine = np.arange(k, slots, writers)
    for seq in range(1, batches + 1):
        chosen = np.sort(rng.choice(mine, size=per_batch, replace=False)).tolist()
        price = float(seq)
        rows = [[start + s * 60000, price, price, price, price, 1.0] for s in chosen]
        store.write(candles_table(rows, exchange="binance", symbol="BTC/USDT", timeframe="1m"))
        print(json.dumps([seq, chosen]), flush=True)  # acknowledged: write() returned
    """
)

COMPACTOR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tradpal_ray.market.store import CandleStore
    root, stop = sys.argv[1], Path(sys.argv[2])
    store = CandleStore(root)
    merged = 0
    while not stop.exists():
        merged += store.compact()
    print(merged, flush=True)
    """
)


def hammer(root: str, workdir: Path) -> None:
    """Run the writers and the compactor on ``root`` while reading; assert nothing acknowledged is lost."""
    stop = workdir / "stop"
    compactor = subprocess.Popen([sys.executable, "-c", COMPACTOR, root, str(stop)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, root, *map(str, (k, WRITERS, BATCHES, SLOTS, PER_BATCH, START))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(WRITERS)
    ]
    reader = CandleStore(root)
    seen = np.zeros(SLOTS)
    reads = 0
    try:
        while any(w.poll() is None for w in writers):
            frame = reader.read("binance", "BTC/USDT", "1m")
            slots = (frame.index.as_unit("ms").asi8 - START) // MIN
            went_back = frame["close"].to_numpy() < seen[slots]
            assert not went_back.any(), f"candle values went back at slots {slots[went_back][:10]}"
            seen[slots] = frame["close"].to_numpy()
            reads += 1
        outputs = [w.communicate(timeout=60) for w in writers]
        stop.touch()
        compacted, compactor_err = compactor.communicate(timeout=60)
    finally:
        for process in [*writers, compactor]:  # only after a failure is anything still running
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
    assert compactor.returncode == 0, compactor_err
    for w, (_, err) in zip(writers, outputs):
        assert w.returncode == 0, err
    expected: dict[int, float] = {}
    acknowledged = 0
    for out, _ in outputs:
        for line in out.splitlines():
            seq, chosen = json.loads(line)
            acknowledged += 1
            expected.update(dict.fromkeys(chosen, float(seq)))
    assert acknowledged == WRITERS * BATCHES
    frame = reader.read("binance", "BTC/USDT", "1m")
    stored = dict(zip(((frame.index.as_unit("ms").asi8 - START) // MIN).tolist(), frame["close"].tolist()))
    lost = {slot for slot in expected if slot not in stored}
    stale = {slot for slot in expected if slot in stored and stored[slot] != expected[slot]}
    assert not lost and not stale, f"{len(lost)} acknowledged candles lost, {len(stale)} hold an older revision"
    assert set(stored) == set(expected) and frame.index.is_unique
    assert reads > 0 and int(compacted) > 0, "the compactor merged nothing: the race was not exercised"
    assert reader.series()[0].rows == len(expected)
    reader.compact()
    assert reader.read("binance", "BTC/USDT", "1m").equals(frame)


def test_concurrent_writers_and_compactions_lose_nothing_local(tmp_path: Path) -> None:
    hammer(str(tmp_path / "store"), tmp_path)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A private SeaweedFS S3 gateway on 127.0.0.1 for this module."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except RuntimeError as exc:  # only when the binary cannot run here at all
        pytest.skip(f"SeaweedFS cannot run on this machine: {exc}")
    yield server
    server.stop()


def test_concurrent_writers_and_compactions_lose_nothing_s3(seaweed: SeaweedS3, tmp_path: Path) -> None:
    hammer(seaweed.store_uri("concurrency"), tmp_path)
