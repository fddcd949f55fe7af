"""The Received header relayguard adds to each accepted message (RFC 5321 4.4, RFC 3848)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache


@dataclass(frozen=True)
class TLSInfo:
    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_256_GCM_SHA384"
    bits: int


def with_protocol(esmtp: bool, tls: bool, auth: bool) -> str:
    """RFC 3848 transmission types: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if auth else "")


def received_header(
    *,
    helo: str,
    ip: str,
    rdns: str | None,
    by: str,
    queue_id: str,
    esmtp: bool,
    tls: TLSInfo | None,
    authenticated: bool,
    rcpts: list[str],
    when: datetime,
) -> bytes:
    """One folded Received field, CRLF-terminated, ready to prepend to the message."""
    host = f"{rdns} [{ip}]" if rdns else f"[{ip}]"
    lines = [f"Received: from {_clean(helo, ' ')} ({host})"]
    if tls:
        lines.append(f"\t(using {tls.version} with cipher {tls.cipher} ({tls.bits}/{tls.bits} bits))")
    proto = with_protocol(esmtp, tls is not None, authenticated)
    lines.append(f"\tby {by} (relayguard) with {proto} id {queue_id}")
    date = _date(when.replace(microsecond=0))
    if len(rcpts) == 1:
        lines.append(f"\tfor <{_clean(rcpts[0])}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


@lru_cache(maxsize=4)
def _date(when: datetime) -> str:
    """RFC 5322 date of a whole second (the same for every message of that second)."""
    return format_datetime(when)


def _clean(text: str, also: str = "") -> str:
    """Client-supplied text must not break the header's structure (a HELO name has no spaces)."""
    return "".join(c if c.isprintable() and c not in "()<>;" + also else "?" for c in text)[:255] or "?"
