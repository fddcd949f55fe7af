"""The listed set of a DNSBL zone, held compactly in memory (pure).

Single IPv4 addresses, the bulk of an open-relay list, live in one sorted `array('I')` (4 bytes
each, like rbldnsd's ip4tset); their answer is the zone's default listing unless an exception
says otherwise. Networks (CIDR) and IPv6 entries are few and kept per prefix length in dicts.

Changes replace these containers instead of editing them, so the DNS thread always reads a
consistent snapshot without a lock.
"""

from __future__ import annotations

import heapq
import ipaddress
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_CHUNK = 65536  # addresses sorted at a time by add_many


@dataclass(frozen=True)
class Listing:
    """What a listed address answers: an A record in 127/8 and a TXT reason ('$' = the IP)."""

    code: str = "127.0.0.2"
    reason: str = "Open relay: listed after a confirmed relay test; see https://bl.relayguard.test/lookup?ip=$"

    def txt(self, ip: str) -> str:
        return self.reason.replace("$", ip)


# RFC 5782 section 5: every list answers its test points.
_TEST_POINTS = (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("::ffff:7f00:2/128"))


class Zone:
    def __init__(self, origin: str, default: Listing = Listing()) -> None:
        self.origin = origin.lower().rstrip(".")
        self.default = default
        self._v4 = array("I")
        self._v4_other: dict[int, Listing] = {}  # single IPv4 entries whose answer is not the default
        self._nets: dict[tuple[int, int], dict[int, Listing]] = {}  # (version, prefix) -> {network int: listing}
        self.serial = 1
        for net in _TEST_POINTS:
            self.add(net, Listing(reason="RFC 5782 test point"))

    def __len__(self) -> int:
        return len(self._v4) + sum(len(d) for d in self._nets.values())

    @staticmethod
    def _network(entry: str | IPNetwork) -> IPNetwork:
        net = ipaddress.ip_network(entry, strict=False) if isinstance(entry, str) else entry
        if net.version == 6 and net.prefixlen == 128 and net.network_address.ipv4_mapped is not None:
            return ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/32")
        return net

    def add(self, entry: str | IPNetwork, listing: Listing | None = None) -> None:
        """List an address or network (idempotent; a new listing replaces the old answer)."""
        net = self._network(entry)
        if net.version == 4 and net.prefixlen == 32:
            ip = int(net.network_address)
            singles = self._v4
            i = bisect_left(singles, ip)
            if i == len(singles) or singles[i] != ip:
                self._v4 = singles[:i] + array("I", [ip]) + singles[i:]
            if listing is None or listing == self.default:
                self._v4_other.pop(ip, None)
            else:
                self._v4_other[ip] = listing
        else:
            key = (net.version, net.prefixlen)
            nets = dict(self._nets)
            nets[key] = {**nets.get(key, {}), int(net.network_address): listing or self.default}
            self._nets = nets
        self.serial += 1

    def remove(self, entry: str | IPNetwork) -> bool:
        net = self._network(entry)
        if net in _TEST_POINTS or self._network(net) in _TEST_POINTS:
            return False
        removed = False
        if net.version == 4 and net.prefixlen == 32:
            ip = int(net.network_address)
            singles = self._v4
            i = bisect_left(singles, ip)
            if i < len(singles) and singles[i] == ip:
                self._v4 = singles[:i] + singles[i + 1 :]
                self._v4_other.pop(ip, None)
                removed = True
        else:
            key = (net.version, net.prefixlen)
            table = dict(self._nets.get(key, {}))
            removed = table.pop(int(net.network_address), None) is not None
            self._nets = {**self._nets, key: table}
        if removed:
            self.serial += 1
        return removed

    def add_many(self, singles_v4: Iterable[int]) -> None:
        """Bulk load of single IPv4 addresses with the default listing (import, start-up).

        Sorted in chunks and merged, so the peak memory stays near the final 4 bytes per entry
        instead of a list of a million Python ints.
        """
        runs = [self._v4]
        chunk = array("I")
        for ip in singles_v4:
            chunk.append(ip)
            if len(chunk) >= _CHUNK:
                runs.append(array("I", sorted(chunk)))
                chunk = array("I")
        runs.append(array("I", sorted(chunk)))
        merged = array("I")
        last = -1
        for ip in heapq.merge(*runs):
            if ip != last:
                merged.append(ip)
                last = ip
        self._v4 = merged
        self.serial += 1

    def replace(self, entries: Iterable[tuple[str, Listing]]) -> None:
        """Serve exactly these entries (plus the test points) from now on: the store's listed set.

        Built aside and swapped in, so queries meanwhile see the old set or the new one.
        """
        fresh = Zone(self.origin, self.default)
        singles: list[int] = []
        for entry, listing in entries:
            net = self._network(entry)
            if net.version == 4 and net.prefixlen == 32 and listing == self.default:
                singles.append(int(net.network_address))
            else:
                fresh.add(net, listing)
        fresh.add_many(singles)
        self._v4_other, self._v4, self._nets = fresh._v4_other, fresh._v4, fresh._nets
        self.serial += 1

    def lookup(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Listing | None:
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return self.lookup_int(ip.version, int(ip))

    def lookup_int(self, version: int, value: int) -> Listing | None:
        """The answer for an address given as (4 or 6, integer): the DNS fast path."""
        if version == 4:
            singles = self._v4  # one snapshot: changes replace the array, never edit it in place
            i = bisect_left(singles, value)
            if i < len(singles) and singles[i] == value:
                return self._v4_other.get(value, self.default)
        elif value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d is the IPv4 address
            return self.lookup_int(4, value & 0xFFFFFFFF)
        bits = 32 if version == 4 else 128
        for (v, prefix), table in self._nets.items():
            if v == version:
                hit = table.get(value >> (bits - prefix) << (bits - prefix))
                if hit is not None:
                    return hit
        return None

    def entries(self) -> list[tuple[IPNetwork, Listing]]:
        """Every entry (for exports and zone transfers), IPv4 singles first, in address order."""
        out: list[tuple[IPNetwork, Listing]] = [
            (ipaddress.ip_network(ip), self._v4_other.get(ip, self.default)) for ip in self._v4
        ]
        for (version, prefix), table in sorted(self._nets.items()):
            cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
            out += [(cls((net, prefix)), listing) for net, listing in sorted(table.items())]
        return out


def query_address(labels: list[bytes]) -> tuple[int, int, str] | None:
    """(version, integer, text) of the address a DNSBL query name stands for (RFC 5782 2.1/2.4),
    from the labels below the zone; None when they are no address."""
    if len(labels) == 4:
        value = 0
        for label in reversed(labels):
            if not label.isdigit() or len(label) > 3 or (len(label) > 1 and label[0] == 48):
                return None
            n = int(label)
            if n > 255:
                return None
            value = value << 8 | n
        return 4, value, b".".join(reversed(labels)).decode()
    if len(labels) == 32:
        if any(len(label) != 1 for label in labels):
            return None
        try:
            value = int(b"".join(reversed(labels)), 16)
        except ValueError:
            return None
        return 6, value, str(ipaddress.IPv6Address(value))
    return None
