"""A small async DNS stub client for DNSBL lookups: A and TXT questions, answers read straight off
the wire (sans-I/O `build_query` / `parse_response`, plus a thin asyncio edge).

Why not dnspython's resolver for every lookup: building and parsing its message objects costs
about ten times the lookup itself, and a mail server asks 5-20 lists per connection (bulk checks
thousands). dnspython stays in use for what is rare: reading resolv.conf, and TCP when an
answer comes back truncated.

Each query gets its own UDP socket (a random source port from the kernel), connected to the
nameserver (the kernel drops datagrams from elsewhere), and a random 16-bit ID; a reply counts
only when its ID, flags and question match ours. Retries go to the next nameserver every
`attempt` seconds until `timeout`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

A, TXT, SOA, CNAME = 1, 16, 6, 5
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class WireError(ValueError):
    """A datagram that is not a well-formed answer to our question."""


class NoAnswer(Exception):
    """No usable answer before the timeout (or every server failed); the text says why."""


@dataclass
class Answer:
    rcode: int
    records: list[str] = field(default_factory=list)  # A: dotted quads; TXT: one string per record
    ttl: float = 0.0  # smallest TTL of the records; for no records the SOA negative TTL (0 if none)
    truncated: bool = False


def encode_name(qname: str) -> bytes:
    labels = qname.rstrip(".").split(".")
    out = bytearray()
    for label in labels:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise WireError(f"bad label {label!r} in {qname!r}")
        out += bytes([len(raw)]) + raw
    out += b"\x00"
    if len(out) > 255:
        raise WireError(f"name longer than 255 bytes: {qname!r}")
    return bytes(out)


def build_query(qid: int, qname: str, rdtype: int) -> bytes:
    """A recursive query (RD) for one question, class IN."""
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(qname) + struct.pack("!HH", rdtype, 1)


def _read_name(data: bytes, pos: int) -> tuple[bytes, int]:
    """(lower-case name in wire form, offset after it); follows compression pointers, bounded."""
    out = bytearray()
    end = -1
    for _ in range(128):
        if pos >= len(data):
            raise WireError("name runs past the end")
        n = data[pos]
        if n == 0:
            out += b"\x00"
            if len(out) > 255:
                raise WireError("name longer than 255 bytes")
            return bytes(out).lower(), (end if end >= 0 else pos + 1)
        if n & 0xC0 == 0xC0:
            if pos + 2 > len(data):
                raise WireError("truncated pointer")
            if end < 0:
                end = pos + 2
            pos = struct.unpack_from("!H", data, pos)[0] & 0x3FFF
            continue
        if n & 0xC0:
            raise WireError("bad label type")
        out += data[pos:pos + 1 + n]
        pos += 1 + n
    raise WireError("too many labels or a pointer loop")


def parse_response(data: bytes, query: bytes, rdtype: int) -> Answer:
    """The answer to `query` in `data`; WireError when data is not that answer.

    Only records owned by the question's name, or by a name a CNAME in the answer leads to
    from it, count."""
    if len(data) < 12:
        raise WireError("shorter than a DNS header")
    qid, flags, qd, an, ns, _ar = struct.unpack_from("!HHHHHH", data)
    if qid != struct.unpack_from("!H", query)[0]:
        raise WireError("wrong ID")
    if not flags & 0x8000 or (flags >> 11) & 0xF != 0:
        raise WireError("not a response to a standard query")
    rcode = flags & 0xF
    question = query[12:]
    if qd != 1 or data[12:12 + len(question)].lower() != question.lower():
        if qd == 0 and rcode != NOERROR:  # some servers drop the question on errors
            return Answer(rcode)
        raise WireError("question does not match")
    pos = 12 + len(question)
    owners = {question[:-4].lower()}
    found: list[tuple[bytes, str, int]] = []
    negative: int | None = None
    for section, count in ((0, an), (1, ns)):
        for _ in range(count):
            owner, pos = _read_name(data, pos)
            if pos + 10 > len(data):
                raise WireError("truncated record header")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
            pos += 10
            rdata = data[pos:pos + rdlen]
            if len(rdata) != rdlen:
                raise WireError("truncated record data")
            ttl = min(ttl, 0x7FFFFFFF)
            if section == 0 and rclass == 1 and rtype == CNAME and owner in owners:
                owners.add(_read_name(data, pos)[0])
            elif section == 0 and rclass == 1 and rtype == rdtype:
                if rtype == A:
                    if rdlen != 4:
                        raise WireError("A record of the wrong length")
                    found.append((owner, str(ipaddress.IPv4Address(rdata)), ttl))
                elif rtype == TXT:
                    parts, i = [], 0
                    while i < rdlen:
                        n = rdata[i]
                        parts.append(rdata[i + 1:i + 1 + n])
                        i += 1 + n
                    if i != rdlen:
                        raise WireError("bad TXT strings")
                    found.append((owner, b"".join(parts).decode("utf-8", "replace"), ttl))
            elif section == 1 and rtype == SOA and rdlen >= 22:
                minimum = struct.unpack_from("!I", rdata, rdlen - 4)[0]
                negative = min(ttl, minimum)
            pos += rdlen
    mine = [(value, ttl) for owner, value, ttl in found if owner in owners]
    if mine:
        return Answer(rcode, [v for v, _ in mine], float(min(t for _, t in mine)), bool(flags & 0x0200))
    return Answer(rcode, [], float(negative or 0), bool(flags & 0x0200))


def parse_nameservers(nameservers: Sequence[str]) -> list[tuple[str, int]]:
    """"ip", "ip:port", "[v6]:port" -> [(ip, port)]; empty -> the system's (resolv.conf); ValueError otherwise."""
    if not nameservers:
        import dns.resolver

        try:
            system = dns.resolver.Resolver().nameservers
        except Exception as e:  # no resolv.conf, nothing usable in it
            raise ValueError(f"no system resolver: {e}") from None
        out = []
        for ns in system:
            try:
                out.append((str(ipaddress.ip_address(str(ns))), 53))
            except ValueError:
                continue  # a DoH/DoT nameserver object: not for us
        if not out:
            raise ValueError("no usable nameserver in the system configuration")
        return out
    from ..hostport import parse_hostport

    out = []
    for ns in nameservers:
        host, port = parse_hostport(ns, 53)
        out.append((str(ipaddress.ip_address(host)), port))
    return out


