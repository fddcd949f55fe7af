"""The mail server's decisions on senders and recipients, built on the pure relay rule.

Everything here is a pure function of the settings and the user list: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from ..addr import AddressError, Mailbox, Resolved, parse_path, resolve
from ..config import Settings
from ..hostport import parse_hostport
from ..relay import is_trusted, relay_decision
from ..smtp.replies import Reply

_ALIAS_DEPTH = 10


@dataclass(frozen=True)
class Routes:
    """Where one accepted message goes: Maildirs (local part, domain) and remote addresses."""

    local: list[tuple[str, str]]
    remote: list[str]


class Policy:
    def __init__(self, settings: Settings, users: frozenset[str] | set[str]) -> None:
        self.settings = settings
        self.users = users
        self.networks = settings.relay.networks()
        domains = set(settings.domains.local)
        for addr in settings.smtp.listen + settings.smtp.submission_listen:
            host = parse_hostport(addr)[0]
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if not ip.is_unspecified:
                domains.add(f"[{ip}]" if ip.version == 4 else f"[IPv6:{ip}]")
        self.local_domains = frozenset(domains)
        self.aliases = {self._key(k): v for k, v in settings.aliases.items()}
        # Asked at every RCPT (and by the reject gate): parsing the address each time cost more
        # than the rest of the decision.
        self.trusted = lru_cache(maxsize=4096)(self._trusted)

    def _key(self, address: str) -> str:
        r = resolve(parse_path(address, allow_null=False), self.local_domains)
        return f"{r.local}@{r.domain}".lower()

    def qualify(self, box: Mailbox) -> Mailbox:
        """RFC 5321 4.5.1: `RCPT TO:<Postmaster>` (no domain) must be accepted, for our first domain."""
        if not box.domain and box.local.lower() == "postmaster":
            return Mailbox(box.local, self.settings.domains.local[0])
        return box

    def _trusted(self, client_ip: str) -> bool:
        return is_trusted(client_ip, self.networks)

    def mailbox_exists(self, r: Resolved) -> bool:
        key = f"{r.local}@{r.domain}".lower()
        return key in self.users or key in self.aliases or r.local.lower() == "postmaster"

    def check_sender(self, box: Mailbox, identity: str | None) -> Reply:
        """Authenticated users send only as themselves (or what `auth.senders` grants them)."""
        if identity is None or box.is_null or not self.settings.auth.enforce_sender:
            return Reply(250, "2.1.0", "Ok")
        addr = str(box).lower()
        domain = addr.rpartition("@")[2]
        owned = {identity.lower()} | {s.lower() for s in self.settings.auth.senders.get(identity, [])}
        if addr in owned or f"@{domain}" in owned:
            return Reply(250, "2.1.0", "Ok")
        return Reply(553, "5.7.1", f"<{box}>: Sender address rejected: not owned by user {identity}")

    def check_recipient(self, box: Mailbox, text: str, *, client_ip: str, identity: str | None) -> tuple[Reply, str]:
        """The RCPT reply and the reason to log."""
        try:
            r = resolve(self.qualify(box), self.local_domains)
        except AddressError as e:
            return Reply(e.code, e.enhanced, f"<{text}>: Recipient address rejected: {e.text}"), "bad address"
        decision = relay_decision(r, authenticated=identity is not None, trusted=self.trusted(client_ip), original=text)
        if not decision.accept:
            return Reply(decision.code, decision.enhanced, decision.text), "relay denied"
        if r.is_local and not r.routed and not self.mailbox_exists(r):
            reply = Reply(550, "5.1.1", f"<{text}>: Recipient address rejected: User unknown in local recipient table")
            return reply, "unknown user"
        return Reply(250, "2.1.5", "Ok"), "local" if r.is_local and not r.routed else "relay"

    def routes(self, rcpts: list[Mailbox]) -> Routes:
        """Expand aliases (recursively, bounded) and split local Maildirs from remote addresses."""
        local: list[tuple[str, str]] = []
        remote: list[str] = []
        todo = [(box, 0) for box in rcpts]
        while todo:
            box, depth = todo.pop(0)
            r = resolve(self.qualify(box), self.local_domains)
            key = f"{r.local}@{r.domain}".lower()
            if r.is_local and not r.routed and key in self.aliases and depth < _ALIAS_DEPTH:
                todo += [(parse_path(t, allow_null=False), depth + 1) for t in self.aliases[key]]
            elif r.is_local and not r.routed:
                if (r.local.lower(), r.domain) not in local:
                    local.append((r.local.lower(), r.domain))
            elif str(r) not in remote:
                remote.append(str(r))
        return Routes(local, remote)
