"""How wide a trusted network is, shared by every MTA's rules.

A trusted network (Postfix mynetworks, Exim relay_from_hosts, sendmail Connect:...RELAY,
qmail RELAYCLIENT rules) lets every host in it relay. The question the rules ask is the
same for each MTA: does the range hold addresses the site cannot vouch for?

- the whole address space (0/0, ::/0): anyone on the Internet relays -> open relay;
- public addresses, more than a /24 (IPv4) or /48 (IPv6), the smallest blocks routed on
  the Internet: certainly other people's hosts -> open relay;
- a smaller public range: every host in it relays; fine only if all of them are yours;
- a private range wider than one host: any machine on that LAN relays, including a
  compromised one -> worth knowing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..relay import is_trusted
from .model import Severity

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Blocks that are not reachable from the public Internet (IANA special-purpose registries,
# "globally reachable = false"). A range inside one of these holds no public address.
_NOT_PUBLIC = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
    )
]
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_WIDE_PUBLIC_PREFIX = {4: 24, 6: 48}
# Stand-ins for "a stranger somewhere on the Internet", used to test whether a list of
# trusted networks (with its exclusions) still admits one.
_STRANGERS = ("8.8.8.8", "1.1.1.1", "45.33.32.156", "2001:4860:4860::8888", "2a00:1450:4001:81c::200e")


def parse_network(text: str) -> Network:
    """Postfix/Exim style network: `1.2.3.0/24`, `[::1]/128`, `[2001:db8::]/32`, a bare address.

    Host bits are allowed (`1.2.3.4/24` means 1.2.3.0/24, as the MTAs read it).
    Raises ValueError for anything else.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unbalanced '[' in {text!r}")
        text = text[1:close] + text[close + 1:]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    net = ipaddress.ip_network(text, strict=False)
    return _unmap(net)


def _unmap(net: Network) -> Network:
    """::ffff:a.b.c.d/n (IPv4-mapped) is the IPv4 range a.b.c.d/(n-96)."""
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED):  # type: ignore[arg-type]
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}", strict=False)
    return net


def octet_prefix(text: str) -> Network | None:
    """A sendmail / qmail / Postfix-hash style address prefix: `10`, `192.168`, `1.2.3.` -> network.

    Returns None when the text is not such a prefix.
    """
    parts = text.strip().rstrip(".").split(".")
    if not text.strip() or not 1 <= len(parts) <= 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
        return None
    padded = parts + ["0"] * (4 - len(parts))
    return ipaddress.ip_network(f"{'.'.join(padded)}/{8 * len(parts)}")


def has_public(net: Network) -> bool:
    """Whether the range holds at least one publicly routed address."""
    return not any(net.version == block.version and net.subnet_of(block) for block in _NOT_PUBLIC)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Width:
    severity: Severity | None  # None: one host, or loopback: nothing to report
    text: str  # "every address on the Internet", "a public /16 (65536 addresses)", ...


def width(net: Network) -> Width:
    """Classify one trusted network (see the module docstring)."""
    size = f"/{net.prefixlen} ({net.num_addresses} addresses)"
    if net.prefixlen == 0:
        return Width(Severity.OPEN_RELAY, "every address on the Internet")
    if has_public(net):
        if net.prefixlen < _WIDE_PUBLIC_PREFIX[net.version]:
            return Width(Severity.OPEN_RELAY, f"a public {size}, more than one site's allocation")
        if net.num_addresses > 1:
            return Width(Severity.WEAKNESS, f"a public {size}")
        return Width(None, "one public host")
    if net.num_addresses > 1 and not net.subnet_of(ipaddress.ip_network("127.0.0.0/8" if net.version == 4 else "::1/128")):  # type: ignore[arg-type]
        return Width(Severity.INFO, f"a private {size}")
    return Width(None, "loopback or one private host")


def _public_host(net: Network) -> str | None:
    """A publicly routed address inside `net`, to stand for "a stranger in that range"."""
    if net.prefixlen == 0:
        return _STRANGERS[0] if net.version == 4 else _STRANGERS[3]
    step = max(1, net.num_addresses // 7)
    for k in range(1, 8):
        ip = net.network_address + min(k * step, net.num_addresses - 1)
        if has_public(ipaddress.ip_network(ip)):
            return str(ip)
    return None


def admits_stranger(trusted: list[Network], excluded: list[Network] | None = None) -> bool:
    """Whether a host anywhere on the Internet would be trusted.

    True when a range wider than one site's allocation (an open-relay width) is trusted and
    a public address inside it passes the relay rule's own test
    (`relayguard.relay.is_trusted`) against the trusted list minus the exclusions.
    """
    excluded = excluded or []
    for net in trusted:
        if width(net).severity is not Severity.OPEN_RELAY:
            continue
        probe = _public_host(net)
        if probe and is_trusted(probe, trusted) and not is_trusted(probe, excluded):
            return True
    return False
