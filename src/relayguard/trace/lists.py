"""Listing lookups for the trace: the multi-list DNSBL checker (issue 6) and relayguard's own
relay list (the DNSBL store, issue 5), as `ListingLookup`s for `investigate(..., lookups=...)`.

- `DnsblLookup`: every configured list is asked about every untrusted public address at once
  (one `Checker.check_many` before `investigate` runs), then answered from those results. A list
  that lists the address with a code its filter accepts and a positive weight is a `Listing`
  (zone, codes, TXT); allowlist matches (negative weight) are not listings. Lists that did not
  answer, or were skipped as unhealthy (RFC 5782 test points), are reported as notes: unknown is
  not clean. Weights and the threshold are the MTA's rejection policy; the trace shows every
  listing and `CheckResult.as_dict()` per address for `--json`.
- `store_lookup`: relayguard's own list read straight from its store (`Store.covering`: the
  address itself or a listed network holding it), under the zone's name, with the TXT the list
  answers over DNS, so the trace needs neither the DNS server nor `serve` to be running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from ..dnsbl.checker import Checker
from ..dnsbl.sites import Site
from ..dnsbl.verdict import CheckResult, Status
from .investigate import Listing, ListingLookup

__all__ = ["DnsblLookup", "store_lookup"]


class DnsblLookup:
    """The DNSBL checker as a listing lookup; call `prefetch(ips)` first (it asks all lists at once)."""

    def __init__(self, checker: Checker, sites: Sequence[Site] | None = None) -> None:
        self.checker = checker
        self.sites = list(checker.sites if sites is None else sites)
        self.results: dict[str, CheckResult] = {}
        self.notes: list[str] = []

    @property
    def zones(self) -> list[str]:
        return list(dict.fromkeys(s.zone for s in self.sites))

    def prefetch(self, ips: Iterable[str]) -> None:
        todo = [ip for ip in dict.fromkeys(ips) if ip not in self.results]
        if not todo or not self.sites:
            return
        results = asyncio.run(self._check(todo))
        for ip, res in zip(todo, results):
            self.results[ip] = res
            for a in res.answers:
                if a.status is Status.UNKNOWN:
                    self.notes.append(f"DNSBL {a.zone} did not answer for {ip}: {a.detail or 'no answer'}")
                elif a.status is Status.ERROR:
                    self.notes.append(f"DNSBL {a.zone} answered an error code for {ip}: "
                                      f"{'+'.join(a.codes.errors)} (not a listing)")
        unhealthy = sorted({(h.zone, h.reason) for h in self.checker.health.values() if h.healthy is False})
        self.notes.extend(f"DNSBL {zone} skipped: {reason}" for zone, reason in unhealthy)

    async def _check(self, ips: list[str]) -> list[CheckResult]:
        return await self.checker.check_many(ips)

    def __call__(self, ip: str) -> list[Listing]:
        if ip not in self.results:
            self.prefetch([ip])
        res = self.results.get(ip)
        if res is None:
            return []
        out: list[Listing] = []
        for m in res.matches:
            if m.site.weight <= 0:
                continue  # an allowlist that knows the address: not a listing
            if any(x.zone == m.site.zone for x in out):
                continue  # one zone named by several sites: one listing
            answer = res.answer_by_zone.get(m.site.zone)
            out.append(Listing(ip, m.site.zone, "+".join(m.codes), answer.reason if answer is not None else ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {ip: res.as_dict() for ip, res in self.results.items()}


def store_lookup(store: Any, zone: str) -> ListingLookup:
    """relayguard's own list (a `relayguard.dnsbl.store.Store`) as a listing lookup named `zone`."""

    def lookup(ip: str) -> list[Listing]:
        out = []
        for host in store.covering(ip):
            reason = host.txt.replace("$", ip)  # what the list answers over DNS (TXT)
            if not host.network.endswith(("/32", "/128")):
                reason = f"{reason} (as part of {host.network})" if reason else f"as part of {host.network}"
            out.append(Listing(ip, zone, host.code, reason))
        return out

    return lookup
