"""The MTA's sender and recipient decisions and alias routing (pure)."""

from __future__ import annotations

from datetime import datetime, timezone

from relayguard.addr import parse_path
from relayguard.config import Settings
from relayguard.mta.policy import Policy
from relayguard.mta.received import TLSInfo, received_header

SETTINGS = Settings(
    domains={"local": ["example.test", "localhost"]},
    relay={"trusted_networks": ["10.0.0.0/8"]},
    aliases={
        "sales@example.test": ["alice@example.test", "friend@remote.test"],
        "team@example.test": ["sales@example.test", "bob@example.test"],
        "loop1@example.test": "loop2@example.test",
        "loop2@example.test": "loop1@example.test",
    },
    auth={"senders": {"alice@example.test": ["@shop.test"]}},
)
POLICY = Policy(SETTINGS, {"alice@example.test", "bob@example.test"})


def box(text: str):
    return parse_path(text, allow_null=False)


def rcpt(text: str, ip: str = "192.0.2.9", identity: str | None = None):
    reply, reason = POLICY.check_recipient(box(f"<{text}>"), text, client_ip=ip, identity=identity)
    return reply.code, reason


def test_recipient_decisions():
    assert rcpt("alice@example.test") == (250, "local")
    assert rcpt("ALICE@Example.Test.") == (250, "local")
    assert rcpt("sales@example.test") == (250, "local")
    assert rcpt("postmaster@example.test") == (250, "local")
    assert rcpt("nobody@example.test") == (550, "unknown user")
    assert rcpt("friend@remote.test") == (554, "relay denied")
    assert rcpt("friend%remote.test@example.test") == (554, "relay denied")
    assert rcpt("friend@remote.test", ip="10.1.2.3") == (250, "relay")
    assert rcpt("friend@remote.test", identity="alice@example.test") == (250, "relay")
    assert rcpt("user@1.2.3.4", identity="alice@example.test")[0] == 501
    assert rcpt("u@[127.0.0.1]") == (550, "unknown user")  # our own listen address is local
    assert rcpt("Postmaster") == (250, "local")  # RFC 5321 4.5.1
    assert POLICY.routes([box("<Postmaster>")]).local == [("postmaster", "example.test")]


def test_alias_expansion_is_recursive_deduplicated_and_bounded():
    routes = POLICY.routes([box("<team@example.test>"), box("<alice@example.test>")])
    assert routes.local == [("alice", "example.test"), ("bob", "example.test")]
    assert routes.remote == ["friend@remote.test"]
    loop = POLICY.routes([box("<loop1@example.test>")])
    assert len(loop.local) == 1 and loop.remote == []


def test_sender_ownership():
    ok = POLICY.check_sender(parse_path("<alice@example.test>", allow_null=True), "alice@example.test")
    granted = POLICY.check_sender(parse_path("<sales@shop.test>", allow_null=True), "alice@example.test")
    null = POLICY.check_sender(parse_path("<>", allow_null=True), "alice@example.test")
    forged = POLICY.check_sender(parse_path("<bob@example.test>", allow_null=True), "alice@example.test")
    anonymous = POLICY.check_sender(parse_path("<bob@example.test>", allow_null=True), None)
    assert [r.code for r in (ok, granted, null, forged, anonymous)] == [250, 250, 250, 553, 250]


def test_received_header_follows_rfc5321_and_rfc3848():
    when = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    h = received_header(helo="client (evil)\r\nX: y", ip="192.0.2.9", rdns=None, by="mx.example.test", queue_id="Q1",
                        esmtp=True, tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256), authenticated=True,
                        rcpts=["alice@example.test"], when=when).decode()
    assert h == (
        "Received: from client??evil???X:?y ([192.0.2.9])\r\n"
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n"
        "\tby mx.example.test (relayguard) with ESMTPSA id Q1\r\n"
        "\tfor <alice@example.test>; Sat, 28 Nov 2026 12:00:00 +0000\r\n"
    )
    two = received_header(helo="c", ip="::1", rdns="host.test", by="mx", queue_id="Q2", esmtp=False, tls=None,
                          authenticated=False, rcpts=["a@x", "b@x"], when=when).decode()
    assert "from c (host.test [::1])" in two and "with SMTP id Q2;\r\n\tSat" in two and "for <" not in two


def test_logins_are_cached_by_keyed_hash_and_never_failures(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from relayguard.mta import users as users_mod

    db = users_mod.UserDB(tmp_path / "users")
    db.set("alice@localhost", "right")
    calls = []
    real = users_mod.check_password

    def counting(password, stored):
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(users_mod, "check_password", counting)
    with ThreadPoolExecutor(8) as pool:  # sessions logging in at once share one scrypt
        assert all(pool.map(lambda _: db.verify("Alice@localhost", "right"), range(8)))
    assert calls == ["right"]
    assert not db.verify("alice@localhost", "wrong") and not db.verify("alice@localhost", "wrong")
    assert calls == ["right", "wrong", "wrong"]  # a failure is never remembered
    assert all(password not in repr(db.__dict__) for password in ("right", "wrong"))  # only keyed hashes kept
    db.set("alice@localhost", "new")  # a changed password is never served from the cache
    assert not db.verify("alice@localhost", "right")
    assert db.verify("alice@localhost", "new")
    db.delete("alice@localhost")
    assert not db.verify("alice@localhost", "new")
