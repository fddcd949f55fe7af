"""The open-relay prober: runs the catalogue against SMTP servers over real sockets.

Python API (the DNSBL service and tools call these; nothing here prints):

    from relayguard.relaytest import RelayTestOptions, check_target, run

    result = await check_target("mx.example.net:25", RelayTestOptions(mode="confirm",
                                canary_domain="canary.example.org"), canary=my_canary)
    result.verdict          # Verdict.OPEN / CLOSED / AUTH_REQUIRED / UNREACHABLE
    result.relays           # the CaseResults the server fell for
    result.to_json()        # everything, transcripts included

    results = run(["192.0.2.7", "[2001:db8::1]:2525"], RelayTestOptions())   # sync, many targets

`check_target(target, options, canary=None, result=None)` tests one target; pass `result` (a
`TargetResult` from `new_result`) to watch it fill in, or to keep what was done when the task is
cancelled. `run_async(targets, options, on_result=..., results=...)` tests many with a
concurrency limit and an overall time limit; `run` wraps it with `asyncio.run`. In confirm mode
give a started `Canary` (canary.py), or set `canary_listen` / `canary_maildir` and `run_async`
starts one for the run.

How a target is tested: one session first (greeting, EHLO or HELO, optional STARTTLS, EHLO
again); its banner and EHLO name fill the catalogue placeholders. Then up to `connections`
sessions share the cases: each case is MAIL, RCPT (and in data/confirm mode DATA with a unique
token), then RSET; in probe mode, when the server offers PIPELINING, the three go out in one
write (RFC 2920: one round trip per case). A session is replaced before it collects `errors_per_session` refusals, so
tarpits that start after N errors (Postfix, relayguard) never start. A 421 reply, a disconnect
or a timeout inside a case ends that session; the case is retried once on a new one. A 530
stops the run (verdict auth-required). Nothing beyond the catalogue (and, with `smuggling`, the
end-of-data probe) is ever sent.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..hostport import parse_hostport
from . import catalogue
from .canary import Canary, CanaryReceiver, MaildirWatcher, new_token
from .catalogue import CASES, SMUGGLING, Case, Smuggle
from .reply import ReplyError, ReplyParser, ServerReply, ehlo_keywords
from .result import (MODES, CaseResult, Exchange, Outcome, SmuggleResult, TargetResult, decide,
                     fill_values)


@dataclass
class RelayTestOptions:
    mode: str = "probe"  # probe | data | confirm
    helo: str = "relaytest.relayguard.invalid"  # our EHLO name
    starttls: bool = False
    canary_domain: str = "example.com"  # {X}: the outside domain (the canary's in confirm mode)
    canary_listen: str = ""  # confirm mode: start a CanaryReceiver here ("IP:PORT")
    canary_maildir: str = ""  # confirm mode: watch this Maildir instead
    outside_ip: str = "192.0.2.1"  # {XIP}
    sender: str = "relaytest"  # {s}
    recipient: str = "relaytest"  # {u}
    target_name: str = ""  # {T}; "" = from the banner, else EHLO, else the target's host
    target_domain: str = ""  # {D}; "" = {T} less its first label when it has three or more
    cases: tuple[str, ...] = ()  # case ids; () = the whole catalogue
    timeout: float = 30.0  # per stage: connect, greeting, each command
    data_timeout: float | None = None  # the reply after the dot; None = `timeout`
    confirm_timeout: float = 60.0  # how long after the last case tokens may still arrive
    connections: int = 4  # sessions per target at once
    errors_per_session: int = 8  # new session before this many refusals (below tarpit limits)
    retries: int = 1  # per case, after 421 / disconnect / timeout
    max_errors_in_row: int = 3  # cases without an answer in a row before the target is given up
    rate: float = 0.0  # cases started per second per target; 0 = no limit
    concurrency: int = 20  # targets at once (run_async)
    time_limit: float = 0.0  # seconds for the whole run_async; 0 = none
    smuggling: bool = False  # end-of-data probe (data and confirm modes)
    smuggle_rcpt: str = ""  # a local recipient of the target; "" = postmaster at {D}, {T}, [{IP}], or alone
    tls_context: ssl.SSLContext | None = None
    bind: str = ""  # local address to connect from (e.g. an untrusted one for a self-check)
    pipelining: bool = True  # probe mode: MAIL, RCPT and RSET in one write when the server offers PIPELINING

    def check(self) -> None:
        """Raise ValueError for options that cannot work."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.smuggling and self.mode == "probe":
            raise ValueError("--smuggling needs mode data or confirm (a message must be sent)")
        for name in ("timeout", "confirm_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if min(self.connections, self.concurrency, self.errors_per_session, self.max_errors_in_row) < 1 or self.retries < 0:
            raise ValueError("connections, concurrency, errors_per_session and max_errors_in_row must be at least 1")
        if not self.canary_domain or any(c in self.canary_domain for c in "@<> "):
            raise ValueError(f"canary domain {self.canary_domain!r} is not a domain")
        if self.cases:
            try:
                catalogue.by_id(self.cases)
            except KeyError as e:
                raise ValueError(f"unknown case id(s): {e.args[0]}") from None

    @property
    def selected(self) -> tuple[Case, ...]:
        return catalogue.by_id(self.cases) if self.cases else CASES


def parse_target(target: str, default_port: int = 25) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port`, `[v6]` or a bare IPv6 address -> (host, port)."""
    t = target.strip()
    if not t or any(c.isspace() for c in t):
        raise ValueError("empty target" if not t else "a target holds no spaces")
    if t.count(":") > 1 and not t.startswith("["):
        return t, default_port
    if t.startswith("[") and t.endswith("]"):
        return t[1:-1], default_port
    return parse_hostport(t, default_port)


def read_targets(lines: Iterable[str]) -> list[str]:
    """Targets from a file's lines: one a line, blank lines and `#` comments skipped."""
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


# Sessions ------------------------------------------------------------------------------------


class SessionError(Exception):
    """A session cannot go on; `reply` is the server's last word when it said one."""

    def __init__(self, message: str, stage: str = "", reply: ServerReply | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.reply = reply


class Refused(SessionError):
    """The server refused the session itself (5xx greeting or HELO): it relays nothing for us."""


class AuthRequired(Exception):
    def __init__(self, reply: ServerReply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _client_tls() -> ssl.SSLContext:
    """A relay test checks relaying, not certificates: any certificate is taken."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Session:
    """One SMTP client connection; every line sent and read goes to `self.log`."""

    def __init__(self, ip: str, port: int, options: RelayTestOptions, log: list[str] | None = None) -> None:
        self.ip, self.port, self.options = ip, port, options
        self.log: list[str] = log if log is not None else []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parser = ReplyParser()
        self.ready: deque[ServerReply] = deque()
        self.errors = 0
        self.greeting: ServerReply | None = None
        self.ehlo: ServerReply | None = None
        self.extensions: dict[str, str] = {}
        self.tls = ""
        self.rset_sent = False  # the last case's RSET went out with its MAIL and RCPT (pipelined)

    # Low level

    async def _read_reply(self, stage: str, timeout: float | None = None) -> ServerReply:
        assert self.reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.options.timeout)
        while not self.ready:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SessionError(f"timeout waiting for the {stage} reply", stage)
            try:
                async with asyncio.timeout(remaining):  # no helper task per read, unlike wait_for
                    data = await self.reader.read(65536)
            except TimeoutError:
                raise SessionError(f"timeout waiting for the {stage} reply", stage) from None
            except (ConnectionError, OSError) as e:
                raise SessionError(f"connection lost at {stage}: {e}", stage) from None
            if not data:
                raise SessionError(f"connection closed by the server at {stage}", stage)
            try:
                self.ready.extend(self.parser.feed(data))
            except ReplyError as e:
                raise SessionError(f"bad reply at {stage}: {e}", stage) from None
        reply = self.ready.popleft()
        for line in str(reply).split("\n"):
            self.log.append("S: " + line)
        if reply.code >= 400 and reply.code != 421:
            self.errors += 1
        return reply

    async def _write(self, data: bytes, shown: str, stage: str) -> None:
        assert self.writer is not None
        self.log.extend("C: " + line for line in shown.split("\n"))
        try:
            self.writer.write(data)
            async with asyncio.timeout(self.options.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise SessionError(f"timeout sending {stage}", stage) from None
        except (ConnectionError, OSError) as e:
            raise SessionError(f"connection lost sending {stage}: {e}", stage) from None

    async def command(self, line: str, stage: str, timeout: float | None = None) -> ServerReply:
        """Send one command line and read its reply; a 421 ends the session (SessionError)."""
        await self._write(line.encode("utf-8") + b"\r\n", line, stage)
        reply = await self._read_reply(stage, timeout)
        if reply.code == 421:
            raise SessionError(f"server closing the session at {stage}: {reply.code} {reply.text}", stage, reply)
        return reply

    async def pipeline(self, commands: Sequence[tuple[str, str]]) -> list[ServerReply]:
        """Send (line, stage) commands in one write (RFC 2920 PIPELINING) and read their replies in
        order; a 421 ends the session (SessionError) like `command`."""
        await self._write("".join(line + "\r\n" for line, _ in commands).encode("utf-8"),
                          "\n".join(line for line, _ in commands), commands[0][1])
        replies = []
        for _, stage in commands:
            reply = await self._read_reply(stage)
            if reply.code == 421:
                raise SessionError(f"server closing the session at {stage}: {reply.code} {reply.text}", stage, reply)
            replies.append(reply)
        return replies

    async def send_data(self, data: bytes, shown: str, stage: str, timeout: float | None = None) -> ServerReply:
        await self._write(data, shown, stage)
        reply = await self._read_reply(stage, timeout)
        if reply.code == 421:
            raise SessionError(f"server closing the session at {stage}: {reply.code} {reply.text}", stage, reply)
        return reply

    # Set-up and tear-down

    async def open(self) -> None:
        o = self.options
        local = (o.bind, 0) if o.bind else None
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.ip, self.port, local_addr=local, limit=1 << 20), o.timeout)
        except TimeoutError:
            raise SessionError(f"timeout connecting to {self.ip} port {self.port}", "connect") from None
        except OSError as e:
            raise SessionError(f"cannot connect to {self.ip} port {self.port}: {e.strerror or e}", "connect") from None
        self.log.append(f"-- connected to {self.ip} port {self.port}")
        self.greeting = await self._read_reply("greeting")
        if self.greeting.code != 220:
            cls = Refused if self.greeting.code >= 500 else SessionError
            raise cls(f"greeting {self.greeting.code} {self.greeting.text}", "greeting", self.greeting)
        await self._hello()
        if o.starttls:
            if "STARTTLS" not in self.extensions:
                raise SessionError("STARTTLS not offered", "starttls")
            reply = await self.command("STARTTLS", "starttls")
            if reply.code != 220:
                raise SessionError(f"STARTTLS refused: {reply.code} {reply.text}", "starttls", reply)
            assert self.writer is not None
            try:
                await asyncio.wait_for(self.writer.start_tls(o.tls_context or _client_tls()), o.timeout)
            except TimeoutError:
                raise SessionError("timeout in the TLS handshake", "starttls") from None
            except (ssl.SSLError, OSError) as e:
                raise SessionError(f"TLS handshake failed: {e}", "starttls") from None
            sslobj = self.writer.get_extra_info("ssl_object")
            self.tls = f"{sslobj.version()} {sslobj.cipher()[0]}" if sslobj else "TLS"
            self.log.append(f"-- TLS started: {self.tls}")
            self.parser = ReplyParser()
            self.ready.clear()
            await self._hello()

    async def _hello(self) -> None:
        reply = await self.command(f"EHLO {self.options.helo}", "ehlo")
        if reply.code == 250:
            self.ehlo, self.extensions = reply, ehlo_keywords(reply)
            return
        reply = await self.command(f"HELO {self.options.helo}", "helo")
        if reply.code != 250:
            cls = Refused if reply.code >= 500 else SessionError
            raise cls(f"HELO refused: {reply.code} {reply.text}", "helo", reply)
        self.ehlo, self.extensions = reply, {}

    async def rset(self) -> None:
        await self.command("RSET", "rset")

    async def quit(self) -> None:
        try:
            await self.command("QUIT", "quit")
        except SessionError:
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (OSError, TimeoutError, ssl.SSLError):
                pass

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None


# One target -----------------------------------------------------------------------------------


def new_result(target: str, options: RelayTestOptions) -> TargetResult:
    try:
        host, port = parse_target(target)
    except ValueError:
        host, port = target, 0
    return TargetResult(target=target, host=host, port=port, mode=options.mode)


def _refused(res: CaseResult, reply: ServerReply, stage: str, accepted: bool) -> bool:
    """Record a refusal at `stage` unless `accepted`; a 530 means the whole session needs AUTH."""
    if accepted:
        return False
    res.outcome, res.stage = Outcome.REFUSED, stage
    if reply.code == 530:
        raise AuthRequired(reply)
    return True


def _message(token: str, case_id: str, name: str, mail_from: str, rcpt_to: str, target: str, helo: str) -> bytes:
    from email.utils import formatdate  # here: probe mode sends no message, and `relaytest` start-up counts

    lines = [
        f"From: relayguard relay test <{mail_from}>",
        f"To: <{rcpt_to}>",
        f"Subject: relayguard relay test {case_id} {token}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: <{token}@{helo}>",
        f"X-Relaytest-Token: {token}",
        "",
        f"This is an open-relay test by relayguard against {target}, case {case_id} ({name}).",
        f"If you read this, that server relayed it for a third party. Token: {token}",
    ]
    return "\r\n".join(lines).encode("utf-8", "replace") + b"\r\n"


def _address(host: str, port: int) -> str:
    """`host` as getaddrinfo gives it when it is an IP address, else "" (a name, for the resolver).
    Addresses skip asyncio's getaddrinfo, which starts a thread for the call: about a millisecond,
    a tenth of a battery against a loopback target."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0][4][0]
    except (socket.gaierror, UnicodeError):
        return ""


def _strip_path(arg: str) -> str:
    return arg.split(":", 1)[1].strip() if ":" in arg else arg


class _TargetRun:
    def __init__(self, result: TargetResult, options: RelayTestOptions, canary: Canary | None) -> None:
        self.r = result
        self.o = options
        self.canary = canary
        self.ip = ""
        self.values: dict[str, str] = {}
        self.queue: deque[Case] = deque()
        self.stop = asyncio.Event()
        self.next_slot = 0.0
        self.alive = 0
        self.errors_in_row = 0

    async def session(self, log: list[str] | None = None) -> Session:
        s = Session(self.ip, self.r.port, self.o, log)
        self.r.sessions += 1
        try:
            await s.open()
        except BaseException:
            s.abort()
            raise
        return s

    async def pace(self) -> None:
        if self.o.rate <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self.next_slot)
        self.next_slot = slot + 1.0 / self.o.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    async def main(self) -> None:
        r, o = self.r, self.o
        if not r.port:
            r.error = f"{r.target!r} is not host, host:port or [IPv6]:port"
            return
        try:
            self.ip = _address(r.host, r.port) or (await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                r.host, r.port, type=socket.SOCK_STREAM), o.timeout))[0][4][0]
        except (OSError, TimeoutError) as e:
            r.error = f"cannot resolve {r.host}: {e}"
            return
        try:
            lead = await self.session(r.setup)
        except Refused as e:
            r.error, r.session_refused = str(e), e.reply
            return
        except SessionError as e:
            r.error = str(e)
            return
        r.banner = str(lead.greeting).replace("\n", " | ") if lead.greeting else ""
        r.extensions, r.tls = dict(lead.extensions), lead.tls
        banner_name = lead.greeting.first.split(" ", 1)[0] if lead.greeting else ""
        ehlo_name = lead.ehlo.first.split(" ", 1)[0] if lead.ehlo else ""
        self.values = fill_values(banner_name=banner_name, ehlo_name=ehlo_name, host=r.host, ip=self.ip,
                                  canary_domain=o.canary_domain, outside_ip=o.outside_ip, sender=o.sender,
                                  recipient=o.recipient, rand=new_token()[2:12], target_name=o.target_name,
                                  target_domain=o.target_domain)
        r.values = dict(self.values)
        cases = o.selected
        self.queue.extend(cases)
        n = max(1, min(o.connections, len(cases)))
        await asyncio.gather(self.worker(lead), *(self.worker(None) for _ in range(n - 1)))
        order = {c.id: i for i, c in enumerate(CASES)}
        left = list(self.queue)
        self.queue.clear()
        r.not_run = [c.id for c in left]
        r.cases.sort(key=lambda c: order.get(c.id, 0))
        if o.mode == "confirm" and self.canary is not None:
            await self.confirm()
        if o.smuggling and o.mode in ("data", "confirm") and r.auth_reply is None:
            await self.smuggle_all()

    # Cases

    async def worker(self, session: Session | None) -> None:
        self.alive += 1
        failures = 0
        try:
            while not self.stop.is_set() and self.queue:
                case = self.queue.popleft()
                mail, rcpt = case.commands(**self.values)
                res = CaseResult(case.id, case.name, mail, rcpt, case.relay)
                self.r.cases.append(res)
                while True:
                    if session is None:
                        try:
                            session = await self.session(res.transcript)
                            failures = 0
                        except SessionError as e:
                            failures += 1
                            res.transcript.append(f"-- {e}")
                            if failures <= self.o.retries:
                                continue
                            if self.alive > 1:  # the other sessions take this case over
                                self.r.cases.remove(res)
                                self.queue.appendleft(case)
                                return
                            self.give_up(res, e)
                            return
                    session.log = res.transcript
                    await self.pace()
                    res.attempts += 1
                    try:
                        await self.attempt(session, case, res)
                        break
                    except AuthRequired as e:
                        self.r.auth_reply = e.reply
                        self.stop.set()
                        break
                    except SessionError as e:
                        res.transcript.append(f"-- {e}")
                        session.abort()
                        session = None
                        self.r.reconnects += 1
                        if res.attempts > self.o.retries:
                            res.outcome, res.stage, res.error = Outcome.ERROR, e.stage, str(e)
                            break
                if res.outcome is Outcome.ERROR:
                    self.errors_in_row += 1
                    if self.errors_in_row >= self.o.max_errors_in_row and not self.stop.is_set():
                        self.r.error = f"stopped after {self.errors_in_row} cases in a row without an answer: {res.error}"
                        self.stop.set()
                else:
                    self.errors_in_row = 0
                if session is not None:
                    try:
                        if self.stop.is_set() or not self.queue or session.errors >= self.o.errors_per_session:
                            await session.quit()
                            session = None
                        elif not session.rset_sent:
                            await session.rset()
                    except SessionError as e:
                        res.transcript.append(f"-- {e}")
                        if session is not None:
                            session.abort()
                        session = None
        except asyncio.CancelledError:
            if session is not None:
                session.abort()
                session = None
            raise
        finally:
            self.alive -= 1
            if session is not None:
                await session.quit()

    def give_up(self, res: CaseResult, e: SessionError) -> None:
        """No session can be had any more: this case and every one left end in error."""
        res.outcome, res.stage, res.error = Outcome.ERROR, e.stage, str(e)
        while self.queue:
            case = self.queue.popleft()
            mail, rcpt = case.commands(**self.values)
            self.r.cases.append(CaseResult(case.id, case.name, mail, rcpt, case.relay, Outcome.ERROR, e.stage,
                                           error=f"no session: {e}"))

    async def attempt(self, s: Session, case: Case, res: CaseResult) -> None:
        o = self.o
        s.rset_sent = False
        if o.mode == "probe" and o.pipelining and "PIPELINING" in s.extensions:
            return await self.attempt_pipelined(s, res)
        mail = await s.command(res.mail_from, "mail")
        res.replies.append(Exchange(res.mail_from, mail))
        if _refused(res, mail, "mail", mail.accepted):
            return
        rcpt = await s.command(res.rcpt_to, "rcpt")
        res.replies.append(Exchange(res.rcpt_to, rcpt))
        if _refused(res, rcpt, "rcpt", rcpt.code in (250, 251)):
            return
        if o.mode == "probe":
            res.outcome, res.stage = Outcome.ACCEPTED_RCPT, "rcpt"
            return
        data = await s.command("DATA", "data")
        res.replies.append(Exchange("DATA", data))
        if _refused(res, data, "data", data.code == 354):
            return
        res.token = new_token()
        body = _message(res.token, case.id, case.name, _strip_path(res.mail_from).strip("<>"),
                        _strip_path(res.rcpt_to).strip("<>"), self.r.target, o.helo)
        dot = await s.send_data(body + b".\r\n", f"<message, {len(body)} octets, token {res.token}>\n.", "dot",
                                o.data_timeout or o.timeout)
        res.replies.append(Exchange(".", dot))
        res.outcome, res.stage = (Outcome.ACCEPTED_DATA, "dot") if dot.accepted else (Outcome.REFUSED, "dot")

    async def attempt_pipelined(self, s: Session, res: CaseResult) -> None:
        """Probe mode, server offering PIPELINING: MAIL, RCPT and RSET in one round trip. RCPT goes
        out even when MAIL is refused (its reply, a 503 most likely, is in the transcript only):
        one more error for the session at most, still below the tarpit limits."""
        mail, rcpt, _ = await s.pipeline(((res.mail_from, "mail"), (res.rcpt_to, "rcpt"), ("RSET", "rset")))
        s.rset_sent = True
        res.replies.append(Exchange(res.mail_from, mail))
        if _refused(res, mail, "mail", mail.accepted):
            return
        res.replies.append(Exchange(res.rcpt_to, rcpt))
        if _refused(res, rcpt, "rcpt", rcpt.code in (250, 251)):
            return
        res.outcome, res.stage = Outcome.ACCEPTED_RCPT, "rcpt"

    async def confirm(self) -> None:
        assert self.canary is not None
        waiting = {c.token: c for c in self.r.cases if c.outcome is Outcome.ACCEPTED_DATA and c.token}
        if not waiting:
            return
        arrived = await self.canary.wait(waiting, self.o.confirm_timeout)
        for token, case in waiting.items():
            arrival = arrived.get(token)
            if arrival is not None:
                case.outcome, case.stage = Outcome.RELAYED, "confirm"
                case.transcript.append(f"-- token {token} arrived at the canary from {arrival.peer}")
            else:
                case.transcript.append(f"-- token {token} did not arrive within {self.o.confirm_timeout:g} s")

    # Smuggling

    async def smuggle_all(self) -> None:
        sem = asyncio.Semaphore(self.o.connections)

        async def one(m: Smuggle) -> SmuggleResult:
            async with sem:
                res = SmuggleResult(m.id, m.name)
                try:
                    await self.smuggle(m, res)
                except SessionError as e:
                    res.error = str(e)
                    res.transcript.append(f"-- {e}")
                return res

        self.r.smuggling = list(await asyncio.gather(*(one(m) for m in SMUGGLING)))
        if self.o.mode == "confirm" and self.canary is not None:
            cut = {m.token: m for m in self.r.smuggling if m.ends_data}
            for m in self.r.smuggling:
                m.delivered = False if m.ends_data is False else None
            if cut:
                # when DATA is not cut the smuggled text travels inside the first message, so only
                # an arrival without the first message's token is a second message
                got = await self.canary.wait(cut, self.o.confirm_timeout,
                                             accept=lambda t, a: cut[t].outer_token not in a.tokens)
                for token, m in cut.items():
                    m.delivered = token in got

    async def smuggle(self, m: Smuggle, res: SmuggleResult) -> None:
        o, v = self.o, self.values
        s = await self.session(res.transcript)
        try:
            sender = f"<{v['s']}@{v['X']}>"
            reply = await s.command(f"MAIL FROM:{sender}", "mail")
            res.replies.append(Exchange(f"MAIL FROM:{sender}", reply))
            if not reply.accepted:
                res.error = f"MAIL refused: {reply.code} {reply.text}"
                return
            rcpt = ""
            choices = [o.smuggle_rcpt] if o.smuggle_rcpt else [
                f"postmaster@{v['D']}", f"postmaster@{v['T']}", f"postmaster@[{v['IP']}]", "Postmaster"]
            for choice in choices:
                line = f"RCPT TO:<{choice.strip('<>')}>"
                reply = await s.command(line, "rcpt")
                res.replies.append(Exchange(line, reply))
                if reply.code in (250, 251):
                    rcpt = choice.strip("<>")
                    break
            if not rcpt:
                res.error = "no local recipient accepted (set smuggle_rcpt / --smuggle-rcpt)"
                return
            second = f"{v['u']}@{v['X']}" if o.mode == "confirm" else rcpt
            reply = await s.command("DATA", "data")
            res.replies.append(Exchange("DATA", reply))
            if reply.code != 354:
                res.error = f"DATA refused: {reply.code} {reply.text}"
                return
            outer, res.token = new_token(), new_token()
            res.outer_token = outer
            first = _message(outer, m.id, f"smuggling {m.name}, first message", sender.strip("<>"), rcpt, self.r.target, o.helo)
            smuggled = (f"MAIL FROM:{sender}\r\nRCPT TO:<{second}>\r\nDATA\r\n").encode()
            inner = _message(res.token, m.id, f"smuggling {m.name}, smuggled message", sender.strip("<>"), second,
                             self.r.target, o.helo)
            blob = first.rstrip(b"\r\n") + m.ending + smuggled + inner + b".\r\n"
            reply = await s.send_data(blob, f"<message, {len(first)} octets, token {outer}> {m.ending!r} "
                                            f"<smuggled MAIL, RCPT <{second}>, DATA, message with token {res.token}> <CR><LF>.<CR><LF>",
                                      "dot", o.data_timeout or o.timeout)
            res.replies.append(Exchange(".", reply))
            # QUIT is answered 221 after whatever the server still owes: replies to smuggled commands
            await s._write(b"QUIT\r\n", "QUIT", "quit")
            extra: list[ServerReply] = []
            while True:
                try:
                    reply = await s._read_reply("quit")
                except SessionError:
                    break  # closed: whatever came before counts
                if reply.code == 221:
                    break
                extra.append(reply)
            for r in extra:
                res.replies.append(Exchange("(smuggled)", r))
            res.ends_data = bool(extra)
        except asyncio.CancelledError:
            s.abort()
            raise
        finally:
            await s.close()


