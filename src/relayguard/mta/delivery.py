"""Outbound SMTP with aiosmtplib: one transaction to the first hop that takes it.

STARTTLS is used when offered (opportunistic; certificate problems are logged, not fatal) and
required, with certificate checks, for domains in `require_tls` and before AUTH to a smarthost.
Connections are kept for a short while and reused for the next message to the same hop.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import defaultdict

import aiosmtplib

from .. import log
from ..config import DeliverySettings
from .queue import FAILED, PENDING, SENT, Outcome
from .routing import Hop, Route

_IDLE_SECONDS = 10.0


def _status_of(code: int, message: str, default: str) -> str:
    first = message.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(code)[0]:
        return first
    return default


def _outcome(code: int, message: str, hop: Hop) -> Outcome:
    reply = f"{code} {' '.join(message.split())}"
    if 200 <= code < 300:
        return Outcome(SENT, reply, "2.0.0", hop.name)
    if 400 <= code < 500:
        return Outcome(PENDING, reply, _status_of(code, message, "4.0.0"), hop.name)
    return Outcome(FAILED, reply, _status_of(code, message, "5.0.0"), hop.name)


class _TempError(Exception):
    """This hop cannot take the message now; try the next one."""


class Deliverer:
    def __init__(self, settings: DeliverySettings, helo_name: str) -> None:
        self.settings = settings
        self.helo_name = helo_name
        self._total = asyncio.Semaphore(settings.max_connections)
        self._per_hop: dict[tuple[str, int], asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.max_connections_per_destination)
        )
        self._idle: dict[tuple[str, int], list[tuple[float, aiosmtplib.SMTP]]] = defaultdict(list)

    async def deliver(self, route: Route, domain: str, sender: str, rcpts: list[str], message: bytes) -> dict[str, Outcome]:
        """Try the route's hops in order until one answers the transaction; outcome per recipient."""
        last = "no mail exchanger could be reached"
        for hop in route.hops:
            key = (hop.address, hop.port)
            async with self._total, self._per_hop[key]:
                try:
                    return await self._transaction(hop, route, domain, sender, rcpts, message)
                except _TempError as e:
                    last = str(e)
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as e:
                    last = f"connect to {hop.name}[{hop.address}]:{hop.port}: {e}"
            log.event("delivery-hop-failed", hop=hop.name, address=hop.address, port=hop.port, error=last)
        return {r: Outcome(PENDING, last, "4.4.1") for r in rcpts}

    async def _transaction(self, hop: Hop, route: Route, domain: str, sender: str, rcpts: list[str], message: bytes) -> dict[str, Outcome]:
        client = await self._connection(hop, route, domain)
        reuse = False
        try:
            try:
                await client.mail(sender, options=["BODY=8BITMIME"] if client.supports_extension("8bitmime") else [])
            except aiosmtplib.SMTPResponseException as e:
                if 400 <= e.code < 500:
                    raise _TempError(f"{e.code} {e.message}") from None
                return {r: _outcome(e.code, e.message, hop) for r in rcpts}
            outcomes: dict[str, Outcome] = {}
            accepted = []
            for r in rcpts:
                try:
                    await client.rcpt(r)
                    accepted.append(r)
                except aiosmtplib.SMTPResponseException as e:
                    outcomes[r] = _outcome(e.code, e.message, hop)
            if not accepted:
                await client.rset()
                reuse = True
                return outcomes
            try:
                response = await client.data(message, timeout=self.settings.command_timeout)
                result = _outcome(response.code, response.message, hop)
            except aiosmtplib.SMTPResponseException as e:
                result = _outcome(e.code, e.message, hop)
            outcomes.update({r: result for r in accepted})
            reuse = True
            return outcomes
        finally:
            if reuse:
                self._idle[(hop.address, hop.port)].append((time.monotonic(), client))
            else:
                client.close()

    async def _connection(self, hop: Hop, route: Route, domain: str) -> aiosmtplib.SMTP:
        """An idle connection to the hop that still answers RSET, else a new one."""
        key = (hop.address, hop.port)
        pool = self._idle[key]
        now = time.monotonic()
        while pool:
            since, client = pool.pop()
            if now - since < _IDLE_SECONDS and client.is_connected:
                try:
                    await client.rset()
                    return client
                except (aiosmtplib.SMTPException, OSError):
                    pass
            client.close()
        return await self._connect(hop, route, domain)

    async def _connect(self, hop: Hop, route: Route, domain: str) -> aiosmtplib.SMTP:
        s = self.settings
        must_tls = domain in s.require_tls or (route.smarthost and bool(s.smarthost_user))
        client = aiosmtplib.SMTP(
            hostname=hop.address,
            port=hop.port,
            local_hostname=self.helo_name,
            timeout=s.command_timeout,
            start_tls=False,
            validate_certs=False,
        )
        await asyncio.wait_for(client.connect(timeout=s.connect_timeout), s.connect_timeout + 1)
        await client.ehlo()
        if client.supports_extension("starttls"):
            try:
                await client.starttls(server_hostname=hop.name, validate_certs=domain in s.require_tls)
            except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as e:
                client.close()
                if must_tls:
                    raise _TempError(f"TLS required but failed with {hop.name}: {e}") from None
                log.event("tls-failed", hop=hop.name, error=e, action="retry without TLS")
                client = aiosmtplib.SMTP(hostname=hop.address, port=hop.port, local_hostname=self.helo_name,
                                         timeout=s.command_timeout, start_tls=False)
                await client.connect(timeout=s.connect_timeout)
        elif must_tls:
            client.close()
            raise _TempError(f"TLS required but {hop.name} does not offer STARTTLS")
        if route.smarthost and s.smarthost_user:
            try:
                await client.login(s.smarthost_user, s.smarthost_password)
            except aiosmtplib.SMTPAuthenticationError as e:
                client.close()
                raise _TempError(f"smarthost authentication failed: {e.code} {e.message}") from None
        return client

    async def close(self) -> None:
        for pool in self._idle.values():
            for _, client in pool:
                client.close()
        self._idle.clear()
