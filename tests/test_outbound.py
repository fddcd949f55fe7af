"""Outbound delivery end to end: a running server, a DNS server and remote MXs on loopback."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import subprocess
import sys
import time
import uuid

import pytest
from conftest import USERS, client_tls, start_server
from fakes import FakeDNS, FakeMX, MXBehaviour

RECORDS = {
    ("pref.test", "MX"): ["10 mx1.pref.test.", "20 mx2.pref.test."],
    ("mx1.pref.test", "A"): ["127.0.0.2"],  # nobody listens there: the queue must fall back
    ("mx2.pref.test", "A"): ["127.0.0.3"],
    ("implicit.test", "A"): ["127.0.0.3"],
    ("nullmx.test", "MX"): ["0 ."],
    ("reject.test", "MX"): ["10 mx.reject.test."],
    ("mx.reject.test", "A"): ["127.0.0.4"],
    ("later.test", "MX"): ["10 mx.later.test."],
    ("mx.later.test", "A"): ["127.0.0.5"],
    ("down.test", "MX"): ["10 mx.down.test."],
    ("mx.down.test", "A"): ["127.0.0.6"],
    ("dead.test", "MX"): ["10 mx.dead.test."],
    ("mx.dead.test", "A"): ["127.0.0.7"],  # never answers
}


def free_port_everywhere() -> int:
    """A port free on every loopback address the fakes use."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            port = s.getsockname()[1]
        try:
            for host in ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"):
                with socket.socket() as t:
                    t.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


@pytest.fixture
def world(tmp_path):
    """DNS + remote MXs + a relayguard whose queue uses them, with a fast retry schedule."""
    port = free_port_everywhere()
    dns_server = FakeDNS(RECORDS)
    mxs = {
        "pref": FakeMX("127.0.0.3", port),
        "reject": FakeMX("127.0.0.4", port, MXBehaviour(reject=True)),
        "later": FakeMX("127.0.0.5", port, MXBehaviour(tempfail=2)),
    }
    delivery = (f'dns_servers = ["{dns_server.address}"]\nport = {port}\nmin_backoff = 0.3\nmax_backoff = 0.6\n'
                f'max_lifetime = 60\ntransport = {{ "routed.test" = "127.0.0.3:{port}" }}')

    class World:
        def __init__(self) -> None:
            self.port, self.dns, self.mx, self.delivery = port, dns_server, mxs, delivery
            self.root = tmp_path / "srv"
            self.srv = start_server(self.root, delivery=delivery)

        def restart(self) -> None:
            self.srv.stop()
            self.srv = start_server(self.root, delivery=delivery)

    w = World()
    yield w
    w.srv.stop()
    for mx in mxs.values():
        mx.close()
    dns_server.close()


def submit(srv, rcpts: list[str], sender: str = "alice@localhost", subject: str = "") -> str:
    subject = subject or uuid.uuid4().hex
    with srv.smtp(srv.submission_port) as smtp:
        smtp.starttls(context=client_tls())
        smtp.login("alice@localhost", USERS["alice@localhost"])
        smtp.sendmail(sender, rcpts, f"Subject: {subject}\r\nFrom: {sender or 'x@y'}\r\n\r\nbody\r\n".encode())
    return subject


def wait_for(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def dsns(srv) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(m, policy=email.policy.default) for m in srv.messages("alice")
            if b"report-type=delivery-status" in m]


def delivery_status(dsn) -> list:
    return dsn.get_payload()[1].get_payload()


def test_mx_preference_with_fallback_to_the_next_mx(world):
    subject = submit(world.srv, ["user@pref.test"])
    got = wait_for(lambda: [m for m in world.mx["pref"].messages if subject.encode() in m.data])
    assert got[0].rcpts == ["user@pref.test"] and got[0].mail_from == "alice@localhost"
    wait_for(lambda: world.srv.queued() == [])
    assert "event=delivery-hop-failed hop=mx1.pref.test" in world.srv.log()


def test_implicit_mx_and_transport_table(world):
    a = submit(world.srv, ["user@implicit.test"])
    b = submit(world.srv, ["user@routed.test"])
    wait_for(lambda: {a, b} <= {m.data.split(b"Subject: ")[1][:32].decode() for m in world.mx["pref"].messages})


