"""Import and export of zone data: the rbldnsd and plain formats parsed line by line, exports
loaded into a real rbldnsd and a real NSD (Debian packages) that must answer exactly as the store
does, round trips, atomic writes, and a 1,000,000-entry import under a minute."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rdatatype
import pytest

from relayguard.dnsbl.store import DEFAULT_TXT, Entry, Store
from relayguard.dnsbl.zonefiles import (RBLDNSD_FILES, ZoneMeta, atomic_write, parse_lines, read_file,
                                        rbldnsd_command, split_rbldnsd, write_bind, write_rbldnsd)

from conftest import free_port

ZONE = "bl.relayguard.test"


# Parsing ----------------------------------------------------------------------------------------


def nets(parsed) -> list[tuple[str, str | None, str | None]]:
    return [(e.network, e.code, e.txt) for e in parsed.entries]


def test_plain_lines_addresses_and_cidrs():
    p = parse_lines(["192.0.2.7", "  198.51.100.0/24  ", "", "# comment", "; also", "2001:db8::1",
                     "2001:DB8:1::/48", "10.1.2.3/24", "::ffff:192.0.2.9"])
    assert nets(p) == [("192.0.2.7/32", None, None), ("198.51.100.0/24", None, None), ("2001:db8::1/128", None, None),
                       ("2001:db8:1::/48", None, None), ("10.1.2.0/24", None, None), ("192.0.2.9/32", None, None)]
    assert p.errors == [] and p.lines == 9


def test_rbldnsd_ip4set_syntax():
    p = parse_lines([
        "$SOA 0 ns.example. hm.example. 0 3600 600 604800 2100", "#$NS 0 ns.example.", "$TTL 1h",
        "$1 see http://example.org/bl", ":127.0.0.2:Listed: $1?$",
        "127.0.0", "127/24", "127.16-31", "127.16.0.0-127.16.1.255", "10.0.0.1-3",
        "192.0.2.5 :5", "192.0.2.6 :6:", "192.0.2.7 an open relay at $", "192.0.2.8 :127.0.0.9:own $1",
        "192.0.2.9 ; a comment, default value", "192.0.2.10#x",
        "!192.0.2.11", "127.0.0.2",
    ])
    assert p.errors == [] and p.directives == 4 and p.test_points == 1
    assert [str(e) for e in p.exclusions] == ["line 17: exclusion '!192.0.2.11': not supported, not imported"]
    d = "Listed: see http://example.org/bl?$"
    got = nets(p)
    assert got[:3] == [("127.0.0.0/24", "127.0.0.2", d)] * 2 + [("127.16.0.0/12", "127.0.0.2", d)]
    assert got[3] == ("127.16.0.0/23", "127.0.0.2", d)
    assert got[4:6] == [("10.0.0.1/32", "127.0.0.2", d), ("10.0.0.2/31", "127.0.0.2", d)]
    assert got[6:] == [("192.0.2.5/32", "127.0.0.5", d), ("192.0.2.6/32", "127.0.0.6", ""),
                       ("192.0.2.7/32", "127.0.0.2", "an open relay at $"),
                       ("192.0.2.8/32", "127.0.0.9", "own see http://example.org/bl"),
                       ("192.0.2.9/32", "127.0.0.2", d), ("192.0.2.10/32", "127.0.0.2", d)]


def test_base_template_and_ip6_forms():
    p = parse_lines(["$= Listed ($=), see http://example.org/?$", "192.0.2.1 r123", "192.0.2.2 =Exactly this $",
                     "2001:20fe:23:41ed", "2001:21ab:c000/36 :127.0.1.3: smells", "2605:6001:42::/52", "::1"])
    assert nets(p) == [("192.0.2.1/32", "127.0.0.2", "Listed (r123), see http://example.org/?$"),
                       ("192.0.2.2/32", "127.0.0.2", "Exactly this $"), ("2001:20fe:23:41ed::/64", None, None),
                       ("2001:21ab:c000::/36", "127.0.1.3", "Listed (smells), see http://example.org/?$"),
                       ("2605:6001:42::/52", None, None),
                       ("::1/128", None, None)]


def test_bad_lines_are_named_and_counted():
    p = parse_lines(["192.0.2.1", "mail.example.com", "300.1.1.1", "192.0.2.0/33", "10.0.0.9-10.0.0.1",
                     "$BOGUS 1", "192.0.2.3 :abc:x", "010.1.1.1"])
    assert [e.line for e in p.errors] == [2, 3, 4, 5, 6, 7]
    assert "mail.example.com" in str(p.errors[0]) and "ends before it starts" in str(p.errors[3])
    assert nets(p) == [("192.0.2.1/32", None, None), ("10.1.1.1/32", None, None)]  # rbldnsd reads 010 as 10


# Export into real servers ------------------------------------------------------------------------


def sample_store(store: Store) -> None:
    rnd = random.Random(5782)
    singles = set()
    while len(singles) < 300:
        ip = ipaddress.IPv4Address(rnd.getrandbits(32))
        if ip.is_global and not ip.is_multicast:
            singles.add(f"{ip}/32")
    entries = [Entry(n) for n in sorted(singles)]
    entries += [
        Entry("192.0.2.7/32", "127.0.0.4", "custom reason for $"),
        Entry("198.51.100.0/24", "127.0.0.3", "a listed network, $"),
        Entry("198.51.100.77/32", "127.0.0.4", "inside the /24, own answer"),
        Entry("203.0.113.0/26", None, None),
        Entry("203.0.113.5/32", None, None),  # default answer, inside a network: not in ip4tset
        Entry("10.8.0.0/20", "127.0.0.5", "not on an octet boundary"),
        Entry("192.0.2.128/25", "127.0.0.6", "half a /24"),
        Entry("100.64.0.0/16", "127.0.0.7", "a /16 with a host inside"),
        Entry("100.64.3.4/32", None, None),
        Entry("2001:db8:1:2::/64", None, None),
        Entry("2001:db8:ab00::/40", "127.0.0.3", "v6 network $"),
        Entry("2001:db8:ab12:3::/64", None, None),  # inside the /40
        Entry("2001:db8:cc::1/128", None, None),
        Entry("2001:db8:dd::/62", "127.0.0.8", "not on a nibble boundary"),
    ]
    store.bulk_import(entries, actor="test", reason="sample")


def probe_addresses(store: Store) -> list[str]:
    rnd = random.Random(1)
    out: list[str] = []
    for network, _, _ in store.listed():
        net = ipaddress.ip_network(network)
        out.append(str(net.network_address))
        if net.num_addresses > 1:
            out.append(str(net.broadcast_address))
            out.append(str(net.network_address + rnd.randrange(net.num_addresses)))
        for outside in (int(net.network_address) - 1, int(net.broadcast_address) + 1):
            if 0 <= outside < 2 ** net.max_prefixlen:
                out.append(str(ipaddress.ip_address(outside) if net.version == 4 else ipaddress.IPv6Address(outside)))
    for _ in range(50):
        out.append(str(ipaddress.IPv4Address(rnd.getrandbits(32))))
    out += ["100.64.3.5", "100.64.3.4", "100.65.0.1", "2001:db8:ab12:3::9", "2001:db8:ab12:4::9", "2001:db8:cc::2",
            "2001:db8:dd:3:1::1", "2001:db8:dd:4::1"]
    return sorted(set(out))


def expected(store: Store, ip: str, wildcard_dollar: bool = False) -> tuple[str, str] | None:
    """The store's answer: the most specific listed entry; '$' = the IP (for rbldnsd and our
    own server), or the network for a BIND wildcard."""
    cover = store.covering(ip)
    if not cover:
        return None
    h = cover[0]
    single = h.network.endswith(("/32", "/128"))
    return h.code, h.txt.replace("$", ip if single or not wildcard_dollar else h.network)


def qname(ip: str) -> str:
    """RFC 5782 names: reversed octets, or 32 reversed nibbles (IPv4-mapped ones too)."""
    addr = ipaddress.ip_address(ip)
    labels = addr.exploded.split(".") if addr.version == 4 else list(addr.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + ZONE + "."


def ask(port: int, ip: str) -> tuple[str, str] | None:
    answers = {}
    for rtype in ("A", "TXT"):
        q = dns.message.make_query(qname(ip), rtype)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
        assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), (ip, r)
        rrs = [rr for rr in r.answer if rr.rdtype == dns.rdatatype.from_text(rtype)]
        answers[rtype] = sorted(rd.to_text() for rrset in rrs for rd in rrset)
    if not answers["A"]:
        assert not answers["TXT"], ip
        return None
    assert len(answers["A"]) == 1 and len(answers["TXT"]) == 1, (ip, answers)
    (a,), (t,) = answers["A"], answers["TXT"]
    return a, "".join(part.decode() for part in dns.rdata.from_text("IN", "TXT", t).strings)


def wait_dns(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')}")
        try:
            r = dns.query.udp(dns.message.make_query(ZONE + ".", "SOA"), "127.0.0.1", port=port, timeout=0.5)
            if r.answer:
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server did not answer: {log.read_text(errors='replace')}")


@pytest.fixture
def world_dir():
    """A folder the unprivileged rbldns user (rbldnsd drops root) can read."""
    d = Path(tempfile.mkdtemp(prefix="relayguard-zone-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def listed_store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/bl.db")
    sample_store(s)
    yield s
    s.close()


def meta_for(store: Store) -> ZoneMeta:
    return ZoneMeta(zone=ZONE, ttl=2100, negative_ttl=900, serial=store.version(), default_txt=DEFAULT_TXT)


def run_server(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:
        wait_dns(port, proc, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_rbldnsd_export_answers_as_the_store(listed_store, world_dir):
    store = listed_store
    paths = write_rbldnsd(store.listed(), world_dir, meta_for(store))
    parts = split_rbldnsd(store.listed(), meta_for(store))
    assert len(parts["ip4tset"]) == 300 and "203.0.113.5/32 :127.0.0.2:" + DEFAULT_TXT in parts["ip4trie"]
    assert parts["ip6tset"] == ["2001:db8:1:2"] and any(x.startswith("2001:db8:ab12:3::/64") for x in parts["ip6trie"])
    port = free_port()
    cmd = rbldnsd_command(paths, ZONE, f"127.0.0.1/{port}").split()
    user = ["-u", "rbldns"] if os.geteuid() == 0 else []
    argv = [cmd[0], "-n", "-4", *user, *cmd[1:]]
    proc = run_server(argv, port, world_dir / "rbldnsd.log")
    try:
        mismatches = []
        for ip in probe_addresses(store):
            want, got = expected(store, ip), ask(port, ip)
            if want != got:
                mismatches.append((ip, want, got))
        assert mismatches == []
        assert ask(port, "127.0.0.2") == ("127.0.0.2", "RFC 5782 test point") and ask(port, "127.0.0.1") is None
        assert ask(port, "::ffff:7f00:2") == ("127.0.0.2", "RFC 5782 test point")
        soa = dns.query.udp(dns.message.make_query(ZONE + ".", "SOA"), "127.0.0.1", port=port, timeout=3)
        assert soa.answer[0][0].serial == store.version() and soa.answer[0][0].minimum == 900
    finally:
        stop(proc)


NSD_CONF = """server:
  ip-address: 127.0.0.1@{port}
  port: {port}
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{dir}"
  pidfile: "{dir}/nsd.pid"
  database: ""
  xfrdfile: "{dir}/xfrd.state"
  zonelistfile: "{dir}/zone.list"
  logfile: "{dir}/nsd.log"
  server-count: 1
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: {zone}
  zonefile: "{zonefile}"
