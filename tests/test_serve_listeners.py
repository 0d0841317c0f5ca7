"""Which sockets ``--fast`` (HAProxy) opens, and on which interfaces (README: Statistics API, Listeners).

A private Ray in a child process runs the stats app through ``prepare_environment`` and
``deploy_stats``, as ``tradpal-ray serve --fast --host 127.0.0.1`` does; the test reads the
listening sockets of its HAProxy and replica processes. HAProxy's stats and metrics ports are
moved to free ports so that the test never collides with another Serve on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
from redis_fixtures import run_id, write_run

from tradpal_ray.stats.local_redis import free_port

CHILD = """
import sys
import ray
from tradpal_ray.config import load_settings
from tradpal_ray.serve.launch import ServeOptions, deploy_stats, prepare_environment

store, port = sys.argv[1], int(sys.argv[2])
settings = load_settings(store=store, redis_url="")
options = prepare_environment(settings, ServeOptions(host="127.0.0.1", port=port, fast=True))
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    print(deploy_stats(options, store, app="stats").url, flush=True)
    sys.stdin.read()  # until the test closes stdin
finally:
    from ray import serve
    serve.shutdown()
    ray.shutdown()
"""


def listeners(root: int, name_part: str) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of the processes under ``root`` whose command
    line has ``name_part`` (another Ray on this machine is not looked at)."""
    found = set()
    for process in psutil.Process(root).children(recursive=True):
        try:
            if any(name_part in part for part in process.cmdline()):
                found |= {(c.laddr.ip, c.laddr.port) for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a process that ended meanwhile
            continue
    return found


def test_fast_mode_binds_the_api_to_the_host_and_haproxy_stats_to_every_interface(tmp_path: Path) -> None:
    write_run(tmp_path, run_id(1))
    port, stats_port, metrics_port = free_port(), free_port(), free_port()
    env = {**os.environ, "TRADPAL_API_KEYS": "k-listeners", "PYTHONUNBUFFERED": "1",
           "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
           "RAY_SERVE_HAPROXY_STARTUP_TIMEOUT_S": "120"}  # Serve waits 30 s by default; a loaded machine may need more
    env.pop("RAY_ADDRESS", None)
    errors = tmp_path / "child.stderr"
    with errors.open("w") as stderr, subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(port)], env=env,
                                                       text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                       stderr=stderr) as child:
        try:
            # The URL line; Ray may print a line of its own first (a Serve controller task retried).
            url = next((line.strip() for line in child.stdout or () if line.startswith("http")), "")
            assert url == f"http://127.0.0.1:{port}", errors.read_text()[-3000:]
            haproxy = listeners(child.pid, "haproxy")
            # The API port follows --host; Ray renders HAProxy's stats and metrics binds as "*:port".
            assert haproxy == {("127.0.0.1", port), ("0.0.0.0", stats_port), ("0.0.0.0", metrics_port)}, haproxy
            replica_http = {(ip, p) for ip, p in listeners(child.pid, "ServeReplica") if 30000 <= p < 31000}
            assert replica_http and {ip for ip, _ in replica_http} == {"127.0.0.1"}, replica_http  # direct ingress
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                assert http.get("/runs").status_code == 401  # the app's routes take the key
                assert http.get("/-/routes").json() == {"/": "stats"}  # answered by HAProxy itself: no key
                assert http.get("/-/healthz").status_code == 200
            assert httpx.get(f"http://127.0.0.1:{stats_port}/stats", timeout=10).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).status_code == 200
        finally:
            if child.stdin:
                child.stdin.close()
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
