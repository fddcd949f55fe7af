"""What the lookup page and `/api/v1/lookup/{ip}` say about one address (plain values, JSON-ready).

Public answers leave out who asked (requester addresses, contacts, actors of nominations and
removal requests); administrators see them.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from ..dnsbl import store as store_mod
from ..dnsbl.lifecycle import Policy
from ..dnsbl.store import LISTED, AuditRecord, Store, TestRunRecord

# audit actions that change what DNS answers
_DNS_CHANGES = {"changed"}


def query_name(ip: str, zone: str) -> str:
    """The RFC 5782 name a mail server asks: reversed octets (IPv4) or nibbles (IPv6) + zone."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        labels = str(addr).split(".")[::-1]
    else:
        labels = list(addr.exploded.replace(":", ""))[::-1]
    return ".".join(labels) + "." + zone


def changes_dns(e: AuditRecord) -> bool:
    return (e.old_state == LISTED) != (e.new_state == LISTED) or (e.new_state == LISTED and e.action in _DNS_CHANGES)


def _iso(v: datetime | None) -> str | None:
    return store_mod._iso(v)


def audit_json(e: AuditRecord, admin: bool) -> dict[str, Any]:
    out = {"id": e.id, "at": _iso(e.at), "network": e.network, "action": e.action, "old_state": e.old_state,
           "new_state": e.new_state, "reason": e.reason}
    if admin:
        out.update(actor=e.actor, evidence=e.evidence)
    return out


def run_json(r: TestRunRecord, admin: bool) -> dict[str, Any]:
    out = r.to_json()
    if not admin:
        out.pop("requested_by", None)
    return out


def lookup(store: Store, policy: Policy, ip: str, *, admin: bool = False,
           now: datetime | None = None) -> dict[str, Any]:
    """Everything about `ip` (ValueError when it is not an address). Blocking: call in a thread."""
    addr = store_mod.address(ip)
    ip = str(addr)
    now = now or store_mod.utcnow()
    host = store.get(ip)
    covering = store.covering(ip)
    listing = covering[0] if covering else None
    subject = listing if listing is not None else host  # whose story decides what DNS says
    history = store.history(subject.network, limit=100) if subject is not None else []
    own_history = []  # the address's own row, when a network listing tells the main story
    if host is not None and subject is not None and subject.network != host.network:
        own_history = store.history(ip, limit=100)
    change = next((e for e in reversed(history) if changes_dns(e)), None)
    last_change = None
    if change is not None:
        effective = change.at + policy.propagation
        last_change = {"at": _iso(change.at), "action": change.action, "new_state": change.new_state,
                       "reason": change.reason, "effective_at": _iso(effective), "in_effect": effective <= now}
    runs = store.test_runs(ip, limit=20)
    last_test = store.test_run(runs[0].id) if runs else None
    out: dict[str, Any] = {
        "ip": ip,
        "listed": listing is not None,
        "state": listing.state if listing is not None else (host.state if host is not None else "unknown"),
        "listed_as": listing.network if listing is not None else None,
        "code": listing.code if listing is not None else None,
        "txt": listing.txt.replace("$", ip) if listing is not None else None,
        "reason": subject.reason if subject is not None else None,
        "zone": policy.zone,
        "query": query_name(ip, policy.zone),
        "propagation_seconds": int(policy.propagation.total_seconds()),
        "last_change": last_change,
        "host": subject.to_json() if subject is not None else None,
        "last_test": run_json(last_test, admin) if last_test is not None else None,
        "test_runs": [run_json(r, admin) for r in runs],
        "history": [audit_json(e, admin) for e in history],
        "own_history": [audit_json(e, admin) for e in own_history],
    }
    if admin:
        out["nominations"] = [n.to_json() for n in store.nominations(ip)]
        out["removal_requests"] = [r.to_json() for r in store.removal_requests(ip)]
    return out
