"""Pytest plugin: a real PostgreSQL server the tests start themselves (initdb into a temporary
directory, 127.0.0.1 on a free port, password authentication), stopped at teardown.

``pg_server`` is one server per test session; ``pg_url`` gives each test a fresh database
on it; ``backend_url`` / ``make_ledger`` run a test on both ledger backends (SQLite, PostgreSQL). :class:`PostgresProcess` can be restarted (same port, same data) by a test.
The binaries come from ``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin`` (``make
postgresql`` installs Debian's package when they are missing).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tradpal_ray.stats.local_redis import free_port, wait_for

USER = "tradpal"
PASSWORD = "pg-test-secret-7c1"
"""The test cluster's password: a test checks it never shows in logs or errors."""


def postgres_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres (AssertionError naming ``make postgresql`` if none)."""
    candidates = []
    if shutil.which("pg_config"):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise AssertionError("PostgreSQL binaries not found: run `make postgresql`")


def _run_as() -> list[str]:
    """PostgreSQL refuses to run as root: then its commands run as the ``postgres`` user (or ``nobody``)."""
    if os.geteuid() != 0:
        return []
    import pwd

    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    raise AssertionError("running as root and neither a postgres nor a nobody user exists to run PostgreSQL")


class PostgresProcess:
    """A private PostgreSQL cluster in a temporary directory of its own (``remove()`` deletes it):
    start, stop, restart, URLs of its databases."""

    def __init__(self, password: str = PASSWORD) -> None:
        self.bindir = postgres_bindir()
        self.prefix = _run_as()
        self.workdir = Path(tempfile.mkdtemp(prefix="tradpal-pg-"))  # not under pytest's 0700 root-owned tree
        self.data = self.workdir / "pgdata"
        self.password = password
        self.port = free_port()
        self._databases = itertools.count()
        self._initdb()

    def _initdb(self) -> None:
        secret = self.workdir / "pwfile"
        secret.write_text(self.password)
        if self.prefix:
            shutil.chown(self.workdir, self.prefix[2])
            shutil.chown(secret, self.prefix[2])
        subprocess.run([*self.prefix, str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(secret),
                        "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        secret.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.workdir}'\n"
                       "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
                       "shared_buffers = 128MB\n")

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), *args],
                       check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresProcess:
        """Start the server and wait until it accepts connections."""
        self._ctl("-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, roll back their transactions; ``immediate``: crash)."""
        self._ctl("-w", "-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port with the same data."""
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        """Whether the server's postmaster is up."""
        return subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
                              capture_output=True, check=False).returncode == 0

    def remove(self) -> None:
        """Stop the server if it runs (immediate) and delete its directory."""
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql+psycopg://`` URL (with the password) of one of its databases."""
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._databases)}"
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresProcess]:
    """One PostgreSQL server for the test session."""
    server = PostgresProcess().start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(pg_server: PostgresProcess) -> str:
    """URL of a fresh database on the session's server."""
    wait_for(pg_server.running, what="postgres running")
    return pg_server.create_database()


@pytest.fixture
def make_postgres() -> Iterator[Callable[[], PostgresProcess]]:
    """Factory of private, started servers a test may stop and restart; all removed after the test."""
    servers: list[PostgresProcess] = []

    def make() -> PostgresProcess:
        servers.append(PostgresProcess())
        return servers[-1].start()

    yield make
    for server in servers:
        server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """Parametrizes a test over the ledger's backends: None (the store's SQLite file) or the URL
    of a fresh PostgreSQL database."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest.fixture
def make_ledger(backend_url: str | None, store_root: Path) -> Iterator[Callable[..., Any]]:
    """``make_ledger(**options)``: a ledger on this test's backend (see ``open_ledger``); all closed after the test."""
    from tradpal_ray.trading import open_ledger

    opened: list[Any] = []

    def make(**options: Any) -> Any:
        opened.append(open_ledger(backend_url, store_root, **options))
        return opened[-1]

    yield make
    for ledger in opened:
        ledger.close()
