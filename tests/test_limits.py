"""Every [smtp] limit is hit over real TCP, answered correctly, and the server keeps serving."""

from __future__ import annotations

import base64
import secrets
import socket
import time

from raw_smtp import Raw

HOST = "mx.relayguard.test"


def session(port: int, *, tls: bool = False) -> Raw:
    """Connected, greeted, EHLO done (and STARTTLS + EHLO again when `tls`)."""
    c = Raw(port)
    code, text = c.reply()
    assert code == 220, text
    assert c.cmd("EHLO client.example")[0] == 250
    if tls:
        c.starttls()
        assert c.cmd("EHLO client.example")[0] == 250
    return c


def expect(reply: tuple[int, str], code: int, enhanced: str) -> None:
    assert reply[0] == code and reply[1][4:].startswith(enhanced), reply


def assert_closed_after(c: Raw, code: int, enhanced: str) -> None:
    """The next reply is `code enhanced`, then the server closes the connection."""
    try:
        expect(c.reply(), code, enhanced)
        assert c.rest() == []
    finally:
        c.close()


def assert_serves(port: int, *, tls: bool = False, attempts: int = 1) -> None:
    """A fresh session completes EHLO/QUIT (`attempts` > 1 while a freed slot is released)."""
    for attempt in range(attempts):
        c = Raw(port)
        try:
            code, text = c.reply()
            if code == 421 and attempt < attempts - 1:
                time.sleep(0.05)
                continue
            assert code == 220, text
            assert c.cmd("EHLO fresh.example")[0] == 250
            if tls:
                c.starttls()
                assert c.cmd("EHLO fresh.example")[0] == 250
            assert c.cmd("QUIT")[0] == 221
            return
        finally:
            c.close()


def auth_plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# Command and message limits ------------------------------------------------------------------


def test_command_line_too_long(make_server):
    srv = make_server("max_line_length = 512")
    c = session(srv.smtp_port)
    try:
        long_mail = "MAIL FROM:<" + "a" * 600 + "@example.org>"
        expect(c.cmd(long_mail), 500, "5.5.2")
        # The long MAIL was not executed.
        expect(c.cmd("RCPT TO:<postmaster@localhost>"), 503, "5.5.1")
        # A long line streamed without its CRLF is refused once, and its tail is not executed.
        c.send(b"MAIL FROM:<" + b"b" * 3000)
        expect(c.reply(), 500, "5.5.2")
        c.send(b"@example.org>\r\n")
        expect(c.cmd("RCPT TO:<postmaster@localhost>"), 503, "5.5.1")
        # A line at the limit still works.
        ok = "NOOP " + "c" * 507
        assert len(ok) == 512
        expect(c.cmd(ok), 250, "2.0.0")
        # ... however TCP splits it, even between its CR and LF.
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.send(ok.encode() + b"\r")
        time.sleep(0.1)  # lets the server see the line without its LF (not a timing assertion)
        c.send(b"\n")
        expect(c.reply(), 250, "2.0.0")
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    assert_serves(srv.smtp_port)


