"""`relayguard serve`: every service the configuration enables, in one process."""

from __future__ import annotations

import asyncio
import signal
import ssl

from . import log
from .config import Settings
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


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    mta = MailServer(settings, tls_context(settings))
    await mta.start()
    runner = QueueRunner(settings, QueueDir(mta.store.queue), mta.inject)
    mta.runner = runner
    queue_task = asyncio.get_running_loop().create_task(runner.run())
    from .relaytest.selfcheck import start_self_check  # issue 4: test our own listeners

    check_task = start_self_check(settings)
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
        if check_task is not None:
            check_task.cancel()
        await runner.stop()
