"""The relay chain of one message: its Received fields newest first, split where trust ends.

Pure: values in, a `Chain` out. Trust works as SpamAssassin's does (REFERENCES.md section 5):

- with trusted / internal / MSA networks configured, a relay stays trusted while it is in the
  trusted networks or shows authentication; the first that is neither ends the trusted part
  for every older hop; a relay in the MSA networks makes every older hop trusted too (the
  message was submitted there);
- with nothing configured, trust is inferred: a relay stays trusted while its address is
  private or the hop shows authentication, and the first relay failing both ends trust.

Findings then name the last trusted hop, the first untrusted hop (the host that handed the
message to us), the probable origin (walking down the untrusted part while each hop's `by`
matches the newer hop's sender, as SpamCop does), the relay the origin used, and what looks
wrong: broken or forged chains, private addresses outside the trusted part, time travel,
lines that cannot be read, HELO names that impersonate us.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import Message
from typing import Any

from .psl import is_ip_literal, registered_domain
from .received import HOP, SKIP, Hop, classify_received, normalise_ip

__all__ = ["TrustConfig", "Relay", "Finding", "Chain", "analyse", "analyse_message", "is_private", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not on the public Internet: RFC 1918, loopback, link-local, shared address space (CGNAT),
# "this network", IPv6 loopback / unspecified / link-local / unique local. Documentation
# prefixes (192.0.2.0/24, 2001:db8::/32...) are deliberately *not* here: examples use them as
# stand-ins for public hosts.
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
              "0.0.0.0/8", "::1/128", "::/128", "fe80::/10", "fc00::/7")
)


def is_private(ip: str) -> bool:
    """True for addresses that are not on the public Internet (see _PRIVATE); False for junk."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in _PRIVATE if net.version == addr.version)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs or single addresses -> networks; ValueError names the bad one."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP network (CIDR)") from None
    return tuple(out)


@dataclass(frozen=True)
class TrustConfig:
    trusted: tuple[Network, ...] = ()
    internal: tuple[Network, ...] = ()
    msa: tuple[Network, ...] = ()
    #: headers such as X-Originating-IP whose address is taken as the oldest hop
    originating_headers: tuple[str, ...] = ()
    #: clocks differ; an older hop later than a newer one by more than this is time travel
    max_skew: timedelta = timedelta(minutes=10)

    @classmethod
    def from_strings(cls, trusted: Iterable[str] = (), internal: Iterable[str] = (), msa: Iterable[str] = (),
                     originating_headers: Iterable[str] = (), max_skew_seconds: float = 600.0) -> TrustConfig:
        return cls(parse_networks(trusted), parse_networks(internal), parse_networks(msa),
                   tuple(originating_headers), timedelta(seconds=max_skew_seconds))

    @property
    def configured(self) -> bool:
        return bool(self.trusted or self.internal)


@dataclass
class Relay:
    """One parsed hop in the chain. `index` is the Received field's position (0 = top, newest)."""

    index: int
    hop: Hop
    trusted: bool = False
    internal: bool = False
    msa: bool = False
    private: bool = False
    #: from an originating-IP header, not a Received field
    synthetic: bool = False
    header: str = "Received"

    @property
    def ip(self) -> str:
        return self.hop.ip

    def label(self) -> str:
        name = self.hop.rdns or self.hop.helo
        return f"{self.hop.ip} ({name})" if name and self.hop.ip else (self.hop.ip or name or "?")


@dataclass(frozen=True)
class Finding:
    """kind: last-trusted, first-untrusted, origin, relay, by-mismatch, private-untrusted,
    time-travel, unparseable, forged-rdns, helo-forged, forged-line, authenticated-relay, no-relays."""

    kind: str
    message: str
    index: int | None = None
    ip: str = ""
    severity: str = "info"  # info | warning

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "index": self.index, "ip": self.ip, "message": self.message}


