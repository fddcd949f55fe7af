"""The running queue: picks due entries, delivers them, records each result durably, bounces.

Each destination's result is written to the entry (fsync'd) as soon as it is known, before any
other attempt can start, so a crash repeats at most the transaction that was in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

from .. import log, metrics
from ..config import Settings
from .delivery import Deliverer
from .dsn import build_dsn
from .queue import (
    FAILED,
    CorruptEntry,
    Outcome,
    QueueEntry,
    Recipient,
    Schedule,
    apply_outcomes,
    finish_attempt,
    needs_delay_warning,
    unreported_failures,
)
from .queue_dir import QueueDir
from .routing import Router

# Entries being delivered at once (each may open several connections, within the Deliverer's caps).
_PARALLEL_ENTRIES = 64
_FLUSH_POLL = 1.0


class QueueRunner:
    def __init__(self, settings: Settings, queue: QueueDir, inject: Callable[[str, bytes], object]) -> None:
        """`inject(recipient, message)` queues a DSN from <> through the MTA's own storage path."""
        self.settings = settings
        self.queue = queue
        self.inject = inject
        d = settings.delivery
        self.schedule = Schedule(d.min_backoff, d.max_backoff, d.max_lifetime)
        self.router = Router(d)
        self.deliverer = Deliverer(d, settings.server.hostname)
        self.due: dict[str, float] = {}  # queue id -> next attempt (Unix time)
        self.in_flight: set[str] = set()
        self.wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_stamp = 0.0
        self.held = 0  # held entries seen by the last scan (metrics)
        metrics.watch_queue(self)  # relayguard_queue_entries

    def notify(self, queue_id: str) -> None:
        """A new entry was committed: deliver it now."""
        self.due[queue_id] = 0.0
        self.wake.set()

    def rescan(self) -> None:
        due: dict[str, float] = {}
        held = 0
        for queue_id in self.queue.ids():
            try:
                entry = self.queue.load(queue_id)
            except FileNotFoundError:
                continue
            except CorruptEntry as e:
                self.queue.quarantine(queue_id, str(e))
                continue
            held += entry.held
            if not entry.held:  # finished entries too: a crash may have left their bounce or removal
                due[queue_id] = entry.next_attempt if entry.pending() else 0.0
        self.due = due
        self.held = held

    async def run(self) -> None:
        await asyncio.to_thread(self.rescan)
        last_scan = time.monotonic()
        while True:
            now = time.time()
            for queue_id, when in sorted(self.due.items(), key=lambda kv: kv[1]):
                if when > now or len(self.in_flight) >= _PARALLEL_ENTRIES:
                    break
                if queue_id not in self.in_flight:
                    self._start(queue_id)
            timeout = _FLUSH_POLL  # at the cap, a finishing attempt wakes the loop (no busy wait)
            if len(self.in_flight) < _PARALLEL_ENTRIES:
                upcoming = [w for q, w in self.due.items() if q not in self.in_flight]
                timeout = min([timeout] + [max(0.0, w - now) for w in upcoming])
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                pass
            stamp = self.queue.flush_stamp()
            if stamp != self._flush_stamp or time.monotonic() - last_scan > self.settings.delivery.scan_interval:
                self._flush_stamp = stamp
                await asyncio.to_thread(self.rescan)
                last_scan = time.monotonic()

    def _start(self, queue_id: str) -> None:
        self.in_flight.add(queue_id)
        task = asyncio.get_running_loop().create_task(self._attempt(queue_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.deliverer.close()

    async def _attempt(self, queue_id: str) -> None:
        try:
            await self._deliver_entry(queue_id)
        except Exception as e:  # one bad entry must never stop the queue
            log.event("queue-error", id=queue_id, error=repr(e))
            self.due[queue_id] = time.time() + self.schedule.min_backoff
        finally:
            self.in_flight.discard(queue_id)
            self.wake.set()

    async def _deliver_entry(self, queue_id: str) -> None:
        try:
            entry = await asyncio.to_thread(self.queue.load, queue_id)
            message = await asyncio.to_thread(self.queue.message_path(queue_id).read_bytes)
        except FileNotFoundError:
            self.due.pop(queue_id, None)
            return
        except CorruptEntry as e:
            self.due.pop(queue_id, None)
            await asyncio.to_thread(self.queue.quarantine, queue_id, str(e))
            return
        if entry.held:
            self.due.pop(queue_id, None)
            return
        by_domain: dict[str, list[str]] = defaultdict(list)
        for r in entry.pending():
            by_domain[r.address.rpartition("@")[2].lower()].append(r.address)
        # With several destinations each result is saved as it comes (a crash repeats at most the
        # one in flight); with one, the result is saved together with the attempt's end below.
        save_each = len(by_domain) > 1
        results = await asyncio.gather(*(self._deliver_domain(entry, d, rcpts, message, save_each)
                                         for d, rcpts in by_domain.items()))
        outcomes = {r: o for result in results for r, o in result.items()}
        await self._finish(queue_id, message, attempted=bool(by_domain), outcomes=outcomes)

    async def _deliver_domain(self, entry: QueueEntry, domain: str, rcpts: list[str], message: bytes,
                              save: bool) -> dict[str, Outcome]:
        started = time.monotonic()
        route = await self.router.route(domain)
        if route.hops:
            outcomes = await self.deliverer.deliver(route, domain, entry.mail_from, rcpts, message)
        else:
            state = "pending" if route.temporary else FAILED
            code = "451" if route.temporary else ("556" if route.status == "5.1.10" else "550")
            outcomes = {r: Outcome(state, f"{code} {route.status} {route.error}", route.status) for r in rcpts}
        metrics.delivery((o.state for o in outcomes.values()), time.monotonic() - started)
        for r, o in outcomes.items():
            log.event("delivery", id=entry.queue_id, rcpt=r, state=o.state, relay=o.remote_mta or "none", reply=o.reply)
        if save:
            await asyncio.to_thread(self.queue.update, entry.queue_id, lambda e: apply_outcomes(e, outcomes))
        return outcomes

    async def _finish(self, queue_id: str, message: bytes, attempted: bool,
                      outcomes: dict[str, Outcome] | None = None) -> None:
        """Schedule the next attempt, send due DSNs, remove the entry once nothing is pending."""
        now = time.time()
        warn_after = self.settings.delivery.delay_warning
        notices: list[tuple[QueueEntry, list[Recipient], str]] = []

        def change(e: QueueEntry) -> bool:
            """Record the attempt; True when the entry is done and can go without another save."""
            apply_outcomes(e, outcomes or {})
            if attempted:
                finish_attempt(e, now, self.schedule)
            failed = unreported_failures(e)
            if failed and e.mail_from:
                notices.append((QueueEntry(**{**e.__dict__}), failed, "failed"))
            for r in failed:
                r.reported = True
            if needs_delay_warning(e, now, warn_after):
                notices.append((QueueEntry(**{**e.__dict__}), e.pending(), "delayed"))
                e.warned = True
            return not e.pending() and not notices

        entry = await asyncio.to_thread(self.queue.update, queue_id, change)
        for snapshot, rcpts, action in notices:
            dsn = build_dsn(snapshot, rcpts, message, reporting_mta=self.settings.server.hostname, action=action)
            await self.inject(snapshot.mail_from, dsn)
            log.event("dsn", id=queue_id, action=action, to=snapshot.mail_from, rcpts=len(rcpts))
            metrics.DSN.labels(action).inc()
        if entry is None or not entry.pending():
            self.due.pop(queue_id, None)
            if entry is not None and notices:  # else `update` removed it already
                await asyncio.to_thread(self.queue.delete, queue_id)
            if entry is not None:
                log.event("removed", id=queue_id)
        else:
            self.due[queue_id] = entry.next_attempt
