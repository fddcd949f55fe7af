"""swaks, the mail administrator's SMTP test client, against a running relayguard."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
from conftest import USERS

if shutil.which("swaks") is None:  # pragma: no cover - .ci/run installs it
    raise RuntimeError("swaks is required for these tests: apt-get install swaks")


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", "--timeout", "10", *args], capture_output=True, text=True, timeout=60)


def delivered(server, token: str, user: str = "postmaster") -> bool:
    return any(token.encode() in m for m in server.messages(user))


def test_plain_local_delivery(server):
    token = uuid.uuid4().hex
    r = swaks("--server", f"127.0.0.1:{server.smtp_port}", "--to", "postmaster@localhost",
              "--from", "someone@remote.test", "--header", f"Subject: {token}")
    assert r.returncode == 0, r.stdout
    assert delivered(server, token)


def test_starttls_delivery_records_tls_in_received(server):
    token = uuid.uuid4().hex
    r = swaks("--server", f"127.0.0.1:{server.smtp_port}", "--tls", "--to", "postmaster@localhost",
              "--from", "someone@remote.test", "--header", f"Subject: {token}")
    assert r.returncode == 0, r.stdout
    msg = next(m for m in server.messages("postmaster") if token.encode() in m)
    received = msg.split(b"\r\n\t(using ", 1)
    assert msg.startswith(b"Received: from ") and len(received) == 2
    assert b"with ESMTPS id" in msg and b"for <postmaster@localhost>" in msg


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_over_tls_then_relay(server, mechanism):
    token = uuid.uuid4().hex
    r = swaks("--server", f"127.0.0.1:{server.submission_port}", "--tls", "--auth", mechanism,
              "--auth-user", "alice@localhost", "--auth-password", USERS["alice@localhost"],
              "--from", "alice@localhost", "--to", f"{token}@remote.test")
    assert r.returncode == 0, r.stdout
    assert any(token in p.read_text() for p in server.queued())
    assert "with ESMTPSA" in next(
        (server.data / "queue" / p.name.replace(".json", ".msg")).read_text() for p in server.queued() if token in p.read_text()
    )


def test_wrong_password_is_refused(server):
    r = swaks("--server", f"127.0.0.1:{server.submission_port}", "--tls", "--auth", "PLAIN",
              "--auth-user", "alice@localhost", "--auth-password", "wrong",
              "--from", "alice@localhost", "--to", "friend@remote.test")
    assert r.returncode != 0
    assert "535 5.7.8" in r.stdout


def test_pipelining(server):
    token = uuid.uuid4().hex
    r = swaks("--server", f"127.0.0.1:{server.smtp_port}", "--pipeline", "--to", "postmaster@localhost",
              "--from", "someone@remote.test", "--header", f"Subject: {token}")
    assert r.returncode == 0, r.stdout
    assert delivered(server, token)


def test_refused_relay(server):
    r = swaks("--server", f"127.0.0.1:{server.smtp_port}", "--to", "victim@remote.test",
              "--from", "someone@remote.test", "--quit-after", "RCPT")
    assert r.returncode == 24, r.stdout
    assert "554 5.7.1 <victim@remote.test>: Relay access denied" in r.stdout


def test_submission_refuses_unauthenticated_mail_even_for_local_recipients(server):
    r = swaks("--server", f"127.0.0.1:{server.submission_port}", "--tls", "--to", "postmaster@localhost",
              "--from", "someone@remote.test")
    assert r.returncode != 0
    assert "530 5.7.0" in r.stdout
