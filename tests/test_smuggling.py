"""SMTP smuggling (REFERENCES.md section 3): only <CR><LF>.<CR><LF> ends DATA, no second message.

Every probe runs on one raw socket against a dedicated server, so the messages delivered to
postmaster@localhost can be counted exactly.
"""

from __future__ import annotations

import secrets

import pytest
from raw_smtp import Raw

HELO = b"client.example"

# name -> (bytes, contains a bare CR or LF)
SEQUENCES = {
    "LF.LF": (b"\n.\n", True),
    "LF.CRLF": (b"\n.\r\n", True),
    "CR.CR": (b"\r.\r", True),
    "CRLF.CR": (b"\r\n.\r", True),
    "CR.LF": (b"\r.\n", True),
    "CRLF-NUL.CRLF": (b"\r\n\x00.\r\n", False),
    "CRLF.NUL-CRLF": (b"\r\n.\x00\r\n", False),
    "CRLF.CRCRLF": (b"\r\n.\r\r\n", True),
}


def strip_received(message: bytes) -> bytes:
    """The message as the client sent it: without the Received field the server prepends."""
    assert message.startswith(b"Received: "), message
    lines = message.split(b"\r\n")
    n = 1
    while n < len(lines) and lines[n][:1] in (b"\t", b" "):
        n += 1
    return b"\r\n".join(lines[n:])


def open_transaction(port: int) -> Raw:
    c = Raw(port)
    assert c.reply()[0] == 220
    c.send(b"EHLO " + HELO + b"\r\n")
    assert c.reply()[0] == 250
    c.send(b"MAIL FROM:<sender@example.org>\r\n")
    assert c.reply()[0] == 250
    c.send(b"RCPT TO:<postmaster@localhost>\r\n")
    assert c.reply()[0] == 250
    c.send(b"DATA\r\n")
    assert c.reply()[0] == 354
    return c


def smuggle_payload(seq: bytes, first: bytes, token: bytes, self_terminated: bool) -> bytes:
    """First body + sequence + a whole smuggled transaction, then the real end of data.

    classic (SEC Consult): the smuggled message ends at the real <CR><LF>.<CR><LF>.
    self-terminated: the smuggled message ends with the same sequence, then the real end follows.
    """
    smuggled = (
        b"MAIL FROM:<spoof@x>\r\nRCPT TO:<postmaster@localhost>\r\nDATA\r\n"
        b"From: <spoof@x>\r\nTo: <postmaster@localhost>\r\nSubject: smuggled " + token + b"\r\n\r\n"
        b"smuggled body " + token
    )
    head = (
        b"From: <sender@example.org>\r\nTo: <postmaster@localhost>\r\nSubject: first " + first + b"\r\n\r\n"
        b"first body " + first
    )
    if self_terminated:
        return head + seq + smuggled + seq + b"\r\n.\r\n"
    return head + seq + smuggled + b"\r\n.\r\n"


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_smuggling_sequence_never_ends_data(make_server, name):
    seq, bare = SEQUENCES[name]
    srv = make_server()
    delivered = 0
    for self_terminated in (False, True):
        first = b"FIRST" + secrets.token_hex(8).encode()
        token = b"SMUGGLED" + secrets.token_hex(8).encode()
        c = open_transaction(srv.smtp_port)
        try:
            c.send(smuggle_payload(seq, first, token, self_terminated))
            code, text = c.reply()
            if bare:
                assert (code, text[:9]) == (550, "550 5.5.2"), text
            else:
                assert code == 250 and "queued as" in text, text
                delivered += 1
            c.send(b"QUIT\r\n")
            rest = c.rest()
        finally:
            c.close()
        # Exactly one reply for the whole body, then only QUIT's: no smuggled MAIL/RCPT/DATA ran.
        assert [r[0] for r in rest] == [221], rest

        messages = srv.messages("postmaster")
        assert len(messages) == delivered, (name, self_terminated, messages)
        for m in messages:
            # Any smuggled content is only ever text inside the first message, never its own message.
            assert m.count(b"Received: ") == 1, m
            assert strip_received(m).startswith(b"From: <sender@example.org>\r\n"), m
        if not bare:
            latest = [m for m in messages if first in m]
            assert len(latest) == 1 and token in latest[0]
            assert b"MAIL FROM:<spoof@x>\r\nRCPT TO:<postmaster@localhost>\r\nDATA\r\n" in latest[0]
        else:
            assert not any(token in m for m in messages)
        assert list((srv.data / "spool" / "tmp").iterdir()) == []  # discarded data is not kept


def test_dot_stuffed_lines_are_unstuffed(make_server):
    srv = make_server()
    token = secrets.token_hex(8).encode()
    body = (
        b"From: <sender@example.org>\r\nTo: <postmaster@localhost>\r\nSubject: dots " + token + b"\r\n\r\n"
        b"..leading dot\r\n"
        b"..\r\n"
        b"...two dots\r\n"
        b"middle . dot\r\n"
        b"end\r\n"
    )
    c = open_transaction(srv.smtp_port)
    try:
        c.send(body + b".\r\n")
        code, text = c.reply()
        assert code == 250 and "queued as" in text, text
        c.send(b"QUIT\r\n")
        assert [r[0] for r in c.rest()] == [221]
    finally:
        c.close()
    (m,) = srv.messages("postmaster")
    expected = body.replace(b"\r\n..", b"\r\n.")
    assert m.endswith(expected), m
    assert b"\r\n.leading dot\r\n.\r\n..two dots\r\nmiddle . dot\r\nend\r\n" in m
