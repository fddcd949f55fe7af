"""A private PostgreSQL for the store tests: a throw-away cluster on a free loopback port.

The Debian package `postgresql` must be installed (.ci/run installs it; no service needs to
run). The session fixture `postgres` runs `initdb` into a temporary folder and `pg_ctl start`
on 127.0.0.1:<free port> with its socket in that folder, as the `postgres` user when the tests
run as root (initdb refuses root), and stops and removes it at the end. Each test asks for a
database of its own with `postgres.new_database()`.

Set RELAYGUARD_TEST_POSTGRES=postgresql+psycopg://user@host:port/ to use a running server
instead (the user must be allowed to CREATE DATABASE).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (the store tests need it)")


@dataclass
class Postgres:
    base_url: str  # postgresql+psycopg://user@host:port/
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"rg_{os.getpid()}_{next(self._names)}"
        dsn = self.base_url.replace("postgresql+psycopg://", "postgresql://") + "postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.base_url + name


@pytest.fixture(scope="session")
def postgres():
    url = os.environ.get("RELAYGUARD_TEST_POSTGRES", "")
    if url:
        yield Postgres(url if url.endswith("/") else url + "/")
        return
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="relayguard-pg-"))
    root.chmod(0o755)
    data, logfile = root / "data", root / "postgres.log"
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    try:
        subprocess.run(as_pg + [str(bindir / "initdb"), "-D", str(data), "-U", "relayguard", "--auth=trust",
                                "-E", "UTF8", "--locale=C", "-N"], check=True, capture_output=True, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "60",
                                "-o", options, "start"], check=True, capture_output=True, timeout=90)
    except subprocess.CalledProcessError as e:
        log = logfile.read_text(errors="replace") if logfile.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"cannot start PostgreSQL: {e.stderr.decode(errors='replace')}\n{log}") from None
    try:
        yield Postgres(f"postgresql+psycopg://relayguard@127.0.0.1:{port}/")
    finally:
        subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
