"""Running the web app inside `relayguard serve`: uvicorn on the serve loop, as one more task.

uvicorn's own signal handling is switched off (serve owns SIGTERM/SIGINT), its lifespan too
(serve starts and stops the context), and the listening socket is bound here, so a port in
use fails `serve` at start with a plain OSError instead of uvicorn's sys.exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from .. import log
from ..config import Settings
from ..hostport import parse_hostport
from ..dnsbl.store import StoreError
from .app import WebContext, create_app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # serve handles the signals
        yield


def bind(listen: str) -> socket.socket:
    host, port = parse_hostport(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"web listen {listen}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


class WebServer:
    def __init__(self, ctx: WebContext, sock: socket.socket) -> None:
        self.ctx, self.sock = ctx, sock
        app = create_app(ctx, lifespan=False)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", log_config=None, access_log=False,
                                proxy_headers=False, server_header=False, timeout_graceful_shutdown=5)
        self.server = _Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        await self.ctx.start()
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started and not self.task.done():
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()  # raise what stopped it
            raise OSError("the web server stopped at start")
        log.event("web-listening", listen="{}:{}".format(*self.address))

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except (TimeoutError, Exception) as e:  # stopping anyway
                log.event("web-stop", error=repr(e))
        await self.ctx.stop()
        self.sock.close()


async def start(settings: Settings, *, mta: Any = None, lifecycle: Any = None) -> WebServer:
    """The web pages and API on `[web] listen`, started (see `relayguard.web.start_web`)."""
    sock = bind(settings.web.listen)
    try:
        ctx = WebContext.open(settings, mta=mta, lifecycle=lifecycle)
    except StoreError as e:
        sock.close()
        raise OSError(f"web: {e}") from None
    except BaseException:
        sock.close()
        raise
    server = WebServer(ctx, sock)
    await server.start()
    return server
