"""Remove header fields from a message's header section while DATA streams in (issue 6).

The MTA writes its Received line and its `X-Relayguard-DNSBL` score header, then the client's
data. A client that sends its own `X-Relayguard-DNSBL: score=0 ...` would have a forged clean
score reach the mailbox, beside ours or alone (mail that scored nothing gets no header), where
filters trusting the header cannot tell them apart. `HeaderFilter` removes every field of the
given names from the client's header section:

    f = HeaderFilter()              # one per message, at DATA
    out = f.feed(chunk)             # for each DataChunk; returns what to store
    out = f.flush()                 # at the end of data (b"" for any message that ends in CRLF)

- Chunks may be cut anywhere: inside a field name, between CR and LF, inside a folded field.
- A field is removed with its continuation lines (lines starting with SP or HTAB). Names match
  case-insensitively, with or without blanks before the colon (`X-Relayguard-DNSBL :` counts, as
  Postfix's header parser takes it).
- The header section ends at the first empty line; from there every chunk is returned as it is
  (`done`), so the body costs one attribute test per chunk. Lines in the header section that are
  neither fields nor continuations (no colon) are kept and do not end it: a parser that reads
  past them must not find a forged field further down.
- Memory is bounded: at most the start of one line is held back while it could still be one of
  the names (`MAX_HELD` bytes; a name followed by more blanks than that is taken as the field).
- Bare CR or LF are not the filter's business (the protocol discards such messages); LF alone
  ends a line here too.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from ..dnsbl.verdict import HEADER

MAX_HELD = 1000  # RFC 5322: 998 characters a line

_WSP = b" \t"
_START, _PASS, _DROP = 0, 1, 2  # at a line start / passing / dropping the rest of the current line


@lru_cache(maxsize=8)  # one filter per message: check the names once
def _checked(names: tuple[str, ...]) -> tuple[bytes, ...]:
    out = tuple(n.lower().encode("ascii") for n in names)
    if not out or any(not n or b":" in n or any(c in n for c in _WSP + b"\r\n") for n in out):
        raise ValueError("header names must be non-empty, without colons or blanks")
    return out


class HeaderFilter:
    """Strip the fields named `names` from the header section of one message fed in chunks."""

    def __init__(self, names: Iterable[str] = (HEADER,)) -> None:
        self.names = _checked(tuple(names))
        self.done = False  # past the header section: feed returns its input
        self.removed = 0  # fields removed so far
        self._held = b""  # the start of the current line, while its fate is undecided
        self._mode = _START
        self._dropping = False  # the current field is removed: so are its continuation lines

    def feed(self, data: bytes) -> bytes:
        """What to store of `data`, the next piece of the message."""
        if self.done:
            return data
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            nl = data.find(b"\n", i)
            end = n if nl < 0 else nl + 1
            if self._mode == _START:
                line = self._held + data[i:end]
                verdict = self._decide(line)
                if verdict is None:  # still possibly one of the names: hold it (bounded by _decide)
                    self._held = line
                    i = end
                    continue
                self._held = b""
                if verdict != "drop":
                    out += line
                if verdict == "end":
                    self.done = True
                    out += data[end:]
                    break
                self._mode = _DROP if verdict == "drop" else _PASS
            elif self._mode == _PASS:
                out += data[i:end]
            if nl >= 0:
                self._mode = _START
            i = end
        return bytes(out)

    def flush(self) -> bytes:
        """At the end of the data: an unfinished line still held back (it had no colon: kept)."""
        held, self._held = self._held, b""
        return held

    def _decide(self, line: bytes) -> str | None:
        """The fate of a line from its start: "pass", "drop", "end" (the empty line) or None (undecided)."""
        first = line[:1]
        if first in (b" ", b"\t"):  # a continuation line: goes with its field
            return "drop" if self._dropping else "pass"
        if line in (b"\r\n", b"\n"):
            return "end"
        if line == b"\r":  # an empty line's CR: wait for its LF
            return None
        colon = line.find(b":")
        if colon >= 0:
            self._dropping = line[:colon].rstrip(_WSP).lower() in self.names
            if self._dropping:
                self.removed += 1
                return "drop"
            return "pass"
        if line.endswith(b"\n"):  # a whole line without a colon: not a field
            self._dropping = False
            return "pass"
        start = line.lower()
        for name in self.names:
            if name.startswith(start) or (start.startswith(name) and not start[len(name):].strip(_WSP)):
                if len(line) <= MAX_HELD:
                    return None
                self._dropping = True  # the name and a thousand blanks: taken as the field
                self.removed += 1
                return "drop"
        self._dropping = False
        return "pass"
