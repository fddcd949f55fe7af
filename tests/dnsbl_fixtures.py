"""Loopback DNSBL servers for the checker, MTA and policy server tests (and bench/checker.py).

`ListServer` answers RFC 5782 queries for any number of `FakeList` zones over UDP on 127.0.0.1,
from an asyncio loop in a thread, so that answers can be delayed (latency) without blocking
other queries. Each list can misbehave the ways real lists do: never answer (timeout), SERVFAIL,
answer outside 127/8, answer error codes (127.255.255.x), drop the RFC 5782 test points, or list
the world.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections import Counter
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset


@dataclass
class FakeList:
    zone: str
    entries: dict[str, list[str]] = field(default_factory=dict)  # "1.2.3.4" / "2001:db8::1" / "spam.test" -> A codes
    txt: dict[str, str] = field(default_factory=dict)  # per entry; default: "Listed: see http://<zone>/?$"
    delay: float = 0.0  # seconds before each answer
    mode: str = "ok"  # "ok" | "timeout" (never answers) | "servfail" | "refused"
    test_points: bool = True  # 127.0.0.2, ::ffff:127.0.0.2 and TEST listed (RFC 5782 section 5)
    world: bool = False  # every name listed as 127.0.0.2 (a list that shut down badly)
    ttl: int = 60
    negative_ttl: int = 30
    no_txt: bool = False

    def lookup(self, key: str) -> list[str] | None:
        if self.world:
            return ["127.0.0.2"]
        if key in self.entries:
            return self.entries[key]
        if self.test_points and key in ("127.0.0.2", "test"):
            return ["127.0.0.2"]
        return None

    def reason(self, key: str) -> str:
        return self.txt.get(key, f"Listed: see http://{self.zone}/lookup?ip={key}")


def _key(labels: list[str]) -> str:
    """Query labels below the zone -> the entry key (IP text or domain)."""
    if len(labels) == 4 and all(x.isdigit() for x in labels):
        return ".".join(reversed(labels))
    if len(labels) == 32 and all(len(x) == 1 for x in labels):
        try:
            ip = ipaddress.IPv6Address(int("".join(reversed(labels)), 16))
        except ValueError:
            return ".".join(labels)
        return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
    return ".".join(labels)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: ListServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        reply, delay = self.server.respond(query)
        if reply is None or self.transport is None:
            return
        wire = reply.to_wire()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.transport.sendto, wire, addr)
        else:
            self.transport.sendto(wire, addr)


class ListServer:
    """UDP on 127.0.0.1; `.address` is "127.0.0.1:port"; `.queries` counts questions per (name, type)."""

    def __init__(self, *lists: FakeList, port: int = 0) -> None:
        self.lists = {fl.zone.lower().rstrip("."): fl for fl in lists}
        self.queries: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, started), daemon=True)
        self._thread.start()
        if not started.wait(5):
            raise RuntimeError("ListServer did not start")

    def _run(self, port: int, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        transport, _ = self.loop.run_until_complete(
            self.loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=("127.0.0.1", port)))
        self.port = transport.get_extra_info("sockname")[1]
        started.set()
        self.loop.run_forever()
        transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, fl: FakeList) -> None:
        self.lists[fl.zone.lower().rstrip(".")] = fl

    def count(self, zone: str, rdtype: str | None = None) -> int:
        """Questions received for names under `zone` (test points included)."""
        with self._lock:
            return sum(n for (name, t), n in self.queries.items()
                       if (name == zone or name.endswith("." + zone)) and (rdtype is None or t == rdtype))

    def respond(self, query: dns.message.Message) -> tuple[dns.message.Message | None, float]:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response, 0.0
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        with self._lock:
            self.queries[(name, rdtype)] += 1
        zone = next((z for z in sorted(self.lists, key=len, reverse=True) if name == z or name.endswith("." + z)), None)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response, 0.0
        fl = self.lists[zone]
        if fl.mode == "timeout":
            return None, 0.0
        if fl.mode in ("servfail", "refused"):
            response.set_rcode(dns.rcode.SERVFAIL if fl.mode == "servfail" else dns.rcode.REFUSED)
            return response, fl.delay
        labels = name[: -len(zone)].rstrip(".").split(".") if name != zone else []
        key = _key(labels) if labels else ""
        codes = fl.lookup(key) if key else None
        if codes is None:
            if name != zone:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                zone + ".", fl.negative_ttl, "IN", "SOA",
                f"ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 {fl.negative_ttl}"))
        elif rdtype == "A":
            response.answer.append(dns.rrset.from_text(q.name, fl.ttl, "IN", "A", *codes))
        elif rdtype == "TXT" and not fl.no_txt:
            text = fl.reason(key).encode()
            rd = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [text[i:i + 255] for i in range(0, len(text), 255)])
            response.answer.append(dns.rrset.from_rdata(q.name, fl.ttl, rd))
        return response, fl.delay

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
