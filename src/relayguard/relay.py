"""The relay rule of the mail server, kept in one place so it cannot drift.

Postfix's `permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination`
on an address already resolved by `relayguard.addr.resolve`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass

from .addr import Resolved


@dataclass(frozen=True)
class RelayDecision:
    """The RCPT verdict as an SMTP reply: 250 2.1.5 Ok, or 554 5.7.1 relay denied."""

    accept: bool
    code: int
    enhanced: str
    text: str


_ACCEPT = RelayDecision(True, 250, "2.1.5", "Ok")


def relay_decision(
    rcpt: Resolved, *, authenticated: bool, trusted: bool, original: str
) -> RelayDecision:
    """Accept mail for our own domains; relay anything else only for known clients.

    A routed address is refused for unknown clients even when its domain is
    ours: the next hop may read the leftover '@ ! %' as routing, and we cannot
    know how it is set up (Postfix refuses these too).
    """
    if (rcpt.is_local and not rcpt.routed) or authenticated or trusted:
        return _ACCEPT
    # The client's text goes back into a reply line: keep it on one line.
    shown = "".join("?" if ord(c) < 32 or ord(c) == 127 else c for c in original)
    return RelayDecision(False, 554, "5.7.1", f"<{shown}>: Relay access denied")


def is_trusted(
    ip: str, networks: Collection[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether the client address is in a trusted network (mynetworks).

    An IPv4-mapped IPv6 peer (::ffff:a.b.c.d, as a dual-stack socket reports
    IPv4 clients) is also matched as the IPv4 address it stands for. An
    unparsable address is never trusted.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [addr]
    if addr.version == 6 and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    return any(a in net for a in candidates for net in networks)
