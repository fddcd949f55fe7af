"""Postfix SMTPD policy delegation server: relayguard's DNSBL checks for existing Postfix installs.

Protocol (Postfix SMTPD_POLICY_README): the client sends `name=value` lines, a request ends
with an empty line; the server answers `action=...` and an empty line; a connection carries
many requests. Answers: `DUNNO` (no opinion), `REJECT <text>` (listed at or above the
threshold), `DEFER_IF_PERMIT <text>` (lists did not answer and `on_unknown = "defer"`),
`PREPEND X-Relayguard-DNSBL: ...` (accepted, but scored).

Malformed requests (a line without `=`, over-long lines or requests, a missing or bad
client_address, an unknown request type) are logged and answered `DUNNO`: never fail closed
silently, and the connection stays in step and usable. Authenticated (`sasl_username`) and
trusted clients ([relay] trusted_networks) are never checked.

`PolicyParser` is sans-I/O (bytes in, requests out); `PolicyServer` is the asyncio edge.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import signal
from dataclasses import dataclass, field

from . import log
from .config import Settings
from .hostport import parse_hostport
from .dnsbl.checker import Checker
from .dnsbl.verdict import clean_text
from .mta.reject import check_client, checker_from_settings
from .relay import is_trusted

MAX_LINE = 4096  # bytes per attribute line (Postfix's own attributes are far shorter)
MAX_REQUEST = 64 * 1024  # bytes per request
MAX_ATTRIBUTES = 100
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class Request:
    attrs: dict[str, str] = field(default_factory=dict)
    error: str = ""  # non-empty: malformed, answered DUNNO


class PolicyParser:
    """Bytes in, complete requests out; memory bounded by MAX_LINE whatever the client sends."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._current = Request()
        self._size = 0
        self._skipping = False  # inside an over-long line: drop bytes up to its newline

    def feed(self, data: bytes) -> list[Request]:
        self._buf += data
        out: list[Request] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._error(f"line longer than {MAX_LINE} bytes")
                    self._skipping = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._skipping:
                self._skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                req = self._current
                if not req.attrs and not req.error:
                    req.error = "empty request"
                out.append(req)
                self._current, self._size = Request(), 0
                continue
            self._line(line)

    def _error(self, text: str) -> None:
        if not self._current.error:
            self._current.error = text

    def _line(self, line: bytes) -> None:
        self._size += len(line) + 1
        if len(line) > MAX_LINE:
            self._error(f"line longer than {MAX_LINE} bytes")
            return
        if self._size > MAX_REQUEST:
            self._error(f"request larger than {MAX_REQUEST} bytes")
            return
        name, eq, value = line.decode("utf-8", "replace").partition("=")
        if not eq or not _NAME.fullmatch(name):
            self._error(f"not a name=value line: {clean_text(line.decode('utf-8', 'replace'), 60)!r}")
            return
        if len(self._current.attrs) >= MAX_ATTRIBUTES:
            self._error(f"more than {MAX_ATTRIBUTES} attributes")
            return
        self._current.attrs[name] = value


def response(action: str) -> bytes:
    """One answer; the action text is sanitised (no newline from DNS text can break the stream)."""
    return f"action={clean_text(action, 900)}\n\n".encode("ascii")


class PolicyServer:
    def __init__(self, settings: Settings, checker: Checker | None = None, listen: str | None = None) -> None:
        self.settings = settings
        self.own_checker = checker is None
        self.checker = checker or checker_from_settings(settings)
        self.listen = listen or settings.policyd.listen
        self.networks = settings.relay.networks()
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()
        self._health: asyncio.Task[None] | None = None
        self.requests = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        host, port = parse_hostport(self.listen)
        self.server = await asyncio.start_server(self._connection, host, port, reuse_address=True)
        log.event("listen", service="policyd", address=f"{host}:{self.port}",
                  lists=",".join(self.checker.zones) or "(none)")
        if self.own_checker and self.checker.health_check and self.checker.zones:
            self._health = asyncio.get_running_loop().create_task(self.checker.health_loop("ip"))

    async def stop(self) -> None:
        if self._health is not None:
            self._health.cancel()
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = (writer.get_extra_info("peername") or ("?", 0))[0]
        if len(self.connections) >= self.settings.policyd.max_connections:
            log.event("policyd-refused", logging.WARNING, peer=peer, reason="connection cap")
            writer.close()
            return
        self.connections.add(task)
        parser = PolicyParser()
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), self.settings.policyd.idle_timeout)
                except TimeoutError:
                    break
                if not data:
                    break
                for req in parser.feed(data):
                    writer.write(response(await self.decide(req, peer)))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.discard(task)
            writer.close()

    async def decide(self, req: Request, peer: str = "") -> str:
        """The action for one request (never raises: a failure answers DUNNO, logged)."""
        self.requests += 1
        a = req.attrs
        error = req.error
        if not error and a.get("request") != "smtpd_access_policy":
            error = f"unknown request type {clean_text(a.get('request', '(missing)'), 60)!r}"
        client = a.get("client_address", "")
        if not error:
            try:
                ipaddress.ip_address(client)
            except ValueError:
                error = f"bad client_address {clean_text(client, 60)!r}" if client else "no client_address"
        if error:
            log.event("policyd-malformed", logging.WARNING, peer=peer, error=error, action="DUNNO")
            return "DUNNO"
        if a.get("sasl_username") or is_trusted(client, self.networks) or not self.checker.sites:
            return "DUNNO"
        r = self.settings.reject
        d = await check_client(self.checker, client, on_unknown=r.on_unknown, score_header=r.score_header,
                               where=f"policyd:{a.get('protocol_state', '?')}")
        if d.action == "reject":
            return f"REJECT {d.text}"
        if d.action == "defer":
            return f"DEFER_IF_PERMIT {d.text}"
        if d.header and _prepend_here(a):
            return f"PREPEND {d.header}"
        return "DUNNO"


def _prepend_here(a: dict[str, str]) -> bool:
    """One header per message: at RCPT only for the first recipient (recipient_count counts the
    ones accepted before), at MAIL, DATA and END-OF-MESSAGE; never at CONNECT or HELO (once per
    connection, not per message)."""
    state = a.get("protocol_state", "").upper()
    if state == "RCPT":
        return a.get("recipient_count", "0") in ("", "0")
    return state in ("DATA", "END-OF-MESSAGE", "MAIL")


def configured(settings: Settings) -> bool:
    """`serve` runs the policy server when the file has a [policyd] table (or on the built-in
    defaults, with no file at all), unless `enabled = false`."""
    return settings.policyd.enabled and ("policyd" in settings.model_fields_set or not settings.model_fields_set)


async def start_policyd(settings: Settings, mta: object | None = None) -> PolicyServer | None:
    """For `serve`: the policy server sharing the MTA's checker (one cache), when configured."""
    if not configured(settings):
        return None
    gate = getattr(mta, "reject", None)
    server = PolicyServer(settings, gate.checker if gate is not None else None)
    await server.start()
    return server


async def run(settings: Settings, listen: str | None = None, ready: asyncio.Event | None = None) -> None:
    """`relayguard policyd`: the policy server alone, until SIGTERM or SIGINT."""
    server = PolicyServer(settings, listen=listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.event("ready", service="policyd")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.event("stopping", service="policyd")
        await server.stop()
