"""Handing the trace's results on: the abuse report submitted over SMTP, and the relay to nominate.

- `send_report`: one SMTP transaction (stdlib `smtplib`) to a relayguard submission listener or
  any SMTP server: EHLO, STARTTLS when offered (required before AUTH: a password never goes in
  clear), AUTH when a user is given, MAIL, one RCPT per recipient (refusals are collected, not
  fatal while one recipient is accepted), DATA. The server's answer to DATA (its queue id) is
  kept. `SendError` when nothing could be sent.
- `nomination_target` / `nomination_reason`: which host goes to the blacklist service for a
  relay test (the relay the origin used; the origin itself when it came straight to us) and the
  reason kept with the nomination (the trace in a few lines).
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .chain import Relay
from .investigate import Investigation

__all__ = ["SendError", "SendResult", "nomination_reason", "nomination_target", "send_report"]


class SendError(Exception):
    """The report could not be submitted (connection, TLS, authentication, sender or every recipient refused)."""


@dataclass
class SendResult:
    server: str
    sender: str
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> "code text"
    reply: str = ""  # the answer to the end of DATA (e.g. "2.0.0 Ok: queued as ...")
    tls: bool = False
    authenticated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "sender": self.sender, "accepted": list(self.accepted),
                "refused": dict(self.refused), "reply": self.reply, "tls": self.tls,
                "authenticated": self.authenticated}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _text(reply: bytes | str) -> str:
    return (reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)).replace("\n", " ")


def send_report(data: bytes, *, sender: str, recipients: Sequence[str], host: str, port: int, user: str = "",
                password: str = "", verify: bool | None = None, timeout: float = 30.0,
                helo: str | None = None) -> SendResult:
    """Submit `data` to `recipients` through host:port. `verify`: check the server's certificate
    (default: yes, except for a loopback server, whose certificate is usually relayguard's own
    self-signed one)."""
    if not recipients:
        raise SendError("no recipient: no abuse contact was found (give one with --to)")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    result = SendResult(where, sender)
    if verify is None:
        verify = not _is_loopback(host)
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        smtp = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout)
    except (OSError, smtplib.SMTPException) as e:
        raise SendError(f"cannot connect to {where}: {e}") from None
    try:
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            smtp.starttls(context=ctx)
            smtp.ehlo()
            result.tls = True
        if user:
            if not result.tls:
                raise SendError(f"{where} offers no STARTTLS: the password is not sent in clear")
            if not smtp.has_extn("auth"):
                raise SendError(f"{where} offers no AUTH for user {user}")
            smtp.login(user, password)
            result.authenticated = True
        code, text = smtp.mail(sender)
        if code != 250:
            raise SendError(f"{where} refused the sender <{sender}>: {code} {_text(text)}")
        for rcpt in recipients:
            code, text = smtp.rcpt(rcpt)
            if code in (250, 251):
                result.accepted.append(rcpt)
            else:
                result.refused[rcpt] = f"{code} {_text(text)}"
        if not result.accepted:
            smtp.rset()
            raise SendError(f"{where} refused every recipient: "
                            + "; ".join(f"<{r}> {why}" for r, why in result.refused.items()))
        code, text = smtp.data(data)
        if code != 250:
            raise SendError(f"{where} refused the report after DATA: {code} {_text(text)}")
        result.reply = _text(text)
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass
    except smtplib.SMTPAuthenticationError as e:
        raise SendError(f"{where}: authentication as {user} failed: {e.smtp_code} {_text(e.smtp_error)}") from None
    except smtplib.SMTPResponseException as e:
        raise SendError(f"{where}: {e.smtp_code} {_text(e.smtp_error)}") from None
    except (TimeoutError, OSError, smtplib.SMTPException, ssl.SSLError) as e:
        raise SendError(f"{where}: {type(e).__name__}: {e}") from None
    finally:
        smtp.close()
    return result


def nomination_target(inv: Investigation) -> Relay | None:
    """The host to relay-test: the relay the origin used, else the origin (it came straight to us)."""
    chain = inv.chain
    for r in (chain.abused_relay, chain.origin):
        if r is not None and r.ip and not r.private and not r.synthetic:
            return r
    return None


def nomination_reason(inv: Investigation, target: Relay, message_id: str = "") -> str:
    """The trace in a few lines, kept with the nomination as its reason."""
    chain = inv.chain
    o = chain.origin
    if target is chain.abused_relay and o is not None:
        why = f"relayguard trace: {target.label()} passed on a message from {o.label()}"
    else:
        why = f"relayguard trace: {target.label()} sent the message to us directly"
    by = target.hop.by or (chain.first_untrusted.hop.by if chain.first_untrusted else "")
    if by:
        why += f", received by {by}"
    if message_id:
        why += f"; Message-ID {message_id}"
    listed = [f"{x.zone}" for x in inv.listings.get(target.ip, [])]
    if listed:
        why += f"; listed on {', '.join(listed)}"
    warnings = [f.kind for f in chain.findings if f.severity == "warning"]
    if warnings:
        why += f"; findings: {', '.join(dict.fromkeys(warnings))}"
    return why[:1000]
