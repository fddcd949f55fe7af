"""`relayguard check-config`: risky settings in a configuration that validates (pure).

Like `postfix check`: the file is read and validated without starting anything; then these
rules say what a mail administrator should look at. Network widths reuse the audit's rules.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .audit.model import Severity
from .audit.nets import parse_network, width
from .config import Settings
from .hostport import parse_hostport


@dataclass(frozen=True)
class Finding:
    severity: Severity
    key: str
    text: str


def _public_listeners(settings: Settings) -> list[str]:
    out = []
    for addr in settings.smtp.listen + settings.smtp.submission_listen:
        host = parse_hostport(addr)[0]
        try:
            if not ipaddress.ip_address(host).is_loopback:
                out.append(addr)
        except ValueError:
            out.append(addr)  # a host name: assume reachable
    return out


def findings(settings: Settings, self_check: dict[str, object] | None = None) -> list[Finding]:
    out: list[Finding] = []
    for net in settings.relay.trusted_networks:
        w = width(parse_network(net))
        if w.severity is not None:
            out.append(Finding(w.severity, "relay.trusted_networks", f"{net} is {w.text}: every host in it may relay"))
    public = _public_listeners(settings)
    if public and settings.server.hostname in ("localhost", "localhost.localdomain"):
        out.append(Finding(Severity.WEAKNESS, "server.hostname",
                           f"listening on {', '.join(public)} but the greeting names the host 'localhost'"))
    if public and not settings.reject.dnsbl_sites:
        out.append(Finding(Severity.INFO, "reject.dnsbl_sites", "no DNS blacklists are checked for connecting clients"))
    if public and not settings.relaytest.self_check:
        out.append(Finding(Severity.INFO, "relaytest.self_check", "serve does not test its own listeners for relaying"))
    d = settings.delivery
    if d.smarthost_user and not d.smarthost:
        out.append(Finding(Severity.WEAKNESS, "delivery.smarthost_user", "a smarthost login without a smarthost"))
    if bool(settings.tls.cert) != bool(settings.tls.key):
        out.append(Finding(Severity.WEAKNESS, "tls", "cert and key must be set together; STARTTLS (and so AUTH) is off"))
    if self_check:
        for listener in self_check.get("listeners", []):  # type: ignore[union-attr]
            if isinstance(listener, dict) and listener.get("verdict") == "open":
                out.append(Finding(Severity.OPEN_RELAY, "relaytest.self_check",
                                   f"the last self-check found {listener.get('target')} relaying"))
    return out
