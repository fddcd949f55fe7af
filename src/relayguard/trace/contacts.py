"""Whom to tell: abuse contacts for an address or a host name.

Three sources, in this order (SpamCop's order):

1. an override file in abuse.net style, `domain: address[, address...]`, with `#` comments;
   keys may also be IP addresses or CIDR networks. A host matches its own name or any parent
   domain (`mail.example.com` matches `example.com`), the most specific key winning;
2. the RDAP abuse role of the network holding the address (RFC 9083 entities with the role
   "abuse"), only when network lookups are allowed. `RdapClient` is the interface; `HttpRdap`
   speaks HTTP(S) to an RDAP service (default the rdap.org bootstrap redirector); tests serve
   RDAP JSON from a local server;
3. RFC 2142 `abuse@` the registered domain of the host's (reverse DNS) name, found with the
   Public Suffix List.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .psl import is_ip_literal, registered_domain

__all__ = ["Contact", "AbuseOverrides", "OverrideError", "RdapClient", "RdapError", "HttpRdap", "rdap_abuse_emails",
           "rfc2142_contact", "ContactFinder"]

_ADDRESS = re.compile(r"^[^@\s<>(),;:\"]+@[^@\s<>(),;:\"]+\.[^@\s<>(),;:\"]+$")
# an override is the operator's own word: a single-label domain (postmaster@localhost, a lab's
# local mailbox) is allowed there, not in what RDAP servers hand out
_OVERRIDE_ADDRESS = re.compile(r"^[^@\s<>(),;:\"]+@[^@\s<>(),;:\".]+(?:\.[^@\s<>(),;:\".]+)*$")


@dataclass(frozen=True)
class Contact:
    address: str
    source: str  # "override", "rdap", "rfc2142"
    target: str  # the domain, address or network it was found for
    note: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"address": self.address, "source": self.source, "target": self.target, "note": self.note}


class OverrideError(ValueError):
    """A line of the override file that cannot be used; the message names file and line."""


@dataclass
class AbuseOverrides:
    domains: dict[str, list[str]] = field(default_factory=dict)
    networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, list[str]]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, source: str = "<overrides>") -> AbuseOverrides:
        out = cls()
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            key, sep, value = line.rpartition(":")  # an address has no ':', an IPv6 key does
            if not sep:
                raise OverrideError(f"{source}:{n}: expected 'domain: address', got {raw.strip()!r}")
            key, value = key.strip().strip("[]").lower().rstrip("."), value.strip()
            addresses = [a.strip().strip("<>") for a in re.split(r"[,\s]+", value) if a.strip()]
            if not key or not addresses:
                raise OverrideError(f"{source}:{n}: expected 'domain: address', got {raw.strip()!r}")
            bad = [a for a in addresses if not _OVERRIDE_ADDRESS.match(a)]
            if bad:
                raise OverrideError(f"{source}:{n}: {bad[0]!r} is not a mail address")
            try:
                net = ipaddress.ip_network(key, strict=False)
            except ValueError:
                if not re.fullmatch(r"[^\s@/:\[\]]+", key) or key.startswith(".") or ".." in key:
                    raise OverrideError(f"{source}:{n}: {key!r} is neither a domain nor an IP network") from None
                out.domains.setdefault(key, []).extend(addresses)
            else:
                out.networks.append((net, addresses))
        return out

    @classmethod
    def load(cls, path: str | Path) -> AbuseOverrides:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise OverrideError(f"{path}: cannot read: {e}") from None
        return cls.parse(text, str(path))

    def for_host(self, host: str) -> list[Contact]:
        name = host.strip().rstrip(".").lower()
        if not name or is_ip_literal(name):
            return []
        labels = name.split(".")
        for i in range(len(labels)):
            key = ".".join(labels[i:])
            if key in self.domains:
                return [Contact(a, "override", key) for a in self.domains[key]]
        return []

    def for_ip(self, ip: str) -> list[Contact]:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return []
        best = None
        for net, addresses in self.networks:
            if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0].prefixlen):
                best = (net, addresses)
        return [Contact(a, "override", str(best[0])) for a in best[1]] if best else []


class RdapError(Exception):
    """An RDAP lookup that failed (network, HTTP status, not JSON)."""


class RdapClient(Protocol):
    def abuse_contacts(self, ip: str) -> list[str]: ...


def _vcard_emails(entity: dict[str, Any]) -> list[str]:
    out = []
    card = entity.get("vcardArray")
    if isinstance(card, list) and len(card) == 2 and isinstance(card[1], list):
        for prop in card[1]:
            if isinstance(prop, list) and len(prop) >= 4 and str(prop[0]).lower() == "email" and isinstance(prop[3], str):
                out.append(prop[3].strip())
    return out


def rdap_abuse_emails(doc: Any) -> list[str]:
    """The e-mail addresses of every entity with the role 'abuse' in an RDAP response (RFC 9083),
    nested entities included; each once, in document order."""
    found: list[str] = []

    def walk(obj: Any, depth: int) -> None:
        if depth > 8 or not isinstance(obj, dict):
            return
        for ent in obj.get("entities") or []:
            if not isinstance(ent, dict):
                continue
            roles = [str(r).lower() for r in ent.get("roles") or [] if isinstance(r, str)]
            if "abuse" in roles:
                for email in _vcard_emails(ent):
                    if _ADDRESS.match(email) and email not in found:
                        found.append(email)
            walk(ent, depth + 1)

    walk(doc, 0)
    return found


class HttpRdap:
    """RDAP over HTTP(S): GET {base}ip/{address}, redirects followed (rdap.org sends each query
    to the registry that holds the address)."""

    def __init__(self, base_url: str = "https://rdap.org/", timeout: float = 10.0) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout

    def fetch(self, ip: str) -> Any:
        url = self.base_url + "ip/" + urllib.parse.quote(ip, safe=":.")
        req = urllib.request.Request(url, headers={"Accept": "application/rdap+json, application/json",
                                                   "User-Agent": "relayguard-trace"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - http(s) URL built above
                body = resp.read(2_000_000)
        except urllib.error.HTTPError as e:
            raise RdapError(f"RDAP {url}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RdapError(f"RDAP {url}: {getattr(e, 'reason', e)}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise RdapError(f"RDAP {url}: the answer is not JSON") from None

    def abuse_contacts(self, ip: str) -> list[str]:
        return rdap_abuse_emails(self.fetch(ip))


def rfc2142_contact(host: str) -> Contact | None:
    domain = registered_domain(host)
    if not domain:
        return None
    return Contact(f"abuse@{domain}", "rfc2142", domain, f"RFC 2142 mailbox of {host}")


@dataclass
class ContactFinder:
    overrides: AbuseOverrides = field(default_factory=AbuseOverrides)
    rdap: RdapClient | None = None
    rfc2142: bool = True
    errors: list[str] = field(default_factory=list)

    def find(self, ip: str, hostnames: Sequence[str] = ()) -> list[Contact]:
        """Contacts for a relay, best first: overrides (host names, then the address), RDAP,
        then RFC 2142 of each host name. Lookup failures are kept in `errors`, not raised."""
        out: list[Contact] = []

        def add(items: Iterable[Contact]) -> None:
            for c in items:
                if all(c.address.lower() != o.address.lower() for o in out):
                    out.append(c)

        for host in hostnames:
            add(self.overrides.for_host(host))
        if ip:
            add(self.overrides.for_ip(ip))
        if out:
            return out
        if ip and self.rdap is not None:
            try:
                add(Contact(a, "rdap", ip) for a in self.rdap.abuse_contacts(ip))
            except RdapError as e:
                self.errors.append(str(e))
            except Exception as e:  # noqa: BLE001 - a custom client must not break the trace
                self.errors.append(f"RDAP {ip}: {e}")
        if self.rfc2142:
            for host in hostnames:
                c = rfc2142_contact(host)
                if c:
                    add([c])
        return out
