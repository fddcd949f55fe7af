"""The Postfix policy server: protocol parser (pure), and `relayguard policyd` over TCP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from hypothesis import given
from hypothesis import strategies as st

from dnsbl_fixtures import FakeList, ListServer
from relayguard.config import load_text
from relayguard.policyd import MAX_LINE, PolicyParser, PolicyServer, Request, configured, response

LISTED, SCORED, EVIL = "127.0.0.5", "127.0.0.6", "127.0.0.8"
REASON = "Open relay; see http://bl.test/lookup?ip=127.0.0.5"


def encode(attrs: dict[str, str]) -> bytes:
    return b"".join(f"{k}={v}\n".encode() for k, v in attrs.items()) + b"\n"


def rcpt_request(client: str, **extra: str) -> dict[str, str]:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
            "client_address": client, "client_name": "unknown", "helo_name": "client.test",
            "sender": "a@remote.test", "recipient": "postmaster@example.test", "recipient_count": "0",
            "instance": "123.456.7", "sasl_username": "", "size": "0"}
    base.update(extra)
    return base


# Parser (sans-I/O) ------------------------------------------------------------------------------


def test_parser_splits_requests_and_tolerates_crlf() -> None:
    p = PolicyParser()
    out = p.feed(b"request=smtpd_access_policy\r\nclient_address=192.0.2.1\n\nrequest=smtpd_access_policy\nclient_")
    assert [r.attrs for r in out] == [{"request": "smtpd_access_policy", "client_address": "192.0.2.1"}]
    out = p.feed(b"address=192.0.2.2\nx=a=b\n\n")
    assert out[0].attrs == {"request": "smtpd_access_policy", "client_address": "192.0.2.2", "x": "a=b"} and not out[0].error


@pytest.mark.parametrize("data, error", [
    (b"\n", "empty request"),
    (b"garbage line\n\n", "not a name=value line"),
    (b"=value\n\n", "not a name=value line"),
    (b"request=smtpd_access_policy\n" + b"x" * (MAX_LINE + 10) + b"\n\n", "line longer than"),
    (b"request=smtpd_access_policy\nname=" + b"v" * (3 * MAX_LINE), "line longer than"),
    (b"".join(f"a{i}=1\n".encode() for i in range(150)) + b"\n", "more than 100 attributes"),
    (b"".join(f"a{i % 90}={'v' * 4000}\n".encode() for i in range(20)) + b"\n", "request larger than"),
])
def test_parser_flags_malformed_requests_and_stays_in_step(data: bytes, error: str) -> None:
    p = PolicyParser()
    out = p.feed(data) or p.feed(b"\n\n")  # an over-long last line ends with its own newline
    assert out and error in out[0].error
    nxt = p.feed(encode({"request": "smtpd_access_policy", "client_address": "192.0.2.1"}))
    assert len(nxt) == 1 and not nxt[0].error and nxt[0].attrs["client_address"] == "192.0.2.1"


attr_names = st.from_regex(r"[a-z_]{1,20}", fullmatch=True)
attr_values = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)
requests_st = st.lists(st.dictionaries(attr_names, attr_values, min_size=1, max_size=8), min_size=1, max_size=5)


@given(requests_st, st.lists(st.integers(1, 50), max_size=20))
def test_any_split_of_valid_requests_parses_the_same(reqs, cuts) -> None:
    data = b"".join(encode(r) for r in reqs)
    p, out, i = PolicyParser(), [], 0
    for n in cuts + [len(data)]:
        out += p.feed(data[i:i + n])
        i += n
    out += p.feed(data[i:])
    assert [r.attrs for r in out] == reqs and not any(r.error for r in out)


@given(st.lists(st.binary(max_size=300), max_size=30))
def test_arbitrary_bytes_never_crash_and_memory_stays_bounded(chunks) -> None:
    p = PolicyParser()
    for c in chunks:
        for r in p.feed(c):
            assert isinstance(r, Request)
        assert len(p._buf) <= MAX_LINE + 300


def test_response_is_one_line_whatever_the_text() -> None:
    assert response("REJECT bad\r\n\r\naction=OK") == b"action=REJECT bad????action=OK\n\n"


def test_serve_runs_policyd_only_when_configured() -> None:
    assert configured(load_text("", "x"))  # no file at all: every service on the defaults
    assert not configured(load_text("[server]\nhostname = 'a.test'\n", "x"))
    assert configured(load_text("[policyd]\nlisten = '127.0.0.1:10041'\n", "x"))
    assert not configured(load_text("[policyd]\nenabled = false\n", "x"))


# Over TCP: `relayguard policyd` ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lists():
    server = ListServer(
        FakeList("bl.test", {LISTED: ["127.0.0.2"], EVIL: ["127.0.0.2"]},
                 txt={LISTED: REASON, EVIL: "evil\r\n\r\naction=OK\n"}),
        FakeList("score.test", {SCORED: ["127.0.0.3"]}),
        FakeList("dead.test", mode="timeout"),
    )
    yield server
    server.close()


def write_config(path: Path, lists: ListServer, port: int, extra: str = "") -> Path:
    path.write_text(f"""
