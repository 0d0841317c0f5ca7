"""``tradpal-ray serve`` in a terminal: what it tells the user (real Ray Serve, the shared ``ray_session``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_fixtures import run_id, write_run

from tradpal_ray.stats.local_redis import free_port


@pytest.fixture
def joined_serve(ray_session: None) -> Iterator[dict[str, str]]:
    """The environment for a CLI that joins the session's Ray; Serve is shut down afterwards, so a
    later module starts it with its own HTTP options."""
    import ray
    from ray import serve

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    env.pop("TRADPAL_API_KEYS", None)
    try:
        yield env
    finally:
        serve.shutdown()


def test_serve_without_a_reachable_redis_says_so_once(joined_serve: dict[str, str], tmp_path: Path) -> None:
    """It used to start silently (the replicas' cache.down lines never reach the terminal)."""
    write_run(tmp_path, run_id(1))
    dead = f"redis://:pw-Dead-secret@127.0.0.1:{free_port()}/0"
    command = [sys.executable, "-m", "tradpal_ray.cli", "serve", "--store", str(tmp_path), "--redis-url", dead,
               "--port", str(free_port())]
    with subprocess.Popen(command, env=joined_serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        try:
            seen = []
            for line in cli.stderr or ():  # the CLI's console is stderr; EOF ends the loop if it dies
                seen.append(line)
                if "stats API on" in line:
                    break
            assert "stats API on" in "".join(seen), "".join(seen)
            cli.send_signal(signal.SIGINT)
            rest, err = cli.communicate(timeout=120)
        finally:
            if cli.poll() is None:
                cli.kill()
    terminal = "".join(seen) + err + rest
    [warning] = [line for line in terminal.splitlines() if "Redis" in line or "redis" in line]
    assert "not reachable" in warning and "Connection refused" in warning and ":***@127.0.0.1" in warning, warning
    assert "answers from the store" in warning and "/ready" in warning
    assert "pw-Dead-secret" not in terminal
