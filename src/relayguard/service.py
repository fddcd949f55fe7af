"""`relayguard serve`: every service the configuration enables, in one process."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Awaitable, Callable

from . import log
from .config import Settings
from .dnsbl.dnsserver import DNSServer
from .dnsbl.store import Store
from .dnsbl.zone import Listing, Zone
from .dnsbl.zone_sync import ZoneSync
from .mta.queue_dir import QueueDir
from .mta.queue_runner import QueueRunner
from .mta.server import MailServer
from .mta.tlsutil import server_context, write_self_signed


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
            log.event("job-failed", job=getattr(job, "__qualname__", "?"), error=repr(e))


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    mta = MailServer(settings, tls_context(settings))
    await mta.start()
    runner = QueueRunner(settings, QueueDir(mta.store.queue), mta.inject)
    mta.runner = runner
    queue_task = asyncio.get_running_loop().create_task(runner.run())
    from .relaytest.selfcheck import start_self_check  # issue 4: test our own listeners

    check_task = start_self_check(settings)
    # The DNSBL: the store is the truth, the zone its copy in memory, served over DNS.
    store = Store(settings.store.url, txt=settings.dnsbl.txt)
    zone = Zone(settings.dnsbl.zone, Listing(reason=settings.dnsbl.txt))
    zone_sync = ZoneSync(store, zone)
    await zone_sync.sync()
    dns = DNSServer(settings.dnsbl, zone) if settings.dnsbl.dns_listen else None
    if dns is not None:
        await dns.start()

    async def dnsbl_jobs() -> None:
        await zone_sync.sync()
        if dns is not None:
            await dns.notify_if_changed()

    dns_task = asyncio.get_running_loop().create_task(_every_second(dnsbl_jobs))
    from .dnsbl.checker import zone_answer  # issue 6: our own list answered from memory, not DNS
    from .policyd import start_policyd  # issue 6: the Postfix policy server, when configured

    if mta.reject is not None:
        mta.reject.checker.add_local(zone.origin, zone_answer(zone))
    policyd = await start_policyd(settings, mta)
    from .web import start_web  # issue 5: the DNSBL's web pages and API, when [web] is configured

    web = await start_web(settings, mta=mta)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.event("ready", hostname=settings.server.hostname, data_dir=settings.server.data_dir)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.event("stopping")
        await mta.stop()
        queue_task.cancel()
        for task in (check_task, dns_task):
            if task is not None:
                task.cancel()
        if dns is not None:
            await dns.stop()
        if policyd is not None:
            await policyd.stop()
        if web is not None:
            await web.stop()
        await runner.stop()
