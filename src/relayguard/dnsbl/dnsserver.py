"""The DNSBL's DNS server: UDP in a thread, TCP in asyncio, answers from the in-memory Zone.

TCP carries the same
queries with a length prefix, several per connection, plus zone transfers (AXFR) for the
addresses in `axfr_allow`; every change to the zone sends NOTIFY to the configured secondaries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import struct
import threading
from collections.abc import Iterator

from .. import log, metrics
from ..config import DNSBLSettings
from ..hostport import parse_hostport
from . import wire
from .responder import Responder, ZoneInfo
from .zone import Zone

_TCP_IDLE = 10.0
_AXFR_BATCH = 200  # records per AXFR message


def zone_info(settings: DNSBLSettings) -> ZoneInfo:
    return ZoneInfo(
        ttl=settings.ttl,
        negative_ttl=settings.negative_ttl,
        nameservers=tuple(settings.nameservers),
        hostmaster=settings.hostmaster,
    )


class _UDPThread:
    """UDP queries answered in a thread of their own with blocking recvfrom/sendto.

    Per datagram this skips the event loop entirely (selector, callbacks), which is most of
    the cost of a query in asyncio; the zone is read lock-free (see zone.py).
    """

    def __init__(self, responder: Responder, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.5)
        self.responder = responder
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="dnsbl-udp", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        receive, send, answer = self.sock.recvfrom, self.sock.sendto, self.responder.answer
        # metrics.count_dns inlined: plain ints, read by the metrics collector at scrape time
        counts, apex = metrics.DNS_UDP, metrics.dns_apex_end(self.responder.origin_labels)
        nodata, listed, at_apex, dropped = metrics.DNS_NODATA, metrics.DNS_LISTED, metrics.DNS_APEX, metrics.DNS_DROPPED
        while not self._stopping.is_set():
            try:
                data, peer = receive(65535)
            except OSError:  # timeout (to check for stop), or a client's ICMP error
                continue
            try:
                out = answer(data)
                if out is not None:
                    send(out, peer)
                    code = out[3] & 15
                    counts[code or (nodata if not (out[6] or out[7]) else at_apex if out[apex] == 0 else listed)] += 1
                else:
                    counts[dropped] += 1
            except Exception as e:  # one bad packet must never stop the server
                log.event("dns-error", client=peer[0], error=repr(e))

    def stop(self) -> None:
        self._stopping.set()
        self.thread.join(2)
        self.sock.close()


class DNSServer:
    def __init__(self, settings: DNSBLSettings, zone: Zone) -> None:
        self.settings = settings
        self.zone = zone
        self.responder = Responder(zone, zone_info(settings))
        self.allow = [ipaddress.ip_network(n, strict=False) for n in settings.axfr_allow]
        self._udp: _UDPThread | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._notified_serial = 0

    async def start(self) -> None:
        host, port = parse_hostport(self.settings.dns_listen)
        self._udp = _UDPThread(self.responder, host, port)
        self._tcp = await asyncio.start_server(self._tcp_client, host, port, reuse_address=True)
        self._notified_serial = self.zone.serial
        log.event("listen", service="dnsbl-dns", address=self.settings.dns_listen, zone=self.zone.origin)

    async def stop(self) -> None:
        if self._udp is not None:
            await asyncio.to_thread(self._udp.stop)
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = ipaddress.ip_address(writer.get_extra_info("peername")[0])
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE))[0]
                data = await asyncio.wait_for(reader.readexactly(size), _TCP_IDLE)
                if self._is_axfr(data):
                    await self._axfr(data, peer, writer)
                    continue
                out = self.responder.answer(data, tcp=True)
                metrics.count_dns(metrics.DNS_TCP, out, metrics.dns_apex_end(self.responder.origin_labels))
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _is_axfr(self, data: bytes) -> bool:
        try:
            return wire.parse_query(data).qtype == wire.TYPE_AXFR
        except wire.Malformed:
            return False

    async def _axfr(self, data: bytes, peer: ipaddress.IPv4Address | ipaddress.IPv6Address, writer: asyncio.StreamWriter) -> None:
        """RFC 5936: SOA, every record, SOA; refused unless the client is in axfr_allow."""
        q = wire.parse_query(data)
        if not any(peer in net for net in self.allow) or q.labels != self.responder.origin_labels:
            out = wire.response(q, wire.REFUSED, authoritative=False)
            writer.write(struct.pack("!H", len(out)) + out)
            metrics.DNS_AXFR.labels("refused").inc()
            return
        metrics.DNS_AXFR.labels("sent").inc()
        log.event("axfr", client=peer, zone=self.zone.origin, serial=self.responder.serial)
        for message in self.transfer_messages(q):
            writer.write(struct.pack("!H", len(message)) + message)
            await writer.drain()

    def transfer_messages(self, q: wire.Query) -> Iterator[bytes]:
        """The zone as a stream of messages of at most _AXFR_BATCH records each (bounded memory)."""
        r, origin = self.responder, wire.pointer(12)
        ttl = self.settings.ttl
        soa = wire.rr(origin, wire.TYPE_SOA, ttl, r.soa_rdata())
        batch = [soa] + [wire.rr(origin, wire.TYPE_NS, ttl, wire.encode_name(ns)) for ns in r.nameservers]
        for net, listing in self.zone.entries():
            for name in _names(net):
                owner = wire.encode_name(f"{name}.{self.zone.origin}")
                batch.append(wire.rr(owner, wire.TYPE_A, ttl, ipaddress.IPv4Address(listing.code).packed))
                batch.append(wire.rr(owner, wire.TYPE_TXT, ttl, wire.txt_rdata(listing.txt(str(net.network_address)))))
            if len(batch) >= _AXFR_BATCH:
                yield wire.response(q, wire.NOERROR, batch)
                batch = []
        yield wire.response(q, wire.NOERROR, batch + [soa])

    async def notify_if_changed(self) -> None:
        """Send NOTIFY (RFC 1996) to each secondary once per new serial."""
        if self.zone.serial == self._notified_serial or not self.settings.notify:
            return
        self._notified_serial = self.zone.serial
        packet = _notify_packet(self.zone.origin)
        loop = asyncio.get_running_loop()
        for target in self.settings.notify:
            host, port = parse_hostport(target, 53)
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
            transport.sendto(packet)
            transport.close()
            metrics.DNS_NOTIFY.inc()
            log.event("notify", secondary=target, zone=self.zone.origin, serial=self.responder.serial)


def _names(net: ipaddress.IPv4Network | ipaddress.IPv6Network, limit: int = 65536) -> list[str]:
    """Query names covering a network, as wildcards where the prefix falls on a label boundary."""
    if net.version == 4:
        octets = str(net.network_address).split(".")
        if net.prefixlen % 8 == 0:
            kept = list(reversed(octets[: net.prefixlen // 8]))
            return [".".join((["*"] if net.prefixlen < 32 else []) + kept)]
        return [".".join(reversed(str(ip).split("."))) for ip in list(net)[:limit]]
    nibbles = net.network_address.exploded.replace(":", "")
    if net.prefixlen % 4 == 0:
        kept = list(reversed(nibbles[: net.prefixlen // 4]))
        return [".".join((["*"] if net.prefixlen < 128 else []) + kept)]
    return [".".join(reversed(f"{int(ip):032x}")) for ip in list(net)[:limit]]


def _notify_packet(origin: str) -> bytes:
    header = struct.pack("!HHHHHH", secrets.randbits(16), (wire.OPCODE_NOTIFY << 11) | wire.FLAG_AA, 1, 0, 0, 0)
    return header + wire.encode_name(origin) + struct.pack("!HH", wire.TYPE_SOA, wire.CLASS_IN)
