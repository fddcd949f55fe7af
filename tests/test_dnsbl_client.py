"""The checker's DNS stub client: wire format (pure, against dnspython) and its asyncio edge."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayguard.dnsbl import client as c

QNAME = "4.3.2.1.bl.test"


def reply_for(query: bytes, *, answers=(), rcode=0, soa_ttl=None, tc=False, qname=None, owner=None) -> bytes:
    """dnspython's answer to `query` (or to the same query for `qname`), records owned by `owner`."""
    q = dns.message.from_wire(query)
    if qname is not None:
        q = dns.message.make_query(qname, q.question[0].rdtype, id=q.id)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    name = q.question[0].name if owner is None else dns.name.from_text(owner)
    for rdtype, ttl, values in answers:
        r.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, *values))
    if soa_ttl is not None:
        r.authority.append(dns.rrset.from_text("bl.test.", soa_ttl, "IN", "SOA", "ns.bl.test. h.bl.test. 1 2 3 4 30"))
    if tc:
        r.flags |= dns.flags.TC
    return r.to_wire()


def test_query_is_what_dnspython_reads() -> None:
    wire = c.build_query(0x1234, QNAME, c.TXT)
    m = dns.message.from_wire(wire)
    assert m.id == 0x1234 and m.flags & dns.flags.RD
    assert str(m.question[0].name) == QNAME + "." and m.question[0].rdtype == c.TXT


def test_answers_are_read_like_dnspython_reads_them() -> None:
    q = c.build_query(7, QNAME, c.A)
    a = c.parse_response(reply_for(q, answers=[("A", 300, ["127.0.0.2", "127.0.0.4"])]), q, c.A)
    assert (a.rcode, sorted(a.records), a.ttl) == (0, ["127.0.0.2", "127.0.0.4"], 300.0)
    q = c.build_query(8, QNAME, c.TXT)
    a = c.parse_response(reply_for(q, answers=[("TXT", 60, ['"part one, " "part two"', '"second record"'])]), q, c.TXT)
    assert sorted(a.records) == ["part one, part two", "second record"]
    q = c.build_query(9, QNAME, c.A)
    nx = c.parse_response(reply_for(q, rcode=dns.rcode.NXDOMAIN, soa_ttl=900), q, c.A)
    assert (nx.rcode, nx.records, nx.ttl) == (c.NXDOMAIN, [], 30.0)  # min(SOA TTL, SOA minimum)
    # a CNAME in front of the A record (answers via a resolver)
    q = c.build_query(10, QNAME, c.A)
    r = dns.message.make_response(dns.message.from_wire(q))
    r.answer.append(dns.rrset.from_text(QNAME + ".", 60, "IN", "CNAME", "x.other.test."))
    r.answer.append(dns.rrset.from_text("x.other.test.", 40, "IN", "A", "127.0.0.3"))
    assert c.parse_response(r.to_wire(), q, c.A).records == ["127.0.0.3"]
    # records of names the question does not lead to do not count
    stray = reply_for(q, answers=[("A", 60, ["127.0.0.2"])], owner="victim.bl.test.")
    assert c.parse_response(stray, q, c.A).records == []


def test_foreign_datagrams_are_refused() -> None:
    q = c.build_query(11, QNAME, c.A)
    good = reply_for(q, answers=[("A", 60, ["127.0.0.2"])])
    with pytest.raises(c.WireError, match="wrong ID"):
        c.parse_response(good[:1] + bytes([good[1] ^ 1]) + good[2:], q, c.A)
    with pytest.raises(c.WireError, match="question"):
        c.parse_response(reply_for(q, qname="4.3.2.1.other.test"), q, c.A)
    with pytest.raises(c.WireError, match="not a response"):
        c.parse_response(q, q, c.A)
    upper = reply_for(c.build_query(11, QNAME.upper(), c.A))  # 0x20 case changes are the same question
    assert c.parse_response(upper, q, c.A).rcode == 0


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_wire_error(data: bytes) -> None:
    q = c.build_query(int.from_bytes(data[:2].ljust(2, b"\0"), "big"), QNAME, c.A)
    try:
        c.parse_response(data, q, c.A)
    except c.WireError:
        pass


