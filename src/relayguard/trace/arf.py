"""Abuse Reporting Format (RFC 5965) reports.

`build_report` returns the report as bytes: `multipart/report; report-type=feedback-report`
with three parts, in order:

1. `text/plain`: the human-readable explanation;
2. `message/feedback-report`: Feedback-Type, User-Agent and Version (each exactly once), then
   the optional fields that are known (Original-Mail-From, Arrival-Date, Reporting-MTA,
   Source-IP, Incidents, and the repeatable Original-Rcpt-To, Reported-Domain, Reported-URI,
   Authentication-Results);
3. the original message as `message/rfc822`, or only its header as `text/rfc822-headers`.

The original's bytes are carried as they were (no re-folding), so signatures in it stay
checkable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid

from .. import __version__ as _version
from .investigate import Investigation
from .psl import registered_domain

__all__ = ["FEEDBACK_TYPES", "FeedbackReport", "build_report", "report_for", "human_text"]

FEEDBACK_TYPES = ("abuse", "fraud", "other", "virus", "auth-failure", "not-spam")
_CRLF = "\r\n"
_FIELD_UNSAFE = re.compile(r"[\r\n\x00]")


@dataclass
class FeedbackReport:
    feedback_type: str = "abuse"
    user_agent: str = f"relayguard/{_version}"
    version: str = "1"
    original_mail_from: str = ""
    original_rcpt_to: list[str] = field(default_factory=list)
    arrival_date: datetime | None = None
    reporting_mta: str = ""
    source_ip: str = ""
    incidents: int | None = None
    reported_domain: list[str] = field(default_factory=list)
    reported_uri: list[str] = field(default_factory=list)
    authentication_results: list[str] = field(default_factory=list)

    def fields(self) -> list[tuple[str, str]]:
        if self.feedback_type not in FEEDBACK_TYPES:
            raise ValueError(f"feedback type {self.feedback_type!r} is not one of {', '.join(FEEDBACK_TYPES)}")
        out = [("Feedback-Type", self.feedback_type), ("User-Agent", self.user_agent), ("Version", self.version)]
        if self.original_mail_from:
            out.append(("Original-Mail-From", _angle(self.original_mail_from)))
        if self.arrival_date is not None:
            when = self.arrival_date if self.arrival_date.tzinfo else self.arrival_date.replace(tzinfo=timezone.utc)
            out.append(("Arrival-Date", format_datetime(when)))
        if self.reporting_mta:
            out.append(("Reporting-MTA", f"dns; {self.reporting_mta}"))
        if self.source_ip:
            out.append(("Source-IP", self.source_ip))
        if self.incidents is not None:
            out.append(("Incidents", str(int(self.incidents))))
        out += [("Original-Rcpt-To", _angle(r)) for r in self.original_rcpt_to]
        out += [("Reported-Domain", d) for d in self.reported_domain]
        out += [("Reported-URI", u) for u in self.reported_uri]
        out += [("Authentication-Results", a) for a in self.authentication_results]
        return [(k, _FIELD_UNSAFE.sub(" ", v)) for k, v in out]


def _angle(addr: str) -> str:
    addr = addr.strip()
    return addr if addr.startswith("<") else f"<{addr}>"


def _header_block(original: bytes) -> bytes:
    """The original's header section (up to and including the blank line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = original.find(sep)
        if i >= 0:
            return original[: i + len(sep)]
    return original if original.endswith(b"\n") else original + b"\r\n"


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def _h(name: str, value: str) -> str:
    return f"{name}: {_FIELD_UNSAFE.sub(' ', value)}"


