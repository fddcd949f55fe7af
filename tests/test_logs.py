"""Logs (issue 9): `[server] log_file` and `log_format = "json"` in a running `relayguard serve`, and
no secret ever logged: after AUTH PLAIN and AUTH LOGIN sessions over STARTTLS on the submission
port (one with a wrong password), neither password nor the base64 AUTH data is in the log."""

from __future__ import annotations

import base64
import json
import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import NO_DNS, USERS, Server, client_tls, free_port
from relayguard import log
from relayguard.mta.users import UserDB

USER, PASSWORD = "alice@localhost", USERS["alice@localhost"]
WRONG = "not-alices-password-7Qz"


def start(root: Path, server_lines: str) -> Server:
    """`relayguard serve` whose log goes where `server_lines` say; waits for event "ready" in that log."""
    root.mkdir(parents=True)
    smtp_port, sub_port = free_port(), free_port()
    cfg = root / "relayguard.toml"
    cfg.write_text(f"""
[server]
hostname = "mx.relayguard.test"
data_dir = "var"
log_level = "debug"
log_file = "relayguard.log"
{server_lines}

[smtp]
listen = ["127.0.0.1:{smtp_port}"]
submission_listen = ["127.0.0.1:{sub_port}"]

[domains]
local = ["localhost"]

[delivery]
{NO_DNS}

[dnsbl]
dns_listen = ""
""")
    UserDB(root / "var" / "users").set(USER, PASSWORD)
    console = open(root / "console.out", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "relayguard", "serve", "-c", str(cfg)], cwd=root,
                            stdout=console, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    srv = Server(root, smtp_port, sub_port, proc, root / "relayguard.log")
    deadline = time.monotonic() + 20

    def ready() -> bool:
        text = srv.log() if srv.log_path.exists() else ""
        return "event=ready" in text or '"event": "ready"' in text

    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            srv.stop()
            raise RuntimeError(f"serve did not get ready: {(root / 'console.out').read_text()}")
        time.sleep(0.05)
    return srv


def auth_sessions(srv: Server) -> None:
    """AUTH PLAIN (ok), AUTH LOGIN (ok), AUTH PLAIN with a wrong password, each over STARTTLS."""
    for mechanism, password in (("PLAIN", PASSWORD), ("LOGIN", PASSWORD), ("PLAIN", WRONG)):
        with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=10) as s:
            s.starttls(context=client_tls())
            s.ehlo("client.example")
            s.user, s.password = USER, password
            authobject = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            if password == PASSWORD:
                assert s.auth(mechanism, authobject)[0] == 235
                s.sendmail(USER, ["alice@localhost"], b"Subject: t\r\n\r\nbody\r\n")
            else:
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    s.auth(mechanism, authobject)


def secrets_in(text: str) -> list[str]:
    forms = {
        "password": PASSWORD,
        "wrong password": WRONG,
        "PLAIN data": base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
        "PLAIN data (wrong)": base64.b64encode(f"\0{USER}\0{WRONG}".encode()).decode(),
        "LOGIN password": base64.b64encode(PASSWORD.encode()).decode(),
        "LOGIN user": base64.b64encode(USER.encode()).decode(),
    }
    return [name for name, secret in forms.items() if secret in text]


@pytest.fixture
def started(tmp_path):
    servers: list[Server] = []

    def make(server_lines: str = "") -> Server:
        srv = start(tmp_path / f"s{len(servers)}", server_lines)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


def test_kv_log_file_has_the_auth_events_and_no_secret(started):
    srv = started()
    auth_sessions(srv)
    srv.stop()
    text = srv.log()
    assert secrets_in(text) == []
    auth = [line for line in text.splitlines() if " event=auth " in line]
    assert len(auth) == 3, text
    assert sum("result=ok" in line for line in auth) == 2 and sum("result=fail" in line for line in auth) == 1
    assert all(f"user={USER}" in line for line in auth)
    assert text.count("event=accepted") == 2
    # the file took every event: nothing on the console but what is not an event
    console = (srv.root / "console.out").read_text()
    assert "event=" not in console and secrets_in(console) == []


def test_json_lines(started):
    srv = started('log_format = "json"')
    auth_sessions(srv)
    srv.stop()
    text = srv.log()
    assert secrets_in(text) == []
    records = [json.loads(line) for line in text.splitlines()]
    assert all({"time", "level", "event"} <= set(r) for r in records)
    auth = [r for r in records if r["event"] == "auth"]
    assert [r["result"] for r in auth] == ["ok", "ok", "fail"] and all(r["user"] == USER for r in auth)
    accepted = [r for r in records if r["event"] == "accepted"]
    assert len(accepted) == 2 and isinstance(accepted[0]["size"], int) and accepted[0]["id"]


def test_setup_reopens_the_file_after_rotation(tmp_path):
    path = tmp_path / "relayguard.log"
    try:
        log.setup("info", path=path)
        log.event("one", n=1)
        path.rename(tmp_path / "relayguard.log.1")  # logrotate moves the file, then serve gets SIGHUP
        log.event("two", n=2)
        log.setup("info", path=path)  # what a reload does
        log.event("three", n=3)
    finally:
        log.setup("info")
    assert "event=one" in (tmp_path / "relayguard.log.1").read_text()
    assert "event=two" in (tmp_path / "relayguard.log.1").read_text()
    assert "event=three" in path.read_text() and "event=two" not in path.read_text()


def test_unwritable_log_file_fails_serve_with_a_message(tmp_path):
    cfg = tmp_path / "relayguard.toml"
    cfg.write_text('[server]\nlog_file = "no/such/dir/relayguard.log"\n[dnsbl]\ndns_listen = ""\n')
    r = subprocess.run([sys.executable, "-m", "relayguard", "serve", "-c", str(cfg)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no/such/dir/relayguard.log" in r.stderr
