"""Where mail for a domain goes: transport table, smarthost, else MX (RFC 5321 5.1, RFC 7505).

DNS is asked with dnspython's async resolver so the servers are configurable (`ip:port`):
tests point it at a DNS server on loopback.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from ..config import DeliverySettings
from ..hostport import parse_hostport


@dataclass(frozen=True)
class Hop:
    name: str  # host name for logs, Remote-MTA and TLS SNI
    address: str  # IP address to connect to (or a name the system resolves, for transport/smarthost)
    port: int


@dataclass(frozen=True)
class Route:
    hops: tuple[Hop, ...] = ()
    # When there is no route: the SMTP-style error and whether to retry later.
    error: str = ""
    status: str = ""
    temporary: bool = False
    smarthost: bool = False


class Router:
    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self.resolver = dns.asyncresolver.Resolver(configure=not settings.dns_servers)
        if settings.dns_servers:
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_hostport(s, 53)) for s in settings.dns_servers
            ]
        self.resolver.lifetime = 10.0
        # The routes that follow from the settings alone, worked out once.
        self._transport: dict[str, Route] = {}
        for domain, hop in settings.transport.items():
            host, port = parse_hostport(hop, settings.port)
            self._transport[domain] = Route((Hop(host, host, port),))
        self._smarthost: Route | None = None
        if settings.smarthost:
            host, port = parse_hostport(settings.smarthost, settings.port)
            self._smarthost = Route((Hop(host, host, port),), smarthost=True)

    async def route(self, domain: str) -> Route:
        s = self.settings
        if domain in self._transport:
            return self._transport[domain]
        if self._smarthost is not None:
            return self._smarthost
        if domain.startswith("["):
            literal = domain[1:-1].removeprefix("IPv6:").removeprefix("ipv6:")
            return Route((Hop(domain, literal, s.port),))
        return await self._mx(domain)

    async def _mx(self, domain: str) -> Route:
        try:
            answer = await self.resolver.resolve(domain, "MX")
            mxs = sorted(((r.preference, random.random(), r.exchange.to_text(omit_final_dot=True)) for r in answer))
        except dns.resolver.NXDOMAIN:
            return Route(error=f"Host or domain name not found: {domain}", status="5.1.2")
        except dns.resolver.NoAnswer:
            mxs = [(0, 0.0, domain)]  # implicit MX: the domain's own address records
        except (dns.exception.DNSException, OSError) as e:
            return Route(error=f"DNS lookup of {domain} failed: {e}", status="4.4.3", temporary=True)
        if len(mxs) == 1 and mxs[0][2] in ("", "."):
            return Route(error=f"Domain {domain} does not accept mail (null MX)", status="5.1.10")
        hops: list[Hop] = []
        temporary = False
        for _, _, name in mxs:
            addresses, failed = await self._addresses(name)
            temporary |= failed
            hops += [Hop(name, a, self.settings.port) for a in addresses]
        if hops:
            return Route(tuple(hops))
        if temporary:
            return Route(error=f"cannot find the address of the mail exchangers of {domain}", status="4.4.3", temporary=True)
        return Route(error=f"no address for the mail exchangers of {domain}", status="5.4.4")

    async def _addresses(self, name: str) -> tuple[list[str], bool]:
        """A and AAAA records of a host; (addresses, whether a lookup failed temporarily)."""
        try:
            return [str(ipaddress.ip_address(name))], False
        except ValueError:
            pass
        out: list[str] = []
        failed = False
        for rdtype in ("A", "AAAA"):
            try:
                out += [r.to_text() for r in await self.resolver.resolve(name, rdtype)]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.exception.DNSException, OSError):
                failed = True
        return out, failed
