"""Answers to DNSBL queries (RFC 5782), from a Zone, as wire bytes (pure).

Listed: A (127/8 code) and TXT (reason with '$' replaced by the IP). Not listed: NXDOMAIN with the
SOA for negative caching (RFC 2308). The apex answers SOA and NS. Names outside the zone get
REFUSED, malformed packets FORMERR (or nothing when even the header is unreadable).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass

from . import wire
from .zone import Zone, query_address


_CACHE_SIZE = 65536  # responses kept; emptied when full or when the zone changes
_CACHE_MAX_QUERY = 512  # larger packets are unusual: not worth a cache slot


@dataclass(frozen=True)
class ZoneInfo:
    ttl: int = 2100  # rbldnsd's default, 35 minutes
    negative_ttl: int = 2100  # SOA minimum: how long a "not listed" answer may be cached
    nameservers: tuple[str, ...] = ()  # default: ns1.<zone>
    hostmaster: str = ""  # default: hostmaster.<zone>
    refresh: int = 3600
    retry: int = 600
    expire: int = 604800


class Responder:
    def __init__(self, zone: Zone, info: ZoneInfo = ZoneInfo()) -> None:
        self.zone = zone
        self.info = info
        self.origin_labels = tuple(label.encode() for label in zone.origin.split("."))
        self.nameservers = info.nameservers or (f"ns1.{zone.origin}",)
        self.hostmaster = info.hostmaster or f"hostmaster.{zone.origin}"
        self._epoch = int(time.time())
        self._soa_version = -1
        self._soa = b""
        self._cache: dict[tuple[bool, bytes], bytes] = {}
        self._cache_serial = -1

    @property
    def serial(self) -> int:
        """Grows with every change and across restarts (start time + changes since)."""
        return (self._epoch + self.zone.serial) & 0xFFFFFFFF

    def soa_rdata(self) -> bytes:
        if self._soa_version != self.zone.serial:
            i = self.info
            self._soa = (
                wire.encode_name(self.nameservers[0])
                + wire.encode_name(self.hostmaster)
                + struct.pack("!IIIII", self.serial, i.refresh, i.retry, i.expire, i.negative_ttl)
            )
            self._soa_version = self.zone.serial
        return self._soa

    def answer(self, data: bytes, *, tcp: bool = False) -> bytes | None:
        """The response to one packet (None: drop it), from the cache when the zone is unchanged.

        A response depends only on the packet after its ID and on the zone, so the packet without
        its ID is the cache key; any zone change (a new serial) empties the cache.
        """
        if self._cache_serial != self.zone.serial:
            self._cache.clear()
            self._cache_serial = self.zone.serial
        key = (tcp, data[2:])
        cached = self._cache.get(key)
        if cached is not None:
            return data[:2] + cached
        out = self._answer(data, tcp)
        if out is not None and len(data) <= _CACHE_MAX_QUERY:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = out[2:]
        return out

    def _answer(self, data: bytes, tcp: bool) -> bytes | None:
        try:
            q = wire.parse_query(data)
        except wire.Malformed as e:
            return wire.error_response(e)
        max_size = None if tcp else min(q.edns_size or wire.MAX_UDP_PLAIN, wire.MAX_UDP_EDNS)
        if q.opcode != wire.OPCODE_QUERY:
            return wire.response(q, wire.NOTIMP, authoritative=False, max_size=max_size)
        n = len(self.origin_labels)
        if q.qclass not in (wire.CLASS_IN, wire.TYPE_ANY) or q.labels[len(q.labels) - n :] != self.origin_labels or len(q.labels) < n:
            return wire.response(q, wire.REFUSED, authoritative=False, max_size=max_size)
        prefix = q.labels[: len(q.labels) - n]
        apex = wire.pointer(q.name_offsets[len(prefix)])
        negative = [wire.rr(apex, wire.TYPE_SOA, self.info.negative_ttl, self.soa_rdata())]
        if q.qtype == wire.TYPE_AXFR:
            return wire.response(q, wire.REFUSED, max_size=max_size)
        if not prefix:
            return self._apex(q, apex, negative, max_size)
        address = query_address(list(prefix))
        listing = self.zone.lookup_int(address[0], address[1]) if address is not None else None
        if listing is None or address is None:
            return wire.response(q, wire.NXDOMAIN, authority=negative, max_size=max_size)
        qname = wire.pointer(12)
        answers = []
        if q.qtype in (wire.TYPE_A, wire.TYPE_ANY):
            answers.append(wire.rr(qname, wire.TYPE_A, self.info.ttl, ipaddress.IPv4Address(listing.code).packed))
        if q.qtype in (wire.TYPE_TXT, wire.TYPE_ANY):
            answers.append(wire.rr(qname, wire.TYPE_TXT, self.info.ttl, wire.txt_rdata(listing.txt(address[2]))))
        return wire.response(q, wire.NOERROR, answers, [] if answers else negative, max_size=max_size)

    def _apex(self, q: wire.Query, apex: bytes, negative: list[bytes], max_size: int | None) -> bytes:
        answers = []
        if q.qtype in (wire.TYPE_SOA, wire.TYPE_ANY):
            answers.append(wire.rr(apex, wire.TYPE_SOA, self.info.ttl, self.soa_rdata()))
        if q.qtype in (wire.TYPE_NS, wire.TYPE_ANY):
            answers += [wire.rr(apex, wire.TYPE_NS, self.info.ttl, wire.encode_name(ns)) for ns in self.nameservers]
        return wire.response(q, wire.NOERROR, answers, [] if answers else negative, max_size=max_size)