@given(st.binary(max_size=200), st.integers(12, 80))
def test_mangled_real_answers_never_crash(tail: bytes, cut: int) -> None:
    q = c.build_query(5, QNAME, c.TXT)
    good = reply_for(q, answers=[("TXT", 60, ['"reason"'])], soa_ttl=60)
    for data in (good[:cut] + tail, good + tail, good[:cut]):
        try:
            c.parse_response(data, q, c.TXT)
        except c.WireError:
            pass


def test_names_too_long_for_dns_are_refused() -> None:
    with pytest.raises(c.WireError):
        c.build_query(1, "a" * 64 + ".test", c.A)
    with pytest.raises(c.WireError):
        c.build_query(1, ".".join(["a" * 60] * 5), c.A)


def test_nameserver_syntax() -> None:
    assert c.parse_nameservers(["127.0.0.1", "127.0.0.1:5353", "[::1]:53"]) == [("127.0.0.1", 53), ("127.0.0.1", 5353), ("::1", 53)]
    with pytest.raises(ValueError):
        c.parse_nameservers(["ns.example.test:53"])


# Over loopback ---------------------------------------------------------------------------------------


class Tricky:
    """UDP (and TCP) on 127.0.0.1: answers each query with a spoof first (wrong ID, then wrong
    question), then the real answer; TXT answers are truncated over UDP, complete over TCP."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen()
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self.stop = False
        self.threads = [threading.Thread(target=self._udp, daemon=True), threading.Thread(target=self._tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def _answer(self, query: bytes, tcp: bool) -> bytes:
        m = dns.message.from_wire(query)
        if m.question[0].rdtype == c.TXT:
            return reply_for(query, answers=[("TXT", 60, [f'"{n}' + "x" * 200 + '"' for n in range(5)])], tc=not tcp) if tcp else \
                reply_for(query, tc=True)
        return reply_for(query, answers=[("A", 60, ["127.0.0.2"])])

    def _udp(self) -> None:
        while not self.stop:
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                continue
            spoof_id = bytes([data[0] ^ 0xFF, data[1]]) + data[2:]
            self.udp.sendto(reply_for(spoof_id, answers=[("A", 60, ["127.0.0.66"])]), peer)
            self.udp.sendto(reply_for(data, answers=[("A", 60, ["127.0.0.77"])], qname="other.test"), peer)
            self.udp.sendto(self._answer(data, tcp=False), peer)

    def _tcp(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                size = struct.unpack("!H", conn.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += conn.recv(size - len(data))
                out = self._answer(data, tcp=True)
                conn.sendall(struct.pack("!H", len(out)) + out)

    def close(self) -> None:
        self.stop = True
        for t in self.threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


def test_spoofs_are_ignored_and_truncated_txt_comes_over_tcp() -> None:
    server = Tricky()
    try:
        stub = c.StubClient([f"127.0.0.1:{server.port}"], timeout=2)
        a = asyncio.run(stub.query(QNAME, c.A))
        assert a.records == ["127.0.0.2"]
        txt = asyncio.run(stub.query(QNAME, c.TXT))
        assert sorted(txt.records) == [f"{n}" + "x" * 200 for n in range(5)]
    finally:
        server.close()


def test_unreachable_server_fails_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stub = c.StubClient([f"127.0.0.1:{port}"], timeout=3)
    start = time.monotonic()
    with pytest.raises(c.NoAnswer, match="refused"):
        asyncio.run(stub.query(QNAME, c.A))
    assert time.monotonic() - start < 1


def test_silence_is_a_timeout_with_retries() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        stub = c.StubClient([f"127.0.0.1:{silent.getsockname()[1]}"], timeout=0.4)
        start = time.monotonic()
        with pytest.raises(c.NoAnswer, match="timeout after 0.4 s"):
            asyncio.run(stub.query(QNAME, c.A))
        assert 0.35 < time.monotonic() - start < 1.0
        silent.settimeout(0.1)
        got = 0
        try:
            while True:
                silent.recvfrom(512)
                got += 1
        except TimeoutError:
            pass
        assert got >= 2  # sent again after half the timeout