class StubClient:
    def __init__(self, nameservers: Sequence[str], timeout: float, attempt: float | None = None, *,
                 lazy: bool = False) -> None:
        """ValueError for a bad nameserver or no system resolver (at the first query when `lazy`)."""
        self._nameservers = list(nameservers)
        self._servers = None if lazy else parse_nameservers(self._nameservers)
        self.timeout = timeout
        self.attempt = attempt if attempt is not None else max(min(timeout / 2, 2.0), 0.05)

    @property
    def servers(self) -> list[tuple[str, int]]:
        if self._servers is None:
            try:
                self._servers = parse_nameservers(self._nameservers)
            except ValueError as e:
                raise NoAnswer(str(e)) from None
        return self._servers

    async def query(self, qname: str, rdtype: int) -> Answer:
        """One question; NoAnswer on timeout or when every server failed (SERVFAIL, REFUSED, unreachable)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        failures: list[str] = []
        start = secrets.randbelow(len(self.servers))
        attempt = 0
        while loop.time() < deadline:
            host, port = self.servers[(start + attempt) % len(self.servers)]
            attempt += 1
            wait = min(self.attempt, deadline - loop.time())
            try:
                answer = await self._udp(host, port, qname, rdtype, wait)
            except TimeoutError:
                continue
            except OSError as e:
                failures.append(f"{host}:{port}: {e.strerror or e}")
                if len(failures) >= len(self.servers):
                    break
                continue
            if answer.rcode in (NOERROR, NXDOMAIN):
                if answer.truncated and rdtype == TXT:
                    answer = await self._tcp(host, port, qname, rdtype, max(deadline - loop.time(), 0.05))
                return answer
            failures.append(f"{host}:{port}: {RCODES.get(answer.rcode, answer.rcode)}")
            if len(failures) >= len(self.servers):
                break
        if failures:
            raise NoAnswer("no nameserver answered (" + "; ".join(dict.fromkeys(failures)) + ")")
        raise NoAnswer(f"timeout after {self.timeout:g} s")

    async def _udp(self, host: str, port: int, qname: str, rdtype: int, wait: float) -> Answer:
        """One datagram out, the first matching one back (a reader callback and a timer: no task per query)."""
        loop = asyncio.get_running_loop()
        query = build_query(secrets.randbits(16), qname, rdtype)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((host, port))
            fut: asyncio.Future[Answer] = loop.create_future()

            def readable() -> None:
                while not fut.done():
                    try:
                        data = sock.recv(65535)
                    except BlockingIOError:
                        return
                    except OSError as e:  # ICMP port unreachable and the like
                        fut.set_exception(e)
                        return
                    try:
                        fut.set_result(parse_response(data, query, rdtype))
                    except WireError:
                        continue  # not our answer (late, spoofed or broken): keep listening

            def expire() -> None:
                if not fut.done():
                    fut.set_exception(TimeoutError())

            loop.add_reader(sock.fileno(), readable)
            timer = loop.call_later(wait, expire)
            try:
                sock.send(query)
                return await fut
            finally:
                timer.cancel()
                loop.remove_reader(sock.fileno())

    async def _tcp(self, host: str, port: int, qname: str, rdtype: int, wait: float) -> Answer:
        query = build_query(secrets.randbits(16), qname, rdtype)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
        except (OSError, TimeoutError):
            return Answer(NOERROR, [], 0.0, True)  # keep what UDP gave: a listing without its reason
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), wait))[0]
            data = await asyncio.wait_for(reader.readexactly(size), wait)
            return parse_response(data, query, rdtype)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, WireError):
            return Answer(NOERROR, [], 0.0, True)
        finally:
            writer.close()
