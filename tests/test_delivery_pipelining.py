"""Outbound transactions with PIPELINING (RFC 2920) and connection reuse, against a scripted MX."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from relayguard.config import DeliverySettings
from relayguard.mta.delivery import Deliverer, wire_data
from relayguard.mta.queue import FAILED, PENDING, SENT
from relayguard.mta.routing import Hop, Route


def test_wire_data_normalises_line_ends_and_stuffs_dots():
    assert wire_data(b"a\r\nb\r\n") == b"a\r\nb\r\n.\r\n"
    assert wire_data(b"a\nb\rc") == b"a\r\nb\r\nc\r\n.\r\n"
    assert wire_data(b".x\r\n..y\r\nz.\r\n.") == b"..x\r\n...y\r\nz.\r\n..\r\n.\r\n"
    assert wire_data(b"line two\r.\r\n") == b"line two\r\n..\r\n.\r\n"


@dataclass
class Script:
    pipelining: bool = True
    reject: set[str] = field(default_factory=set)  # RCPT addresses answered 550
    close_after_message: bool = False  # hang up after each message (as a server's idle timeout would)
    say_421_when_idle: bool = False  # ... and say 421 first
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    segments_with_data_command: int = 0  # reads that brought MAIL, RCPT and DATA together


async def _serve(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    script.connections += 1
    writer.write(b"220 scripted ESMTP\r\n")
    sender, rcpts = "", []
    try:
        while line := await reader.readline():
            cmd = line.decode().rstrip("\r\n")
            verb = cmd[:4].upper()
            script.commands.append(verb)
            if verb == "MAIL" and b"DATA\r\n" in reader._buffer:  # noqa: SLF001 (what arrived with it)
                script.segments_with_data_command += 1
            if verb == "EHLO":
                writer.write(b"250-scripted\r\n250-8BITMIME\r\n" + (b"250 PIPELINING\r\n" if script.pipelining else b"250 SIZE 0\r\n"))
            elif verb == "MAIL":
                sender, rcpts = cmd.split(":", 1)[1].split(" ")[0].strip("<>"), []
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                rcpt = cmd.split(":", 1)[1].strip("<>")
                if rcpt in script.reject:
                    writer.write(b"550 5.1.1 no such user\r\n")
                else:
                    rcpts.append(rcpt)
                    writer.write(b"250 2.1.5 ok\r\n")
            elif verb == "DATA":
                if not rcpts:
                    writer.write(b"554 5.5.1 no valid recipients\r\n")
                    continue
                writer.write(b"354 go\r\n")
                data = bytearray()
                while (chunk := await reader.readline()) != b".\r\n":
                    data += chunk[1:] if chunk.startswith(b".") else chunk
                script.messages.append((sender, rcpts, bytes(data)))
                writer.write(b"250 2.0.0 queued\r\n")
                if script.close_after_message:
                    await writer.drain()
                    if script.say_421_when_idle:
                        await asyncio.sleep(0.05)
                        writer.write(b"421 4.4.2 idle timeout\r\n")
                        await writer.drain()
                    break
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()
    finally:
        writer.close()


async def _deliver_all(script: Script, batches: list[tuple[list[str], bytes]]) -> list[dict]:
    server = await asyncio.start_server(lambda r, w: _serve(script, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    deliverer = Deliverer(DeliverySettings(command_timeout=5, connect_timeout=5), "relay.test")
    route = Route((Hop("mx.test", "127.0.0.1", port),))
    out = []
    try:
        for rcpts, message in batches:
            out.append(await deliverer.deliver(route, "test", "a@relay.test", rcpts, message))
            await asyncio.sleep(0.2)  # the server's 421 and hang-up, if scripted, come meanwhile
    finally:
        await deliverer.close()
        server.close()
        await server.wait_closed()
    return out


def test_pipelined_messages_share_one_connection_without_rset():
    script = Script()
    results = asyncio.run(_deliver_all(script, [(["x@test"], b"Subject: 1\r\n\r\n.dot\r\n")] * 3))
    assert [r["x@test"].state for r in results] == [SENT] * 3
    assert script.connections == 1 and "RSET" not in script.commands
    assert script.segments_with_data_command == 3  # MAIL, RCPT and DATA came in one write each time
    assert [m[2] for m in script.messages] == [b"Subject: 1\r\n\r\n.dot\r\n"] * 3


def test_pipelined_recipients_are_answered_one_by_one():
    script = Script(reject={"no@test"})
    [result] = asyncio.run(_deliver_all(script, [(["yes@test", "no@test"], b"Subject: 2\r\n\r\nhi\r\n")]))
    assert result["yes@test"].state == SENT
    assert result["no@test"].state == FAILED and result["no@test"].reply == "550 5.1.1 no such user"
    assert script.messages == [("a@relay.test", ["yes@test"], b"Subject: 2\r\n\r\nhi\r\n")]
    [result] = asyncio.run(_deliver_all(Script(reject={"no@test"}), [(["no@test"], b"x\r\n")]))
    assert result["no@test"].state == FAILED


def test_a_connection_closed_while_idle_is_replaced_and_the_message_still_goes():
    for say_421 in (False, True):
        script = Script(close_after_message=True, say_421_when_idle=say_421)
        results = asyncio.run(_deliver_all(script, [(["x@test"], b"Subject: 3\r\n\r\nhi\r\n")] * 3))
        assert [r["x@test"].state for r in results] == [SENT] * 3
        assert len(script.messages) == 3 and script.connections == 3


def test_without_pipelining_the_commands_go_one_at_a_time():
    script = Script(pipelining=False, reject={"no@test"})
    results = asyncio.run(_deliver_all(script, [(["x@test", "no@test"], b"Subject: 4\r\n\r\nhi\r\n")] * 2))
    assert [(r["x@test"].state, r["no@test"].state) for r in results] == [(SENT, FAILED)] * 2
    assert script.connections == 1 and script.segments_with_data_command == 0
    assert len(script.messages) == 2


def test_a_server_that_goes_away_leaves_the_message_pending():
    async def run() -> dict:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        deliverer = Deliverer(DeliverySettings(command_timeout=2, connect_timeout=2), "relay.test")
        try:
            return await deliverer.deliver(Route((Hop("mx.test", "127.0.0.1", port),)), "test", "a@relay.test",
                                           ["x@test"], b"x\r\n")
        finally:
            await deliverer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(run())["x@test"].state == PENDING
