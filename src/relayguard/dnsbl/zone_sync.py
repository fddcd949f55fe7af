"""Keeps the in-memory Zone equal to the store's listed set (the store is the truth).

Polled once a second: the store's version number is cheap to read, and the listed set is
loaded only when it changed, so a listing change made by any process sharing the store (CLI,
web, another node on PostgreSQL) is served within about a second.
"""

from __future__ import annotations

import asyncio

from .. import log, metrics
from .store import Store
from .zone import Listing, Zone


class ZoneSync:
    def __init__(self, store: Store, zone: Zone) -> None:
        self.store = store
        self.zone = zone
        self.version: int | None = None

    def _load(self) -> None:
        version, rows = self.store.listed_with_version()
        default = self.zone.default
        self.zone.replace(
            (network, default if (code, txt) == (default.code, default.reason) else Listing(code, txt))
            for network, code, txt in rows
        )
        self.version = version
        metrics.DNSBL_LISTED.set(len(rows))
        log.event("zone-loaded", zone=self.zone.origin, version=version, entries=len(rows))

    async def sync(self) -> None:
        """Reload when the store changed since the last load."""
        if self.version is None or await asyncio.to_thread(self.store.version) != self.version:
            await asyncio.to_thread(self._load)
