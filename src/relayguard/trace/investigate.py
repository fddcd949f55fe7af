"""From a chain to a case: listings of the untrusted addresses, reverse DNS, abuse contacts.

Everything that touches the network comes in as a callable or an object, so the caller decides
what is looked up and tests pass fakes:

- `ListingLookup`: `ip -> listings`. The multi-list DNSBL checker (issue 6) and relayguard's own
  relay list plug in here; `investigate` asks each lookup about every untrusted public address.
- `ReverseLookup`: `ip -> host name or None`, for hops whose receiving MTA did not record one.
- `ContactFinder` (relayguard.trace.contacts): override file, RDAP, RFC 2142.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .chain import Chain, Relay
from .contacts import Contact, ContactFinder

__all__ = ["Listing", "ListingLookup", "ReverseLookup", "Investigation", "investigate"]


@dataclass(frozen=True)
class Listing:
    """One list that lists an address: the zone (or list name), the answer, the reason text."""

    ip: str
    zone: str
    answer: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"ip": self.ip, "zone": self.zone, "answer": self.answer, "reason": self.reason}


ListingLookup = Callable[[str], Iterable[Listing]]
ReverseLookup = Callable[[str], "str | None"]


@dataclass
class Investigation:
    chain: Chain
    listings: dict[str, list[Listing]] = field(default_factory=dict)
    #: host names found by reverse lookups (only for hops that recorded none)
    reverse: dict[str, str] = field(default_factory=dict)
    #: contacts for the origin and the abused relay, keyed by address
    contacts: dict[str, list[Contact]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def hostnames(self, relay: Relay) -> list[str]:
        names = [relay.hop.rdns] if relay.hop.rdns else []
        if not names and relay.ip in self.reverse:
            names.append(self.reverse[relay.ip])
        return names

    @property
    def listed(self) -> bool:
        """The origin or the abused relay is on a list: the CLI exits 1."""
        return any(self.listings.get(r.ip) for r in (self.chain.origin, self.chain.abused_relay) if r is not None)

    def recipients(self) -> list[Contact]:
        """Whom a report goes to: the origin's contacts, then the relay's, each address once."""
        out: list[Contact] = []
        for r in (self.chain.origin, self.chain.abused_relay):
            for c in self.contacts.get(r.ip, []) if r is not None else []:
                if all(c.address.lower() != o.address.lower() for o in out):
                    out.append(c)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = self.chain.to_dict()
        d["listings"] = {ip: [x.to_dict() for x in xs] for ip, xs in self.listings.items()}
        d["reverse_dns"] = dict(self.reverse)
        d["contacts"] = {ip: [c.to_dict() for c in cs] for ip, cs in self.contacts.items()}
        d["listed"] = self.listed
        d["errors"] = list(self.errors)
        return d


def investigate(chain: Chain, *, lookups: Sequence[ListingLookup] = (), reverse: ReverseLookup | None = None,
                contacts: ContactFinder | None = None) -> Investigation:
    inv = Investigation(chain)
    ips = chain.untrusted_public_ips()
    for ip in ips:
        for lookup in lookups:
            try:
                found = [x for x in lookup(ip)]
            except Exception as e:  # noqa: BLE001 - one failing list must not stop the trace
                inv.errors.append(f"listing lookup for {ip}: {e}")
                continue
            if found:
                inv.listings.setdefault(ip, []).extend(found)
    if reverse is not None:
        for r in chain.untrusted:
            if r.ip and not r.private and not r.hop.rdns and r.ip not in inv.reverse:
                try:
                    name = reverse(r.ip)
                except Exception as e:  # noqa: BLE001
                    inv.errors.append(f"reverse DNS of {r.ip}: {e}")
                    continue
                if name:
                    inv.reverse[r.ip] = name.rstrip(".")
    if contacts is not None:
        for r in (chain.origin, chain.abused_relay):
            if r is not None and r.ip and r.ip not in inv.contacts:
                inv.contacts[r.ip] = contacts.find(r.ip, inv.hostnames(r))
        inv.errors.extend(contacts.errors)
    return inv
