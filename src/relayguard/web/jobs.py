"""Relay tests started from the web run as background jobs: the request returns at once (or as
soon as a quick answer is ready), the page or API client follows the job until it is done.

The tests themselves run in the lifecycle's bounded pool; this table only bounds how many web
requests may be waiting for it (`max_running`) and remembers finished answers for an hour.
Job ids are random (they are the only handle on an answer that may name a contact address).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .. import log
from ..dnsbl.lifecycle import Answer, LifecycleError


class Busy(Exception):
    """Too many web-triggered tests at once."""


@dataclass
class Job:
    id: str
    kind: str  # nomination | removal | confirmation | retest
    ip: str
    created: float = field(default_factory=time.time)
    task: asyncio.Task[Answer] | None = None
    answer: Answer | None = None
    error: str = ""
    finished: float | None = None

    @property
    def status(self) -> str:
        if self.answer is not None:
            return "done"
        if self.error:
            return "error"
        return "running"

    def to_json(self) -> dict[str, Any]:
        return {"job": self.id, "kind": self.kind, "ip": self.ip, "status": self.status,
                "answer": self.answer.to_json() if self.answer else None, "error": self.error or None}


class Jobs:
    def __init__(self, max_running: int = 100, keep: float = 3600.0, max_kept: int = 10_000) -> None:
        self.max_running, self.keep, self.max_kept = max_running, keep, max_kept
        self._jobs: dict[str, Job] = {}

    def running(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.status == "running"]

    def get(self, job_id: str) -> Job | None:
        self._prune()
        return self._jobs.get(job_id)

    def _prune(self) -> None:
        now = time.time()
        for jid, j in list(self._jobs.items()):
            if j.finished is not None and j.finished < now - self.keep:
                del self._jobs[jid]
        if len(self._jobs) > self.max_kept:
            done = sorted((j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished or 0)
            for j in done[: len(self._jobs) - self.max_kept]:
                del self._jobs[j.id]

    def start(self, kind: str, ip: str, work: Callable[[], Awaitable[Answer]]) -> Job:
        """Run `work` in the background (on the running loop); Busy when too many are waiting."""
        self._prune()
        if len(self.running()) >= self.max_running:
            raise Busy(f"{self.max_running} tests are waiting already; try again in a few minutes")
        job = Job(secrets.token_urlsafe(16), kind, ip)

        async def run() -> Answer:
            try:
                job.answer = await work()
                return job.answer
            except LifecycleError as e:
                job.error = str(e)
                raise
            except asyncio.CancelledError:
                job.error = "the server stopped before the test finished; please ask again"
                raise
            except Exception as e:  # the user sees a plain message; the log gets the details
                job.error = "the request failed on the server; please try again later"
                log.event("web-job-failed", logging.ERROR, kind=kind, ip=ip, error=repr(e))
                raise
            finally:
                job.finished = time.time()

        job.task = asyncio.get_running_loop().create_task(run())
        job.task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" noise
        self._jobs[job.id] = job
        return job

    async def settle(self, job: Job, timeout: float) -> None:
        """Wait up to `timeout` seconds for a quick answer (the job goes on either way)."""
        if job.task is not None and not job.task.done():
            await asyncio.wait({job.task}, timeout=timeout)

    async def stop(self) -> None:
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