@dataclass
class Chain:
    relays: list[Relay] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    unparseable: list[tuple[int, str]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    inferred: bool = True
    received_count: int = 0
    last_trusted: Relay | None = None
    first_untrusted: Relay | None = None
    origin: Relay | None = None
    #: the untrusted host that accepted the message from the origin and passed it on (an open
    #: relay or proxy when the origin is a spammer; the sender's smarthost otherwise)
    abused_relay: Relay | None = None

    @property
    def trusted(self) -> list[Relay]:
        return [r for r in self.relays if r.trusted]

    @property
    def untrusted(self) -> list[Relay]:
        return [r for r in self.relays if not r.trusted]

    def untrusted_public_ips(self) -> list[str]:
        """The addresses worth a DNSBL lookup: untrusted, public, each once, newest first."""
        seen: list[str] = []
        for r in self.untrusted:
            if r.ip and not r.private and r.ip not in seen:
                seen.append(r.ip)
        return seen

    def to_dict(self) -> dict[str, Any]:
        def relay(r: Relay | None) -> dict[str, Any] | None:
            if r is None:
                return None
            h = r.hop
            return {
                "index": r.index, "header": r.header, "ip": h.ip, "rdns": h.rdns, "helo": h.helo, "by": h.by,
                "ident": h.ident, "envfrom": h.envfrom, "id": h.id, "auth": h.auth, "with": h.with_, "for": h.for_,
                "date": h.date.isoformat() if isinstance(h.date, datetime) else h.date, "tls": h.tls,
                "trusted": r.trusted, "internal": r.internal, "msa": r.msa, "private": r.private,
                "synthetic": r.synthetic,
            }

        return {
            "received": self.received_count,
            "trust": "inferred" if self.inferred else "configured",
            "relays": [relay(r) for r in self.relays],
            "skipped": self.skipped,
            "unparseable": [{"index": i, "field": text} for i, text in self.unparseable],
            "last_trusted": relay(self.last_trusted),
            "first_untrusted": relay(self.first_untrusted),
            "origin": relay(self.origin),
            "abused_relay": relay(self.abused_relay),
            "findings": [f.to_dict() for f in self.findings],
        }


# --------------------------------------------------------------------------- analysis

_IP_IN_TEXT = re.compile(r"(?<![\w.:])(\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w.:])")


def _in(ip: str, nets: Sequence[Network]) -> bool:
    if not ip or not nets:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in n for n in nets if n.version == addr.version)


def _originating_ip(value: str) -> str:
    for m in _IP_IN_TEXT.finditer(value[:512]):
        ip = normalise_ip(m.group(1))
        if ip:
            return ip
    return ""


def analyse(received: Sequence[str], config: TrustConfig | None = None,
            headers: Mapping[str, Sequence[str]] | None = None) -> Chain:
    """Received field values (top first, as they appear) and, for originating-IP headers,
    the message's other header values by name -> the chain with its findings."""
    config = config or TrustConfig()
    chain = Chain(inferred=not config.configured, received_count=len(received))
    for index, value in enumerate(received):
        kind, hop = classify_received(value)
        if kind == HOP and hop is not None:
            chain.relays.append(Relay(index=index, hop=hop, private=is_private(hop.ip)))
        elif kind == SKIP:
            chain.skipped.append(index)
        else:
            chain.unparseable.append((index, " ".join(str(value).split())[:300]))
    if headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        for name in config.originating_headers:
            for value in lowered.get(name.lower(), ()):
                ip = _originating_ip(str(value))
                if ip:
                    chain.relays.append(Relay(index=len(received), hop=Hop(ip=ip), private=is_private(ip),
                                              synthetic=True, header=name))
                    break
            else:
                continue
            break
    _assign_trust(chain, config)
    _find(chain, config)
    return chain


def analyse_message(msg: Message, config: TrustConfig | None = None) -> Chain:
    """The same from a parsed message (email.message.Message)."""
    config = config or TrustConfig()
    received = [str(v) for v in (msg.get_all("Received") or [])]
    headers = {name: [str(v) for v in (msg.get_all(name) or [])] for name in config.originating_headers}
    return analyse(received, config, headers)


def _assign_trust(chain: Chain, config: TrustConfig) -> None:
    trusted_nets = config.trusted or config.internal
    internal_nets = config.internal or config.trusted
    in_trusted = in_internal = True
    found_msa = False
    for r in chain.relays:
        auth = bool(r.hop.auth)
        if in_trusted and not found_msa:
            if not config.configured:
                if not (r.private or auth):
                    in_trusted = in_internal = False
            elif not auth and not _in(r.ip, trusted_nets):
                in_trusted = in_internal = False
            else:
                if in_internal and not auth and not _in(r.ip, internal_nets):
                    in_internal = False
                if _in(r.ip, config.msa):
                    found_msa = r.msa = True
        r.trusted, r.internal = in_trusted, in_internal


def _names(r: Relay) -> list[str]:
    return [n.rstrip(".").lower() for n in (r.hop.rdns, r.hop.helo) if n and not is_ip_literal(n)]


def _consistent(newer: Relay, older: Relay) -> bool | None:
    """Does the older hop's `by` name the host the newer hop received from? None: cannot tell."""
    by = older.hop.by.strip().rstrip(".").lower()
    if not by:
        return None
    if is_ip_literal(by):
        return normalise_ip(by) == newer.ip
    names = _names(newer)
    if not names:
        return None  # the newer hop recorded only an address: nothing to compare a name with
    if by in names:
        return True
    if "." not in by:  # a short host name: compare with the first label
        return any(n.split(".", 1)[0] == by for n in names)
    by_domain = registered_domain(by)
    return bool(by_domain) and any(registered_domain(n) == by_domain for n in names)


