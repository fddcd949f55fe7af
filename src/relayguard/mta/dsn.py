"""RFC 3464 delivery status notifications: what the sender gets when mail fails or is delayed."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from email.utils import format_datetime

from .queue import QueueEntry, Recipient


def _headers_of(message: bytes, limit: int = 64 * 1024) -> bytes:
    """The original header section (text/rfc822-headers), bounded."""
    end = message.find(b"\r\n\r\n")
    head = message[: end if end >= 0 else limit][:limit]
    return head.rstrip(b"\r\n") + b"\r\n"


def build_dsn(
    entry: QueueEntry,
    recipients: list[Recipient],
    original: bytes,
    *,
    reporting_mta: str,
    action: str = "failed",
    now: datetime | None = None,
) -> bytes:
    """A multipart/report DSN from <> to the sender; `action` is "failed" or "delayed"."""
    now = now or datetime.now(timezone.utc)
    boundary = f"=_relayguard_{secrets.token_hex(12)}"
    if action == "failed":
        subject = "Undelivered Mail Returned to Sender"
        human = "Your message could not be delivered to one or more recipients. It has been returned."
    else:
        subject = "Delayed Mail (still being retried)"
        human = "Your message has not been delivered yet to one or more recipients. Delivery will be retried."
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{entry.mail_from}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(12)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
        human,
        "",
    ]
    lines += [f"<{r.address}>: {r.reply}" for r in recipients]
    arrival = datetime.fromtimestamp(entry.received, timezone.utc)
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Relayguard-Queue-ID: {entry.queue_id}",
        f"Arrival-Date: {format_datetime(arrival)}",
    ]
    for r in recipients:
        status = r.status or ("5.0.0" if action == "failed" else "4.0.0")
        lines += ["", f"Final-Recipient: rfc822; {r.address}", f"Action: {action}", f"Status: {status}"]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.reply:
            kind = "smtp" if r.reply[:3].isdigit() else "X-relayguard"
            lines.append(f"Diagnostic-Code: {kind}; {_one_line(r.reply)}")
    lines += ["", f"--{boundary}", "Content-Type: text/rfc822-headers", "", ""]
    head = "\r\n".join(lines).encode("utf-8")
    return head + _headers_of(original) + f"\r\n--{boundary}--\r\n".encode()


def _one_line(text: str) -> str:
    return " ".join(text.split())
