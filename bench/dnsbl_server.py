#!/usr/bin/env python3
"""relayguard's DNSBL DNS server alone, for bench/dnsbl.py: FILE of IPs, ZONE, PORT.

`--baseline` prints the RSS (KiB) of the same process with the code loaded and an empty zone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from pathlib import Path

from relayguard.config import DNSBLSettings
from relayguard.dnsbl.dnsserver import DNSServer
from relayguard.dnsbl.zone import Zone


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main(path: str, origin: str, port: int) -> None:
    zone = Zone(origin)
    with open(path) as f:
        zone.add_many(int(ipaddress.IPv4Address(line.strip())) for line in f if line.strip())
    server = DNSServer(DNSBLSettings(zone=origin, dns_listen=f"127.0.0.1:{port}"), zone)
    await server.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    if sys.argv[1:] == ["--baseline"]:
        print(rss_kib())
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