"""


def test_bind_export_served_by_nsd_answers_as_the_store(listed_store, world_dir):
    store = listed_store
    zonefile = world_dir / f"{ZONE}.zone"
    names = write_bind(store.listed(), zonefile, meta_for(store))
    assert names > len(store.listed())  # networks off the octet boundary become several wildcards
    check = subprocess.run(["nsd-checkzone", ZONE, str(zonefile)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    conf = world_dir / "nsd.conf"
    conf.write_text(NSD_CONF.format(port=port, dir=world_dir, zone=ZONE, zonefile=zonefile))
    proc = run_server(["nsd", "-d", "-c", str(conf)], port, world_dir / "nsd.out")
    try:
        mismatches = []
        for ip in probe_addresses(store):
            want, got = expected(store, ip, wildcard_dollar=True), ask(port, ip)
            if want != got:
                mismatches.append((ip, want, got))
        assert mismatches == []
        assert ask(port, "127.0.0.2") == ("127.0.0.2", "RFC 5782 test point") and ask(port, "127.0.0.1") is None
    finally:
        stop(proc)


def test_rbldnsd_export_round_trips_through_import(listed_store, tmp_path):
    paths = write_rbldnsd(listed_store.listed(), tmp_path / "out", meta_for(listed_store))
    again = Store(f"sqlite:///{tmp_path}/again.db")
    try:
        for kind in RBLDNSD_FILES:
            parsed = read_file(paths[kind])
            assert parsed.errors == [] and parsed.exclusions == []
            again.bulk_import(parsed.entries, actor="test", reason=f"round trip {kind}")
        assert sorted(again.listed()) == sorted(listed_store.listed())
    finally:
        again.close()


def test_plain_file_round_trip_and_ip4set_with_own_default(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/bl.db", txt="our default $")
    try:
        f = tmp_path / "old.ip4set"
        f.write_text(":127.0.0.2:Listed by the old list, $\n192.0.2.1\n192.0.2.2 :3:three\n198.51.100.0/24\n")
        s.bulk_import(read_file(f).entries, actor="t", reason="moved")
        assert sorted(s.listed()) == [("192.0.2.1/32", "127.0.0.2", "Listed by the old list, $"),
                                      ("192.0.2.2/32", "127.0.0.3", "three"),
                                      ("198.51.100.0/24", "127.0.0.2", "Listed by the old list, $")]
    finally:
        s.close()


# Atomic writes ------------------------------------------------------------------------------------


def test_exports_replace_files_atomically(tmp_path):
    meta = ZoneMeta(zone=ZONE, default_txt=DEFAULT_TXT)
    paths = write_rbldnsd([("192.0.2.1/32", "127.0.0.2", DEFAULT_TXT)], tmp_path, meta)
    before = paths["ip4tset"].stat().st_ino
    with open(paths["ip4tset"]) as reader:  # a reader holding the old file keeps reading it whole
        paths = write_rbldnsd([("192.0.2.2/32", "127.0.0.2", DEFAULT_TXT)], tmp_path, meta)
        assert "192.0.2.1\n" in reader.read()
    assert paths["ip4tset"].stat().st_ino != before and "192.0.2.2\n" in paths["ip4tset"].read_text()

    def broken(f):
        f.write("half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(paths["ip4tset"], broken)
    assert "192.0.2.2\n" in paths["ip4tset"].read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{ZONE}.{k}" for k in RBLDNSD_FILES)


# A million entries ----------------------------------------------------------------------------------


def test_import_of_a_million_entries_in_under_a_minute(tmp_path):
    rnd = random.Random(2006)
    seen: set[int] = set()
    while len(seen) < 1_000_000:
        seen.add(rnd.getrandbits(32))
    seen.discard(int(ipaddress.IPv4Address("127.0.0.2")))
    f = tmp_path / "ordb.ip4tset"
    with open(f, "w") as out:
        out.write("$SOA 0 ns.example. hm.example. 0 3600 600 604800 2100\n:127.0.0.2:Open relay, see $\n")
        out.write("\n".join(str(ipaddress.IPv4Address(ip)) for ip in seen))
        out.write("\n")
    cfg = tmp_path / "relayguard.toml"
    cfg.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/bl.db"\n')
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "relayguard", "dnsbl", "import", str(f), "-c", str(cfg), "--json"],
                       capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert elapsed < 60, elapsed
    import json

    out = json.loads(r.stdout)
    assert out["added"] == out["entries"] == len(seen)
    s = Store(f"sqlite:///{tmp_path}/bl.db")
    try:
        assert s.count() == len(seen)
    finally:
        s.close()
