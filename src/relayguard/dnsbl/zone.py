"""The listed set of a DNSBL zone, held compactly in memory (pure).

Single IPv4 addresses, the bulk of an open-relay list, live in one sorted `array('I')` (4 bytes
each, like rbldnsd's ip4tset); their answer is the zone's default listing unless an exception
says otherwise. Networks (CIDR) and IPv6 entries are few and kept per prefix length in dicts.
"""

from __future__ import annotations

import ipaddress
from array import array
from bisect import bisect_left
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
            i = bisect_left(self._v4, ip)
            if i == len(self._v4) or self._v4[i] != ip:
                self._v4.insert(i, ip)
            if listing is None or listing == self.default:
                self._v4_other.pop(ip, None)
            else:
                self._v4_other[ip] = listing
        else:
            self._nets.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = listing or self.default
        self.serial += 1

    def remove(self, entry: str | IPNetwork) -> bool:
        net = self._network(entry)
        if net in _TEST_POINTS or self._network(net) in _TEST_POINTS:
            return False
        removed = False
        if net.version == 4 and net.prefixlen == 32:
            ip = int(net.network_address)
            i = bisect_left(self._v4, ip)
            if i < len(self._v4) and self._v4[i] == ip:
                del self._v4[i]
                self._v4_other.pop(ip, None)
                removed = True
        else:
            table = self._nets.get((net.version, net.prefixlen), {})
            removed = table.pop(int(net.network_address), None) is not None
        if removed:
            self.serial += 1
        return removed

    def replace_all(self, singles_v4: list[int]) -> None:
        """Bulk load of single IPv4 addresses with the default listing (import, start-up)."""
        self._v4 = array("I", sorted(set(singles_v4) | set(self._v4)))
        self.serial += 1

    def lookup(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Listing | None:
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value = int(ip)
        if ip.version == 4:
            i = bisect_left(self._v4, value)
            if i < len(self._v4) and self._v4[i] == value:
                return self._v4_other.get(value, self.default)
        bits = 32 if ip.version == 4 else 128
        for (version, prefix), table in self._nets.items():
            if version == ip.version:
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


def query_ip(labels: list[bytes]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a DNSBL query name stands for (RFC 5782 2.1/2.4), labels below the zone, or None."""
    if len(labels) == 4:
        octets = []
        for label in reversed(labels):
            if not label.isdigit() or len(label) > 3 or (len(label) > 1 and label[0:1] == b"0"):
                return None
            n = int(label)
            if n > 255:
                return None
            octets.append(n)
        return ipaddress.IPv4Address(bytes(octets))
    if len(labels) == 32:
        hexdigits = b"".join(reversed(labels)).lower()
        if any(len(label) != 1 for label in labels) or not all(c in b"0123456789abcdef" for c in hexdigits):
            return None
        return ipaddress.IPv6Address(int(hexdigits, 16))
    return None
