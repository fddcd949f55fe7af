"""A client's own X-Relayguard-DNSBL fields do not reach the mailbox (issue 6), on a running server.

Needs the HeaderFilter hook in mta/server.py (DataChunk handling); until it is in, these are
expected failures (strict: when the hook lands they pass and the marker must go).
"""

from __future__ import annotations

import smtplib
import uuid

from dnsbl_fixtures import FakeList, ListServer

SCORED = "127.0.0.6"
FORGED = ("X-Relayguard-DNSBL: score=0 threshold=2\r\n"
          "x-relayguard-dnsbl : score=0\r\n"
          "\tthreshold=2 folded\r\n")



def send_forged(port: int, source: str, token: str) -> None:
    body = f"Subject: {token}\r\n{FORGED}To: postmaster@localhost\r\n\r\nX-Relayguard-DNSBL: body line, kept\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as smtp:
        smtp.sendmail("someone@remote.test", ["postmaster@localhost"], body)


def stored(server, token: str) -> bytes:
    return next(m for m in server.messages("postmaster") if token.encode() in m)


def test_forged_header_removed_without_the_gate(server):
    token = uuid.uuid4().hex
    send_forged(server.smtp_port, "127.0.0.1", token)
    msg = stored(server, token)
    head, _, body = msg.partition(b"\r\n\r\n")
    assert b"relayguard-dnsbl" not in head.lower() and b"folded" not in head
    assert b"To: postmaster@localhost" in head
    assert body == b"X-Relayguard-DNSBL: body line, kept\r\n"


def test_only_our_score_header_is_left(make_server):
    lists = ListServer(FakeList("score.test", {SCORED: ["127.0.0.4"]}))
    try:
        srv = make_server(tables="\n".join(["[reject]", 'dnsbl_sites = ["score.test"]',
                                            f'dns_servers = ["{lists.address}"]', "threshold = 2", "timeout = 0.5"]))
        token = uuid.uuid4().hex
        send_forged(srv.smtp_port, SCORED, token)
        head = stored(srv, token).partition(b"\r\n\r\n")[0]
    finally:
        lists.close()
    assert head.lower().count(b"x-relayguard-dnsbl") == 1
    assert b"X-Relayguard-DNSBL: score=1 threshold=2 matches=score.test=127.0.0.4*1\r\n" in head
