"""The DNSBL zone and its wire answers, checked byte by byte with dnspython (pure, no sockets)."""

from __future__ import annotations

import ipaddress

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.dnsbl.responder import Responder, ZoneInfo
from relayguard.dnsbl.zone import Listing, Zone, query_address

ZONE = "bl.relayguard.test"


def make() -> Responder:
    zone = Zone(ZONE)
    zone.add("192.0.2.7")
    zone.add("198.51.100.0/24", Listing("127.0.0.3", "dial-up range $"))
    zone.add("2001:db8::1")
    return Responder(zone, ZoneInfo(ttl=2100, negative_ttl=900))


def ask(r: Responder, name: str, rdtype: str = "A", *, edns: bool = False, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else None)
    raw = r.answer(q.to_wire(), tcp=tcp)
    assert raw is not None
    resp = dns.message.from_wire(raw)
    assert resp.id == q.id and resp.flags & dns.flags.QR
    return resp


def qname(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text().replace(".in-addr.arpa.", f".{ZONE}").replace(".ip6.arpa.", f".{ZONE}")


def test_listed_ipv4_answers_a_and_txt_with_the_ip_substituted():
    r = make()
    a = ask(r, qname("192.0.2.7"))
    assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
    assert [rr.to_text() for rr in a.answer[0]] == ["127.0.0.2"] and a.answer[0].ttl == 2100
    txt = ask(r, qname("198.51.100.9"), "TXT")
    assert [rr.to_text() for rr in txt.answer[0]] == ['"dial-up range 198.51.100.9"']
    assert [rr.to_text() for rr in ask(r, qname("198.51.100.9")).answer[0]] == ["127.0.0.3"]


def test_not_listed_is_nxdomain_with_soa_for_negative_caching():
    r = make()
    resp = ask(r, qname("192.0.2.8"))
    assert resp.rcode() == dns.rcode.NXDOMAIN and not resp.answer
    [soa] = resp.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 900 and soa.name.to_text() == ZONE + "."
    assert soa[0].minimum == 900 and soa[0].serial == r.serial


def test_rfc5782_test_points():
    r = make()
    assert ask(r, qname("127.0.0.2")).answer and ask(r, qname("127.0.0.1")).rcode() == dns.rcode.NXDOMAIN
    assert ask(r, qname("::ffff:7f00:2")).answer
    assert ask(r, qname("::ffff:7f00:1")).rcode() == dns.rcode.NXDOMAIN
    assert not r.zone.remove("127.0.0.2")


def test_ipv6_nibbles():
    r = make()
    assert [rr.to_text() for rr in ask(r, qname("2001:db8::1")).answer[0]] == ["127.0.0.2"]
    assert ask(r, qname("2001:db8::2")).rcode() == dns.rcode.NXDOMAIN


def test_apex_soa_ns_and_nodata():
    r = make()
    soa = ask(r, ZONE, "SOA")
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    assert [rr.to_text() for rr in ask(r, ZONE, "NS").answer[0]] == [f"ns1.{ZONE}."]
    nodata = ask(r, qname("192.0.2.7"), "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    assert {rr.rdtype for rr in ask(r, qname("192.0.2.7"), "ANY").answer} == {dns.rdatatype.A, dns.rdatatype.TXT}


def test_outside_the_zone_is_refused_and_case_is_ignored():
    r = make()
    assert ask(r, "www.example.com").rcode() == dns.rcode.REFUSED
    assert ask(r, "evilbl.relayguard.test").rcode() == dns.rcode.REFUSED
    assert ask(r, qname("192.0.2.7").upper()).answer


def test_edns_and_truncation():
    zone = Zone(ZONE, Listing(reason="x" * 700))
    zone.add("192.0.2.7")
    r = Responder(zone)
    plain = ask(r, qname("192.0.2.7"), "TXT")
    assert plain.flags & dns.flags.TC and not plain.answer  # 700 bytes do not fit in 512
    big = ask(r, qname("192.0.2.7"), "TXT", edns=True)
    assert not big.flags & dns.flags.TC and big.edns == 0 and big.answer
    assert ask(r, qname("192.0.2.7"), "TXT", tcp=True).answer


def test_malformed_packets_get_formerr_or_nothing():
    r = make()
    assert r.answer(b"\x12") is None
    q = dns.message.make_query(qname("192.0.2.7"), "A").to_wire()
    resp = dns.message.from_wire(r.answer(q[:15]))
    assert resp.rcode() == dns.rcode.FORMERR and resp.id == int.from_bytes(q[:2], "big")
    notify = dns.message.make_query(ZONE, "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(r.answer(notify.to_wire())).rcode() == dns.rcode.NOTIMP


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_never_crash_the_responder(data):
    make().answer(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_queries_never_crash(data):
    raw = bytearray(dns.message.make_query(qname("192.0.2.7"), "TXT", use_edns=0).to_wire())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    out = make().answer(bytes(raw))
    if out is not None:  # an answer to the same query id, marked as a response
        assert out[:2] == raw[:2] and out[2] & 0x80


@given(st.ip_addresses(v=4))
def test_query_name_round_trip(ip):
    labels = [part.encode() for part in reversed(str(ip).split("."))]
    assert query_address(labels) == (4, int(ip), str(ip))


@pytest.mark.parametrize("labels", [[b"1", b"2", b"3"], [b"256", b"0", b"0", b"1"], [b"01", b"0", b"0", b"1"], [b"g"] * 32, [b"ab"] * 32])
def test_bad_query_names(labels):
    assert query_address(labels) is None


def test_zone_add_remove_and_entries():
    zone = Zone(ZONE)
    for ip in ("10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.1"):
        zone.add(ip)
    assert zone.lookup(ipaddress.ip_address("10.0.0.1")) is not None
    assert zone.remove("10.0.0.2") and not zone.remove("10.0.0.2")
    singles = [str(n.network_address) for n, _ in zone.entries() if n.version == 4 and n.prefixlen == 32]
    assert singles == ["10.0.0.1", "10.0.0.3", "127.0.0.2"]
    assert zone.lookup(ipaddress.ip_address("::ffff:10.0.0.1")) is not None


@given(st.lists(st.integers(0, 2**32 - 1), max_size=300), st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_bulk_load_merges_sorted_and_unique(bulk, single):
    zone = Zone(ZONE)
    for ip in single:
        zone.add(ipaddress.IPv4Address(ip).compressed)
    zone.add_many(iter(bulk))
    expected = sorted(set(bulk) | set(single) | {0x7F000002})
    assert [int(n.network_address) for n, _ in zone.entries() if n.version == 4] == expected


def test_replace_serves_exactly_the_new_set_and_keeps_the_test_points():
    zone = Zone(ZONE)
    zone.add("10.0.0.1")
    zone.replace([("10.0.0.2/32", zone.default), ("198.51.100.0/24", Listing("127.0.0.3", "range")),
                  ("2001:db8::/64", zone.default)])
    assert zone.lookup(ipaddress.ip_address("10.0.0.1")) is None
    assert zone.lookup(ipaddress.ip_address("10.0.0.2")) == zone.default
    assert zone.lookup(ipaddress.ip_address("198.51.100.7")).code == "127.0.0.3"
    assert zone.lookup(ipaddress.ip_address("2001:db8::5")) is not None
    assert zone.lookup(ipaddress.ip_address("127.0.0.2")) is not None
