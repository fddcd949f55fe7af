"""The canary: where relayed test messages land, so a relay is confirmed only by arrival.

Two kinds, one interface (`Canary`):

- `CanaryReceiver(listen, domain)`: a tiny SMTP receiver of our own on `listen` ("IP:PORT",
  port 0 picks a free one). It accepts mail only for `domain` (and its subdomains), never
  relays, keeps at most `max_size` octets of each message, and records the tokens it finds.
  Point the canary domain's MX (or, in tests, a fixture's forwarding) at it.
- `MaildirWatcher(path)`: watches an existing Maildir (its ``new/`` and ``cur/``, or any
  folder of message files) that already receives the canary domain's mail.

A token is ``rt`` + 20 hex digits (`new_token`), matched case-insensitively anywhere in the
envelope or the message, because some tricks change the letter case of what a relay passes on.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from ..hostport import parse_hostport

if TYPE_CHECKING:
    from pathlib import Path

TOKEN_RE = re.compile(rb"rt[0-9a-f]{20}", re.I)


def new_token() -> str:
    return "rt" + os.urandom(10).hex()  # what secrets.token_hex(10) does, without importing secrets (start-up time)


def find_tokens(data: bytes) -> frozenset[str]:
    return frozenset(m.group(0).decode("ascii").lower() for m in TOKEN_RE.finditer(data))


@dataclass(frozen=True)
class Arrival:
    tokens: frozenset[str]
    mail_from: str = ""
    rcpts: tuple[str, ...] = ()
    peer: str = ""  # "ip:port" of the relay that delivered it, or the file's path
    size: int = 0
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return {"tokens": sorted(self.tokens), "mail_from": self.mail_from, "rcpts": list(self.rcpts),
                "peer": self.peer, "size": self.size, "at": self.at}


class Canary:
    """Records arrivals; `wait` returns when every token has one (or at the timeout)."""

    domain: str = ""

    def __init__(self) -> None:
        self.arrivals: list[Arrival] = []
        self._by_token: dict[str, list[Arrival]] = {}
        self._waiters: set[asyncio.Event] = set()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def __aenter__(self) -> "Canary":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def record(self, arrival: Arrival) -> None:
        self.arrivals.append(arrival)
        for token in arrival.tokens:
            self._by_token.setdefault(token, []).append(arrival)
        for ev in self._waiters:
            ev.set()

    def arrived(self, token: str, accept: Callable[[Arrival], bool] | None = None) -> Arrival | None:
        for arrival in self._by_token.get(token.lower(), ()):
            if accept is None or accept(arrival):
                return arrival
        return None

    def forget(self, tokens: Iterable[str]) -> None:
        """Drop what is known about these tokens (a long-running service calls this after a test)."""
        drop = {t.lower() for t in tokens}
        for t in drop:
            self._by_token.pop(t, None)
        self.arrivals = [a for a in self.arrivals if not a.tokens <= drop]

    async def poll(self) -> None:
        """Look for new arrivals (the Maildir watcher scans; the receiver is pushed to)."""

    poll_interval: float | None = None

    async def wait(self, tokens: Iterable[str], timeout: float,
                   accept: Callable[[str, Arrival], bool] | None = None) -> dict[str, Arrival]:
        """Arrivals for `tokens` seen within `timeout` seconds (those already seen count)."""
        wanted = {t.lower() for t in tokens}
        found: dict[str, Arrival] = {}
        ev = asyncio.Event()
        self._waiters.add(ev)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                ev.clear()
                await self.poll()
                for token in wanted - found.keys():
                    arrival = self.arrived(token, None if accept is None else (lambda a, t=token: accept(t, a)))
                    if arrival is not None:
                        found[token] = arrival
                remaining = deadline - loop.time()
                if found.keys() >= wanted or remaining <= 0:
                    return found
                step = remaining if self.poll_interval is None else min(remaining, self.poll_interval)
                try:
                    await asyncio.wait_for(ev.wait(), step)
                except TimeoutError:
                    pass
        finally:
            self._waiters.discard(ev)


def _domain_of(path: str) -> str:
    """The domain of a RCPT path: brackets, source route and parameters removed."""
    path = path.strip()
    if path.startswith("<"):
        path = path[1:].split(">", 1)[0]
    else:
        path = path.split(" ", 1)[0]
    if path.startswith("@") and ":" in path:
        path = path.split(":", 1)[1]
    return path.rpartition("@")[2].rstrip(".").lower() if "@" in path else ""


def _listen_address(value: str) -> tuple[str, int]:
    """"IP:PORT" or "[IPv6]:PORT"; port 0 picks a free port."""
    if value.strip().endswith(":0"):
        host, _ = parse_hostport(value.strip()[:-2] + ":1")
        return host, 0
    return parse_hostport(value)


class CanaryReceiver(Canary):
    """A minimal SMTP receiver that accepts mail for one domain and records tokens."""

    def __init__(self, listen: str = "127.0.0.1:0", domain: str = "canary.test", *, hostname: str = "",
                 max_size: int = 1024 * 1024, max_connections: int = 100, timeout: float = 60.0) -> None:
        super().__init__()
        self.listen = listen
        self.domain = domain.rstrip(".").lower()
        self.hostname = hostname or self.domain
        self.max_size = max_size
        self.max_connections = max_connections
        self.timeout = timeout
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("", 0)

    async def start(self) -> None:
        host, port = _listen_address(self.listen)
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])

    @property
    def listen_address(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def accepts(self, path: str) -> bool:
        domain = _domain_of(path)
        return bool(domain) and (domain == self.domain or domain.endswith("." + self.domain))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            if len(self._tasks) > self.max_connections:
                writer.write(b"421 4.7.0 too many connections\r\n")
                return
            await self._session(reader, writer, f"{peer[0]}:{peer[1]}")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (a cancelled handler task is logged as an error by asyncio 3.11)
        finally:
            self._tasks.discard(task)
            try:
                writer.close()
            except OSError:
                pass

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await say(f"220 {self.hostname} relayguard canary")
        mail_from: str | None = None
        rcpts: list[str] = []
        while True:
            raw = await asyncio.wait_for(reader.readline(), self.timeout)
            if not raw:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                await say(f"250-{self.hostname}\r\n250 8BITMIME" if verb == "EHLO" else f"250 {self.hostname}")
            elif verb == "MAIL" and arg.upper().startswith("FROM:"):
                mail_from, rcpts = arg[5:].strip(), []
                await say("250 2.1.0 Ok")
            elif verb == "RCPT" and arg.upper().startswith("TO:"):
                if mail_from is None:
                    await say("503 5.5.1 Error: need MAIL command")
                elif self.accepts(arg[3:]):
                    rcpts.append(arg[3:].strip())
                    await say("250 2.1.5 Ok")
                else:
                    await say("550 5.7.1 Relay access denied")
            elif verb == "DATA":
                if not rcpts:
                    await say("503 5.5.1 Error: need RCPT command")
                    continue
                await say("354 End data with <CR><LF>.<CR><LF>")
                data = await self._read_data(reader)
                self.record(Arrival(find_tokens(mail_from.encode() + b"\n" + "\n".join(rcpts).encode() + b"\n" + data),
                                    mail_from or "", tuple(rcpts), peer, len(data)))
                mail_from, rcpts = None, []
                await say("250 2.0.0 Ok: recorded")
            elif verb == "RSET":
                mail_from, rcpts = None, []
                await say("250 2.0.0 Ok")
            elif verb == "NOOP":
                await say("250 2.0.0 Ok")
            elif verb == "QUIT":
                await say("221 2.0.0 Bye")
                return
            else:
                await say("502 5.5.2 Error: command not recognized")

    async def _read_data(self, reader: asyncio.StreamReader) -> bytes:
        """Message data up to CRLF.CRLF, dot-unstuffed, the first `max_size` octets kept."""
        kept = bytearray()
        while True:
            line = await asyncio.wait_for(reader.readline(), self.timeout)
            if not line:
                raise asyncio.IncompleteReadError(bytes(kept), None)
            if line == b".\r\n" or line == b".\n":
                return bytes(kept)
            if line.startswith(b"."):
                line = line[1:]
            if len(kept) < self.max_size:
                kept += line[: self.max_size - len(kept)]


class MaildirWatcher(Canary):
    """Watches a Maildir (new/ and cur/) or any folder of message files for tokens."""

    poll_interval = 0.2

    def __init__(self, path: str | Path, domain: str = "", max_size: int = 1024 * 1024) -> None:
        from pathlib import Path  # here: a receiver or a probe run does not need it (`relaytest` start-up counts)

        super().__init__()
        self.path = Path(path)
        self.domain = domain.rstrip(".").lower()
        self.max_size = max_size
        self._seen: set[str] = set()

    async def start(self) -> None:
        if not self.path.is_dir():
            raise OSError(f"{self.path}: not a folder")
        await asyncio.to_thread(self._scan, False)  # what is there already holds none of our tokens

    def _folders(self) -> list[Path]:
        subs = [self.path / "new", self.path / "cur"]
        return [p for p in subs if p.is_dir()] or [self.path]

    async def poll(self) -> None:
        found = await asyncio.to_thread(self._scan)
        for arrival in found:
            self.record(arrival)

    def _scan(self, read: bool = True) -> list[Arrival]:
        out = []
        for folder in self._folders():
            try:
                entries = list(folder.iterdir())
            except OSError:
                continue
            for entry in entries:
                key = entry.name.split(":", 1)[0]  # a Maildir file keeps its unique part when moved to cur/
                if key in self._seen or not entry.is_file():
                    continue
                if not read:
                    self._seen.add(key)
                    continue
                try:
                    with entry.open("rb") as fh:
                        data = fh.read(self.max_size)
                except OSError:
                    continue
                self._seen.add(key)
                out.append(Arrival(find_tokens(data), peer=str(entry), size=len(data)))
        return out
