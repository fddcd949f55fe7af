"""The multi-list DNSBL checker: one IP or domain against many lists at once, done right.

- All lists are asked in parallel (client.py: a stub client reading answers off the wire;
  configurable nameservers and timeout); one query per zone however many sites name it;
  concurrent checks of the same name
  share one query; a semaphore bounds the queries in flight (bulk checks).
- IPv4 (reversed octets), IPv6 (32 reversed nibbles; IPv4-mapped addresses as IPv4) and domains
  (RHSBL) (RFC 5782).
- Answers are cached for their TTL, bounded to [min_ttl, max_ttl] (NXDOMAIN for the SOA's
  negative TTL), in an LRU of `cache_size` entries; timeouts are never cached.
- The TXT reason is fetched for positive answers only.
- List health (RFC 5782 section 5): each list is probed with its test points, on start-up and
  every `health_interval` seconds (or inline, in parallel with a check, when the last probe is
  older than that). A list that does not list 127.0.0.2 (TEST for domain lists) or lists
  127.0.0.1 (INVALID) is unhealthy: skipped with a warning until a probe finds it sane again.
- A zone can be answered in-process by a callable (relayguard's own list when the DNSBL server
  runs in the same process): no DNS round trip, no cache.

Classification and scoring are pure (verdict.py); this module does the I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import dns.exception
import dns.name

from .. import log
from . import client
from .sites import Site, zones
from .verdict import CheckResult, Codes, Status, ZoneAnswer, classify, evaluate

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# What an in-process list answers for a target: (A codes, TXT strings), or None when not listed.
LocalAnswer = Callable[["Target"], "tuple[Sequence[str], Sequence[str]] | None"]


class TargetError(ValueError):
    """Not an IP address or a domain name."""


@dataclass(frozen=True)
class Target:
    text: str  # normalised: the IP as Python prints it, or the lower-case domain
    kind: str  # "ipv4" | "ipv6" | "domain"
    ip: IPAddress | None = None

    @property
    def label(self) -> str:
        """The query name below the zone (RFC 5782 2.1, 2.4, 3.1)."""
        if self.ip is None:
            return self.text
        if self.ip.version == 4:
            return ".".join(reversed(self.text.split(".")))
        return ".".join(reversed(self.ip.exploded.replace(":", "")))

    @property
    def family(self) -> str:
        """Which test points apply: "ip" or "domain"."""
        return "domain" if self.ip is None else "ip"


def parse_target(text: str | IPAddress) -> Target:
    if isinstance(text, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        ip: IPAddress = text
    else:
        raw = text.strip()
        try:
            ip = ipaddress.ip_address(raw.removeprefix("[").removesuffix("]"))
        except ValueError:
            return _domain(raw)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return Target(str(ip), f"ipv{ip.version}", ip)


def _domain(raw: str) -> Target:
    name = raw.lower().removesuffix(".")
    if not name:
        raise TargetError("empty name")
    if all(part.isdigit() for part in name.split(".")):
        raise TargetError(f"{raw!r} is not a valid IP address")
    if "/" in name:
        raise TargetError(f"{raw!r}: networks are not checked, only single addresses")
    try:
        idna = dns.name.from_text(name).to_text(omit_final_dot=True)
    except (dns.exception.DNSException, UnicodeError) as e:
        raise TargetError(f"{raw!r} is not an IP address or a domain name: {e}") from None
    for label in idna.split("."):
        if not label or len(label) > 63 or not all(c.isalnum() or c in "-_" for c in label) or not label.isascii():
            raise TargetError(f"{raw!r} is not an IP address or a domain name")
    return Target(idna, "domain")


_TEST_POINTS = {
    "ip": (parse_target("127.0.0.2"), parse_target("127.0.0.1")),
    "domain": (Target("test", "domain"), Target("invalid", "domain")),
}


@dataclass(frozen=True)
class Health:
    zone: str
    family: str
    healthy: bool | None  # None: the probe got no answer (the list keeps its previous state)
    reason: str
    checked: float  # monotonic time


class _NoAnswer(Exception):
    """A query that got no usable answer: the list is unknown for this target."""


def zone_answer(zone: object) -> LocalAnswer:
    """An in-process answerer for a relayguard.dnsbl.zone.Zone (anything with lookup(ip) -> Listing|None)."""

    def answer(target: Target) -> tuple[Sequence[str], Sequence[str]] | None:
        if target.ip is None:
            return None
        listing = zone.lookup(target.ip)  # type: ignore[attr-defined]
        return None if listing is None else ([listing.code], [listing.txt(target.text)])

    return answer


class Checker:
    def __init__(
        self,
        sites: Sequence[Site],
        *,
        threshold: int = 1,
        nameservers: Sequence[str] = (),
        timeout: float = 5.0,
        cache_size: int = 10000,
        min_ttl: float = 60.0,
        max_ttl: float = 3600.0,
        health_check: bool = True,
        health_interval: float = 3600.0,
        concurrency: int = 200,
        local: Mapping[str, LocalAnswer] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sites = list(sites)
        self.zones = zones(self.sites)
        self.threshold = threshold
        self.cache_size = cache_size
        self.min_ttl, self.max_ttl = min_ttl, max_ttl
        self.health_check = health_check
        self.health_interval = health_interval
        self.clock = clock
        self.health: dict[tuple[str, str], Health] = {}
        self.local: dict[str, LocalAnswer] = {}
        for zone, answer in (local or {}).items():
            self.add_local(zone, answer)
        # ValueError for a bad nameserver or no system resolver, unless there is nothing to ask (yet)
        self.client = client.StubClient(nameservers, timeout, lazy=not self.zones)
        self.timeout = timeout
        self.queries = 0  # DNS queries sent (tests, benchmarks)
        self._cache: OrderedDict[tuple[str, str], tuple[float, ZoneAnswer]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[ZoneAnswer]] = {}
        self._probes: dict[tuple[str, str], asyncio.Future[Health]] = {}
        self._concurrency = concurrency
        self._sem: asyncio.Semaphore | None = None

    @property
    def timeout(self) -> float:
        return self.client.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        """Seconds per list; a lost datagram is sent again (to the next server) after half of it, 2 s at most."""
        self.client.timeout = value
        self.client.attempt = max(min(value / 2, 2.0), 0.05)

    def add_local(self, zone: str, answer: LocalAnswer) -> None:
        """Answer `zone` in-process (relayguard's own list): no DNS, no cache."""
        zone = zone.lower().rstrip(".")
        self.local[zone] = answer
        for key in [k for k in self.health if k[0] == zone]:
            del self.health[key]  # probed over DNS before: probe again, in-process

    # Checking --------------------------------------------------------------------------------

    async def check(self, target: str | IPAddress | Target, sites: Sequence[Site] | None = None,
                    threshold: int | None = None) -> CheckResult:
        """Ask every list about `target` at once; TargetError for input that is neither IP nor domain."""
        t = target if isinstance(target, Target) else parse_target(target)
        sites = self.sites if sites is None else list(sites)
        start = time.perf_counter()
        answers = await asyncio.gather(*(self._zone(zone, t) for zone in zones(sites)))
        return evaluate(t.text, t.kind, sites, answers, self.threshold if threshold is None else threshold,
                        time.perf_counter() - start)

    async def check_many(self, targets: Iterable[str | IPAddress | Target]) -> list[CheckResult]:
        return list(await asyncio.gather(*(self.check(t) for t in targets)))

    async def _zone(self, zone: str, t: Target) -> ZoneAnswer:
        probe = self._probe_if_stale(zone, t.family)
        if probe is not None:
            answer, _ = await asyncio.gather(self.answer(zone, t), probe)
        else:
            answer = await self.answer(zone, t)
        health = self.health.get((zone, t.family))
        if health is not None and health.healthy is False:
            return ZoneAnswer(zone, answer.qname, Status.SKIPPED, detail=f"unhealthy: {health.reason}",
                              latency=answer.latency, local=answer.local)
        return answer

    async def answer(self, zone: str, t: Target) -> ZoneAnswer:
        """One list's answer for one target: in-process, cached, shared with a query in flight, or asked."""
        qname = f"{t.label}.{zone}"
        if zone in self.local:
            return self._local(zone, qname, t)
        key = (zone, t.label)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(key)
                return replace(hit[1], cached=True, latency=0.0)
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._ask_and_store(key, zone, qname))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)  # a cancelled waiter leaves the query to the others

    async def _ask_and_store(self, key: tuple[str, str], zone: str, qname: str) -> ZoneAnswer:
        answer = await self._ask(zone, qname)
        if answer.status is not Status.UNKNOWN:
            self._store(key, answer)
        return answer

    def _local(self, zone: str, qname: str, t: Target) -> ZoneAnswer:
        start = time.perf_counter()
        try:
            got = self.local[zone](t)
        except Exception as e:  # a bug in the in-process list must not take the MTA down
            log.event("dnsbl-local-error", logging.ERROR, zone=zone, target=t.text, error=repr(e))
            return ZoneAnswer(zone, qname, Status.UNKNOWN, detail=f"in-process lookup failed: {e}", local=True)
        latency = time.perf_counter() - start
        if got is None:
            return ZoneAnswer(zone, qname, Status.CLEAN, detail="not listed", latency=latency, local=True)
        codes = classify(got[0])
        return ZoneAnswer(zone, qname, _status(codes), codes, tuple(got[1]) if codes.listed else (),
                          latency=latency, local=True)

    def _store(self, key: tuple[str, str], answer: ZoneAnswer) -> None:
        if self.cache_size <= 0:
            return
        ttl = min(max(answer.ttl, self.min_ttl), self.max_ttl)
        self._cache[key] = (self.clock() + ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _ask(self, zone: str, qname: str) -> ZoneAnswer:
        start = time.perf_counter()
        try:
            records, ttl, detail = await self._query(qname, "A")
        except _NoAnswer as e:
            return ZoneAnswer(zone, qname, Status.UNKNOWN, detail=str(e), latency=time.perf_counter() - start)
        codes = classify(records)
        status = _status(codes)
        txt: tuple[str, ...] = ()
        if status is Status.LISTED:
            try:
                txt_records, txt_ttl, _ = await self._query(qname, "TXT")
                txt = tuple(txt_records)
                ttl = min(ttl, txt_ttl) if txt_records else ttl
            except _NoAnswer as e:
                detail = f"TXT: {e}"
        if codes.errors:
            log.event("dnsbl-error-code", logging.WARNING, zone=zone, query=qname, codes=",".join(codes.errors))
        if codes.ignored:
            log.event("dnsbl-ignored", logging.WARNING, zone=zone, query=qname, answers=",".join(codes.ignored),
                      why="outside 127.0.0.0/8")
        return ZoneAnswer(zone, qname, status, codes, txt, detail, ttl, time.perf_counter() - start)

    async def _query(self, qname: str, rdtype: str) -> tuple[list[str], float, str]:
        """(A codes or TXT strings, TTL, detail); _NoAnswer when the list did not answer."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self._concurrency)
        async with self._sem:
            self.queries += 1
            try:
                ans = await self.client.query(qname, client.TXT if rdtype == "TXT" else client.A)
            except client.NoAnswer as e:
                raise _NoAnswer(str(e)) from None
            except client.WireError as e:  # a name too long for DNS (a long domain under a long zone)
                raise _NoAnswer(f"cannot ask: {e}") from None
        if ans.rcode == client.NXDOMAIN:
            return [], ans.ttl, "NXDOMAIN"
        return ans.records, ans.ttl, "" if ans.records else "no record"

    # Health ----------------------------------------------------------------------------------

    def _probe_if_stale(self, zone: str, family: str) -> asyncio.Future[Health] | None:
        if not self.health_check:
            return None
        key = (zone, family)
        pending = self._probes.get(key)
        if pending is not None:
            return pending
        h = self.health.get(key)
        if h is not None and self.clock() - h.checked < self.health_interval:
            return None
        task = asyncio.ensure_future(self._probe(zone, family))
        self._probes[key] = task
        task.add_done_callback(lambda _t: self._probes.pop(key, None))
        return task

    async def _probe(self, zone: str, family: str) -> Health:
        listed, unlisted = _TEST_POINTS[family]
        was_local = zone in self.local
        yes, no = await asyncio.gather(self._ask_uncached(zone, listed), self._ask_uncached(zone, unlisted))
        if yes.status is Status.UNKNOWN or no.status is Status.UNKNOWN:
            healthy, reason = None, f"test points not answered ({yes.detail or no.detail})"
        elif yes.status is not Status.LISTED:
            healthy, reason = False, f"does not list {listed.text} ({_describe(yes)})"
        elif no.status is Status.LISTED:
            healthy, reason = False, f"lists {unlisted.text} ({'+'.join(no.codes.listed)}): it lists the world"
        else:
            healthy, reason = True, "test points answered as RFC 5782 says"
        key = (zone, family)
        old = self.health.get(key)
        if was_local != (zone in self.local):  # the zone went in-process meanwhile: this probe is moot
            return Health(zone, family, None, "superseded", self.clock())
        if healthy is None and old is not None:
            healthy = old.healthy
        h = Health(zone, family, healthy, reason, self.clock())
        self.health[key] = h
        was = old.healthy if old is not None else None
        if h.healthy is False and was is not False:
            log.event("dnsbl-unhealthy", logging.WARNING, zone=zone, family=family, reason=reason, action="skipped")
        elif h.healthy is True and was is False:
            log.event("dnsbl-recovered", logging.WARNING, zone=zone, family=family)
        elif h.healthy is None:
            log.event("dnsbl-probe-failed", logging.WARNING, zone=zone, family=family, reason=reason)
        return h

    async def _ask_uncached(self, zone: str, t: Target) -> ZoneAnswer:
        qname = f"{t.label}.{zone}"
        return self._local(zone, qname, t) if zone in self.local else await self._ask(zone, qname)

    async def refresh_health(self, family: str = "ip", zone_names: Iterable[str] | None = None) -> list[Health]:
        """Probe every list now (start-up)."""
        names = self.zones if zone_names is None else list(zone_names)
        if not self.health_check:
            return []
        return list(await asyncio.gather(*(self._probe(z, family) for z in names)))

    async def health_loop(self, family: str = "ip") -> None:
        """Probe on start-up, then every health_interval seconds (run as a task; cancel to stop)."""
        while True:
            try:
                await self.refresh_health(family)
            except Exception as e:  # keep probing whatever one round hit
                log.event("dnsbl-probe-failed", logging.ERROR, error=repr(e))
            await asyncio.sleep(self.health_interval)


def _status(codes: Codes) -> Status:
    return Status.LISTED if codes.listed else Status.ERROR if codes.errors else Status.CLEAN


def _describe(a: ZoneAnswer) -> str:
    if a.status is Status.ERROR:
        return "error code " + "+".join(a.codes.errors)
    if a.codes.ignored:
        return "answers outside 127/8: " + "+".join(a.codes.ignored)
    return a.detail or a.status.value


