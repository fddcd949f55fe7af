"""A raw SMTP client socket for tests where the exact bytes matter (smuggling, injection, limits)."""

from __future__ import annotations

import select
import socket

from conftest import client_tls


class Raw:
    """Plain, then optionally TLS; replies parsed strictly; every read bounded by the timeout."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def reply(self) -> tuple[int, str]:
        """The next complete reply: (code, all its lines joined by newlines)."""
        lines: list[bytes] = []
        for _ in range(1000):
            while b"\r\n" not in self.buf:
                if not self._fill():
                    raise ConnectionError(f"EOF after {lines!r} {self.buf!r}")
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        return int(lines[0][:3]), "\n".join(x.decode() for x in lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def rest(self) -> list[tuple[int, str]]:
        """Every reply until the server closes the connection."""
        out = []
        for _ in range(100):
            if not self.buf:
                try:
                    if not self._fill():
                        return out
                except ConnectionResetError:
                    return out
            out.append(self.reply())
        raise AssertionError(f"too many replies: {out}")

    def readable(self, seconds: float) -> bool:
        return bool(self.buf) or bool(select.select([self.sock], [], [], seconds)[0])

    def wrap_tls(self) -> None:
        """The TLS handshake; nothing but the 220 may have arrived in clear before it."""
        assert self.buf == b"", self.buf
        self.sock = client_tls().wrap_socket(self.sock)
        assert self.sock.version() is not None

    def starttls(self) -> None:
        assert self.cmd("STARTTLS")[0] == 220
        self.wrap_tls()

    def close(self) -> None:
        self.sock.close()
