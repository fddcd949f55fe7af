"""The asyncio transport that drives the sans-I/O SMTP protocol for each connection.

It owns what needs I/O or time: sockets, TLS, timeouts, connection caps, AUTH rate limits,
password checks and durable storage (both in threads, off the event loop).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter, defaultdict, deque
from datetime import datetime, timezone
from pathlib import Path

from .. import log, metrics
from ..addr import AddressError, Mailbox, parse_path
from ..config import Settings, parse_hostport
from ..smtp import protocol as p
from ..smtp.replies import AUTH_FAILED, LOCAL_ERROR, Reply
from .header_filter import HeaderFilter
from .policy import Policy
from .received import TLSInfo, received_header
from .reject import RejectGate
from .queue import QueueEntry, Recipient
from .queue_runner import QueueRunner
from .store import MessageFile, Store, new_queue_id
from .users import UserDB

# Stop reading from a client whose unprocessed input exceeds this (memory stays bounded).
_READ_HIGH_WATER = 256 * 1024


class AuthRateLimiter:
    """AUTH attempts per client IP in a sliding minute, counted whether they succeed or not."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, ip: str, now: float) -> bool:
        q = self._seen[ip]
        while q and q[0] <= now - 60:
            q.popleft()
        if len(q) >= self.per_minute:
            return False
        q.append(now)
        return True


async def reverse_dns(ip: str, timeout: float = 5.0) -> str:
    """Forward-confirmed reverse DNS name of `ip`, or "unknown" (as Postfix writes it)."""
    loop = asyncio.get_running_loop()
    try:
        name, _ = await asyncio.wait_for(loop.getnameinfo((ip, 0), socket.NI_NAMEREQD), timeout)
        infos = await asyncio.wait_for(loop.getaddrinfo(name, None), timeout)
    except (OSError, TimeoutError):
        return "unknown"
    return name if any(info[4][0] == ip for info in infos) else "unknown"


