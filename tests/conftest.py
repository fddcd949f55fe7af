"""Shared fixtures: real `relayguard serve` processes on loopback, with their own data folders."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relayguard.mta.users import UserDB

from pg_fixture import postgres  # noqa: F401,E402  (issue 5: a private PostgreSQL cluster, session-wide)

USERS = {"alice@localhost": "alice-secret", "bob@example.test": "bob-secret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_tls() -> ssl.SSLContext:
    """The test servers use self-signed certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class Server:
    root: Path
    smtp_port: int
    submission_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))

    @property
    def data(self) -> Path:
        return self.root / "var"

    def messages(self, user: str, domain: str = "localhost") -> list[bytes]:
        new = self.data / "mail" / domain / user / "new"
        return [p.read_bytes() for p in sorted(new.glob("*"))] if new.is_dir() else []

    def all_mail(self) -> list[Path]:
        return sorted(p for p in (self.data / "mail").rglob("*") if p.is_file())

    def queued(self) -> list[Path]:
        return sorted((self.data / "queue").glob("*.json"))

    def smtp(self, port: int | None = None, **kw: object) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", port or self.smtp_port, timeout=10, **kw)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# No test may reach the internet: the queue's DNS goes to a closed loopback port unless a test
# gives its own [delivery] lines (e.g. a FakeDNS).
NO_DNS = 'dns_servers = ["127.0.0.1:9"]'


def start_server(root: Path, extra: str = "", users: dict[str, str] | None = None, tables: str = "",
                 delivery: str = NO_DNS, domains: tuple[str, ...] = ("localhost", "example.test"),
                 dnsbl: str = "") -> Server:
    """Write a config into `root` (`extra` lines go into [smtp], `delivery` into [delivery], `tables` at the end), add users, start `relayguard serve` and wait for its ports."""
    root.mkdir(parents=True, exist_ok=True)
    smtp_port, sub_port = free_port(), free_port()
    cfg = root / "relayguard.toml"
    cfg.write_text(
        f"""
[server]
hostname = "mx.relayguard.test"
data_dir = "var"
log_level = "debug"

[smtp]
listen = ["127.0.0.1:{smtp_port}"]
submission_listen = ["127.0.0.1:{sub_port}"]
{extra}

[domains]
local = {json.dumps(list(domains))}

[delivery]
{delivery}

[dnsbl]
dns_listen = "127.0.0.1:{free_port()}"
{dnsbl}

{tables}
"""
    )
    db = UserDB(root / "var" / "users")
    for name, password in (USERS if users is None else users).items():
        db.set(name, password)
    log_path = root / "serve.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relayguard", "serve", "-c", str(cfg)],
        cwd=root,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    server = Server(root, smtp_port, sub_port, proc, log_path)
    deadline = time.monotonic() + 20
    for port in (smtp_port, sub_port):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"relayguard serve exited: {server.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"relayguard serve did not listen: {server.log()}") from None
                time.sleep(0.05)
    while "event=ready" not in server.log():  # every service of the process is up
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"relayguard serve did not get ready: {server.log()}")
        time.sleep(0.05)
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """One shared server on the defaults (no trusted networks): most end-to-end tests use it."""
    srv = start_server(tmp_path_factory.mktemp("serve"), extra="auth_attempts_per_minute = 100000")
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path):
    """A factory for servers with their own settings, stopped after the test."""
    started: list[Server] = []

    def make(extra: str = "", users: dict[str, str] | None = None, name: str = "srv", tables: str = "",
             delivery: str = NO_DNS, dnsbl: str = "") -> Server:
        srv = start_server(tmp_path / f"{name}{len(started)}", extra, users, tables, delivery, dnsbl=dnsbl)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