def test_too_many_recipients(make_server):
    srv = make_server("max_recipients = 3")
    token = secrets.token_hex(8)
    c = session(srv.smtp_port)
    try:
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
        for rcpt in ("postmaster@localhost", "alice@localhost", "bob@example.test"):
            expect(c.cmd(f"RCPT TO:<{rcpt}>"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<postmaster@example.test>"), 452, "4.5.3")
        # The transaction goes on with the accepted recipients.
        assert c.cmd("DATA")[0] == 354
        expect(c.cmd(f"Subject: {token}\r\n\r\nhello\r\n."), 250, "2.0.0")
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    assert any(token.encode() in m for m in srv.messages("alice"))
    assert not srv.messages("postmaster", "example.test")
    assert_serves(srv.smtp_port)


def test_size_parameter_too_big(make_server):
    srv = make_server("max_message_size = 10000")
    c = session(srv.smtp_port)
    try:
        assert "250-SIZE 10000" in c.cmd("EHLO client.example")[1]
        expect(c.cmd("MAIL FROM:<sender@example.org> SIZE=10001"), 552, "5.3.4")
        expect(c.cmd("RCPT TO:<postmaster@localhost>"), 503, "5.5.1")
        expect(c.cmd("MAIL FROM:<sender@example.org> SIZE=10000"), 250, "2.1.0")
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    assert_serves(srv.smtp_port)


def test_message_too_big_while_streaming(make_server):
    srv = make_server("max_message_size = 10000")
    c = session(srv.smtp_port)
    try:
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<postmaster@localhost>"), 250, "2.1.5")
        assert c.cmd("DATA")[0] == 354
        line = b"x" * 998 + b"\r\n"
        for _ in range(3):  # 30 KB in three writes, no SIZE announced
            c.send(line * 10)
        c.send(b".\r\n")
        # Answered once, after the real end: the data lines were not read as commands.
        expect(c.reply(), 552, "5.3.4")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        expect(c.cmd("RCPT TO:<postmaster@localhost>"), 503, "5.5.1")
        assert c.cmd("QUIT")[0] == 221
        assert c.rest() == []
    finally:
        c.close()
    assert srv.messages("postmaster") == []
    assert list((srv.data / "spool" / "tmp").iterdir()) == []
    assert_serves(srv.smtp_port)


# Errors: tarpit and disconnect ----------------------------------------------------------------


def test_soft_error_limit_tarpits_but_still_answers(make_server):
    srv = make_server("soft_error_limit = 2\nhard_error_limit = 50\nerror_sleep = 0.1")
    c = session(srv.smtp_port)
    try:
        for _ in range(6):  # four of these are past the soft limit and delayed
            expect(c.cmd("BOGUS"), 502, "5.5.2")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    assert_serves(srv.smtp_port)


def test_hard_error_limit_disconnects(make_server):
    srv = make_server("soft_error_limit = 1\nhard_error_limit = 4\nerror_sleep = 0.05")
    c = session(srv.smtp_port)
    for _ in range(3):
        expect(c.cmd("BOGUS"), 502, "5.5.2")
    c.send(b"RCPT TO:<postmaster@localhost>\r\n")  # a 503: the fourth error
    assert_closed_after(c, 421, "4.7.0")
    assert_serves(srv.smtp_port)


# Time limits ----------------------------------------------------------------------------------


def test_idle_timeout(make_server):
    srv = make_server("timeout = 1")
    c = session(srv.smtp_port)
    assert_closed_after(c, 421, "4.4.2")
    assert_serves(srv.smtp_port)


def test_session_timeout_cuts_an_active_client(make_server):
    srv = make_server("timeout = 5\nsession_timeout = 1")
    c = session(srv.smtp_port)
    noops = 0
    for _ in range(200):  # ~0.05 s apart: far more often than the 5 s idle timeout
        if c.readable(0.05):
            break
        expect(c.cmd("NOOP"), 250, "2.0.0")
        noops += 1
    else:
        c.close()
        raise AssertionError("no session timeout")
    assert noops > 0
    assert_closed_after(c, 421, "4.4.2")
    assert_serves(srv.smtp_port)


# Connection caps -----------------------------------------------------------------------------


def _hold(port: int, n: int) -> list[Raw]:
    """`n` greeted sessions; retried while the server still counts start_server's port probes."""
    for attempt in range(40):
        held = [Raw(port) for _ in range(n)]
        codes = [c.reply()[0] for c in held]
        if codes == [220] * n:
            return held
        for c in held:
            c.close()
        assert 421 in codes and attempt < 39, codes
        time.sleep(0.05)
    raise AssertionError("unreachable")


def _cap_test(srv, code: int, enhanced: str) -> None:
    held = _hold(srv.smtp_port, 2)
    try:
        extra = Raw(srv.smtp_port)
        assert_closed_after(extra, code, enhanced)
        # The held sessions still work.
        for c in held:
            expect(c.cmd("NOOP"), 250, "2.0.0")
        assert held[0].cmd("QUIT")[0] == 221
        assert held[0].rest() == []
    finally:
        for c in held:
            c.close()
    # The freed slots are released as the server notices the closes.
    assert_serves(srv.smtp_port, attempts=40)


def test_max_connections_per_ip(make_server):
    _cap_test(make_server("max_connections_per_ip = 2"), 421, "4.7.0")


def test_max_connections(make_server):
    _cap_test(make_server("max_connections = 2"), 421, "4.3.2")


# AUTH rate limit ------------------------------------------------------------------------------


def test_auth_attempts_per_minute(make_server):
    srv = make_server("auth_attempts_per_minute = 3")
    c = session(srv.submission_port, tls=True)
    for _ in range(3):
        expect(c.cmd(auth_plain("alice@localhost", "wrong")), 535, "5.7.8")
    # Counted whether or not it would succeed: even the right password is refused now.
    c.send(auth_plain("alice@localhost", "alice-secret").encode() + b"\r\n")
    assert_closed_after(c, 421, "4.7.0")
    # Other sessions are served; the limit is per client IP, so AUTH from here stays refused.
    assert_serves(srv.submission_port, tls=True)
    c = session(srv.submission_port, tls=True)
    c.send(auth_plain("alice@localhost", "alice-secret").encode() + b"\r\n")
    assert_closed_after(c, 421, "4.7.0")


# Pipelining (RFC 2920) -------------------------------------------------------------------------


def test_talking_before_greeting(make_server):
    srv = make_server("greet_pause = 0.5")
    c = Raw(srv.smtp_port)
    c.send(b"EHLO eager.example\r\n")
    assert_closed_after(c, 554, "5.5.0")
    assert_serves(srv.smtp_port)


def test_pipelining_violation_after_ehlo(server):
    c = Raw(server.smtp_port)
    assert c.reply()[0] == 220
    c.send(b"EHLO client.example\r\nNOOP\r\n")
    assert_closed_after(c, 554, "5.5.0")
    assert_serves(server.smtp_port)


def test_pipelining_violation_after_data(server):
    c = session(server.smtp_port)
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<postmaster@localhost>"), 250, "2.1.5")
    c.send(b"DATA\r\nSubject: too early\r\n\r\nbody\r\n.\r\n")
    assert_closed_after(c, 554, "5.5.0")
    assert_serves(server.smtp_port)


def test_submission_requires_auth_even_for_local_recipient(server):
    for tls in (False, True):
        c = session(server.submission_port, tls=tls)
        try:
            expect(c.cmd("MAIL FROM:<alice@localhost>"), 530, "5.7.0")
            expect(c.cmd("RCPT TO:<postmaster@localhost>"), 503, "5.5.1")
            expect(c.cmd("DATA"), 503, "5.5.1")
            assert c.cmd("QUIT")[0] == 221
        finally:
            c.close()
    assert_serves(server.submission_port)


def _pipelined_transaction(c: Raw, sender: str, srv, user: str) -> None:
    token = secrets.token_hex(8)
    c.send(
        f"MAIL FROM:<{sender}>\r\nRCPT TO:<postmaster@localhost>\r\nRCPT TO:<{user}@localhost>\r\nDATA\r\n".encode()
    )
    expect(c.reply(), 250, "2.1.0")
    expect(c.reply(), 250, "2.1.5")
    expect(c.reply(), 250, "2.1.5")
    assert c.reply()[0] == 354
    c.send(f"Subject: pipelined {token}\r\n\r\nhello\r\n.\r\nQUIT\r\n".encode())
    code, text = c.reply()
    assert code == 250 and "queued as" in text, text
    assert c.reply()[0] == 221
    assert c.rest() == []
    c.close()
    assert sum(token.encode() in m for m in srv.messages(user)) == 1
    assert sum(token.encode() in m for m in srv.messages("postmaster")) == 1


def test_legal_pipelining_works(server):
    _pipelined_transaction(session(server.smtp_port), "sender@example.org", server, "alice")


def test_legal_pipelining_works_on_submission(make_server):
    srv = make_server()
    c = session(srv.submission_port, tls=True)
    expect(c.cmd(auth_plain("alice@localhost", "alice-secret")), 235, "2.7.0")
    _pipelined_transaction(c, "alice@localhost", srv, "alice")


def test_client_that_half_closes_still_gets_every_reply(server):
    """A client may send its last command and shut down its sending side (SHUT_WR): the server
    still finishes the work, answers everything and only then closes."""
    token = secrets.token_hex(8)
    c = session(server.smtp_port)
    c.send(b"MAIL FROM:<sender@example.org>\r\n")
    expect(c.reply(), 250, "2.1.0")
    c.send(b"RCPT TO:<alice@localhost>\r\n")
    expect(c.reply(), 250, "2.1.5")
    c.send(b"DATA\r\n")
    assert c.reply()[0] == 354
    c.send(f"Subject: {token}\r\n\r\nbody\r\n.\r\nQUIT\r\n".encode())
    c.sock.shutdown(socket.SHUT_WR)
    try:
        replies = c.rest()
    finally:
        c.close()
    assert [r[0] for r in replies] == [250, 221], replies
    assert sum(token.encode() in m for m in server.messages("alice")) == 1
