#!/usr/bin/env python3
"""DNSBL checker and policy server benchmarks (issue 6). Not part of the test suite.

The lists are served by rbldnsd (Debian `rbldnsd`, run as root with -u rbldns) when installed,
else by tests/dnsbl_fixtures.ListServer, each in its own process.

1. Latency: one IP against 20 lists whose answers each take 20 ms (20 zones behind a UDP proxy
   that delays every answer 20 ms). Asked in parallel, a check should take about 20 ms, not
   20 x 20 = 400 ms. pydnsbl (also asyncio, also parallel) on the same set-up beside it, when
   installed (`pip install pydnsbl`).
2. Bulk: 10,000 distinct IPs against 5 lists (no added latency, 5% listed): IPs per second,
   relayguard's Checker (cache off, health probes off) beside pydnsbl's bulk_check.
3. Policy server: `relayguard policyd` (5 lists) answering 10 parallel connections that send
   requests one at a time, as Postfix does: requests per second, with distinct client IPs
   (every request a DNS lookup) and with repeated ones (cache hits).

Everything stays on 127.0.0.1; processes are stopped at the end (also on error or Ctrl-C).
Run: .venv/bin/python bench/checker.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from relayguard.dnsbl.checker import Checker  # noqa: E402
from relayguard.dnsbl.sites import parse_sites  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The lists: rbldnsd (the standard DNSBL server, C) when installed, else tests/dnsbl_fixtures.ListServer
# in its own process; latency comes from a delaying UDP proxy in its own process. Either way the
# servers' work stays out of the process being measured.

RBLDNSD = shutil.which("rbldnsd") or "/usr/sbin/rbldnsd"


def wait_dns(port: int, zone: str, deadline: float = 20.0) -> None:
    import dns.message
    import dns.query

    end = time.monotonic() + deadline
    while True:
        try:
            dns.query.udp(dns.message.make_query(f"2.0.0.127.{zone}", "A"), "127.0.0.1", timeout=0.5, port=port)
            return
        except Exception:
            if time.monotonic() > end:
                raise RuntimeError(f"no DNS answer on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def serve_lists(zones: int, listed: list[str], port: int) -> None:
    from dnsbl_fixtures import FakeList, ListServer

    entries = {ip: ["127.0.0.2"] for ip in listed}
    server = ListServer(*(FakeList(f"bl{i}.bench.test", entries) for i in range(zones)), port=port)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.close()


def serve_proxy(port: int, upstream: int, delay: float) -> None:
    """Forward each query to 127.0.0.1:upstream and send the answer back `delay` seconds later."""

    class Proxy(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.clients: dict[bytes, tuple[str, int]] = {}

        def connection_made(self, transport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr) -> None:
            if addr[1] == upstream:
                client = self.clients.pop(data[:2], None)
                if client is not None:
                    loop.call_later(delay, self.transport.sendto, data, client)
            else:
                self.clients[data[:2]] = addr
                self.transport.sendto(data, ("127.0.0.1", upstream))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(loop.create_datagram_endpoint(Proxy, local_addr=("127.0.0.1", port)))
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(loop.stop)), daemon=True).start()
    print("ready", flush=True)
    loop.run_forever()


class Lists:
    """`zones` DNSBL zones listing `listed` (and 127.0.0.2), answered after `delay` seconds."""

    def __init__(self, zones: int, delay: float = 0.0, listed: list[str] = ()) -> None:
        self.zones = [f"bl{i}.bench.test" for i in range(zones)]
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="relayguard-bench-lists-"))
        self.tmp.chmod(0o755)
        try:
            self._start(list(listed), delay)
        except BaseException:
            self.stop()
            raise

    def _child(self, *args: str) -> None:
        proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{args[0]} did not start")

    def _start(self, listed: list[str], delay: float) -> None:
        port = free_port()
        if Path(RBLDNSD).exists() and os.geteuid() == 0:
            data = self.tmp / "list"
            data.write_text(":127.0.0.2:Listed by the benchmark: $\n127.0.0.2\n" + "\n".join(listed) + "\n")
            data.chmod(0o644)
            specs = [f"{z}:ip4set:list" for z in self.zones]
            proc = subprocess.Popen([RBLDNSD, "-n", "-4", "-u", "rbldns", "-b", f"127.0.0.1/{port}", "-w", str(self.tmp),
                                     *specs], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.PIPE)
            self.procs.append(proc)
            self.server = "rbldnsd"
        else:
            listed_file = self.tmp / "listed"
            listed_file.write_text("\n".join(listed))
            self._child("--serve", str(len(self.zones)), str(port), str(listed_file))
            self.server = "python ListServer"
        wait_dns(port, self.zones[0])
        self.port = port
        if delay > 0:
            self.port = free_port()
            self._child("--proxy", str(self.port), str(port), str(delay))
            wait_dns(self.port, self.zones[0])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def pydnsbl_checker(lists: Lists, loop: asyncio.AbstractEventLoop):
    try:
        import aiodns
        import pydnsbl
        from pydnsbl.providers import Provider
    except ImportError:
        return None
    c = pydnsbl.DNSBLIpChecker(providers=[Provider(z) for z in lists.zones], timeout=2, tries=1, loop=loop)
    c._resolver = aiodns.DNSResolver(nameservers=["127.0.0.1"], udp_port=lists.port, tcp_port=lists.port,
                                     timeout=2, tries=1, loop=loop)
    return c


# 1. Latency -------------------------------------------------------------------------------------------


def bench_latency(rounds: int) -> None:
    lists = Lists(20, 0.020)
    try:
        async def ours() -> list[float]:
            times = []
            for i in range(rounds):
                c = Checker(parse_sites(lists.zones), nameservers=[lists.address], timeout=2, health_check=False,
                            cache_size=0)
                t = time.perf_counter()
                r = await c.check(f"192.0.2.{i % 250 + 1}")
                times.append(time.perf_counter() - t)
                assert len(r.answers) == 20 and all(a.status.value == "clean" for a in r.answers), r
            return times

        async def theirs() -> list[float] | None:
            c = pydnsbl_checker(lists, asyncio.get_running_loop())
            if c is None:
                return None
            times = []
            for i in range(rounds):
                t = time.perf_counter()
                r = await c.check_async(f"192.0.2.{i % 250 + 1}")
                times.append(time.perf_counter() - t)
                assert not r.failed_providers and len(r.providers) == 20
            return times

        mine = asyncio.run(ours())
        other = asyncio.run(theirs())
    finally:
        lists.stop()
    print(f"\n1. one IP against 20 lists, 20 ms per answer ({lists.server} behind a 20 ms proxy; median / best of {rounds})")
    print(f"   {'relayguard Checker':<28}{statistics.median(mine) * 1000:8.1f} ms  {min(mine) * 1000:8.1f} ms")
    if other is None:
        print(f"   {'pydnsbl':<28}{'n/a (pip install pydnsbl)':>20}")
    else:
        print(f"   {'pydnsbl':<28}{statistics.median(other) * 1000:8.1f} ms  {min(other) * 1000:8.1f} ms")
    print(f"   {'one list after another':<28}{20 * 20:8.1f} ms  (what a sequential client would take)")


# 2. Bulk ---------------------------------------------------------------------------------------------


def bench_bulk(count: int) -> None:
    ips = [str(ipaddress_from(i)) for i in range(count)]
    listed = random.Random(6).sample(ips, count // 20)
    lists = Lists(5, 0.0, listed)
    try:
        async def ours() -> tuple[float, int]:
            c = Checker(parse_sites(lists.zones), nameservers=[lists.address], timeout=5, health_check=False,
                        cache_size=0, concurrency=200)
            t = time.perf_counter()
            results = await c.check_many(ips)
            elapsed = time.perf_counter() - t
            unknown = sum(r.verdict.value == "unknown" for r in results)
            assert sum(r.listed for r in results) == len(listed) or unknown, "wrong listings"
            return elapsed, unknown

        async def theirs() -> tuple[float, int] | None:
            c = pydnsbl_checker(lists, asyncio.get_running_loop())
            if c is None:
                return None
            t = time.perf_counter()
            results = await asyncio.gather(*(c.check_async(ip) for ip in ips))
            return time.perf_counter() - t, sum(bool(r.failed_providers) for r in results)

        mine, mine_unknown = asyncio.run(ours())
        other = asyncio.run(theirs())
    finally:
        lists.stop()
    print(f"\n2. bulk: {count} IPs against 5 local lists ({lists.server}; 5% listed, TXT fetched for those by relayguard)")
    print(f"   {'relayguard Checker':<28}{count / mine:10.0f} IPs/s  ({mine:.2f} s, {mine_unknown} undecided)")
    if other is None:
        print(f"   {'pydnsbl':<28}{'n/a (pip install pydnsbl)':>20}")
    else:
        print(f"   {'pydnsbl':<28}{count / other[0]:10.0f} IPs/s  ({other[0]:.2f} s, {other[1]} with failed lists)")


def ipaddress_from(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# 3. Policy server ---------------------------------------------------------------------------------------


def bench_policyd(seconds: float, connections: int = 10) -> None:
    lists = Lists(5)
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="relayguard-bench-policyd-"))
    cfg = tmp / "relayguard.toml"
    cfg.write_text(f"""[server]
