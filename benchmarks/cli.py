"""CLI latency: ``tradpal-ray --help``, a command's ``--help`` and a user mistake, vs a bare Typer app.

Each case runs as a fresh process (``python -m``), ``--repeat`` times; the peer is a Typer app
with one command and a few options, the floor the CLI framework itself sets. Wall time and
peak RSS per process. Prints one JSON object: for each case min / median / max seconds and
median MB, ours and the peer's, from the same run.

    .venv/bin/python benchmarks/cli.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PEER = '''
import typer
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

@app.command()
def sweep(data: str = typer.Option(None, "--data"), top: int = typer.Option(20, "--top")) -> None:
    """Sweep."""
    if top < 0:
        typer.echo("error: --top must be >= 0", err=True)
        raise typer.Exit(2)

@app.command()
def backtest(data: str = typer.Option(None, "--data")) -> None:
    """Backtest."""

if __name__ == "__main__":
    app()
'''

CASES = {
    "help": (["--help"], ["--help"]),
    "command_help": (["sweep", "--help"], ["sweep", "--help"]),
    "user_error": (["sweep", "--top", "-1"], ["sweep", "--top", "-1"]),
}


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one process (its own rusage, from wait4)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = 0  # reaped above
    return seconds, usage.ru_maxrss / 1024


def spread(samples: list[tuple[float, float]]) -> dict[str, Any]:
    seconds = [s for s, _ in samples]
    return {"min_s": round(min(seconds), 3), "median_s": round(statistics.median(seconds), 3),
            "max_s": round(max(seconds), 3), "rss_mb": round(statistics.median(m for _, m in samples), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    peer = Path(tempfile.mkdtemp(prefix="tradpal-cli-")) / "peer_cli.py"
    peer.write_text(PEER)
    ours_cmd = [sys.executable, "-m", "tradpal_ray.cli"]
    peer_cmd = [sys.executable, str(peer)]
    run_once(ours_cmd + ["--help"])  # warm the file cache for both
    run_once(peer_cmd + ["--help"])
    out: dict[str, Any] = {}
    for case, (ours_args, peer_args) in CASES.items():
        ours, theirs = [], []
        for _ in range(args.repeat):  # interleaved, so load on the machine hits both alike
            ours.append(run_once(ours_cmd + ours_args))
            theirs.append(run_once(peer_cmd + peer_args))
        out[case] = {"ours": spread(ours), "bare_typer": spread(theirs)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
