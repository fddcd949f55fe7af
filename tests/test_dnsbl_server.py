"""relayguard's DNSBL DNS server on loopback: UDP, TCP, AXFR and NOTIFY, checked with dnspython and dig."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time

import dns.message
import dns.query
import dns.rcode
import dns.zone
import pytest

from relayguard.config import DNSBLSettings
from relayguard.dnsbl.dnsserver import DNSServer
from relayguard.dnsbl.zone import Listing, Zone

ZONE = "bl.relayguard.test"


def free_udp_tcp_port() -> int:
    for _ in range(50):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class Running:
    """A DNSServer on its own event loop in a thread, as the tests' peer."""

    def __init__(self, **settings) -> None:
        self.port = free_udp_tcp_port()
        self.settings = DNSBLSettings(zone=ZONE, dns_listen=f"127.0.0.1:{self.port}", **settings)
        self.zone = Zone(ZONE)
        self.zone.add("192.0.2.7")
        self.zone.add("198.51.100.0/24", Listing("127.0.0.3", "range $"))
        self.server = DNSServer(self.settings, self.zone)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    def call(self, fn, *args):
        """Run a zone change on the server's loop, like the store sync does."""
        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (fn(*args), done.set()))
        assert done.wait(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def running():
    r = Running(axfr_allow=["127.0.0.0/8"])
    yield r
    r.close()


def udp(r: Running, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=r.port, timeout=5)


def test_udp_and_tcp_answers(running):
    assert [x.to_text() for x in udp(running, f"7.2.0.192.{ZONE}").answer[0]] == ["127.0.0.2"]
    assert udp(running, f"8.2.0.192.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    tcp = dns.query.tcp(dns.message.make_query(f"9.100.51.198.{ZONE}", "TXT"), "127.0.0.1", port=running.port, timeout=5)
    assert [x.to_text() for x in tcp.answer[0]] == ['"range 198.51.100.9"']


def test_a_change_is_served_at_once(running):
    assert udp(running, f"5.0.0.10.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    running.call(running.zone.add, "10.0.0.5")
    assert udp(running, f"5.0.0.10.{ZONE}").answer
    running.call(running.zone.remove, "10.0.0.5")
    assert udp(running, f"5.0.0.10.{ZONE}").rcode() == dns.rcode.NXDOMAIN


def test_garbage_does_not_stop_the_server(running):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00", b"\xff" * 40, b"\x12\x34" + b"\x00" * 10):
            s.sendto(junk, ("127.0.0.1", running.port))
    with socket.create_connection(("127.0.0.1", running.port)) as s:
        s.sendall(b"\x00\x05hello")
    assert udp(running, f"2.0.0.127.{ZONE}").answer


def test_dig_sees_an_authoritative_answer(running):
    out = subprocess.run(["dig", "-p", str(running.port), "@127.0.0.1", f"7.2.0.192.{ZONE}", "TXT", "+norec"],
                         capture_output=True, text=True, timeout=30).stdout
    assert "flags: qr aa" in out and "status: NOERROR" in out and "Open relay" in out


def test_axfr_transfers_the_whole_zone(running):
    zone = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", ZONE, port=running.port, timeout=10))
    names = {n.to_text() for n in zone.nodes}
    assert {"7.2.0.192", "*.100.51.198", "2.0.0.127", "@"} <= names
    assert zone.get_rdataset("7.2.0.192", "A")[0].to_text() == "127.0.0.2"
    assert zone.get_rdataset("@", "SOA")[0].serial == running.server.responder.serial


def test_axfr_refused_outside_the_allow_list():
    r = Running()  # nobody may transfer
    try:
        with pytest.raises(dns.xfr.TransferError):
            dns.zone.from_xfr(dns.query.xfr("127.0.0.1", ZONE, port=r.port, timeout=10))
    finally:
        r.close()


def test_notify_is_sent_to_secondaries_on_change():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as secondary:
        secondary.bind(("127.0.0.1", 0))
        secondary.settimeout(5)
        r = Running(notify=[f"127.0.0.1:{secondary.getsockname()[1]}"])
        try:
            r.call(r.zone.add, "10.9.9.9")
            asyncio.run_coroutine_threadsafe(r.server.notify_if_changed(), r.loop).result(5)
            msg = dns.message.from_wire(secondary.recv(512))
            assert msg.opcode() == dns.opcode.NOTIFY and msg.question[0].name.to_text() == ZONE + "."
        finally:
            r.close()


def test_serve_answers_what_the_store_lists(make_server):
    """`relayguard dnsbl add` against the server's store is served over DNS within a second or so."""
    srv = make_server()
    text = (srv.root / "relayguard.toml").read_text()
    port = int(text.split('dns_listen = "127.0.0.1:')[1].split('"')[0])
    query = dns.message.make_query(f"9.8.51.198.{ZONE}", "A")
    assert dns.query.udp(query, "127.0.0.1", port=port, timeout=5).rcode() == dns.rcode.NXDOMAIN
    r = subprocess.run([sys.executable, "-m", "relayguard", "dnsbl", "add", "198.51.8.9", "--reason", "test listing",
                        "-c", "relayguard.toml"], cwd=srv.root, capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    deadline = time.monotonic() + 10
    while not dns.query.udp(query, "127.0.0.1", port=port, timeout=5).answer:
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.2)