def build_report(original: bytes, report: FeedbackReport, *, sender: str, recipients: Sequence[str],
                 human: str, subject: str = "", headers_only: bool = False, date: datetime | None = None,
                 boundary: str | None = None) -> bytes:
    """The complete report message, CRLF line ends, ready to send or to save as .eml."""
    date = date or datetime.now(timezone.utc)
    domain = sender.rpartition("@")[2] or "relayguard.invalid"
    boundary = boundary or ("=_relayguard_arf_" + make_msgid(domain="x").strip("<>").split("@")[0].replace(".", "_"))
    original = _crlf(original)
    if headers_only:
        third_type, third = "text/rfc822-headers", _header_block(original)
    else:
        third_type, third = "message/rfc822", original
    if not third.endswith(b"\r\n"):
        third += b"\r\n"
    head = [
        _h("From", sender),
        _h("To", ", ".join(recipients) if recipients else "undisclosed-recipients:;"),
        _h("Subject", subject or f"Abuse report ({report.feedback_type})"
           + (f": message from {report.source_ip}" if report.source_ip else "")),
        _h("Date", format_datetime(date if date.tzinfo else date.replace(tzinfo=timezone.utc))),
        _h("Message-ID", make_msgid(domain=domain)),
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"',
        "Auto-Submitted: auto-generated",
    ]
    feedback = _CRLF.join(f"{k}: {v}" for k, v in report.fields()) + _CRLF
    human_body = _CRLF.join(human.splitlines()) + _CRLF
    parts = [
        "This is a multipart message in MIME format." + _CRLF,
        f"--{boundary}" + _CRLF + 'Content-Type: text/plain; charset="utf-8"' + _CRLF
        + "Content-Transfer-Encoding: 8bit" + _CRLF + _CRLF + human_body,
        f"--{boundary}" + _CRLF + "Content-Type: message/feedback-report" + _CRLF + _CRLF + feedback,
        f"--{boundary}" + _CRLF + f"Content-Type: {third_type}" + _CRLF
        + ("Content-Disposition: inline" + _CRLF if headers_only else "")
        + ("Content-Transfer-Encoding: 8bit" + _CRLF if not third.isascii() else "") + _CRLF,
    ]
    out = (_CRLF.join(head) + _CRLF + _CRLF).encode("utf-8")
    out += _CRLF.join(parts[:-1]).encode("utf-8") + _CRLF.encode()
    out += parts[-1].encode("utf-8") + third + f"{_CRLF}--{boundary}--{_CRLF}".encode()
    return out


def _first_header(original: bytes, name: str) -> str:
    block = _header_block(_crlf(original)).decode("utf-8", "replace")
    m = re.search(rf"(?im)^{re.escape(name)}:[ \t]*(.*(?:\r\n[ \t].*)*)", block)
    return " ".join(m.group(1).split()) if m else ""


def human_text(inv: Investigation) -> str:
    chain = inv.chain
    lines = ["This is an abuse report about a message received by us.", ""]
    o, r = chain.origin, chain.abused_relay
    if o is not None:
        lines.append(f"The message originated from {o.label()}.")
    if r is not None:
        lines.append(f"It was passed on by {r.label()}, which accepted it from {o.ip if o else '?'}: "
                     "please check that host for an open relay, an open proxy or a compromised account.")
    for ip, listings in inv.listings.items():
        for x in listings:
            lines.append(f"{ip} is listed on {x.zone}" + (f" ({x.reason})" if x.reason else "") + ".")
    lines += ["", "Relay chain, newest first (* = our trusted hosts):"]
    for rel in chain.relays:
        mark = "*" if rel.trusted else " "
        lines.append(f"{mark} {rel.index}: from {rel.label()} by {rel.hop.by or '?'}"
                     + (f" with {rel.hop.with_}" if rel.hop.with_ else "")
                     + (f"; {rel.hop.date.isoformat() if isinstance(rel.hop.date, datetime) else rel.hop.date}"
                        if rel.hop.date else ""))
    notable = [f for f in chain.findings if f.severity == "warning"]
    if notable:
        lines += ["", "Observations:"] + [f"- {f.message}" for f in notable]
    lines += ["", "The original message is attached. This report was written by relayguard in the Abuse Reporting",
              "Format (RFC 5965)."]
    return "\n".join(lines)


def report_for(inv: Investigation, original: bytes, *, reporting_mta: str = "",
               feedback_type: str = "abuse") -> FeedbackReport:
    """The feedback fields for a traced message."""
    chain = inv.chain
    top = chain.relays[0] if chain.relays else None
    arrival = None
    for rel in chain.relays:
        if rel.trusted or rel is chain.first_untrusted:
            if isinstance(rel.hop.date, datetime):
                arrival = rel.hop.date
            if rel is chain.first_untrusted:
                break
    mail_from = _first_header(original, "Return-Path").strip("<> ") or next(
        (rel.hop.envfrom for rel in chain.relays if rel.hop.envfrom), "")
    rcpts = []
    for name in ("X-Original-To", "Delivered-To"):
        v = _first_header(original, name)
        if v:
            rcpts.append(v.strip("<> "))
            break
    if not rcpts and top is not None and top.hop.for_:
        rcpts.append(top.hop.for_)
    domains = []
    for rel in (chain.origin, chain.abused_relay):
        name = (rel.hop.rdns or inv.reverse.get(rel.ip, "")) if rel is not None else ""
        d = registered_domain(name) if name else ""
        if d and d not in domains:
            domains.append(d)
    return FeedbackReport(
        feedback_type=feedback_type,
        original_mail_from=mail_from,
        original_rcpt_to=rcpts,
        arrival_date=arrival,
        reporting_mta=reporting_mta or (chain.first_untrusted.hop.by if chain.first_untrusted else ""),
        source_ip=chain.origin.ip if chain.origin else "",
        incidents=1,
        reported_domain=domains,
    )
