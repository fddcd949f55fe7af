"""Outbound SMTP with aiosmtplib: one transaction to the first hop that takes it.

STARTTLS is used when offered (opportunistic; certificate problems are logged, not fatal) and
required, with certificate checks, for domains in `require_tls` and before AUTH to a smarthost.
Connections are kept for a short while and reused for the next message to the same hop.

aiosmtplib sets each connection up (EHLO, STARTTLS, AUTH). When the hop offers PIPELINING
(RFC 2920), as Postfix and most MXs do, the transactions then go through `_Pipe`: MAIL FROM, every
RCPT TO and DATA in one write, the message in a second, the replies read in order, so a message
costs two round trips instead of five (aiosmtplib sends one command and waits for its reply),
and a reused connection needs no RSET. Hops without PIPELINING get aiosmtplib's commands.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import defaultdict, deque
from dataclasses import dataclass

import aiosmtplib

from .. import log
from ..config import DeliverySettings
from .queue import FAILED, PENDING, SENT, Outcome
from .routing import Hop, Route

_IDLE_SECONDS = 10.0
_MAX_REPLY_LINE = 8192
_MAX_REPLY_LINES = 200
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


def wire_data(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends only (a bare CR or LF becomes CRLF), leading
    dots doubled, the final dot line. The usual message (from our own spool: CRLF only, no
    leading dot) is only scanned, not rewritten."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDINGS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = _LEADING_DOT.sub(b"..", message)
    return message + b".\r\n"


class _TempError(Exception):
    """This hop cannot take the message now; try the next one."""


class _Stale(Exception):
    """A reused connection turned out to be closed before the transaction began: use a new one."""


class _Pipe(asyncio.Protocol):
    """The replies of one connection, parsed as they arrive and taken in order (RFC 2920).

    It takes over the transport of a connection aiosmtplib has set up, so that several commands
    can be written at once: aiosmtplib expects one reply per command written."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buf = bytearray()
        self._lines: list[str] = []
        self._replies: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None

    @classmethod
    def take_over(cls, client: aiosmtplib.SMTP) -> _Pipe:
        transport = client.transport
        assert isinstance(transport, asyncio.Transport)
        pipe = cls(transport)
        transport.set_protocol(pipe)
        return pipe

    @property
    def usable(self) -> bool:
        """Open, and nothing unasked for arrived (such as a 421 before the server hung up)."""
        return self._error is None and not self._replies and not self._buf and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while (end := buf.find(b"\n")) >= 0:
            line = buf[: end + 1].decode("utf-8", "surrogateescape").rstrip("\r\n")
            del buf[: end + 1]
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                self._fail(aiosmtplib.SMTPException(f"malformed reply from the server: {line[:100]!r}"))
                return
            self._lines.append(line[4:].strip())
            if len(self._lines) > _MAX_REPLY_LINES:
                self._fail(aiosmtplib.SMTPException("reply too long"))
                return
            if line[3:4] != "-":
                self._replies.append((int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        if len(buf) > _MAX_REPLY_LINE:
            self._fail(aiosmtplib.SMTPException("reply line too long"))
            return
        self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc}" if exc else "connection lost"))

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self.transport.write(data)

    async def replies(self, n: int, timeout: float) -> list[tuple[int, str]]:
        """The next `n` replies, each (code, text with lines joined by "\\n"); `timeout` is for
        the wait between two of them."""
        out = []
        while len(out) < n:
            if self._replies:
                out.append(self._replies.popleft())
                continue
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                self._fail(aiosmtplib.SMTPReadTimeoutError("timed out waiting for a reply"))
                raise self._error from None  # type: ignore[misc]
            finally:
                self._waiter = None
        return out


@dataclass
class _Conn:
    client: aiosmtplib.SMTP  # owns the transport (close) and, without PIPELINING, sends the commands
    pipe: _Pipe | None  # the hop offers PIPELINING: transactions go through it
    eightbit: bool
    since: float = 0.0  # when it went idle

    @property
    def usable(self) -> bool:
        return self.pipe.usable if self.pipe is not None else self.client.is_connected

    def close(self) -> None:
        self.client.close()


class Deliverer:
    def __init__(self, settings: DeliverySettings, helo_name: str) -> None:
        self.settings = settings
        self.helo_name = helo_name
        self._total = asyncio.Semaphore(settings.max_connections)
        self._per_hop: dict[tuple[str, int], asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.max_connections_per_destination)
        )
        self._idle: dict[tuple[str, int], list[_Conn]] = defaultdict(list)

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
        conn, reused = await self._connection(hop, route, domain)
        reuse = False
        try:
            try:
                outcomes = await self._send(conn, hop, sender, rcpts, message, reused)
            except _Stale:  # closed while idle: nothing was delivered, so once more on a new one
                conn.close()
                conn = await self._connect(hop, route, domain)
                outcomes = await self._send(conn, hop, sender, rcpts, message, False)
            reuse = True
            return outcomes
        finally:
            if reuse and conn.usable:
                conn.since = time.monotonic()
                self._idle[(hop.address, hop.port)].append(conn)
            else:
                conn.close()

    async def _send(self, conn: _Conn, hop: Hop, sender: str, rcpts: list[str], message: bytes,
                    reused: bool) -> dict[str, Outcome]:
        if conn.pipe is None:
            return await self._one_by_one(conn, hop, sender, rcpts, message)
        return await self._pipelined(conn, conn.pipe, hop, sender, rcpts, message, reused)

    async def _pipelined(self, conn: _Conn, pipe: _Pipe, hop: Hop, sender: str, rcpts: list[str], message: bytes,
                         reused: bool) -> dict[str, Outcome]:
        """MAIL, RCPTs and DATA in one write, then the message (RFC 2920)."""
        if any(_CONTROL.search(a) for a in (sender, *rcpts)):
            raise ValueError("an address contains a control character")
        timeout = self.settings.command_timeout
        body = " BODY=8BITMIME" if conn.eightbit else ""
        # A reused connection the server closed while it was idle (a 421, or just gone) fails here,
        # before the message was sent: nothing was delivered, so a new connection may try again.
        try:
            pipe.write("".join([f"MAIL FROM:<{sender}>{body}\r\n", *(f"RCPT TO:<{r}>\r\n" for r in rcpts),
                                "DATA\r\n"]).encode())
            [mail] = await pipe.replies(1, timeout)
        except aiosmtplib.SMTPServerDisconnected:
            if reused:
                raise _Stale from None
            raise
        if reused and mail[0] == 421:
            raise _Stale
        *rcpt_replies, data = await pipe.replies(len(rcpts) + 1, timeout)
        outcomes: dict[str, Outcome] = {}
        accepted = []
        for r, (code, text) in zip(rcpts, rcpt_replies, strict=True):
            if 200 <= code < 300 and 200 <= mail[0] < 300:
                accepted.append(r)
            else:
                outcomes[r] = _outcome(code, text, hop)
        if data[0] == 354 and not accepted:  # a server that should have refused DATA: end it empty
            pipe.write(b".\r\n")
            await pipe.replies(1, timeout)
        if 400 <= mail[0] < 500:
            raise _TempError(f"{mail[0]} {mail[1]}")
        if not 200 <= mail[0] < 300:
            return {r: _outcome(mail[0], mail[1], hop) for r in rcpts}
        if not accepted:
            return outcomes
        if data[0] != 354:
            code, text = (data[0], data[1]) if data[0] >= 400 else (451, f"4.5.0 unexpected reply to DATA: {data[0]} {data[1]}")
            outcomes.update({r: _outcome(code, text, hop) for r in accepted})
            return outcomes
        pipe.write(wire_data(message))
        [(code, text)] = await pipe.replies(1, timeout)
        outcomes.update({r: _outcome(code, text, hop) for r in accepted})
        return outcomes

    async def _one_by_one(self, conn: _Conn, hop: Hop, sender: str, rcpts: list[str], message: bytes) -> dict[str, Outcome]:
        """A hop without PIPELINING: aiosmtplib's commands, one reply at a time."""
        client = conn.client
        try:
            await client.mail(sender, options=["BODY=8BITMIME"] if conn.eightbit else [])
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
            return outcomes
        try:
            response = await client.data(message, timeout=self.settings.command_timeout)
            result = _outcome(response.code, response.message, hop)
        except aiosmtplib.SMTPResponseException as e:
            result = _outcome(e.code, e.message, hop)
        outcomes.update({r: result for r in accepted})
        return outcomes

    async def _connection(self, hop: Hop, route: Route, domain: str) -> tuple[_Conn, bool]:
        """An idle connection to the hop that is still open (and, without PIPELINING, answers RSET),
        else a new one; and whether it was reused."""
        pool = self._idle[(hop.address, hop.port)]
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if now - conn.since < _IDLE_SECONDS and conn.usable:
                if conn.pipe is not None:
                    return conn, True
                try:
                    await conn.client.rset()
                    return conn, True
                except (aiosmtplib.SMTPException, OSError):
                    pass
            conn.close()
        return await self._connect(hop, route, domain), False

    async def _connect(self, hop: Hop, route: Route, domain: str) -> _Conn:
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
            await client.ehlo()  # RFC 3207: only what the server offers after STARTTLS counts
        elif must_tls:
            client.close()
            raise _TempError(f"TLS required but {hop.name} does not offer STARTTLS")
        if route.smarthost and s.smarthost_user:
            try:
                await client.login(s.smarthost_user, s.smarthost_password)
            except aiosmtplib.SMTPAuthenticationError as e:
                client.close()
                raise _TempError(f"smarthost authentication failed: {e.code} {e.message}") from None
        eightbit = client.supports_extension("8bitmime")
        pipe = _Pipe.take_over(client) if client.supports_extension("pipelining") else None
        return _Conn(client, pipe, eightbit)

    async def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()
