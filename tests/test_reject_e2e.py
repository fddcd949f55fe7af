"""Reject before receiving: a running relayguard asks loopback DNSBLs about its clients.

Clients connect from other loopback addresses (127.0.0.5 etc., `socket.bind` / swaks
`--local-interface`), which the fake lists list or not.
"""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import uuid

import pytest
from conftest import USERS, client_tls

from dnsbl_fixtures import FakeList, ListServer

LISTED, SCORED, TRUSTED_LISTED, CLEAN = "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.1"
REASON = "Open relay: confirmed by test; see http://bl.test/lookup?ip=127.0.0.5"


@pytest.fixture(scope="module")
def lists():
    server = ListServer(
        FakeList("bl.test", {LISTED: ["127.0.0.2"], TRUSTED_LISTED: ["127.0.0.2"]}, txt={LISTED: REASON}),
        FakeList("score.test", {SCORED: ["127.0.0.4"], LISTED: ["127.0.0.4"]}),
        FakeList("dead.test", mode="timeout"),
    )
    yield server
    server.close()


def reject_table(lists: ListServer, *lines: str, sites: str = '["bl.test*2", "score.test"]') -> str:
    return "\n".join(["[reject]", f"dnsbl_sites = {sites}", f'dns_servers = ["{lists.address}"]', "threshold = 2",
                      "timeout = 0.5", *lines])


def session(port: int, source: str) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0))


def rcpt_reply(port: int, source: str, rcpt: str = "postmaster@localhost") -> tuple[int, str]:
    with session(port, source) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("someone@remote.test")
        code, text = smtp.rcpt(rcpt)
        return code, text.decode()


def send(port: int, source: str, token: str) -> None:
    with session(port, source) as smtp:
        smtp.sendmail("someone@remote.test", ["postmaster@localhost"], f"Subject: {token}\r\n\r\nhello\r\n")


def message(server, token: str) -> bytes:
    return next(m for m in server.messages("postmaster") if token.encode() in m)


@pytest.fixture(scope="module")
def rcpt_server(lists, tmp_path_factory):
    from conftest import start_server

    srv = start_server(tmp_path_factory.mktemp("reject"), tables=reject_table(lists) + "\n\n[relay]\n"
                       f'trusted_networks = ["{TRUSTED_LISTED}/32"]\n')
    yield srv
    srv.stop()


def test_listed_client_is_refused_at_rcpt_with_postfix_text(rcpt_server) -> None:
    code, text = rcpt_reply(rcpt_server.smtp_port, LISTED)
    assert code == 554
    assert text == f"5.7.1 Service unavailable; Client host [{LISTED}] blocked using bl.test; {REASON}"
    log = rcpt_server.log()
    assert f"event=dnsbl client={LISTED} at=rcpt verdict=listed score=3 threshold=2 action=reject " \
           'matches="bl.test=127.0.0.2*2,score.test=127.0.0.4*1"' in log
    assert f"client={LISTED} rcpt=postmaster@localhost decision=reject reason=dnsbl reply=554" in log


