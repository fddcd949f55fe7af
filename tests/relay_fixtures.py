"""Deliberately broken SMTP servers for the relay tester's tests (real loopback sockets).

`FakeMTA` accepts exactly the RCPT arguments its `accepts` predicate likes and can really
forward what it accepted to a canary; other knobs make it answer 421 or drop the connection
every N commands, never greet, go silent after EHLO, ask for AUTH (530), refuse the session,
or take extra end-of-data sequences (an SMTP smuggling victim). `FixtureThread` runs servers and
a canary on an event loop in a thread, for tests that drive the CLI in a subprocess.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class FakeMTA:
    accepts: Callable[[str], bool] = lambda rcpt: False
    hostname: str = "mx.fixture.test"
    host: str = "127.0.0.1"  # listen address
    forward_to: tuple[str, int] | None = None  # canary address: accepted mail is relayed there
    forward_rcpt: str = "relaytest@canary.test"
    every: int = 0  # with `fault`: the Nth command of each session
    fault: str = ""  # "421" | "drop" at that command
    silent: bool = False  # never send the greeting
    silent_after_ehlo: bool = False
    auth: bool = False  # 530 to MAIL
    greeting_code: int = 220
    extra_ends: tuple[bytes, ...] = ()  # end-of-data sequences besides CRLF.CRLF (smuggling)
    sessions: int = 0
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)

    async def start(self) -> int:
        self._tasks: set[asyncio.Task[None]] = set()
        self.server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.sessions += 1
        self.connected.set()
        try:
            await self._session(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()

        async def fill() -> bool:
            data = await reader.read(65536)
            buf.extend(data)
            return bool(data)

        def say(*lines: str) -> None:
            writer.write("".join(line + "\r\n" for line in lines).encode())

        if self.silent:
            await reader.read()  # until the client gives up
            return
        if self.greeting_code != 220:
            say(f"{self.greeting_code} 5.7.1 {self.hostname} no service for you")
            await writer.drain()
            return
        say(f"220 {self.hostname} ESMTP fixture")
        count = 0
        mail: str | None = None
        rcpts: list[str] = []
        while True:
            while b"\r\n" not in buf:
                if not await fill():
                    return
            raw, _, rest = bytes(buf).partition(b"\r\n")
            buf[:] = rest
            line = raw.decode("utf-8", "replace")
            self.commands.append(line)
            count += 1
            if self.every and count % self.every == 0:
                if self.fault == "421":
                    say("421 4.4.2 fixture closing the session")
                    await writer.drain()
                return
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if self.silent_after_ehlo and verb not in ("EHLO", "HELO"):
                await reader.read()
                return
            if verb == "EHLO":
                say(f"250-{self.hostname}", "250-PIPELINING", "250 8BITMIME")
            elif verb == "HELO":
                say(f"250 {self.hostname}")
            elif verb == "MAIL" and arg.upper().startswith("FROM:"):
                if self.auth:
                    say("530 5.7.0 Authentication required")
                else:
                    mail, rcpts = arg[5:].strip(), []
                    say("250 2.1.0 Ok")
            elif verb == "RCPT" and arg.upper().startswith("TO:"):
                target = arg[3:].strip()
                if mail is None:
                    say("503 5.5.1 need MAIL")
                elif self.accepts(target):
                    rcpts.append(target)
                    say("250 2.1.5 Ok")
                else:
                    say(f"554 5.7.1 {target}: Relay access denied 250 ok")  # "250" in a refusal's text
            elif verb == "DATA":
                if not rcpts:
                    say("503 5.5.1 need RCPT")
                    continue
                say("354 go ahead")
                await writer.drain()
                data = await self._data(buf, fill)
                if data is None:
                    return
                self.messages.append(data)
                if self.forward_to is not None:  # in the background, as a real relay does
                    forward = asyncio.create_task(self._forward(data))
                    self._tasks.add(forward)
                    forward.add_done_callback(self._tasks.discard)
                mail, rcpts = None, []
                say("250 2.0.0 Ok: queued")
            elif verb == "RSET":
                mail, rcpts = None, []
                say("250 2.0.0 Ok")
            elif verb == "NOOP":
                say("250 2.0.0 Ok")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                await writer.drain()
                return
            else:
                say("502 5.5.2 what?")
            await writer.drain()

    async def _data(self, buf: bytearray, fill: Callable) -> bytes | None:
        """Message data up to the earliest end-of-data sequence this server believes in."""
        ends = (b"\r\n.\r\n",) + self.extra_ends
        while True:
            view = b"\r\n" + bytes(buf)
            hits = [(view.find(e), e) for e in ends if view.find(e) >= 0]
            if hits:
                pos, end = min(hits)
                data = view[2:pos] if pos >= 2 else b""
                buf[:] = view[pos + len(end):]
                return data + b"\r\n"
            if not await fill():
                return None

    async def _forward(self, data: bytes) -> None:
        assert self.forward_to is not None
        reader, writer = await asyncio.open_connection(*self.forward_to)
        try:
            for line in (None, b"EHLO " + self.hostname.encode(), b"MAIL FROM:<relay@" + self.hostname.encode() + b">",
                         b"RCPT TO:<" + self.forward_rcpt.encode() + b">", b"DATA"):
                if line is not None:
                    writer.write(line + b"\r\n")
                while True:
                    reply = await reader.readline()
                    if reply[3:4] != b"-":
                        break
            writer.write(data + b".\r\nQUIT\r\n")
            await writer.drain()
            await reader.read()
        finally:
            writer.close()


class FixtureThread:
    """An event loop in a thread running FakeMTAs (and anything else async) for CLI tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stoppers: list[Callable] = []

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def mta(self, **kw) -> tuple[FakeMTA, int]:
        mta = FakeMTA(**kw)
        port = self.call(mta.start())
        self.stoppers.append(mta.stop)
        return mta, port

    def close(self) -> None:
        for stop in self.stoppers:
            try:
                self.call(stop(), 10)
            except Exception:
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