log_level = "error"
[reject]
dnsbl_sites = {[z for z in lists.zones]!r}
dns_servers = ["{lists.address}"]
health_check = false
cache_size = 1000000
[policyd]
listen = "127.0.0.1:{port}"
""".replace("'", '"'))
    proc = subprocess.Popen([sys.executable, "-m", "relayguard", "policyd", "-c", str(cfg)], cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("policyd did not start") from None
                time.sleep(0.05)
        for label, distinct in (("distinct client IPs (DNS every time)", True), ("one client IP (cache hits)", False)):
            counts = [0] * connections
            stop = time.monotonic() + seconds

            def client(n: int, stop: float = stop, distinct: bool = distinct, counts: list[int] = counts) -> None:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    f = s.makefile("rb")
                    i = 0
                    while time.monotonic() < stop:
                        ip = f"10.{n}.{(i >> 8) & 255}.{i & 255}" if distinct else "192.0.2.77"
                        s.sendall(f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={ip}\n"
                                  f"recipient_count=0\n\n".encode())
                        line = f.readline()
                        f.readline()
                        assert line.startswith(b"action="), line
                        i += 1
                    counts[n] = i

            threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            elapsed = time.perf_counter() - t
            if label.startswith("distinct"):
                print(f"\n3. policy server, {connections} parallel connections, one request at a time each (as Postfix; "
                      f"5 lists on {lists.server})")
            print(f"   {label:<40}{sum(counts) / elapsed:10.0f} requests/s")
    finally:
        proc.terminate()
        proc.wait(10)
        lists.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_lists(int(sys.argv[2]), Path(sys.argv[4]).read_text().split(), int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--proxy":
        serve_proxy(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and IPs")
    a = ap.parse_args()
    print("relayguard DNSBL checker benchmarks (loopback only)")
    bench_latency(5 if a.quick else 30)
    bench_bulk(2000 if a.quick else 10000)
    bench_policyd(2 if a.quick else 5)


if __name__ == "__main__":
    main()