[server]
log_level = "debug"

[relay]
trusted_networks = ["10.0.0.0/8"]

[reject]
dnsbl_sites = ["bl.test*2", "score.test"]
threshold = 2
dns_servers = ["{lists.address}"]
timeout = 0.5
{extra}

[policyd]
listen = "127.0.0.1:{port}"
""")
    return path


def wait_port(port: int, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited: {log.read_text() if log else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def policyd(lists, tmp_path_factory):
    root = tmp_path_factory.mktemp("policyd")
    port = free_port()
    cfg = write_config(root / "relayguard.toml", lists, port)
    log = root / "policyd.log"
    proc = subprocess.Popen([sys.executable, "-m", "relayguard", "policyd", "-c", str(cfg)], cwd=root,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wait_port(port, proc, log)
    yield port, log
    proc.terminate()
    proc.wait(10)


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> str:
        while b"\n\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed; had {self.buf!r}")
            self.buf += chunk
        one, _, self.buf = self.buf.partition(b"\n\n")
        assert one.startswith(b"action=") and b"\n" not in one, one
        return one.decode()[len("action="):]

    def ask(self, attrs: dict[str, str]) -> str:
        self.send(encode(attrs))
        return self.answer()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(policyd):
    c = Client(policyd[0])
    yield c
    c.close()


def test_listed_client_is_rejected_with_postfix_text(client) -> None:
    assert client.ask(rcpt_request(LISTED)) == \
        f"REJECT Service unavailable; Client host [{LISTED}] blocked using bl.test; {REASON}"


def test_clean_client_gets_dunno(client) -> None:
    assert client.ask(rcpt_request("127.0.0.1")) == "DUNNO"


def test_scored_client_gets_one_prepended_header_per_message(client) -> None:
    header = "PREPEND X-Relayguard-DNSBL: score=1 threshold=2 matches=score.test=127.0.0.3*1"
    assert client.ask(rcpt_request(SCORED)) == header
    assert client.ask(rcpt_request(SCORED, recipient_count="1")) == "DUNNO"  # 2nd recipient: already added
    assert client.ask(rcpt_request(SCORED, protocol_state="END-OF-MESSAGE", recipient_count="2")) == header
    assert client.ask(rcpt_request(SCORED, protocol_state="CONNECT")) == "DUNNO"


def test_authenticated_and_trusted_clients_are_never_checked(client, lists) -> None:
    before = lists.count("bl.test")
    assert client.ask(rcpt_request(LISTED, sasl_username="alice")) == "DUNNO"
    assert client.ask(rcpt_request("10.1.2.3")) == "DUNNO"
    assert lists.count("bl.test") == before


def test_many_requests_per_connection_and_pipelined(client) -> None:
    for i in range(30):
        assert client.ask(rcpt_request(f"127.0.1.{i}")) == "DUNNO"
    client.send(encode(rcpt_request(LISTED)) + encode(rcpt_request("127.0.0.1")) + encode(rcpt_request(SCORED)))
    assert client.answer().startswith("REJECT ")
    assert client.answer() == "DUNNO"
    assert client.answer().startswith("PREPEND ")


def test_byte_by_byte_request(client) -> None:
    for b in encode(rcpt_request(LISTED)):
        client.send(bytes([b]))
    assert client.answer().startswith("REJECT ")


@pytest.mark.parametrize("bad", [
    b"this is not a policy request\n\n",
    b"\n",
    encode({"request": "smtpd_access_policy", "protocol_state": "RCPT"}),  # no client_address
    encode(rcpt_request("not-an-ip")),
    encode({**rcpt_request(LISTED), "request": "something_else"}),
    b"request=smtpd_access_policy\nclient_address=" + b"1" * 20000 + b"\n\n",
    b"\x00\xff\xfe=\x80\n\n",
    b"".join(f"a{i}=1\n".encode() for i in range(500)) + b"\n",
])
def test_malformed_requests_get_dunno_and_the_connection_stays_usable(client, policyd, bad: bytes) -> None:
    client.send(bad)
    assert client.answer() == "DUNNO"
    assert client.ask(rcpt_request(LISTED)).startswith("REJECT ")  # still in step
    time.sleep(0.05)
    assert "event=policyd-malformed" in policyd[1].read_text()


def test_txt_from_dns_cannot_inject_protocol_lines(client) -> None:
    answer = client.ask(rcpt_request(EVIL))
    assert answer.startswith(f"REJECT Service unavailable; Client host [{EVIL}] blocked using bl.test; evil")
    assert client.ask(rcpt_request("127.0.0.1")) == "DUNNO"  # no stray "action=OK" answer queued


def test_many_parallel_connections(policyd) -> None:
    clients = [Client(policyd[0]) for _ in range(20)]
    try:
        for c in clients:
            c.send(encode(rcpt_request(LISTED)))
        assert all(c.answer().startswith("REJECT ") for c in clients)
    finally:
        for c in clients:
            c.close()


def test_unknown_defers_when_told(lists) -> None:
    settings = load_text(f"""
