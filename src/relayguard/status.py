"""`relayguard status`: what runs where and whether it is healthy, seen from outside the server.

Every listener is probed the way a client would (TCP connect; a DNS query for the test point);
queue and listing counts come from the data folder and the store, the self-check verdict from
the file `serve` writes.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query

from .config import Settings
from .hostport import parse_hostport
from .mta.queue import CorruptEntry
from .mta.queue_dir import QueueDir
from .relaytest.selfcheck import read_status

_PROBE_TIMEOUT = 2.0


def _tcp_up(address: str) -> bool:
    host, port = parse_hostport(address)
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT).close()
        return True
    except OSError:
        return False


def _dns_up(address: str, zone: str) -> bool:
    host, port = parse_hostport(address)
    query = dns.message.make_query(f"2.0.0.127.{zone}", "A")
    try:
        return bool(dns.query.udp(query, host, port=port, timeout=_PROBE_TIMEOUT).answer)
    except (OSError, dns.exception.DNSException):
        return False


def _queue(settings: Settings) -> dict[str, int]:
    q = QueueDir(Path(settings.server.data_dir) / "queue")
    counts = {"pending": 0, "held": 0, "corrupt": len(list(q.corrupt.glob("*.json"))) if q.corrupt.is_dir() else 0}
    for queue_id in q.ids():
        try:
            entry = q.load(queue_id)
        except (FileNotFoundError, CorruptEntry):
            continue
        counts["held" if entry.held else "pending"] += 1
    return counts


def _store(settings: Settings) -> dict[str, Any]:
    from .dnsbl.store import Store  # SQLAlchemy is slow to import; only here

    try:
        store = Store(settings.store.url, txt=settings.dnsbl.txt)
        return {"healthy": True, "url": settings.store.url.split("@")[-1], "listed": len(store.listed())}
    except Exception as e:  # any database error is "unhealthy", with its text
        return {"healthy": False, "url": settings.store.url.split("@")[-1], "error": str(e)}


def gather(settings: Settings) -> dict[str, Any]:
    listeners = [{"service": "smtp", "address": a, "up": _tcp_up(a)} for a in settings.smtp.listen]
    listeners += [{"service": "submission", "address": a, "up": _tcp_up(a)} for a in settings.smtp.submission_listen]
    if settings.dnsbl.dns_listen:
        listeners.append({"service": "dnsbl-dns", "address": settings.dnsbl.dns_listen,
                          "up": _dns_up(settings.dnsbl.dns_listen, settings.dnsbl.zone)})
    self_check = read_status(settings)
    store = _store(settings)
    report = {"listeners": listeners, "queue": _queue(settings), "store": store, "self_check": self_check}
    open_relay = any(isinstance(x, dict) and x.get("verdict") == "open" for x in (self_check or {}).get("listeners", []))
    report["healthy"] = all(x["up"] for x in listeners) and store["healthy"] and not open_relay
    return report
