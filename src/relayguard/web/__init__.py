"""The DNSBL's web pages and JSON API (FastAPI + Jinja2; docs/web.md). People-facing: nothing
but `serve` imports it.

This module stays light: `serve` imports it on every start, and FastAPI, uvicorn and Jinja2
(tens of MB) are loaded only when the web server is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Settings

if TYPE_CHECKING:
    from .app import WebContext, create_app
    from .server import WebServer

__all__ = ["WebContext", "WebServer", "configured", "create_app", "start_web"]


def configured(settings: Settings) -> bool:
    """`serve` runs the web server when the file has a [web] table with a listen address (or on
    the built-in defaults, with no file at all)."""
    return bool(settings.web.listen) and ("web" in settings.model_fields_set or not settings.model_fields_set)


async def start_web(settings: Settings, *, mta: Any = None, lifecycle: Any = None) -> WebServer | None:
    """For `serve`: the web pages and API on `[web] listen`, when configured (else None). Pass the
    Lifecycle when serve has one, so that tests share one pool and one canary."""
    if not configured(settings):
        return None
    from .server import start

    return await start(settings, mta=mta, lifecycle=lifecycle)


def __getattr__(name: str) -> Any:
    if name in ("WebContext", "create_app"):
        from . import app

        return getattr(app, name)
    if name == "WebServer":
        from . import server

        return server.WebServer
    raise AttributeError(name)
