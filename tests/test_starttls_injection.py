"""STARTTLS command injection (CVE-2011-0411) and AUTH offered only under TLS."""

from __future__ import annotations

import base64

import pytest

from raw_smtp import Raw


def lines_of(c: Raw) -> tuple[int, list[str]]:
    code, text = c.reply()
    return code, text.split("\n")


def ehlo(c: Raw, name: str) -> list[str]:
    c.send(f"EHLO {name}\r\n".encode())
    code, lines = lines_of(c)
    assert code == 250, lines
    return lines


INJECTIONS = {
    "rset-mail": b"STARTTLS\r\nRSET\r\nMAIL FROM:<x@y>\r\n",
    "rset-mail-rcpt": b"STARTTLS\r\nRSET\r\nMAIL FROM:<x@y>\r\nRCPT TO:<postmaster@localhost>\r\n",
}


@pytest.mark.parametrize("name", list(INJECTIONS))
@pytest.mark.parametrize("port_kind", ["smtp", "submission"])
def test_plaintext_after_starttls_is_discarded(server, name, port_kind):
    port = server.smtp_port if port_kind == "smtp" else server.submission_port
    c = Raw(port)
    try:
        assert c.reply()[0] == 220
        ehlo(c, "before.example")
        c.send(INJECTIONS[name])  # one write: STARTTLS plus the injected commands
        code, lines = lines_of(c)
        assert code == 220, lines
        c.wrap_tls()
        # The first reply inside TLS is the one to our own EHLO, not to an injected command.
        lines = ehlo(c, "inside.example")
        assert lines[0] == "250-mx.relayguard.test", lines
        assert "250-STARTTLS" not in lines
        # The injected MAIL never ran: no transaction is open.
        c.send(b"RCPT TO:<postmaster@localhost>\r\n")
        code, lines = lines_of(c)
        assert (code, lines[0][:9]) == (503, "503 5.5.1"), lines
        c.send(b"DATA\r\n")
        code, lines = lines_of(c)
        assert (code, lines[0][:9]) == (503, "503 5.5.1"), lines
        c.send(b"QUIT\r\n")
        assert c.reply()[0] == 221
    finally:
        c.close()


def test_injected_commands_do_not_run_with_valid_transaction(server):
    """Even a complete pipelined transaction sent in clear after STARTTLS delivers nothing."""
    before = len(server.messages("postmaster"))
    c = Raw(server.smtp_port)
    try:
        assert c.reply()[0] == 220
        ehlo(c, "before.example")
        c.send(
            b"STARTTLS\r\nEHLO evil.example\r\nMAIL FROM:<x@example.org>\r\n"
            b"RCPT TO:<postmaster@localhost>\r\nDATA\r\nSubject: injected\r\n\r\ninjected\r\n.\r\n"
        )
        assert c.reply()[0] == 220
        c.wrap_tls()
        lines = ehlo(c, "inside.example")
        assert lines[0] == "250-mx.relayguard.test"
        c.send(b"QUIT\r\n")
        assert c.reply()[0] == 221
    finally:
        c.close()
    assert len(server.messages("postmaster")) == before


AUTH_PLAIN = "AUTH PLAIN " + base64.b64encode(b"\0alice@localhost\0alice-secret").decode()


@pytest.mark.parametrize("port_kind", ["smtp", "submission"])
def test_auth_only_offered_and_accepted_under_tls(make_server, port_kind):
    # A dedicated server: the AUTH rate limit is per client IP, shared with other tests.
    server = make_server()
    port = server.smtp_port if port_kind == "smtp" else server.submission_port
    c = Raw(port)
    try:
        assert c.reply()[0] == 220
        lines = ehlo(c, "client.example")
        assert "250-STARTTLS" in lines
        assert not any(line[4:].upper().startswith("AUTH") for line in lines), lines
        c.send(AUTH_PLAIN.encode() + b"\r\n")
        code, lines = lines_of(c)
        assert (code, lines[0][:10]) == (538, "538 5.7.11"), lines
        c.send(b"STARTTLS\r\n")
        assert c.reply()[0] == 220
        c.wrap_tls()
        lines = ehlo(c, "client.example")
        assert "250-AUTH PLAIN LOGIN" in lines, lines
        assert "250-STARTTLS" not in lines
        c.send(AUTH_PLAIN.encode() + b"\r\n")
        code, lines = lines_of(c)
        assert (code, lines[0][:9]) == (235, "235 2.7.0"), lines
        # Once authenticated, AUTH is no longer offered.
        lines = ehlo(c, "client.example")
        assert not any(line[4:].upper().startswith("AUTH") for line in lines), lines
        c.send(b"QUIT\r\n")
        assert c.reply()[0] == 221
    finally:
        c.close()
