"""SMTP replies: a value type that renders a whole (multi-line) reply as one buffer.

One buffer per reply matters: simple clients (nmap's smtp-open-relay among them) read one reply
per recv() and misread a multi-line reply written in pieces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str  # "" where RFC 2034 forbids one (greeting, EHLO, 334, 354)
    text: str | tuple[str, ...]

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    def encode(self) -> bytes:
        if isinstance(self.text, str):  # most replies: one line
            head = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
            return (head + self.text).rstrip(" ").encode("utf-8") + b"\r\n"
        lines = self.text or ("",)
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            body = f"{self.enhanced} {line}" if self.enhanced else line
            out.append(f"{self.code}{sep}{body}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return self.encode().decode("utf-8").rstrip("\r\n")


OK = Reply(250, "2.0.0", "Ok")
BAD_SEQUENCE_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
SYNC_ERROR = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
LOCAL_ERROR = Reply(451, "4.3.0", "Error: queue file write error")
