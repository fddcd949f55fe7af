"""The running queue: picks due entries, delivers them, records each result durably, bounces.

Each destination's result is written to the entry (fsync'd) as soon as it is known, before any
other attempt can start, so a crash repeats at most the transaction that was in flight.

Queue files are read and changed in the queue's own I/O threads, in batches (`_Batch`): every
entry that became due, or finished, while the previous batch ran goes in the next one, so a
busy queue pays one thread hand-off (and one directory fsync) for many entries, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

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
    settled_by,
    unreported_failures,
)
from .queue_dir import QueueDir
from .routing import Router

# Entries being delivered at once (each may open several connections, within the Deliverer's caps).
_PARALLEL_ENTRIES = 64
_FLUSH_POLL = 1.0

T = TypeVar("T")
R = TypeVar("R")


class _Batch(Generic[T, R]):
    """Calls `work(items)` in an executor with every item submitted since the last call began,
    one call at a time: `submit(item)` resolves to that item's result (or raises its exception)."""

    def __init__(self, executor: ThreadPoolExecutor, work: Callable[[list[T]], list[R | Exception]]) -> None:
        self._executor = executor
        self._work = work
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False

    def submit(self, item: T) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._run)  # after the tasks started in this round of the loop have submitted too
        return future

    def _run(self) -> None:
        batch, self._waiting = self._waiting, []
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self._executor, self._work, [item for item, _ in batch])
        except RuntimeError as e:  # the executor was shut down (the queue is stopping)
            job = loop.create_future()
            job.set_exception(e)
        job.add_done_callback(lambda done: self._done(batch, done))

    def _done(self, batch: list[tuple[T, asyncio.Future[R]]], job: asyncio.Future[list[R | Exception]]) -> None:
        if job.cancelled():
            results: list[Any] = [asyncio.CancelledError()] * len(batch)
        elif job.exception() is not None:
            results = [job.exception()] * len(batch)
        else:
            results = job.result()
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._waiting:
            self._run()
        else:
            self._busy = False


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
        # Queue file I/O, off the event loop: loads, updates and removals each in batches (one call
        # of each kind at a time), rescans and the rest as single calls; two threads at most.
        self._io = ThreadPoolExecutor(2, thread_name_prefix="relayguard-queue")
        self._loads: _Batch[str, tuple[QueueEntry, bytes]] = _Batch(self._io, queue.load_many)
        self._updates: _Batch[tuple[str, Callable[[QueueEntry], bool | None]], QueueEntry | None] = _Batch(
            self._io, queue.update_many)
        self._removals: _Batch[str, bool] = _Batch(self._io, queue.remove_many)
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

    async def _in_io(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def run(self) -> None:
        await self._in_io(self.rescan)
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
                await self._in_io(self.rescan)
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
        self._io.shutdown(wait=False)

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
            entry, message = await self._loads.submit(queue_id)
        except FileNotFoundError:
            self.due.pop(queue_id, None)
            return
        except CorruptEntry as e:
            self.due.pop(queue_id, None)
            await self._in_io(self.queue.quarantine, queue_id, str(e))
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
        if save_each:
            results = await asyncio.gather(*(self._deliver_domain(entry, d, rcpts, message, True)
                                             for d, rcpts in by_domain.items()))
            outcomes = {r: o for result in results for r, o in result.items()}
        else:
            outcomes = {}
            for d, rcpts in by_domain.items():  # one destination (or none): no task of its own
                outcomes = await self._deliver_domain(entry, d, rcpts, message, False)
        if outcomes and settled_by(entry, outcomes):
            # Every recipient done, nothing to report: remove it, no last save (a crash before
            # the removal only delivers it once more). Others may only have held or deleted it.
            await self._removals.submit(queue_id)
            self.due.pop(queue_id, None)
            log.event("removed", logging.DEBUG, id=queue_id)
            return
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
            await self._update(entry.queue_id, lambda e: apply_outcomes(e, outcomes))
        return outcomes

    async def _update(self, queue_id: str, change: Callable[[QueueEntry], bool | None]) -> QueueEntry | None:
        """QueueDir.update in the next batch."""
        return await self._updates.submit((queue_id, change))

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

        entry = await self._update(queue_id, change)
        for snapshot, rcpts, action in notices:
            dsn = build_dsn(snapshot, rcpts, message, reporting_mta=self.settings.server.hostname, action=action)
            await self.inject(snapshot.mail_from, dsn)
            log.event("dsn", id=queue_id, action=action, to=snapshot.mail_from, rcpts=len(rcpts))
            metrics.DSN.labels(action).inc()
        if entry is None or not entry.pending():
            self.due.pop(queue_id, None)
            if entry is not None and notices:  # else `update` removed it already
                await self._in_io(self.queue.delete, queue_id)
            if entry is not None:
                log.event("removed", logging.DEBUG, id=queue_id)
        else:
            self.due[queue_id] = entry.next_attempt
