"""A real secondary (NSD, Debian package nsd) transfers relayguard's zone by AXFR and answers alike."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import dns.message
import dns.query
import dns.rcode

from test_dnsbl_server import ZONE, Running, free_udp_tcp_port

if shutil.which("nsd") is None:  # pragma: no cover - .ci/run installs it
    raise RuntimeError("NSD is required for this test: apt-get install nsd")


def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=3)


def test_nsd_secondary_serves_the_transferred_zone_and_follows_notify(tmp_path):
    port = free_udp_tcp_port()
    primary = Running(axfr_allow=["127.0.0.0/8"], notify=[f"127.0.0.1:{port}"])
    conf = tmp_path / "nsd.conf"
    conf.write_text(f"""
server:
    ip-address: 127.0.0.1
    port: {port}
    username: ""
    zonesdir: "{tmp_path}"
    pidfile: "{tmp_path}/nsd.pid"
    database: ""
    xfrdfile: "{tmp_path}/xfrd.state"
    zonelistfile: "{tmp_path}/zone.list"
    xfrdir: "{tmp_path}"
    verbosity: 1
remote-control:
    control-enable: no
zone:
    name: {ZONE}
    zonefile: "{ZONE}.zone"
    request-xfr: AXFR 127.0.0.1@{primary.port} NOKEY
    allow-notify: 127.0.0.1 NOKEY
""")
    nsd = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if ask(port, f"7.2.0.192.{ZONE}").answer:
                    break
            except (OSError, dns.exception.Timeout):
                pass
            assert nsd.poll() is None and time.monotonic() < deadline, nsd.stdout.read().decode() if nsd.poll() else "no transfer"
            time.sleep(0.2)
        for name, rdtype in ((f"7.2.0.192.{ZONE}", "A"), (f"7.2.0.192.{ZONE}", "TXT"), (f"9.100.51.198.{ZONE}", "A"),
                             (f"2.0.0.127.{ZONE}", "A")):
            theirs, ours = ask(port, name, rdtype), ask(primary.port, name, rdtype)
            assert [r.to_text() for r in theirs.answer[0]] == [r.to_text() for r in ours.answer[0]], name
        assert ask(port, f"8.2.0.192.{ZONE}").rcode() == dns.rcode.NXDOMAIN
        # A new listing: NOTIFY makes the secondary transfer the zone again.
        primary.call(primary.zone.add, "10.1.2.3")
        asyncio.run_coroutine_threadsafe(primary.server.notify_if_changed(), primary.loop).result(5)
        deadline = time.monotonic() + 30
        while not ask(port, f"3.2.1.10.{ZONE}").answer:
            assert time.monotonic() < deadline, "the secondary did not follow the NOTIFY"
            time.sleep(0.2)
    finally:
        nsd.terminate()
        nsd.wait(10)
        primary.close()
