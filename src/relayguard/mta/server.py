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
from collections.abc import Coroutine
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import log, metrics
from ..addr import AddressError, Mailbox, parse_path
from ..config import Settings
from ..hostport import parse_hostport
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
        await self.store.commit(msg, routes.local, entry)
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
    """One client connection.

    Received bytes are handled at once in `data_received`: most commands need no waiting, and
    handling them there costs no task switch. An event that must wait (a DNSBL answer, the disk,
    a password check, the TLS handshake, a tarpit pause) runs as a task; input that arrives
    meanwhile stays buffered in the protocol until the task is done.
    """

    def __init__(self, server: MailServer, submission: bool) -> None:
        self.server = server
        self.submission = submission
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.closed = False  # the transport was closed or lost
        self.eof = False  # the client will send no more
        self.paused = False
        self.message: MessageFile | None = None
        self.queue_id = ""
        self.tls: TLSInfo | None = None
        self.rdns: str | None = None
        self.task: asyncio.Task[None] | None = None  # the waiting step in progress, if any
        self.dnsbl = None  # issue 6: this session's DNSBL Decision, once checked

    # asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
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
        log.event("connect", client=self.ip, service="submission" if self.submission else "smtp")
        self.started = self.active = self.loop.time()
        self.timer = self.loop.call_at(self.started + s.smtp.timeout, self._on_timer)
        gate = srv.reject.connect_check(self.ip, self.submission) if srv.reject else None
        if gate is None and not s.smtp.reverse_dns and not s.smtp.greet_pause:
            self.conn.greeting()
            self._pump()
        else:
            self._wait(self._greet(gate))

    def _refuse(self, code: str, enhanced: str, text: str, reason: str) -> None:
        self.closed = True
        log.event("refuse", client=self.ip, reason=reason)
        metrics.refused(reason)
        assert self.transport is not None
        self.transport.write(f"{code} {enhanced} {self.server.settings.server.hostname} {text}\r\n".encode())
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.active = self.loop.time()
        self.conn.receive_data(data)
        if self.task is None:
            self._pump()
        if self.conn.buffered > _READ_HIGH_WATER and not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.task is None:
            self._pump()
        return None if self.conn.tls_active else True  # keep the transport until the replies are out (not for TLS)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True  # a step in progress still finishes: a commit must log and wake the queue
        self._end()

    def abort(self) -> None:
        if self.transport:
            self.transport.abort()
        if self.task:
            self.task.cancel()

    def _end(self) -> None:
        """The session is over: free its place under the caps and its spool file (once)."""
        srv = self.server
        if self not in srv.sessions:
            return
        srv.sessions.discard(self)
        srv.per_ip[self.ip] -= 1
        if srv.per_ip[self.ip] <= 0:
            del srv.per_ip[self.ip]
        self.timer.cancel()
        if self.message is not None:
            self.message.discard()
            self.message = None
        metrics.session_ended(self.loop.time() - self.started, self.conn.errors)
        log.event("disconnect", client=self.ip)

    # Driving the protocol --------------------------------------------------------------------

    def _pump(self) -> None:
        """Handle events until one has to wait or input runs out, then send the replies."""
        conn = self.conn
        try:
            while not self.closed:
                event = conn.next_event()
                if event is None:
                    break
                step = self._handle(event)
                if step is not None:
                    self._wait(step)
                    return
        except (OSError, ValueError) as e:  # the spool file (disk full, ...)
            log.event("error", client=self.ip, error=e)
            self._close()
            return
        delay = conn.take_delay()
        if delay:  # tarpit: the replies go out after the pause
            self._wait(asyncio.sleep(delay))
            return
        out = conn.data_to_send()
        if self.closed or self.transport.is_closing():  # type: ignore[union-attr]
            return
        if out:
            self.transport.write(out)  # type: ignore[union-attr]
            self.active = self.loop.time()
        if conn.closed or self.eof:
            self._close()
        elif self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _wait(self, step: Coroutine[Any, Any, object]) -> None:
        self.task = self.loop.create_task(self._run_step(step))

    async def _run_step(self, step: Coroutine[Any, Any, object]) -> None:
        try:
            await step
        except Exception as e:  # noqa: BLE001 (network errors, and bugs: the session ends either way)
            log.event("error", logging.INFO if isinstance(e, OSError) else logging.ERROR, client=self.ip, error=e)
            self._close()
        finally:
            self.task = None
        self._pump()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]

    def _on_timer(self) -> None:
        """Idle timeout (from the last byte in or out) and total session time."""
        s = self.server.settings.smtp
        now = self.loop.time()
        due = min(self.active + s.timeout, self.started + s.session_timeout)
        if self.task is not None:  # our own work is not the client's idleness
            due = max(due, now + s.timeout)
        if now < due:
            self.timer = self.loop.call_at(due, self._on_timer)
            return
        self.conn.close(Reply(421, "4.4.2", f"{self.conn.hostname} Error: timeout exceeded"), "timeout")
        self._pump()

    async def _greet(self, gate: asyncio.Task[Any] | None) -> None:
        s = self.server.settings.smtp
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

    # Events ----------------------------------------------------------------------------------

    def _handle(self, event: p.Event) -> Coroutine[Any, Any, None] | None:
        """Answer an event at once, or return the step that answers it after waiting."""
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
                    return self._rcpt_dnsbl(text, reply, reason)
                self._rcpt_reply(text, reply, reason)
            case p.DataStart():
                self._start_message()
            case p.DataChunk(data=data):
                assert self.message is not None
                self.message.write(self.client_headers.feed(data))
            case p.DataEnd():
                return self._commit()
            case p.DataDiscarded(reason=reason):
                log.event("discard", client=self.ip, id=self.queue_id, reason=reason)
                metrics.refused(reason)
                if self.message is not None:
                    self.message.discard()
                    self.message = None
            case p.AuthRequest():
                return self._auth(event)
            case p.StartTLS():
                return self._start_tls()
            case p.Closing(reason=reason):
                log.event("close", logging.DEBUG if reason == "quit" else logging.INFO, client=self.ip, reason=reason)
                if reason != "quit":
                    metrics.refused(reason)
            case p.Helo() | p.Reset():
                pass
        return None

    async def _rcpt_dnsbl(self, text: str, reply: Reply, reason: str) -> None:
        reply, reason = await self.server.reject.check_rcpt(self, reply, reason)  # type: ignore[union-attr]
        self._rcpt_reply(text, reply, reason)

    def _rcpt_reply(self, text: str, reply: Reply, reason: str) -> None:
        decision = "accept" if reply.positive else "reject"
        log.event("rcpt", logging.DEBUG if reply.positive else logging.INFO, client=self.ip, rcpt=text,
                  decision=decision, reason=reason, reply=reply.code)
        metrics.rcpt(reply.positive, reason)
        self.conn.reply(reply)

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

    async def _commit(self) -> None:
        msg, env, conn = self.message, self.conn.envelope, self.conn
        assert msg is not None and env.mail_from is not None
        self.message = None
        try:
            await self.server.store_message(msg, str(env.mail_from), env.rcpts, self.ip, conn.helo or "", conn.identity or "")
        except (OSError, ValueError) as e:
            log.event("store-failed", client=self.ip, id=self.queue_id, error=e)
            conn.reply(LOCAL_ERROR)
            return
        conn.reply(Reply(250, "2.0.0", f"Ok: queued as {self.queue_id}"))

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

    def _start_tls(self) -> Coroutine[Any, Any, None]:
        """Send the 220 and stop reading now, so no plaintext sent after STARTTLS is ever read as
        if it came inside TLS (CVE-2011-0411); the handshake itself waits."""
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())
        self.transport.pause_reading()
        return self._handshake()

    async def _handshake(self) -> None:
        ctx = self.server.ssl_context
        assert ctx is not None and self.transport is not None
        try:
            new = await self.loop.start_tls(self.transport, self, ctx, server_side=True, ssl_handshake_timeout=30)
        except (ConnectionError, ssl.SSLError, OSError, TimeoutError) as e:
            log.event("tls-failed", client=self.ip, error=e)
            metrics.SMTP_TLS.labels("failed").inc()
            self.conn.close(Reply(421, "4.7.0", "TLS handshake failed"), "tls failed")
            self._close()
            return
        if new is None:
            self._close()
            return
        self.transport = new
        obj = new.get_extra_info("ssl_object")
        cipher = obj.cipher() if obj else None
        if cipher:
            self.tls = TLSInfo(cipher[1], cipher[0], cipher[2])
        log.event("tls", client=self.ip, version=cipher[1] if cipher else "?", cipher=cipher[0] if cipher else "?")
        metrics.SMTP_TLS.labels("ok").inc()
        self.conn.tls_started()
