#!/usr/bin/env python3
"""DNSBL DNS server benchmark: relayguard beside rbldnsd, measured in the same run.

1. Queries per second: a 100,000-entry zone (random IPv4, fixed seed) in each server; dnsperf
   with a query file of half listed, half unlisted names, A and TXT
   (`-c 4 -T 1 -q 50 -l 10`). Target: relayguard >= 0.5x rbldnsd, 0 lost queries.
2. Memory: RSS with 1,000,000 listed IPv4 entries, per entry, beside rbldnsd's (ip4tset).

Needs Debian's dnsperf and rbldnsd. Everything on 127.0.0.1, every run bounded in time.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ZONE = "bl.bench.test"
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_ips(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    ips: set[int] = set()
    while len(ips) < n:
        ips.add(rng.randrange(0x01000000, 0xDF000000))
    return [socket.inet_ntoa(ip.to_bytes(4, "big")) for ip in ips]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_udp(port: int, timeout: float = 60.0) -> None:
    """Until the server answers a query (loading can take a while)."""
    query = bytes.fromhex("abcd01000001000000000000") + b"".join(
        bytes([len(p)]) + p.encode() for p in f"2.0.0.127.{ZONE}".split(".")) + b"\0\x00\x01\x00\x01"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(query, ("127.0.0.1", port))
            try:
                s.recv(512)
                return
            except OSError:
                continue
    raise RuntimeError(f"no DNS answer on port {port}")


def start_rbldnsd(data: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["rbldnsd", "-n", "-4", "-u", "nobody", "-b", f"127.0.0.1/{port}", "-w", str(data),
                             f"{ZONE}:ip4tset:zone.ip4tset"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_relayguard(data: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HERE / "dnsbl_server.py"), str(data / "zone.txt"), ZONE, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_zone(data: Path, ips: list[str]) -> None:
    data.chmod(0o755)
    (data / "zone.txt").write_text("\n".join(ips) + "\n")
    (data / "zone.ip4tset").write_text(":127.0.0.2:Open relay; see https://bl.bench.test/lookup?ip=$\n" + "\n".join(ips) + "\n")
    for f in data.iterdir():
        f.chmod(0o644)


def dnsperf(port: int, queries: Path, seconds: int) -> tuple[float, int]:
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds),
                          "-c", "4", "-T", "1", "-q", "50"], capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    return qps, lost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--memory-entries", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    for tool in ("dnsperf", "rbldnsd"):
        if shutil.which(tool) is None:
            print(f"{tool} not installed (apt-get install {tool}): DNSBL benchmark skipped")
            return 0
    tmp = Path(tempfile.mkdtemp(prefix="relayguard-dnsbl-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ips = random_ips(args.entries, 42)
        write_zone(tmp, ips)
        rng = random.Random(7)
        unlisted = random_ips(args.entries, 43)
        names = [".".join(reversed(ip.split("."))) for ip in rng.sample(ips, 5000) + rng.sample(unlisted, 5000)]
        queries = tmp / "queries.txt"
        queries.write_text("".join(f"{n}.{ZONE} {t}\n" for n in names for t in ("A", "TXT")))
        results = {}
        for name, start in (("relayguard", start_relayguard), ("rbldnsd", start_rbldnsd)):
            port = free_port()
            proc = start(tmp, port)
            procs.append(proc)
            wait_udp(port)
            results[name] = dnsperf(port, queries, args.seconds)
            proc.terminate()
            proc.wait(10)
        print(f"\nDNSBL queries, {args.entries:,} entries, dnsperf -c 4 -T 1 -q 50 -l {args.seconds}")
        for name, (qps, lost) in results.items():
            print(f"  {name:12s} {qps:10.0f} qps   lost {lost}")
        ratio = results["relayguard"][0] / results["rbldnsd"][0]
        print(f"  ratio relayguard / rbldnsd {ratio:.2f}x  (target >= 0.5x, 0 lost)")

        write_zone(tmp, random_ips(args.memory_entries, 44))
        print(f"\nMemory with {args.memory_entries:,} IPv4 entries (RSS after load)")
        for name, start in (("relayguard", start_relayguard), ("rbldnsd", start_rbldnsd)):
            port = free_port()
            proc = start(tmp, port)
            procs.append(proc)
            wait_udp(port, 300)
            if name == "relayguard":
                base = subprocess.run([sys.executable, str(HERE / "dnsbl_server.py"), "--baseline"],
                                      capture_output=True, text=True, timeout=60).stdout.strip()
            kib = rss_kib(proc.pid)
            extra = f" (interpreter and code alone: {int(base) / 1024:.1f} MB)" if name == "relayguard" else ""
            per_entry = (kib - (int(base) if name == "relayguard" else 0)) * 1024 / args.memory_entries
            print(f"  {name:12s} {kib / 1024:8.1f} MB   {per_entry:5.1f} bytes/entry{extra}")
            proc.terminate()
            proc.wait(10)
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
