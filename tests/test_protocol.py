"""The sans-I/O SMTP core, driven directly: no sockets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.smtp import protocol as p
from relayguard.smtp.replies import OK, Reply


def drive(data: bytes | list[bytes], limits: p.Limits = p.Limits(), **kw) -> tuple[list[p.Event], bytes, p.ServerConnection]:
    """Feed data (in the given pieces), accept every decision, return events and all output."""
    conn = p.ServerConnection("mx.test", limits, **kw)
    conn.greeting()
    events: list[p.Event] = []
    out = conn.data_to_send()
    for piece in [data] if isinstance(data, bytes) else data:
        conn.receive_data(piece)
        while (ev := conn.next_event()) is not None:
            events.append(ev)
            if isinstance(ev, (p.MailFrom, p.RcptTo)):
                conn.reply(Reply(250, "2.1.0", "Ok"))
            elif isinstance(ev, p.DataEnd):
                conn.reply(Reply(250, "2.0.0", "Ok: queued"))
            elif isinstance(ev, p.AuthRequest):
                conn.authenticated(ev.username) if ev.password == "pw" else conn.reply(Reply(535, "5.7.8", "no"))
            elif isinstance(ev, p.StartTLS):
                conn.tls_started()
        out += conn.data_to_send()
    return events, out, conn


def body(events: list[p.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, p.DataChunk))


def codes(out: bytes) -> list[str]:
    return [line[:3].decode() for line in out.split(b"\r\n") if line[3:4] == b" "]


# A client waits for the replies to EHLO and DATA (RFC 2920), so those end a piece of input.
SESSION = [b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\nRCPT TO:<postmaster@localhost>\r\nDATA\r\n"]


def test_greeting_and_ehlo_features():
    _, out, _ = drive(b"EHLO client\r\n", tls_available=True)
    assert out.startswith(b"220 mx.test ESMTP")
    for feature in (b"PIPELINING", b"SIZE 52428800", b"STARTTLS", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SMTPUTF8"):
        assert feature in out
    assert b"AUTH" not in out  # never offered in clear


def test_auth_offered_only_after_tls():
    _, out, conn = drive([b"EHLO c\r\n", b"STARTTLS\r\n", b"EHLO c\r\n"], tls_available=True, auth_available=True)
    assert out.count(b"AUTH PLAIN LOGIN") == 1 and conn.tls_active


def test_full_transaction_with_dot_unstuffing():
    events, out, _ = drive(SESSION + [b"Subject: x\r\n\r\n..leading dot\r\n..\r\n.\r\nQUIT\r\n"])
    assert body(events) == b"Subject: x\r\n\r\n.leading dot\r\n.\r\n"
    assert codes(out) == ["220", "250", "250", "250", "354", "250", "221"]
    assert isinstance(events[-1], p.Closing)


def test_every_reply_but_greeting_ehlo_and_354_has_an_enhanced_code():
    _, out, _ = drive(SESSION + [b"x\r\n.\r\nRSET\r\nNOOP\r\n", b"VRFY x\r\nFOO\r\nQUIT\r\n"])
    for line in out.decode().split("\r\n")[1:]:
        if line and line[3] == " " and line[:3] not in ("354",) and not line.startswith("250 SMTPUTF8"):
            assert line[4:5].isdigit() and line[5] == ".", line


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_split_of_the_input_gives_the_same_result(data):
    stream = b"a\r\n..b\r\n" + b"c" * 70000 + b"\r\n.\r\nQUIT\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[i:j] for i, j in zip([0] + cuts, cuts + [len(stream)])]
    events, out, _ = drive(SESSION + pieces)
    whole_events, whole_out, _ = drive(SESSION + [stream])
    assert body(events) == body(whole_events) == b"a\r\n.b\r\n" + b"c" * 70000 + b"\r\n"
    assert out == whole_out


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\n", b"\r\n.\r\r\n"]


def test_smuggling_sequences_never_end_data_or_start_a_second_message():
    for seq in SMUGGLING + [b"\r\n\x00.\r\n", b"\r\n.\x00\r\n"]:
        smuggled = b"MAIL FROM:<evil@x>\r\nRCPT TO:<postmaster@localhost>\r\nDATA\r\nevil\r\n.\r\n"
        events, out, _ = drive(SESSION + [b"hello" + seq + smuggled + b"QUIT\r\n"])
        assert sum(isinstance(e, p.MailFrom) for e in events) == 1, seq
        ends = [e for e in events if isinstance(e, (p.DataEnd, p.DataDiscarded))]
        assert len(ends) == 1, seq
        if b"\r" in seq.replace(b"\r\n", b"") or b"\n" in seq.replace(b"\r\n", b""):
            assert isinstance(ends[0], p.DataDiscarded) and b"550 5.5.2" in out, seq


def test_bare_lf_in_a_command_is_refused_not_executed():
    events, out, _ = drive([b"EHLO c\r\n", b"NOOP\nMAIL FROM:<a@b>\r\n"])
    assert not any(isinstance(e, p.MailFrom) for e in events)
    assert b"550 5.5.2" in out


def test_oversized_message_is_read_to_the_end_then_refused():
    limits = p.Limits(max_message_size=1000)
    events, out, _ = drive(SESSION + [b"x" * 5000 + b"\r\n.\r\nNOOP\r\n"], limits)
    assert any(isinstance(e, p.DataDiscarded) for e in events)
    assert codes(out)[-2:] == ["552", "250"]


def test_size_parameter_over_the_limit():
    _, out, _ = drive([b"EHLO c\r\n", b"MAIL FROM:<a@b.test> SIZE=999999999\r\n"])
    assert b"552 5.3.4" in out


def test_pipelining_after_ehlo_is_a_synchronization_error():
    events, out, conn = drive(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n")
    assert b"554 5.5.0" in out and conn.closed
    assert not any(isinstance(e, p.MailFrom) for e in events)


def test_rfc2920_pipelining_is_allowed():
    events, out, _ = drive([b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nRCPT TO:<y@localhost>\r\nDATA\r\n"])
    assert codes(out) == ["220", "250", "250", "250", "250", "354"]


def test_talking_before_the_greeting():
    conn = p.ServerConnection("mx.test")
    conn.receive_data(b"EHLO c\r\n")
    conn.greeting()
    assert conn.data_to_send().startswith(b"554 5.5.0") and conn.closed


def test_starttls_discards_pipelined_plaintext():
    events, out, conn = drive([b"EHLO c\r\n", b"STARTTLS\r\nMAIL FROM:<a@b.test>\r\n"], tls_available=True)
    assert conn.tls_active
    assert not any(isinstance(e, p.MailFrom) for e in events)
    assert codes(out)[-1] == "220"


def test_auth_plain_and_login():
    import base64

    plain = base64.b64encode(b"\0alice@localhost\0pw").decode()
    _, out, conn = drive([b"EHLO c\r\n", b"STARTTLS\r\n", b"EHLO c\r\n", f"AUTH PLAIN {plain}\r\n".encode()],
                         tls_available=True, auth_available=True)
    assert b"235 2.7.0" in out and conn.identity == "alice@localhost"
    user, pw = base64.b64encode(b"bob@x").decode(), base64.b64encode(b"bad").decode()
    _, out, conn = drive([b"EHLO c\r\n", b"STARTTLS\r\n", b"EHLO c\r\n", b"AUTH LOGIN\r\n", f"{user}\r\n".encode(), f"{pw}\r\n".encode()],
                         tls_available=True, auth_available=True)
    assert b"334 VXNlcm5hbWU6" in out and b"334 UGFzc3dvcmQ6" in out and b"535 5.7.8" in out and conn.identity is None


def test_auth_refused_without_tls_and_garbage_is_handled():
    _, out, _ = drive([b"EHLO c\r\n", b"AUTH PLAIN AGFAYg==\r\n"], auth_available=True, tls_available=True)
    assert b"538 5.7.11" in out
    _, out, _ = drive([b"EHLO c\r\n", b"STARTTLS\r\n", b"EHLO c\r\n", b"AUTH PLAIN !!!\r\n", b"AUTH LOGIN\r\n", b"*\r\n"],
                      tls_available=True, auth_available=True)
    assert b"501 5.5.2" in out and b"501 5.7.0" in out


def test_submission_requires_auth_before_mail():
    _, out, _ = drive([b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n"], require_auth=True)
    assert b"530 5.7.0" in out


def test_command_sequence_errors():
    _, out, _ = drive([b"MAIL FROM:<a@b.test>\r\n", b"HELO c\r\n", b"RCPT TO:<x@y>\r\n", b"DATA\r\n", b"BOGUS\r\n", b"\r\n"])
    assert codes(out)[1:] == ["503", "250", "503", "503", "502", "500"]


def test_too_many_recipients():
    rcpts = b"".join(b"RCPT TO:<u%d@localhost>\r\n" % i for i in range(4))
    _, out, conn = drive([b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n" + rcpts], p.Limits(max_recipients=3))
    assert codes(out)[-1] == "452" and len(conn.envelope.rcpts) == 3


def test_long_command_line():
    _, out, conn = drive([b"EHLO c\r\n", b"NOOP " + b"x" * 5000 + b"\r\n", b"RSET\r\n"], p.Limits(max_line_length=1000))
    assert codes(out)[-2:] == ["500", "250"] and not conn.closed


def test_error_limits_tarpit_then_disconnect():
    limits = p.Limits(soft_error_limit=2, hard_error_limit=5, error_sleep=0.5)
    conn = p.ServerConnection("mx.test", limits)
    conn.greeting()
    conn.receive_data(b"BAD\r\n" * 3)
    while conn.next_event():
        pass
    assert conn.take_delay() == 0.5
    conn.receive_data(b"BAD\r\n" * 5)
    while conn.next_event():
        pass
    assert conn.closed and b"421 4.7.0" in conn.data_to_send()


def test_driver_refusal_of_rcpt_is_not_recorded():
    conn = p.ServerConnection("mx.test")
    conn.greeting()
    conn.receive_data(b"HELO c\r\n")
    conn.next_event()
    conn.receive_data(b"MAIL FROM:<>\r\n")
    assert isinstance(conn.next_event(), p.MailFrom)
    conn.reply(OK)
    conn.receive_data(b"RCPT TO:<x@elsewhere.test>\r\n")
    ev = conn.next_event()
    assert isinstance(ev, p.RcptTo) and ev.text == "x@elsewhere.test"
    conn.reply(Reply(554, "5.7.1", "<x@elsewhere.test>: Relay access denied"))
    assert conn.envelope.rcpts == [] and conn.envelope.mail_from is not None and conn.envelope.mail_from.is_null


@given(st.integers(200, 599), st.sampled_from(["", "2.0.0", "5.7.1"]), st.text(max_size=40))
def test_a_one_line_reply_encodes_as_a_one_element_multi_line_reply(code, enhanced, text):
    """The one-line fast path writes exactly what the general path writes."""
    assert Reply(code, enhanced, text).encode() == Reply(code, enhanced, (text,)).encode()