def test_swaks_from_a_listed_address_is_refused(rcpt_server) -> None:
    assert shutil.which("swaks"), "swaks is required (apt-get install swaks; .ci/run installs it)"
    r = subprocess.run(["swaks", "--timeout", "10", "--server", f"127.0.0.1:{rcpt_server.smtp_port}",
                        "--local-interface", LISTED, "--to", "postmaster@localhost", "--from", "a@remote.test",
                        "--quit-after", "RCPT"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 24, r.stdout
    assert f"554 5.7.1 Service unavailable; Client host [{LISTED}] blocked using bl.test" in r.stdout


def test_scored_client_is_accepted_with_a_score_header(rcpt_server) -> None:
    token = uuid.uuid4().hex
    send(rcpt_server.smtp_port, SCORED, token)
    msg = message(rcpt_server, token)
    assert b"X-Relayguard-DNSBL: score=1 threshold=2 matches=score.test=127.0.0.4*1\r\n" in msg
    assert msg.startswith(b"Received: from ")


def test_clean_client_gets_no_header(rcpt_server) -> None:
    token = uuid.uuid4().hex
    send(rcpt_server.smtp_port, CLEAN, token)
    assert b"X-Relayguard-DNSBL" not in message(rcpt_server, token)


def test_trusted_clients_are_never_checked(rcpt_server, lists) -> None:
    before = lists.count("bl.test")
    code, _ = rcpt_reply(rcpt_server.smtp_port, TRUSTED_LISTED)
    assert code == 250
    assert lists.count("bl.test") == before


def test_authenticated_clients_are_never_checked(rcpt_server) -> None:
    token = uuid.uuid4().hex
    with session(rcpt_server.submission_port, LISTED) as smtp:
        smtp.starttls(context=client_tls())
        smtp.login("alice@localhost", USERS["alice@localhost"])
        smtp.sendmail("alice@localhost", ["postmaster@localhost"], f"Subject: {token}\r\n\r\nhi\r\n")
    assert b"X-Relayguard-DNSBL" not in message(rcpt_server, token)
    assert f"event=dnsbl client={LISTED} at=rcpt verdict=listed" in rcpt_server.log()  # only from the port-25 tests


def test_relay_denial_comes_first_and_costs_no_lookup(rcpt_server) -> None:
    code, text = rcpt_reply(rcpt_server.smtp_port, "127.0.0.9", "victim@remote.test")
    assert code == 554 and "Relay access denied" in text


def test_one_lookup_per_session_and_cached_across_sessions(rcpt_server, lists) -> None:
    with session(rcpt_server.smtp_port, "127.0.0.10") as smtp:
        smtp.ehlo("x")
        smtp.mail("a@remote.test")
        before = lists.count("10.0.0.127.bl.test")
        for _ in range(3):
            assert smtp.rcpt("postmaster@localhost")[0] == 250
        after = lists.count("10.0.0.127.bl.test")
    assert after - before <= 1
    rcpt_reply(rcpt_server.smtp_port, "127.0.0.10")
    assert lists.count("10.0.0.127.bl.test") == after  # the TTL cache answered


def test_lists_are_probed_at_start(rcpt_server, lists) -> None:
    assert lists.count("2.0.0.127.bl.test") >= 1 and lists.count("1.0.0.127.score.test") >= 1


# At connection (postscreen-style) ----------------------------------------------------------------


def test_connect_mode_refuses_before_the_greeting(make_server, lists) -> None:
    srv = make_server(tables=reject_table(lists, 'check_at = "connect"'))
    with socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=10, source_address=(LISTED, 0)) as s:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data == f"554 5.7.1 Service unavailable; Client host [{LISTED}] blocked using bl.test; {REASON}\r\n".encode()
        assert s.recv(4096) == b""  # and closed
    with session(srv.smtp_port, CLEAN) as smtp:  # unlisted: greeted as usual
        assert smtp.noop()[0] == 250
    token = uuid.uuid4().hex
    send(srv.smtp_port, SCORED, token)  # scored at connection: the header still comes
    assert b"X-Relayguard-DNSBL: score=1 threshold=2" in message(srv, token)
    with session(srv.submission_port, LISTED) as smtp:  # submission is never checked at connection
        assert smtp.noop()[0] == 250
    assert f"event=dnsbl client={LISTED} at=connect verdict=listed" in srv.log()


# Unknown: accept or defer ----------------------------------------------------------------------------


def test_unknown_is_accepted_with_a_header_by_default(make_server, lists) -> None:
    srv = make_server(tables=reject_table(lists, sites='["bl.test", "dead.test*2"]'))
    token = uuid.uuid4().hex
    send(srv.smtp_port, "127.0.0.11", token)  # clean on bl.test, dead.test's 2 could have made it 2
    assert b"X-Relayguard-DNSBL: score=0 threshold=2 unknown=dead.test" in message(srv, token)


def test_unknown_can_defer(make_server, lists) -> None:
    srv = make_server(tables=reject_table(lists, 'on_unknown = "defer"', sites='["bl.test", "dead.test*2"]'))
    code, text = rcpt_reply(srv.smtp_port, "127.0.0.12")
    assert code == 450
    assert text == "4.7.1 Service unavailable; Client host [127.0.0.12] not checked: no answer from dead.test; try again later"
    code, _ = rcpt_reply(srv.smtp_port, LISTED)  # listed on bl.test (1), dead.test's 2 would decide
    assert code == 450


# relayguard's own list, in the same process ----------------------------------------------------------


def test_own_zone_is_answered_in_process(make_server) -> None:
    # No DNS server is reachable (port 9); the zone relayguard serves lists the RFC 5782 test point 127.0.0.2.
    srv = make_server(tables='[reject]\ndnsbl_sites = ["bl.relayguard.test"]\ndns_servers = ["127.0.0.1:9"]\ntimeout = 0.5')
    code, text = rcpt_reply(srv.smtp_port, "127.0.0.2")
    assert code == 554
    assert text.startswith("5.7.1 Service unavailable; Client host [127.0.0.2] blocked using bl.relayguard.test; ")
    assert rcpt_reply(srv.smtp_port, "127.0.0.3")[0] == 250