[reject]
dnsbl_sites = ["bl.test", "dead.test"]
dns_servers = ["{lists.address}"]
timeout = 0.3
on_unknown = "defer"
""", "x")
    server = PolicyServer(settings)
    action = asyncio.run(server.decide(Request(rcpt_request("127.0.0.1"))))
    assert action == "DEFER_IF_PERMIT Service unavailable; Client host [127.0.0.1] not checked: no answer from dead.test; try again later"


def test_serve_starts_the_policy_server_when_configured(make_server, lists) -> None:
    port = free_port()
    srv = make_server(tables=f'[reject]\ndnsbl_sites = ["bl.test*2"]\ndns_servers = ["{lists.address}"]\n\n'
                             f'[policyd]\nlisten = "127.0.0.1:{port}"\n')
    wait_port(port)
    c = Client(port)
    try:
        assert c.ask(rcpt_request(LISTED)).startswith("REJECT Service unavailable")
    finally:
        c.close()
    assert f"event=listen service=policyd address=127.0.0.1:{port}" in srv.log()


def test_policyd_command_errors(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "relayguard", "policyd", "--listen", "nonsense"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=30)
    assert r.returncode == 2 and "--listen" in r.stderr
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        r = subprocess.run([sys.executable, "-m", "relayguard", "policyd", "--listen",
                            f"127.0.0.1:{busy.getsockname()[1]}"], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    finally:
        busy.close()
    assert r.returncode == 2 and "cannot start" in r.stderr
