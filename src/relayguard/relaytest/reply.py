"""SMTP replies as a client reads them: multi-line replies and enhanced status codes (pure).

Simple relay testers look for ``"250" in reply`` and call a server open when a refusal's text
happens to hold "250" (REFERENCES.md section 2). Here a reply is a value with a code, the
RFC 3463 enhanced code when the server gave one, and its lines; `ReplyParser` turns a byte
stream, cut anywhere, into replies and refuses anything that is not RFC 5321 4.2 syntax.

    >>> p = ReplyParser()
    >>> p.feed(b"250-mx.example ESMTP\\r\\n250-PIPELINING\\r\\n250 8BITMIME\\r\\n554 5.7.1 <a@b>: Relay")
    [ServerReply(code=250, lines=('mx.example ESMTP', 'PIPELINING', '8BITMIME'), enhanced='')]
    >>> p.feed(b" access denied\\r\\n")[0].enhanced
    '5.7.1'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE = 4096  # RFC 5321 allows 512 octets; be generous with odd servers, never unbounded
MAX_LINES = 1000  # lines in one multi-line reply

_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)", re.S)
_ENHANCED = re.compile(r"([245])\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})(?: |$)")


class ReplyError(ValueError):
    """The server sent something that is not an SMTP reply."""


@dataclass(frozen=True)
class ServerReply:
    code: int
    lines: tuple[str, ...]
    enhanced: str = ""  # "5.7.1" when the first line starts with an RFC 3463 code of the same class

    @property
    def text(self) -> str:
        """The lines joined by spaces, enhanced codes removed."""
        return " ".join(self._strip(line) for line in self.lines).strip()

    @property
    def first(self) -> str:
        """The first line without the enhanced code (a greeting's host name comes first)."""
        return self._strip(self.lines[0]) if self.lines else ""

    def _strip(self, line: str) -> str:
        if self.enhanced and line.startswith(self.enhanced):
            return line[len(self.enhanced) :].lstrip(" ")
        return line

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def accepted(self) -> bool:
        """A positive completion (2xx)."""
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        """The reply as the server wrote it (one line per reply line, no CRLF)."""
        lines = self.lines or ("",)
        return "\n".join(f"{self.code}{' ' if i == len(lines) - 1 else '-'}{line}".rstrip(" ") for i, line in enumerate(lines))

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "enhanced": self.enhanced, "lines": list(self.lines)}


def enhanced_code(code: int, line: str) -> str:
    """The RFC 3463 code at the start of `line` when its class matches the reply code, else ""."""
    m = _ENHANCED.match(line)
    if m and m.group(1) == str(code)[0]:
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return ""


def parse_line(raw: bytes) -> tuple[int, bool, str]:
    """One reply line without its line end -> (code, is_last, text)."""
    m = _LINE.fullmatch(raw)
    if not m:
        raise ReplyError(f"not an SMTP reply line: {raw[:80]!r}")
    sep, text = m.group(2), m.group(3)
    if sep == b"" and text:
        raise ReplyError(f"no space or hyphen after the reply code: {raw[:80]!r}")
    return int(m.group(1)), sep != b"-", text.decode("utf-8", "replace")


class ReplyParser:
    """Incremental parser: feed bytes as they come, get whole replies.

    Lines end in CRLF; a bare LF is tolerated (old servers), a lone CR is kept in the text.
    The lines of one reply must share a code (RFC 5321 4.2.1)."""

    def __init__(self, max_line: int = MAX_LINE, max_lines: int = MAX_LINES) -> None:
        self.max_line = max_line
        self.max_lines = max_lines
        self._buf = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []

    @property
    def pending(self) -> bool:
        """True when bytes or lines of an unfinished reply are waiting."""
        return bool(self._buf) or self._code is not None

    def feed(self, data: bytes) -> list[ServerReply]:
        self._buf += data
        out: list[ServerReply] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    raise ReplyError(f"reply line longer than {self.max_line} octets")
                return out
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line:
                raise ReplyError(f"reply line longer than {self.max_line} octets")
            code, last, text = parse_line(raw)
            if self._code is not None and code != self._code:
                raise ReplyError(f"reply code changed from {self._code} to {code} inside a multi-line reply")
            self._code = code
            self._lines.append(text)
            if len(self._lines) > self.max_lines:
                raise ReplyError(f"multi-line reply longer than {self.max_lines} lines")
            if last:
                out.append(self._finish())

    def _finish(self) -> ServerReply:
        code, lines = self._code, tuple(self._lines)
        assert code is not None
        self._code, self._lines = None, []
        first = enhanced_code(code, lines[0]) if lines else ""
        return ServerReply(code, lines, first)


def parse_replies(data: bytes) -> list[ServerReply]:
    """Every complete reply in `data`; an unfinished tail is an error."""
    parser = ReplyParser()
    out = parser.feed(data)
    if parser.pending:
        raise ReplyError("incomplete reply at the end")
    return out


def ehlo_keywords(reply: ServerReply) -> dict[str, str]:
    """EHLO extension keywords (upper case) -> their parameters; the first line is the greeting."""
    out: dict[str, str] = {}
    for line in reply.lines[1:]:
        word, _, params = line.strip().partition(" ")
        if word:
            out[word.upper()] = params.strip()
    return out