def test_null_mx_fails_at_once_with_a_dsn(world):
    submit(world.srv, ["user@nullmx.test"])
    [dsn] = wait_for(lambda: dsns(world.srv))
    [rcpt] = delivery_status(dsn)[1:]
    assert rcpt["Status"] == "5.1.10" and rcpt["Action"] == "failed"
    assert "556 5.1.10" in rcpt["Diagnostic-Code"]
    wait_for(lambda: world.srv.queued() == [])


def test_permanent_failure_bounces_with_an_rfc3464_report(world):
    subject = submit(world.srv, ["user@reject.test", "user@pref.test"])
    [dsn] = wait_for(lambda: dsns(world.srv))
    assert dsn["From"].addresses[0].username == "MAILER-DAEMON"
    per_message, *rcpts = delivery_status(dsn)
    assert per_message["Reporting-MTA"] == "dns; mx.relayguard.test"
    assert [(r["Final-Recipient"], r["Status"], r["Remote-MTA"]) for r in rcpts] == [
        ("rfc822; user@reject.test", "5.1.1", "dns; mx.reject.test")]
    assert rcpts[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"
    assert subject in dsn.get_payload()[2].get_payload()  # the original headers
    assert any(subject.encode() in m.data for m in world.mx["pref"].messages)  # the other recipient got it


def test_temporary_failures_are_retried_until_delivered(world):
    subject = submit(world.srv, ["user@later.test"])
    wait_for(lambda: any(subject.encode() in m.data for m in world.mx["later"].messages))
    wait_for(lambda: world.srv.queued() == [])
    assert world.srv.log().count("rcpt=user@later.test state=pending") == 2
    assert dsns(world.srv) == []


def test_a_bounce_is_never_bounced(world):
    submit(world.srv, ["user@reject.test"], sender="")
    wait_for(lambda: world.srv.queued() == [])
    time.sleep(0.5)
    assert dsns(world.srv) == []


def test_restart_resumes_pending_mail(world):
    subject = submit(world.srv, ["user@down.test"])
    [entry] = wait_for(lambda: [json.loads(p.read_text()) for p in world.srv.queued()
                                if json.loads(p.read_text())["attempts"] >= 1])
    assert entry["recipients"][0]["state"] == "pending"
    world.srv.stop()
    down = FakeMX("127.0.0.6", world.port)
    try:
        world.restart()
        wait_for(lambda: any(subject.encode() in m.data for m in down.messages))
        wait_for(lambda: world.srv.queued() == [])
    finally:
        down.close()


def rg(srv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", *args, "-c", "relayguard.toml"], cwd=srv.root,
                          capture_output=True, text=True, timeout=60)


def test_queue_commands(world):
    subject = submit(world.srv, ["user@down.test"])
    [path] = wait_for(lambda: world.srv.queued())
    queue_id = path.stem
    listing = json.loads(rg(world.srv, "queue", "list", "--json").stdout)
    assert [e["id"] for e in listing] == [queue_id] and listing[0]["recipients"][0]["address"] == "user@down.test"
    shown = json.loads(rg(world.srv, "queue", "show", queue_id, "--json").stdout)
    assert subject in shown["headers"]
    assert rg(world.srv, "queue", "hold", queue_id).returncode == 0
    down = FakeMX("127.0.0.6", world.port)
    try:
        assert rg(world.srv, "queue", "flush").returncode == 0
        time.sleep(1.5)
        assert down.messages == [] and json.loads(path.read_text())["held"]
        assert rg(world.srv, "queue", "release", queue_id).returncode == 0
        wait_for(lambda: down.messages)
        wait_for(lambda: world.srv.queued() == [])
    finally:
        down.close()
    submit(world.srv, ["other@dead.test"])
    [path] = wait_for(lambda: world.srv.queued())
    assert rg(world.srv, "queue", "delete", path.stem).returncode == 0
    assert world.srv.queued() == [] and not path.with_suffix(".msg").exists()
    assert rg(world.srv, "queue", "delete", path.stem).returncode == 2
    assert rg(world.srv, "queue", "show", "NOPE").returncode == 2


def test_a_corrupt_entry_is_moved_aside_and_the_queue_goes_on(world):
    queue = world.srv.data / "queue"
    (queue / "BROKEN.msg").write_bytes(b"Subject: x\r\n\r\nx\r\n")
    (queue / "BROKEN.json").write_text("{not json")
    rg(world.srv, "queue", "flush")
    wait_for(lambda: (queue / "corrupt" / "BROKEN.json").exists())
    subject = submit(world.srv, ["user@pref.test"])
    wait_for(lambda: any(subject.encode() in m.data for m in world.mx["pref"].messages))
    assert "event=queue-corrupt id=BROKEN" in world.srv.log()


def test_connections_are_reused_and_capped_per_destination(tmp_path, world):
    world.srv.stop()
    srv = start_server(tmp_path / "capped", delivery=world.delivery + "\nmax_connections_per_destination = 2")
    try:
        subjects = [submit(srv, ["user@implicit.test"]) for _ in range(8)]
        wait_for(lambda: set(subjects) <= {m.data.split(b"Subject: ")[1][:32].decode() for m in world.mx["pref"].messages})
        b = world.mx["pref"].behaviour
        assert b.max_active <= 2 and b.connections < len(subjects)
    finally:
        srv.stop()


def test_nothing_with_a_bare_line_feed_leaves_the_server(world):
    """Mail on disk never has one (the server refuses it); a damaged queue file is normalised on the way out."""
    from relayguard.mta.queue import QueueEntry, Recipient

    queue = world.srv.data / "queue"
    (queue / "HANDMADE.msg").write_bytes(b"Subject: handmade\nX: y\r\n\r\nline one\nline two\r.\r\n")
    entry = QueueEntry("HANDMADE", "alice@localhost", [Recipient("user@implicit.test")], time.time())
    (queue / "HANDMADE.json").write_text(json.dumps(entry.to_json()))
    rg(world.srv, "queue", "flush")
    [got] = wait_for(lambda: [m for m in world.mx["pref"].messages if b"handmade" in m.data])
    assert got.data.count(b"\n") == got.data.count(b"\r\n") and got.data.count(b"\r") == got.data.count(b"\r\n")


def test_require_tls_keeps_mail_queued_when_the_mx_has_no_starttls(tmp_path, world):
    world.srv.stop()
    srv = start_server(tmp_path / "tls", delivery=world.delivery + '\nrequire_tls = ["implicit.test"]')
    try:
        submit(srv, ["user@implicit.test"])
        [entry] = wait_for(lambda: [json.loads(p.read_text()) for p in srv.queued()
                                    if json.loads(p.read_text())["attempts"] >= 1])
        assert entry["recipients"][0]["state"] == "pending"
        assert "TLS required" in entry["recipients"][0]["reply"]
    finally:
        srv.stop()


def test_delay_warning_is_sent_once(tmp_path, world):
    world.srv.stop()
    srv = start_server(tmp_path / "warn", delivery=world.delivery + "\ndelay_warning = 0.5")
    try:
        submit(srv, ["user@dead.test"])
        [dsn] = wait_for(lambda: dsns(srv))
        [rcpt] = delivery_status(dsn)[1:]
        assert rcpt["Action"] == "delayed" and rcpt["Final-Recipient"] == "rfc822; user@dead.test"
        time.sleep(1.5)
        assert len(dsns(srv)) == 1
    finally:
        srv.stop()


def test_smarthost_with_auth_over_starttls(tmp_path, world):
    """A second relayguard is the smarthost: mail goes there with AUTH after STARTTLS."""
    hub = start_server(tmp_path / "hub", users={"relay@example.test": "hub-secret"},
                       domains=("localhost", "hub.test"),
                       tables='[auth]\nsenders = { "relay@example.test" = ["@localhost"] }')
    world.srv.stop()
    smart = (f'{world.delivery}\nsmarthost = "127.0.0.1:{hub.submission_port}"\n'
             'smarthost_user = "relay@example.test"\nsmarthost_password = "hub-secret"')
    srv = start_server(tmp_path / "edge", delivery=smart)
    try:
        with srv.smtp(srv.submission_port) as smtp:
            smtp.starttls(context=client_tls())
            smtp.login("alice@localhost", USERS["alice@localhost"])
            smtp.sendmail("alice@localhost", ["postmaster@hub.test"], b"Subject: via hub\r\n\r\nhi\r\n")
        [msg] = wait_for(lambda: hub.messages("postmaster", "hub.test"))
        assert b"with ESMTPSA" in msg and b"Subject: via hub" in msg
    finally:
        srv.stop()
        hub.stop()