class MailServer:
    """All SMTP and submission listeners of one process, sharing caps, users and storage."""

    def __init__(self, settings: Settings, ssl_context: ssl.SSLContext | None) -> None:
        self.ssl_context = ssl_context
        self.store = Store(Path(settings.server.data_dir))
        self.users = UserDB(settings.users_path)
        self.per_ip: Counter[str] = Counter()
        self.sessions: set[Session] = set()
        self.servers: dict[tuple[str, bool], asyncio.base_events.Server] = {}  # (address, submission) -> listener
        self.runner: QueueRunner | None = None
        self.reject: RejectGate | None = None
        self._configure(settings)
        metrics.watch_mta(self)  # relayguard_smtp_sessions_active

    def _configure(self, settings: Settings) -> None:
        """Everything derived from the settings; new sessions use it, sessions in flight finish as they began."""
        self.settings = settings
        self.policy = Policy(settings, self.users)
        s = settings.smtp
        self.limits = p.Limits(
            max_line_length=s.max_line_length,
            max_recipients=s.max_recipients,
            max_message_size=s.max_message_size,
            soft_error_limit=s.soft_error_limit,
            hard_error_limit=s.hard_error_limit,
            error_sleep=s.error_sleep,
        )
        self.auth_limiter = AuthRateLimiter(s.auth_attempts_per_minute)
        if self.reject is not None:
            self.reject.stop()
        self.reject = RejectGate.from_settings(settings, self.policy.trusted)  # issue 6: DNSBL checks, or None

    def _wanted(self) -> set[tuple[str, bool]]:
        s = self.settings.smtp
        return {(a, False) for a in s.listen} | {(a, True) for a in s.submission_listen}

    async def start(self) -> None:
        self.store.prepare()
        if self.reject is not None:
            self.reject.start()
        for addr, submission in sorted(self._wanted()):
            await self._listen(addr, submission)

    async def reload(self, settings: Settings) -> None:
        """SIGHUP: new settings, users and lists; listeners opened and closed to match; no session dropped."""
        self.users.reload()
        self._configure(settings)
        if self.reject is not None:
            self.reject.start()
        wanted = self._wanted()
        for key in [k for k in self.servers if k not in wanted]:
            self.servers.pop(key).close()
            log.event("unlisten", address=key[0])
        for addr, submission in sorted(wanted - set(self.servers)):
            await self._listen(addr, submission)

    async def _listen(self, addr: str, submission: bool) -> None:
        host, port = parse_hostport(addr)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Session(self, submission), host, port, reuse_address=True)
        self.servers[(addr, submission)] = server
        log.event("listen", service="submission" if submission else "smtp", address=addr)

    async def store_message(
        self, msg: MessageFile, mail_from: str, rcpts: list[Mailbox], client_ip: str, helo: str, identity: str
    ) -> None:
        """Make an accepted message durable (Maildirs and queue) and wake the queue; raises on failure."""
        routes = self.policy.routes(rcpts)
        entry = None
        if routes.remote:
            recipients = [Recipient(r) for r in routes.remote]
            entry = QueueEntry(msg.queue_id, mail_from, recipients, time.time(), client_ip, helo, identity)
        started = time.monotonic()
        await asyncio.to_thread(msg.commit, routes.local, entry)
        metrics.message_accepted(msg.size, time.monotonic() - started)
        log.event("accepted", client=client_ip, id=msg.queue_id, sender=mail_from, size=msg.size,
                  local=len(routes.local), remote=len(routes.remote))
        if entry is not None and self.runner is not None:
            self.runner.notify(msg.queue_id)

    async def inject(self, recipient: str, message: bytes) -> None:
        """Queue a message from <> (a DSN) through the same durable path as received mail."""
        try:
            box = parse_path(recipient, allow_null=False)
            self.policy.routes([box])
        except AddressError as e:
            log.event("dsn-undeliverable", rcpt=recipient, error=e)
            return
        msg = self.store.open_message(new_queue_id())
        msg.write(message)
        await self.store_message(msg, "", [box], "127.0.0.1", self.settings.server.hostname, "")

    async def stop(self, drain: float = 0.0) -> None:
        """Stop accepting, give sessions in flight up to `drain` seconds to finish, then cut the rest."""
        for server in self.servers.values():
            server.close()
        deadline = time.monotonic() + drain
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.sessions:
            log.event("drain-timeout", sessions=len(self.sessions))
        for session in list(self.sessions):
            session.abort()
        for server in self.servers.values():
            await server.wait_closed()
        if self.reject is not None:
            self.reject.stop()