def _find(chain: Chain, config: TrustConfig) -> None:
    relays, add = chain.relays, chain.findings.append
    if not relays:
        add(Finding("no-relays", "no Received field names a relay: nothing to trace", severity="warning"))
        return
    trusted = [r for r in relays if r.trusted]
    chain.last_trusted = trusted[-1] if trusted else None
    first_pos = next((i for i, r in enumerate(relays) if not r.trusted), None)
    mode = "inferred" if chain.inferred else "configured"
    if chain.last_trusted:
        r = chain.last_trusted
        add(Finding("last-trusted", f"last trusted hop: {r.label()} received by {r.hop.by or '?'} ({mode} trust)",
                    r.index, r.ip))
    if first_pos is None:
        add(Finding("first-untrusted", "every hop is trusted: the message did not come from outside", severity="info"))
        return
    first = chain.first_untrusted = relays[first_pos]
    add(Finding("first-untrusted", f"first untrusted hop (handed the message to us): {first.label()}",
                first.index, first.ip))

    our_names = {r.hop.by.rstrip(".").lower() for r in trusted if r.hop.by}
    if first.hop.by:
        our_names.add(first.hop.by.rstrip(".").lower())

    # walk down the untrusted part while the chain holds together
    origin = first if (first.ip and not first.private) else None
    origin_pos = first_pos if origin else None
    for pos in range(first_pos + 1, len(relays)):
        newer, older = relays[pos - 1], relays[pos]
        if older.synthetic:
            if older.ip and not older.private:
                origin, origin_pos = older, pos
            break
        ok = _consistent(newer, older)
        if ok is False:
            add(Finding("by-mismatch",
                        f"hop {older.index} says it was received by {older.hop.by!r}, but the newer hop came from "
                        f"{newer.label()}: the chain is broken or forged here; older hops are not believed",
                        older.index, older.ip, "warning"))
            break
        if older.hop.by.rstrip(".").lower() in our_names and older.hop.by:
            add(Finding("forged-line", f"hop {older.index} below the trust boundary claims to be received by our own "
                        f"host {older.hop.by!r}: a forged Received field", older.index, older.ip, "warning"))
            break
        if older.ip and not older.private:
            origin, origin_pos = older, pos
    chain.origin = origin
    if origin is not None:
        how = f" ({origin.header})" if origin.synthetic else ""
        add(Finding("origin", f"probable origin: {origin.label()}{how}", origin.index, origin.ip))
        # the nearest public host above the origin accepted it from outside and passed it on
        relay = next((relays[p] for p in range(origin_pos - 1, first_pos - 1, -1)
                      if relays[p].ip and not relays[p].private), None) if origin_pos is not None else None
        if relay is not None:
            chain.abused_relay = relay
            add(Finding("relay", f"relay used by the origin: {relay.label()} accepted it from {origin.ip} and passed it on",
                        relay.index, relay.ip, "warning"))
            if origin.hop.auth:
                add(Finding("authenticated-relay",
                            f"the origin authenticated ({origin.hop.auth}) at the relay: a compromised account, "
                            "not an open relay", origin.index, origin.ip))
    else:
        add(Finding("origin", "no public origin address could be found", severity="warning"))

    untrusted = relays[first_pos:]
    for r in untrusted:
        if r.private and r.ip:
            add(Finding("private-untrusted", f"private address {r.ip} in the untrusted part (hop {r.index})",
                        r.index, r.ip, "warning" if r is not relays[-1] else "info"))
        if r.hop.rdns_forged:
            add(Finding("forged-rdns", f"hop {r.index}: the receiving MTA could not confirm the reverse DNS of {r.ip}",
                        r.index, r.ip))
        helo = r.hop.helo.strip()
        if helo:
            if helo.rstrip(".").lower() in our_names:
                add(Finding("helo-forged", f"hop {r.index}: {r.ip} greeted with our own name {helo!r}",
                            r.index, r.ip, "warning"))
            elif is_ip_literal(helo):
                claimed = normalise_ip(helo)
                if claimed and claimed != r.ip and not is_private(claimed) and r.ip:
                    add(Finding("helo-forged", f"hop {r.index}: {r.ip} greeted as another public address {helo!r}",
                                r.index, r.ip, "warning"))

    first_untrusted_index = first.index
    for index, text in chain.unparseable:
        if index > first_untrusted_index:
            add(Finding("unparseable", f"Received field {index} in the untrusted part cannot be read: {text[:120]!r}",
                        index, severity="warning"))

    dated = [r for r in relays if isinstance(r.hop.date, datetime) and not r.synthetic]
    for newer, older in zip(dated, dated[1:]):
        assert isinstance(newer.hop.date, datetime) and isinstance(older.hop.date, datetime)
        gap = older.hop.date - newer.hop.date
        if gap > config.max_skew:
            add(Finding("time-travel", f"hop {older.index} is dated {_span(gap)} after the newer hop {newer.index}: "
                        "a wrong clock or a forged line", older.index, older.ip,
                        "warning" if not older.trusted else "info"))


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 60} min"