async def check_target(target: str, options: RelayTestOptions | None = None, *, canary: Canary | None = None,
                       result: TargetResult | None = None) -> TargetResult:
    """Test one target; the result is filled in as cases finish and judged at the end (or on cancel)."""
    options = options or RelayTestOptions()
    options.check()
    if options.mode == "confirm" and canary is None:
        raise ValueError("confirm mode needs a canary (canary_listen or canary_maildir, or pass canary=)")
    r = result if result is not None else new_result(target, options)
    run = _TargetRun(r, options, canary)
    start = time.monotonic()
    try:
        await run.main()
        r.complete = True
    finally:
        if not r.complete:
            r.not_run = [c.id for c in run.queue] or r.not_run
        r.elapsed = time.monotonic() - start
        r.verdict, r.reason = decide(r)
        if not r.complete:
            r.reason += " (interrupted)"
    return r


def make_canary(options: RelayTestOptions) -> Canary | None:
    """The canary the options ask for (not started), or None outside confirm mode."""
    if options.mode != "confirm":
        return None
    if options.canary_maildir:
        return MaildirWatcher(options.canary_maildir, options.canary_domain)
    if options.canary_listen:
        return CanaryReceiver(options.canary_listen, options.canary_domain)
    raise ValueError("confirm mode needs --canary-listen IP:PORT or --canary-maildir DIR")