class Session(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: MailServer, submission: bool) -> None:
        self.server = server
        self.submission = submission
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.wake = asyncio.Event()
        self.lost = False
        self.paused = False
        self.message: MessageFile | None = None
        self.queue_id = ""
        self.tls: TLSInfo | None = None
        self.rdns: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.dnsbl = None  # issue 6: this session's DNSBL Decision, once checked

    # asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.ip = peer[0].removeprefix("::ffff:")
        srv, s = self.server, self.server.settings
        self.conn = p.ServerConnection(
            s.server.hostname,
            srv.limits,
            tls_available=srv.ssl_context is not None,
            auth_available=True,
            require_auth=self.submission,
        )
        if len(srv.sessions) >= s.smtp.max_connections:
            self._refuse("421", "4.3.2", "Error: too many connections", "connection cap")
            return
        if srv.per_ip[self.ip] >= s.smtp.max_connections_per_ip:
            self._refuse("421", "4.7.0", f"Error: too many connections from {self.ip}", "per-ip cap")
            return
        srv.sessions.add(self)
        srv.per_ip[self.ip] += 1
        metrics.session_started(self.submission)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.event("connect", client=self.ip, service="submission" if self.submission else "smtp")
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _refuse(self, code: str, enhanced: str, text: str, reason: str) -> None:
        log.event("refuse", client=self.ip, reason=reason)
        metrics.refused(reason)
        assert self.transport is not None
        self.transport.write(f"{code} {enhanced} {self.server.settings.server.hostname} {text}\r\n".encode())
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        if self.conn.buffered > _READ_HIGH_WATER and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()
        self.wake.set()

    def eof_received(self) -> bool | None:
        self.lost = True
        self.wake.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.wake.set()
        self._release()

    def _release(self) -> None:
        """Free this session's place under the caps (once), as soon as the session is over."""
        if self in self.server.sessions:
            self.server.sessions.discard(self)
            self.server.per_ip[self.ip] -= 1
            if self.server.per_ip[self.ip] <= 0:
                del self.server.per_ip[self.ip]

    def abort(self) -> None:
        if self.transport:
            self.transport.abort()
        if self.task:
            self.task.cancel()

    # The session loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        s = self.server.settings.smtp
        deadline = time.monotonic() + s.session_timeout
        try:
            gate = self.server.reject.connect_check(self.ip, self.submission) if self.server.reject else None
            if s.reverse_dns:
                self.rdns = await reverse_dns(self.ip)
            if s.greet_pause:
                await asyncio.sleep(s.greet_pause)
            if gate is not None:  # issue 6: postscreen-style check before the greeting
                self.dnsbl = await gate
            refusal = RejectGate.connect_reply(self.dnsbl) if self.dnsbl is not None else None
            if refusal is not None:
                self.conn.close(refusal, "dnsbl")
            else:
                self.conn.greeting()
            while not self.lost:
                event = self.conn.next_event()
                if event is not None:
                    await self._handle(event)
                    continue
                await self._flush()
                if self.conn.closed:
                    break
                if self.paused and self.transport:
                    self.paused = False
                    self.transport.resume_reading()
                if not await self._wait_input(min(s.timeout, deadline - time.monotonic())):
                    self.conn.close(Reply(421, "4.4.2", f"{self.conn.hostname} Error: timeout exceeded"), "timeout")
            await self._flush()
        except (ConnectionError, ssl.SSLError, OSError) as e:
            log.event("error", client=self.ip, error=e)
        finally:
            if self.message is not None:
                self.message.discard()
                self.message = None
            if self.transport:
                self.transport.close()
            self._release()
            metrics.session_ended(time.monotonic() - deadline + s.session_timeout, self.conn.errors)
            log.event("disconnect", client=self.ip)

    async def _wait_input(self, timeout: float) -> bool:
        self.wake.clear()
        if self.lost:
            return True
        try:
            async with asyncio.timeout(max(timeout, 0)):
                await self.wake.wait()
        except TimeoutError:
            return False
        return True

    async def _flush(self) -> None:
        delay = self.conn.take_delay()
        if delay:
            await asyncio.sleep(delay)
        out = self.conn.data_to_send()
        if out and self.transport and not self.transport.is_closing():
            self.transport.write(out)

    # Events ----------------------------------------------------------------------------------

    async def _handle(self, event: p.Event) -> None:
        conn, srv = self.conn, self.server
        match event:
            case p.MailFrom(mailbox=box):
                reply = srv.policy.check_sender(box, conn.identity)
                log.event("mail", logging.DEBUG if reply.positive else logging.INFO, client=self.ip, sender=box,
                          user=conn.identity or "", result=reply.code)
                if not reply.positive:
                    metrics.refused("sender")
                conn.reply(reply)
            case p.RcptTo(mailbox=box, text=text):
                reply, reason = srv.policy.check_recipient(box, text, client_ip=self.ip, identity=conn.identity)
                if reply.positive and srv.reject is not None:  # issue 6: DNSBL check at RCPT
                    reply, reason = await srv.reject.check_rcpt(self, reply, reason)
                decision = "accept" if reply.positive else "reject"
                log.event("rcpt", logging.DEBUG if reply.positive else logging.INFO, client=self.ip, rcpt=text,
                          decision=decision, reason=reason, reply=reply.code)
                metrics.rcpt(reply.positive, reason)
                conn.reply(reply)
            case p.DataStart():
                self._start_message()
            case p.DataChunk(data=data):
                assert self.message is not None
                self.message.write(self.client_headers.feed(data))
            case p.DataEnd():
                conn.reply(await self._commit())
            case p.DataDiscarded(reason=reason):
                log.event("discard", client=self.ip, id=self.queue_id, reason=reason)
                metrics.refused(reason)
                if self.message is not None:
                    self.message.discard()
                    self.message = None
            case p.AuthRequest():
                await self._auth(event)
            case p.StartTLS():
                await self._start_tls()
            case p.Closing(reason=reason):
                log.event("close", logging.DEBUG if reason == "quit" else logging.INFO, client=self.ip, reason=reason)
                if reason != "quit":
                    metrics.refused(reason)
            case p.Helo() | p.Reset():
                pass

    def _start_message(self) -> None:
        self.queue_id = new_queue_id()
        self.message = self.server.store.open_message(self.queue_id)
        conn, s = self.conn, self.server.settings
        self.message.write(
            received_header(
                helo=conn.helo or "",
                ip=self.ip,
                rdns=self.rdns,
                by=s.server.hostname,
                queue_id=self.queue_id,
                esmtp=conn.esmtp,
                tls=self.tls,
                authenticated=conn.identity is not None,
                rcpts=[str(r) for r in conn.envelope.rcpts],
                when=datetime.now(timezone.utc),
            )
        )
        if self.dnsbl is not None:  # issue 6: the DNSBL score of accepted mail
            self.message.write(RejectGate.header(self))
        self.client_headers = HeaderFilter()  # issue 6: the client's own X-Relayguard-DNSBL never survives

    async def _commit(self) -> Reply:
        msg, env, conn = self.message, self.conn.envelope, self.conn
        assert msg is not None and env.mail_from is not None
        self.message = None
        try:
            await self.server.store_message(msg, str(env.mail_from), env.rcpts, self.ip, conn.helo or "", conn.identity or "")
        except (OSError, ValueError) as e:
            log.event("store-failed", client=self.ip, id=self.queue_id, error=e)
            return LOCAL_ERROR
        return Reply(250, "2.0.0", f"Ok: queued as {self.queue_id}")

    async def _auth(self, event: p.AuthRequest) -> None:
        srv, conn = self.server, self.conn
        if not srv.auth_limiter.allow(self.ip, time.monotonic()):
            log.event("auth", client=self.ip, result="rate-limited")
            metrics.SMTP_AUTH.labels("rate-limited").inc()
            conn.close(Reply(421, "4.7.0", f"{conn.hostname} Error: too many AUTH attempts from {self.ip}"), "auth rate")
            return
        ok = event.authzid in ("", event.username) and await asyncio.to_thread(
            srv.users.verify, event.username, event.password
        )
        log.event("auth", client=self.ip, user=event.username, mechanism=event.mechanism, result="ok" if ok else "fail")
        metrics.SMTP_AUTH.labels("ok" if ok else "fail").inc()
        if ok:
            conn.authenticated(event.username.lower())
        else:
            conn.reply(AUTH_FAILED)

    async def _start_tls(self) -> None:
        ctx = self.server.ssl_context
        assert ctx is not None and self.transport is not None
        # Flush the 220 and start the handshake with no await in between: no plaintext can slip in.
        self.transport.write(self.conn.data_to_send())
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, ctx, server_side=True, ssl_handshake_timeout=30)
        except (ConnectionError, ssl.SSLError, OSError, TimeoutError) as e:
            log.event("tls-failed", client=self.ip, error=e)
            metrics.SMTP_TLS.labels("failed").inc()
            self.conn.close(Reply(421, "4.7.0", "TLS handshake failed"), "tls failed")
            self.lost = True
            return
        if new is None:
            self.lost = True
            return
        self.transport = new
        obj = new.get_extra_info("ssl_object")
        cipher = obj.cipher() if obj else None
        if cipher:
            self.tls = TLSInfo(cipher[1], cipher[0], cipher[2])
        log.event("tls", client=self.ip, version=cipher[1] if cipher else "?", cipher=cipher[0] if cipher else "?")
        metrics.SMTP_TLS.labels("ok").inc()
        self.conn.tls_started()
