"""A local redis-server process for laptop mode (the demo) and the tests.

Not for production: on a cluster Redis runs as a service (``cluster.yaml`` starts it on the
head). Nothing is persisted; the server binds 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> bool:
    """True when a redis-server binary can be started here."""
    return Path(REDIS_SERVER).exists()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RedisProcess:
    """A redis-server on 127.0.0.1:``port`` (no persistence) that can be killed and restarted.

    ``tls``: serve TLS only, with a self-signed certificate for 127.0.0.1 (made with openssl).
    """

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None, tls: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.cert = workdir / "redis-cert.pem" if tls else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// (or rediss:// with the CA file) URL, with the password if any."""
        auth = f":{self.password}@" if self.password else ""
        if self.cert:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.cert}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        """Start the server and wait until it answers PING."""
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cert:
            key = self.workdir / "redis-key.pem"
            if not self.cert.exists():
                subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                                "-out", str(self.cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                                "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
            args[1:3] = ["--port", "0"]
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(self.cert), "--tls-key-file", str(key),
                     "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, what=f"redis-server on port {self.port}")
        return self

    def client(self) -> redis.Redis:
        """A synchronous client (for test set-up and inspection)."""
        return redis.Redis.from_url(self.url, socket_timeout=1)

    def ping(self) -> bool:
        """True if the server answers."""
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM) and reap it."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