async def run_async(targets: Sequence[str], options: RelayTestOptions | None = None, *, canary: Canary | None = None,
                    results: list[TargetResult] | None = None,
                    on_result: Callable[[TargetResult], None] | None = None) -> list[TargetResult]:
    """Test many targets (at most `concurrency` at once, within `time_limit`); results in input order.

    `results`, when given, is filled in place at once (one TargetResult per target), so a caller
    interrupted by Ctrl-C still holds everything done so far."""
    options = options or RelayTestOptions()
    options.check()
    own = canary is None and options.mode == "confirm"
    if own:
        canary = make_canary(options)
        assert canary is not None
        await canary.start()
    out = results if results is not None else []
    out[:] = [new_result(t, options) for t in targets]
    sem = asyncio.Semaphore(options.concurrency)

    async def one(r: TargetResult) -> None:
        async with sem:
            await check_target(r.target, options, canary=canary, result=r)
        if on_result is not None:
            on_result(r)

    try:
        async with asyncio.timeout(options.time_limit or None):
            await asyncio.gather(*(one(r) for r in out))
    except TimeoutError:
        for r in out:
            if not r.complete:
                r.reason = r.reason.replace("(interrupted)", "(time limit reached)") or "not tested: time limit reached"
    finally:
        if own and canary is not None:
            await canary.stop()
    return out


def run(targets: Sequence[str], options: RelayTestOptions | None = None) -> list[TargetResult]:
    """Synchronous `run_async` for scripts."""
    return asyncio.run(run_async(targets, options))
