"""Every relay trick in the catalogue, sent to a running `relayguard serve` over loopback."""

from __future__ import annotations

import smtplib

import pytest

from relayguard.relaytest.catalogue import CASES

from conftest import USERS, client_tls

# T is the server's host name; it is not one of its local domains (like a typical MX whose
# name differs from the mail domain), so relay attempts through it must still be refused.
VALUES = dict(T="mx.relayguard.test", IP="127.0.0.1", D="example.test", X="canary.test", XIP="192.0.2.1",
              s="spammer", u="victim", rand="r4nd0m")

# Recipients an authenticated client still cannot use: invalid syntax, or a local mailbox that
# does not exist (R13 is the server's own IP literal, P3-P5 resolve through our own domain).
AUTH_REFUSED = {"P7": 501, "P8": 501, "R13": 550}


def try_case(smtp: smtplib.SMTP, mail_from: str, rcpt_to: str) -> tuple[int, int | None, bytes]:
    """MAIL and RCPT with the exact arguments; returns (mail code, rcpt code or None, last text)."""
    code, text = smtp.docmd("MAIL", f"FROM:{mail_from}")
    if code != 250:
        return code, None, text
    rcode, rtext = smtp.docmd("RCPT", f"TO:{rcpt_to}")
    smtp.rset()
    return code, rcode, rtext


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_untrusted_client_never_relays(server, case):
    mail_from, rcpt_to = case.render(**VALUES)
    with server.smtp() as smtp:
        smtp.ehlo("client.example")
        mcode, rcode, text = try_case(smtp, mail_from, rcpt_to)
    assert mcode != 250 or rcode is not None
    assert rcode is None or rcode >= 500, f"{case.id} {rcpt_to}: {rcode} {text!r}"
    if case.relay and rcode == 554:
        assert b"Relay access denied" in text


def test_nothing_was_queued_by_untrusted_clients(server):
    before = set(server.queued())  # the server is shared: other modules' tests may have queued mail
    for case in CASES:
        mail_from, rcpt_to = case.render(**VALUES)
        with server.smtp() as smtp:
            smtp.ehlo("client.example")
            code, _ = smtp.docmd("MAIL", f"FROM:{mail_from}")
            if code == 250 and smtp.docmd("RCPT", f"TO:{rcpt_to}")[0] == 250:
                smtp.docmd("DATA")
    assert set(server.queued()) - before == set()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_authenticated_client_over_starttls_relays_valid_addresses(server, case):
    _, rcpt_to = case.render(**VALUES)
    with server.smtp(server.submission_port) as smtp:
        smtp.starttls(context=client_tls())
        smtp.login("alice@localhost", USERS["alice@localhost"])
        mcode, rcode, text = try_case(smtp, "<alice@localhost>", rcpt_to)
    assert mcode == 250
    expected = AUTH_REFUSED.get(case.id, 250)
    assert rcode == expected, f"{case.id} {rcpt_to}: {rcode} {text!r}"


def test_authenticated_relay_lands_in_the_queue(server):
    with server.smtp(server.submission_port) as smtp:
        smtp.starttls(context=client_tls())
        smtp.login("alice@localhost", USERS["alice@localhost"])
        refused = smtp.sendmail("alice@localhost", ["friend@remote.test"], b"Subject: hi\r\n\r\nhello\r\n")
    assert refused == {}
    entries = [p.read_text() for p in server.queued()]
    assert any('"friend@remote.test"' in e and '"alice@localhost"' in e for e in entries)


def test_authenticated_user_cannot_forge_another_sender(server):
    with server.smtp(server.submission_port) as smtp:
        smtp.starttls(context=client_tls())
        smtp.login("alice@localhost", USERS["alice@localhost"])
        code, text = smtp.docmd("MAIL", "FROM:<bob@example.test>")
    assert code == 553 and b"not owned by user alice@localhost" in text


def test_null_sender_is_always_accepted(server):
    with server.smtp() as smtp:
        smtp.ehlo("client.example")
        assert smtp.docmd("MAIL", "FROM:<>")[0] == 250
        assert smtp.docmd("RCPT", "TO:<postmaster@localhost>")[0] == 250


def test_unknown_local_user_is_refused_at_rcpt(server):
    with server.smtp() as smtp:
        smtp.ehlo("client.example")
        smtp.docmd("MAIL", "FROM:<someone@remote.test>")
        code, text = smtp.docmd("RCPT", "TO:<nobody@localhost>")
    assert code == 550 and text.startswith(b"5.1.1")


def test_trusted_network_relays_without_auth(make_server):
    srv = make_server(tables='[relay]\ntrusted_networks = ["127.0.0.0/8"]')
    with srv.smtp() as smtp:
        refused = smtp.sendmail("app@remote.test", ["friend@remote.test"], b"Subject: hi\r\n\r\nhello\r\n")
    assert refused == {}
    assert len(srv.queued()) == 1
