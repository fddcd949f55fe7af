"""`relayguard serve`: every service the configuration enables, in one process.

SIGTERM (or SIGINT) drains: the listeners close, sessions in flight get `[server]
shutdown_timeout` seconds to finish, queue state is already durable, and the process exits 0.
SIGHUP re-reads the configuration file: users, local domains, aliases, trusted networks,
limits, DNSBL lists and the SMTP listeners change without dropping a session; a file that no
longer validates is refused with a log line and the old settings stay in force.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from . import config, log, metrics
from .config import Settings
from .dnsbl.checker import zone_answer
from .dnsbl.dnsserver import DNSServer
from .dnsbl.lifecycle import Lifecycle, Policy, inject_mailer, options_from_settings
from .dnsbl.store import Store
from .dnsbl.zone import Listing, Zone
from .dnsbl.zone_sync import ZoneSync
from .mta.queue_dir import QueueDir
from .mta.queue_runner import QueueRunner
from .mta.server import MailServer
from .mta.tlsutil import server_context, write_self_signed
from .policyd import start_policyd
from .relaytest.selfcheck import start_self_check
from .web import start_web

_LIST_MAINTENANCE = 3600.0  # seconds between re-test/expiry rounds of the DNSBL


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The configured pair; on the built-in defaults a self-signed pair is made on first start."""
    cert, key = settings.tls_paths
    if not settings.tls.cert and not cert.exists():
        write_self_signed(cert, key, settings.server.hostname)
        log.event("tls-generated", cert=cert, key=key)
    return server_context(cert, key)


async def _every_second(job: Callable[[], Awaitable[None]]) -> None:
    """Run a maintenance job once a second; a failure is logged, never fatal."""
    while True:
        await asyncio.sleep(1.0)
        try:
            await job()
        except Exception as e:  # keep serving whatever one job does
            log.event("job-failed", logging.ERROR, job=getattr(job, "__qualname__", "?"), error=repr(e))


class Node:
    """One relayguard process and the services it runs, started, reloaded and stopped together."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self._tasks: list[asyncio.Task[Any]] = []

    def _spawn(self, coro: Coroutine[Any, Any, None] | None) -> None:
        if coro is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def start(self) -> None:
        s = self.settings
        self.mta = MailServer(s, tls_context(s))
        await self.mta.start()
        self.runner = QueueRunner(s, QueueDir(self.mta.store.queue), self.mta.inject)
        self.mta.runner = self.runner
        self._spawn(self.runner.run())
        # The DNSBL: the store is the truth, the zone its copy in memory, served over DNS.
        self.store = Store(s.store.url, txt=s.dnsbl.txt)
        self.zone = Zone(s.dnsbl.zone, Listing(reason=s.dnsbl.txt))
        self.zone_sync = ZoneSync(self.store, self.zone)
        await self.zone_sync.sync()
        self.dns = DNSServer(s.dnsbl, self.zone) if s.dnsbl.dns_listen else None
        if self.dns is not None:
            await self.dns.start()
        self._spawn(_every_second(self._dnsbl_jobs))
        self.lifecycle = Lifecycle(self.store, Policy.from_settings(s), options_from_settings(s),
                                   mailer=inject_mailer(self.mta))
        await self.lifecycle.start()
        self._spawn(self.lifecycle.run_periodic(_LIST_MAINTENANCE))
        self._answer_own_list_from_memory()
        self.policyd = await start_policyd(s, self.mta)
        self.web = await start_web(s, mta=self.mta, lifecycle=self.lifecycle)
        self.metrics = await metrics.start(s)
        task = start_self_check(s)
        if task is not None:
            self._tasks.append(task)

    def _answer_own_list_from_memory(self) -> None:
        """The MTA's DNSBL checker asks our own zone without a DNS round trip."""
        if self.mta.reject is not None:
            self.mta.reject.checker.add_local(self.zone.origin, zone_answer(self.zone))

    async def _dnsbl_jobs(self) -> None:
        await self.zone_sync.sync()
        if self.dns is not None:
            await self.dns.notify_if_changed()

    async def reload(self) -> None:
        try:
            settings = config.load(self.config_path)
        except config.ConfigError as e:
            log.event("reload-refused", logging.ERROR, error=str(e).replace("\n", "; "))
            return
        log.setup_from(settings.server)  # also re-opens log_file after logrotate moved it
        await self.mta.reload(settings)
        self._answer_own_list_from_memory()
        self.settings = settings
        log.event("reloaded", config=self.config_path or "defaults")

    async def stop(self) -> None:
        await self.mta.stop(drain=self.settings.server.shutdown_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for service in (self.dns, self.policyd, self.web, self.metrics):
            if service is not None:
                await service.stop()
        await self.lifecycle.stop()
        await self.runner.stop()


async def serve(settings: Settings, config_path: Path | None = None, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    log.batch_on(loop)
    try:
        node = Node(settings, config_path)
        await node.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: node._spawn(node.reload()))
        log.event("ready", hostname=settings.server.hostname, data_dir=settings.server.data_dir)
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            log.event("stopping")
            await node.stop()
            log.event("stopped")
    finally:
        log.batch_on(None)  # what is waiting is written, whatever ended the loop
