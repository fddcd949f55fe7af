"""DNS wire format, just what a DNSBL server needs (pure, RFC 1035 / RFC 6891).

Parsing a query and building an answer by hand, without a general-purpose message parser, is
what makes the fast path fast; dnspython is used by the tests to check every byte of it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

TYPE_A, TYPE_NS, TYPE_SOA, TYPE_TXT, TYPE_AAAA, TYPE_OPT, TYPE_AXFR, TYPE_ANY = 1, 2, 6, 16, 28, 41, 252, 255
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
OPCODE_QUERY, OPCODE_NOTIFY = 0, 4
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD = 0x8000, 0x0400, 0x0200, 0x0100
MAX_UDP_PLAIN = 512  # without EDNS (RFC 1035 4.2.1)
MAX_UDP_EDNS = 1232  # what we offer and accept at most (DNS flag day 2020)

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")


class Malformed(Exception):
    """A packet that cannot be answered; `query_id` is set when the header was readable (FORMERR)."""

    def __init__(self, why: str, query_id: int | None = None, flags: int = 0) -> None:
        super().__init__(why)
        self.query_id = query_id
        self.flags = flags


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    opcode: int
    labels: tuple[bytes, ...]  # lowercased
    question: bytes  # the question section as received (echoed back verbatim)
    qtype: int
    qclass: int
    edns_size: int | None  # the client's UDP payload size, None without EDNS
    name_offsets: tuple[int, ...]  # packet offset of each label of the question name (for compression)


def parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise Malformed("short packet")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & FLAG_QR:
        raise Malformed("not a query")
    if qdcount != 1 or ancount != 0:
        raise Malformed("need exactly one question", qid, flags)
    labels: list[bytes] = []
    offsets: list[int] = []
    pos = 12
    while True:
        if pos >= len(data):
            raise Malformed("truncated name", qid, flags)
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63:
            raise Malformed("compressed or bad label in question", qid, flags)
        offsets.append(pos)
        labels.append(data[pos + 1 : pos + 1 + length].lower())
        pos += 1 + length
        if pos - 12 > 255:
            raise Malformed("name too long", qid, flags)
    if pos + 4 > len(data):
        raise Malformed("truncated question", qid, flags)
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    question = data[12 : pos + 4]
    pos += 4
    edns_size = None
    for _ in range(nscount + arcount):
        pos, rtype, rclass = _skip_rr(data, pos, qid, flags)
        if rtype == TYPE_OPT:
            edns_size = max(MAX_UDP_PLAIN, rclass)
    return Query(qid, flags, (flags >> 11) & 0xF, tuple(labels), question, qtype, qclass, edns_size, tuple(offsets))


def _skip_rr(data: bytes, pos: int, qid: int, flags: int) -> tuple[int, int, int]:
    while True:  # owner name
        if pos >= len(data):
            raise Malformed("truncated record", qid, flags)
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length >= 0xC0:
            pos += 2
            break
        pos += 1 + length
    if pos + 10 > len(data):
        raise Malformed("truncated record", qid, flags)
    rtype, rclass, _, rdlength = _RR_FIXED.unpack_from(data, pos)
    pos += 10 + rdlength
    if pos > len(data):
        raise Malformed("truncated record data", qid, flags)
    return pos, rtype, rclass


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("idna") if not label.isascii() else label.encode()
            out += bytes([len(raw)]) + raw
    return bytes(out) + b"\0"


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def txt_rdata(text: str) -> bytes:
    raw = text.encode("utf-8")
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return b"".join(bytes([len(c)]) + c for c in chunks)


def opt_record(size: int = MAX_UDP_EDNS) -> bytes:
    return b"\0" + _RR_FIXED.pack(TYPE_OPT, size, 0, 0)


def response(
    q: Query,
    rcode: int,
    answers: list[bytes] = (),  # type: ignore[assignment]
    authority: list[bytes] = (),  # type: ignore[assignment]
    *,
    authoritative: bool = True,
    max_size: int | None = None,
) -> bytes:
    """A complete response; over `max_size` (UDP) the records are dropped and TC is set."""
    flags = FLAG_QR | (q.opcode << 11) | (q.flags & FLAG_RD) | (FLAG_AA if authoritative else 0) | rcode
    additional = [opt_record()] if q.edns_size is not None else []
    body = q.question + b"".join(answers) + b"".join(authority) + b"".join(additional)
    if max_size is not None and 12 + len(body) > max_size:
        return _HEADER.pack(q.id, flags | FLAG_TC, 1, 0, 0, len(additional)) + q.question + b"".join(additional)
    return _HEADER.pack(q.id, flags, 1, len(answers), len(authority), len(additional)) + body


def error_response(e: Malformed, rcode: int = FORMERR) -> bytes | None:
    """FORMERR (or another code) with no question, when the header could be read; else nothing."""
    if e.query_id is None:
        return None
    flags = FLAG_QR | (e.flags & 0x7800) | (e.flags & FLAG_RD) | rcode
    return _HEADER.pack(e.query_id, flags, 0, 0, 0, 0)
