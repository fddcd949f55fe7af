"""Reject before receiving: the MTA's DNSBL gate ([reject] in the configuration).

At RCPT (default) or at connection before the greeting (postscreen-style, `check_at =
"connect"`), the client's address is checked against `dnsbl_sites`; at or above `threshold`
the client gets Postfix's `554 5.7.1 Service unavailable; Client host [ip] blocked using
<zone>; <reason>`. When lists that did not answer could have changed the outcome, the client
is accepted or gets 450 (421 at connection), per `on_unknown`. Authenticated and trusted
clients are never checked; the submission port is never checked at connection. Accepted
mail that scored gets an `X-Relayguard-DNSBL` header. The result is kept for the session
(one lookup per connection, Exim's rule) and in the checker's TTL cache across sessions.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from .. import log, metrics
from ..config import Settings
from ..dnsbl.checker import Checker, TargetError
from ..dnsbl.sites import parse_sites
from ..dnsbl.verdict import Decision, decide
from ..smtp.replies import Reply


def checker_from_settings(settings: Settings, sites: list[str] | None = None) -> Checker:
    """The checker the [reject] section describes (nameservers: reject.dns_servers, else delivery.dns_servers)."""
    r = settings.reject
    try:
        return _checker(settings, r, sites)
    except ValueError as e:  # no usable nameserver: `serve` / `policyd` say "cannot start: ..."
        raise OSError(f"[reject] DNS servers: {e}") from None


def _checker(settings: Settings, r: Any, sites: list[str] | None) -> Checker:
    return Checker(
        parse_sites(r.dnsbl_sites if sites is None else sites),
        threshold=r.threshold,
        nameservers=r.dns_servers or settings.delivery.dns_servers,
        timeout=r.timeout,
        cache_size=r.cache_size,
        min_ttl=r.min_ttl,
        max_ttl=r.max_ttl,
        health_check=r.health_check,
        health_interval=r.health_interval,
    )


async def check_client(checker: Checker, ip: str, *, on_unknown: str, score_header: bool, where: str) -> Decision:
    """Check one client address and log the outcome; never raises (a broken lookup accepts, logged)."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])  # fe80::1%eth0: the scope is not asked
    except ValueError:
        return Decision("accept")  # not an IP address (a UNIX socket peer): nothing to check
    try:
        result = await checker.check(address)
    except TargetError:
        return Decision("accept")
    except Exception as e:  # the gate must never take a session down
        log.event("dnsbl-failed", logging.ERROR, client=ip, error=repr(e))
        return Decision("defer", f"Service unavailable; Client host [{ip}] not checked; try again later") \
            if on_unknown == "defer" else Decision("accept")
    d = decide(result, ip, on_unknown=on_unknown, score_header=score_header)
    metrics.reject_check(d.action, result.elapsed)
    fields: dict[str, Any] = {"client": ip, "at": where, "verdict": result.verdict.value, "score": result.score,
                              "threshold": result.threshold, "action": d.action}
    if result.matches:
        fields["matches"] = result.summary()
    if result.unknown:
        fields["unknown"] = ",".join(result.unknown_zones())
    skipped = [a.zone for a in result.answers if a.status.value == "skipped"]
    if skipped:
        fields["skipped"] = ",".join(skipped)
    fields["ms"] = round(result.elapsed * 1000, 1)
    log.event("dnsbl", logging.INFO if d.action == "accept" else logging.WARNING, **fields)
    return d


class RejectGate:
    def __init__(self, settings: Settings, trusted: Callable[[str], bool], checker: Checker | None = None) -> None:
        self.settings = settings.reject
        self.trusted = trusted
        self.checker = checker or checker_from_settings(settings)
        self._health: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, trusted: Callable[[str], bool]) -> RejectGate | None:
        """None when no dnsbl_sites are configured (nothing to check)."""
        return cls(settings, trusted) if settings.reject.dnsbl_sites else None

    def start(self) -> None:
        """Probe every list now and every health_interval seconds (in the background)."""
        if self.checker.health_check and self._health is None:
            self._health = asyncio.get_running_loop().create_task(self.checker.health_loop("ip"))

    def stop(self) -> None:
        if self._health is not None:
            self._health.cancel()
            self._health = None

    async def _decide(self, ip: str, where: str) -> Decision:
        return await check_client(self.checker, ip, on_unknown=self.settings.on_unknown,
                                  score_header=self.settings.score_header, where=where)

    def connect_check(self, ip: str, submission: bool) -> asyncio.Task[Decision] | None:
        """At connection (check_at = "connect"): a task to await before the greeting, or None."""
        if self.settings.check_at != "connect" or submission or self.trusted(ip):
            return None
        return asyncio.get_running_loop().create_task(self._decide(ip, "connect"))

    @staticmethod
    def connect_reply(d: Decision) -> Reply | None:
        """The reply sent instead of the greeting, or None to greet."""
        if d.action == "reject":
            return Reply(554, "5.7.1", d.text)
        if d.action == "defer":
            return Reply(421, "4.7.1", d.text)
        return None

    async def check_rcpt(self, session: Any, reply: Reply, reason: str) -> tuple[Reply, str]:
        """At RCPT: a recipient the policy accepted, from an unauthenticated, untrusted client."""
        if session.conn.identity is not None or self.settings.check_at != "rcpt" or self.trusted(session.ip):
            return reply, reason
        if session.dnsbl is None:
            session.dnsbl = await self._decide(session.ip, "rcpt")
        d: Decision = session.dnsbl
        if d.action == "reject":
            return Reply(554, "5.7.1", d.text), "dnsbl"
        if d.action == "defer":
            return Reply(450, "4.7.1", d.text), "dnsbl unknown"
        return reply, reason

    @staticmethod
    def header(session: Any) -> bytes:
        """The score header for the message being received, or b""."""
        d: Decision | None = getattr(session, "dnsbl", None)
        if d is None or not d.header or session.conn.identity is not None:
            return b""
        return d.header.encode("ascii", "replace") + b"\r\n"
