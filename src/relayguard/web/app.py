"""The DNSBL's web pages and JSON API (FastAPI + Jinja2). Part of the people-facing layer:
imported by service.py to run it, by nothing else.

Public: `/` and `/lookup` (listed or not, why, the evidence, the history, when the last change
is seen everywhere), `/nominate`, `/removal` (and `/removal/confirm` for mailed tokens), `/jobs/ID`
(the answer of a test started from the web). JSON: `/api/v1/...`, schema at `/api/v1/openapi.json`.
Admin (login with a user of the SMTP AUTH users file named in `[web] admins`): `/admin`,
`/admin/listings`, `/admin/pending`, `/admin/audit`, manual list / delist / re-test.

Every form carries a CSRF token; nominations and removal requests are rate-limited per client
address; tests run as background jobs in the lifecycle's bounded pool; database calls run in a
thread; errors show a plain page (the log gets the details); Jinja2 escapes everything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Literal
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import log, metrics
from ..config import Settings
from ..dnsbl import store as store_mod
from ..dnsbl.lifecycle import Answer, Lifecycle, LifecycleError, Policy, inject_mailer, options_from_settings
from ..dnsbl.store import LISTED, PENDING, STATES, AuditLog, Store
from ..mta.users import UserDB, UserError
from . import lookup as lookup_mod
from .jobs import Busy, Job, Jobs
from .security import (
    CSRF,
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    RateLimiter,
    Sessions,
    client_address,
    load_secret,
    same_origin,
)

HERE = Path(__file__).parent
MAX_BODY = 64 * 1024  # forms and API bodies are small
QUICK = 1.0  # seconds a request waits for a quick answer before pointing at the job
_UNSET = object()
LIMITS = {"ip": 64, "reason": 1000, "contact": 254, "token": 200, "user": 254, "password": 1024, "entry": 64,
          "code": 15}


# Context -------------------------------------------------------------------------------------


class Admins:
    """The SMTP AUTH users file (reloaded when it changes) and the `[web] admins` list."""

    def __init__(self, path: Path, admins: list[str]) -> None:
        self.path = path
        self.admins = {a.lower() for a in admins}
        self._db: UserDB | None = None
        self._mtime: float | None = None

    def _users(self) -> UserDB | None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        if self._db is None or mtime != self._mtime:
            try:
                self._db = UserDB(self.path)
            except UserError as e:
                log.event("web-users-unreadable", logging.ERROR, error=e)
                return None
            self._mtime = mtime
        return self._db

    def is_admin(self, user: str) -> bool:
        db = self._users()
        return db is not None and user.lower() in self.admins and user in db

    def verify(self, user: str, password: str) -> bool:
        """Blocking (scrypt): call in a thread. Constant cost for unknown users."""
        db = self._users() or UserDB(Path("/nonexistent/relayguard-users"))
        ok = db.verify(user, password)
        return ok and user.lower() in self.admins


@dataclass
class WebContext:
    """What the app runs on. `open()` builds it from the settings; an owner starts and stops it."""

    settings: Settings
    store: Store
    lifecycle: Lifecycle
    admins: Admins
    secret: bytes
    jobs: Jobs = field(default_factory=Jobs)
    own_store: bool = False
    own_lifecycle: bool = False
    quick: float = QUICK

    @classmethod
    def open(cls, settings: Settings, *, store: Store | None = None, lifecycle: Lifecycle | None = None,
             mta: Any = None, secret: bytes | None = None) -> "WebContext":
        own_store = store is None and lifecycle is None
        if lifecycle is not None:
            store = lifecycle.store
        elif store is None:
            store = Store(settings.store.url, txt=settings.dnsbl.txt)
        own_lifecycle = lifecycle is None
        if lifecycle is None:
            mailer = inject_mailer(mta) if (settings.dnsbl.removal_confirm and mta is not None) else None
            lifecycle = Lifecycle(store, Policy.from_settings(settings), options_from_settings(settings), mailer=mailer)
        w = settings.web
        return cls(settings=settings, store=store, lifecycle=lifecycle,
                   admins=Admins(settings.users_path, w.admins),
                   secret=secret or load_secret(settings.data_path / "web-secret"),
                   jobs=Jobs(w.max_jobs), own_store=own_store, own_lifecycle=own_lifecycle)

    async def start(self) -> None:
        if self.own_lifecycle:
            await self.lifecycle.start()

    async def stop(self) -> None:
        await self.jobs.stop()
        if self.own_lifecycle:
            await self.lifecycle.stop()
        if self.own_store:
            self.store.close()

    @property
    def policy(self) -> Policy:
        return self.lifecycle.policy


# API models (the OpenAPI schema) -------------------------------------------------------------


class NominationIn(BaseModel):
    ip: str = Field(max_length=LIMITS["ip"], description="IPv4 or IPv6 address to test for an open relay")
    reason: str = Field("", max_length=LIMITS["reason"], description="why (for example, a spam's Received line)")


class RemovalIn(BaseModel):
    ip: str = Field(max_length=LIMITS["ip"], description="the listed address")
    contact: str = Field("", max_length=LIMITS["contact"], description="your address: the answer (and the "
                         "confirmation, when the list requires one) goes there")
    reason: str = Field("", max_length=LIMITS["reason"], description="what was fixed")


class ConfirmIn(BaseModel):
    token: str = Field(max_length=LIMITS["token"], description="the token from the confirmation mail")


class AnswerOut(BaseModel):
    ip: str
    action: str = Field(description="listed | not-listed | delisted | still-listed | already-listed | untestable | "
                        "cooldown | rate-limited | awaiting-confirmation | queued | pending | referred | refused ...")
    listed: bool = Field(description="the state after the request")
    message: str
    effective_at: str | None = Field(None, description="when every resolver agrees (now + TTL + negative TTL)")
    verdict: str = ""
    relays: list[str] = []
    test_run_id: int | None = None
    request_id: int | None = None
    retry_after: str | None = None
    host: dict[str, Any] | None = None


class JobOut(BaseModel):
    job: str
    kind: str
    ip: str
    status: Literal["running", "done", "error"]
    answer: AnswerOut | None = None
    error: str | None = None
    location: str = Field(description="GET this until status is not running")


class ChangeOut(BaseModel):
    at: str
    action: str
    new_state: str
    reason: str
    effective_at: str
    in_effect: bool


class LookupOut(BaseModel):
    ip: str
    listed: bool
    state: str = Field(description="listed | not-listed | pending | unknown (never seen)")
    listed_as: str | None = Field(None, description="the entry that lists it (the address, or a network)")
    code: str | None = None
    txt: str | None = None
    reason: str | None = None
    zone: str
    query: str = Field(description="the DNS name a mail server asks")
    propagation_seconds: int
    last_change: ChangeOut | None = None
    host: dict[str, Any] | None = None
    last_test: dict[str, Any] | None = Field(None, description="the newest test run with its full per-case transcript")
    test_runs: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    own_history: list[dict[str, Any]] = []


class StatusOut(BaseModel):
    zone: str
    ttl: int
    negative_ttl: int
    propagation_seconds: int
    contact: str
    counts: dict[str, int]


class ErrorOut(BaseModel):
    detail: str


# Helpers -------------------------------------------------------------------------------------


class CSRFFailed(Exception):
    pass


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class BodyTooLarge(Exception):
    pass


def _when(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _relative(value: Any) -> str:
    """'in 1 h 10 min' / '3 days ago'."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return ""
    secs = (value - store_mod.utcnow()).total_seconds()
    n = abs(secs)
    if n < 60:
        text = "less than a minute"
    elif n < 3600:
        text = f"{int(n // 60)} min"
    elif n < 86400:
        text = f"{int(n // 3600)} h {int(n % 3600 // 60)} min"
    else:
        text = f"{int(n // 86400)} days"
    return f"in {text}" if secs > 0 else f"{text} ago"


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["relative"] = _relative
    env.filters["epoch"] = lambda t: _when(datetime.fromtimestamp(t, UTC))
    return env


class BodyLimit:
    """Refuse request bodies over `limit` bytes (413), whatever the Content-Length says."""

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: dict[str, Any], send: Any) -> None:
        api = scope.get("path", "").startswith("/api/")
        body = b'{"detail":"request body too large"}' if api else b"request body too large\n"
        ctype = b"application/json" if api else b"text/plain; charset=utf-8"
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def create_app(ctx: WebContext, *, lifespan: bool = True) -> FastAPI:
    """The ASGI app. With `lifespan`, the app starts and stops `ctx` (TestClient, plain uvicorn);
    `serve` runs uvicorn with lifespan off and starts `ctx` itself."""
    env = _env()
    settings = ctx.settings
    web = settings.web
    trusted = [ipaddress.ip_network(n, strict=False) for n in web.trusted_proxies]
    sessions = Sessions(ctx.secret, web.session_hours * 3600)
    csrf = CSRF(ctx.secret)
    request_limit = RateLimiter(web.requests_per_minute, 60.0)
    login_limit = RateLimiter(web.logins_per_minute, 60.0)

    @asynccontextmanager
    async def life(app: FastAPI) -> AsyncIterator[None]:
        await ctx.start()
        try:
            yield
        finally:
            await ctx.stop()

    app = FastAPI(title="relayguard DNSBL", version="1", description="Look up, nominate and request removal from "
                  f"the open-relay list {ctx.policy.zone}. Tests run in the background: POST answers 200 with the "
                  "answer when it is ready at once, else 202 with a job to poll.",
                  docs_url=None, redoc_url=None, openapi_url="/api/v1/openapi.json",
                  lifespan=life if lifespan else None)
    app.state.ctx = ctx
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    # request helpers

    def client(request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), trusted)

    def from_proxy(request: Request) -> bool:
        try:
            peer = ipaddress.ip_address(request.client.host) if request.client else None
        except ValueError:
            return False
        return peer is not None and any(peer in net for net in trusted)

    def admin_of(request: Request) -> str | None:
        if getattr(request.state, "admin", _UNSET) is _UNSET:
            found = sessions.read(request.cookies.get(SESSION_COOKIE))
            request.state.admin = found[0] if found and ctx.admins.is_admin(found[0]) else None
            request.state.session_nonce = found[1] if found else None
        return request.state.admin

    def csrf_token(request: Request) -> str:
        token = request.cookies.get(CSRF_COOKIE)
        if token is not None and csrf.valid(token):
            return token
        if getattr(request.state, "new_csrf", None) is None:
            request.state.new_csrf = csrf.new()
        return request.state.new_csrf

    def secure(request: Request) -> bool:
        return web.secure_cookies or request.url.scheme == "https"

    def page(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        token = csrf_token(request)
        html = env.get_template(name).render(
            request=request, csrf=token, csrf_field=CSRF_FIELD, admin=admin_of(request), zone=ctx.policy.zone,
            contact=ctx.policy.contact, **values)
        resp = HTMLResponse(html, status_code=status)
        if getattr(request.state, "new_csrf", None) == token:
            resp.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure(request), path="/")
        return resp

    def error_page(request: Request, status: int, title: str, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=status)
        return page(request, "error.html", status, title=title, message=message)

    async def form(request: Request) -> dict[str, str]:
        """The posted form, after the CSRF check; values trimmed to their limits."""
        host = request.headers.get("host", "")
        if request.headers.get("x-forwarded-host") and from_proxy(request):
            host = request.headers["x-forwarded-host"].split(",")[0].strip()
        if not same_origin(request.headers, host):
            raise CSRFFailed()
        data = await request.form(max_files=0, max_fields=50)
        values = {k: v for k, v in data.items() if isinstance(v, str)}
        if not csrf.check(request.cookies.get(CSRF_COOKIE), values.get(CSRF_FIELD)):
            raise CSRFFailed()
        return {k: v.strip()[: LIMITS.get(k, 200)] if k != "password" else v[: LIMITS["password"]]
                for k, v in values.items()}

    def require_admin(request: Request) -> str:
        user = admin_of(request)
        if user is None:
            raise LoginRequired(request.url.path)
        return user

    async def db(fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    def job_location(job: Job, api: bool) -> str:
        return f"/api/v1/jobs/{job.id}" if api else f"/jobs/{job.id}"

    def job_out(job: Job) -> dict[str, Any]:
        return dict(job.to_json(), location=job_location(job, True))

    def api_job_response(job: Job) -> JSONResponse:
        body = job_out(job)
        if job.status == "error":
            return JSONResponse(dict(body, detail=job.error), status_code=400)
        if job.status == "running":
            return JSONResponse(body, status_code=202, headers={"Location": job_location(job, True)})
        assert job.answer is not None
        if job.answer.action == "rate-limited":
            return JSONResponse(body, status_code=429, headers=_retry_after(job.answer))
        return JSONResponse(body, status_code=200)

    def limited(request: Request) -> float:
        return request_limit.hit(client(request))

    def start(kind: str, ip: str, work: Any) -> Job:
        return ctx.jobs.start(kind, ip, work)

    # errors

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        titles = {404: "Not found", 405: "Method not allowed"}
        message = {404: "There is no such page.", 405: "This page does not take that method."}.get(
            exc.status_code, str(exc.detail))
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
        return page(request, "error.html", exc.status_code, title=titles.get(exc.status_code, "Error"), message=message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/api/"):
            return await request_validation_exception_handler(request, exc)
        return page(request, "error.html", 422, title="Invalid request",
                    message="; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(CSRFFailed)
    async def csrf_failed(request: Request, exc: CSRFFailed) -> Response:
        return error_page(request, 403, "Form expired", "The form was not sent from this site or has expired. "
                          "Go back, reload the page and send it again.")

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/admin/login?next={quote(exc.next_path)}", status_code=303)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> Response:
        return error_page(request, 413, "Too large", "request body too large")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.event("web-error", logging.ERROR, method=request.method, path=request.url.path, error=repr(exc))
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "internal error"}, status_code=500)
        return HTMLResponse("<!doctype html><title>Server error</title><h1>Server error</h1>"
                            "<p>Something went wrong on our side. Please try again later.</p>", status_code=500)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for k, v in _HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith(("/admin", "/jobs", "/api/v1/jobs")):
            response.headers["Cache-Control"] = "no-store"
        return response

    if settings.metrics.web:  # Prometheus, issue 9 (docs/operations.md)

        @app.get("/metrics", include_in_schema=False)
        async def metrics_page(request: Request) -> Response:
            body, content_type = metrics.exposition(request.headers.get("accept"))
            return Response(body, media_type=content_type)

    # Public pages ------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> Response:
        counts = await db(ctx.store.counts)
        return page(request, "index.html", counts=counts, policy=ctx.policy)

    @app.get("/lookup", response_class=HTMLResponse, include_in_schema=False)
    async def lookup_page(request: Request, ip: str = "") -> Response:
        ip = ip.strip()[: LIMITS["ip"]]
        if not ip:
            return page(request, "index.html", counts=await db(ctx.store.counts), policy=ctx.policy)
        admin = admin_of(request) is not None
        try:
            data = await db(lookup_mod.lookup, ctx.store, ctx.policy, ip, admin=admin)
        except ValueError as e:
            return page(request, "index.html", 422, counts=await db(ctx.store.counts), policy=ctx.policy,
                        error=str(e), ip=ip)
        running = [j for j in ctx.jobs.running() if j.ip == data["ip"]]
        return page(request, "lookup.html", d=data, ip=data["ip"], running=running, policy=ctx.policy)

    @app.get("/nominate", response_class=HTMLResponse, include_in_schema=False)
    async def nominate_form(request: Request, ip: str = "") -> Response:
        return page(request, "nominate.html", values={"ip": ip.strip()[: LIMITS["ip"]]})

    @app.post("/nominate", response_class=HTMLResponse, include_in_schema=False)
    async def nominate_post(request: Request) -> Response:
        values = await form(request)
        wait = limited(request)
        if wait:
            return _later(page(request, "nominate.html", 429, values=values, error=_too_many(wait)), wait)
        ip, reason = values.get("ip", ""), values.get("reason", "")
        try:
            ip = str(store_mod.address(ip))
        except ValueError as e:
            return page(request, "nominate.html", 422, values=values, error=str(e) if ip else "give an IP address")
        who = client(request)
        try:
            job = start("nomination", ip, lambda: ctx.lifecycle.nominate(ip, requester=who, source=who, via="web",
                                                                          reason=reason))
        except Busy as e:
            return page(request, "nominate.html", 503, values=values, error=str(e))
        await ctx.jobs.settle(job, ctx.quick)
        if job.status == "error":
            return page(request, "nominate.html", 422, values=values, error=job.error)
        return RedirectResponse(job_location(job, False), status_code=303)

    @app.get("/removal", response_class=HTMLResponse, include_in_schema=False)
    async def removal_form(request: Request, ip: str = "") -> Response:
        return page(request, "removal.html", values={"ip": ip.strip()[: LIMITS["ip"]]}, policy=ctx.policy)

    @app.post("/removal", response_class=HTMLResponse, include_in_schema=False)
    async def removal_post(request: Request) -> Response:
        values = await form(request)
        wait = limited(request)
        if wait:
            return _later(page(request, "removal.html", 429, values=values, policy=ctx.policy, error=_too_many(wait)),
                          wait)
        ip, contact, reason = values.get("ip", ""), values.get("contact", ""), values.get("reason", "")
        try:
            ip = str(store_mod.address(ip))
        except ValueError as e:
            return page(request, "removal.html", 422, values=values, policy=ctx.policy,
                        error=str(e) if ip else "give the listed IP address")
        who = client(request)
        try:
            job = start("removal", ip, lambda: ctx.lifecycle.request_removal(ip, contact=contact, requester=who,
                                                                              source=who, reason=reason, via="web"))
        except Busy as e:
            return page(request, "removal.html", 503, values=values, policy=ctx.policy, error=str(e))
        await ctx.jobs.settle(job, ctx.quick)
        if job.status == "error":
            return page(request, "removal.html", 422, values=values, policy=ctx.policy, error=job.error)
        return RedirectResponse(job_location(job, False), status_code=303)

    @app.get("/removal/confirm", response_class=HTMLResponse, include_in_schema=False)
    async def confirm_form(request: Request, token: str = "") -> Response:
        # a GET never acts (mail scanners follow links): the button posts
        return page(request, "confirm.html", token=token.strip()[: LIMITS["token"]])

    @app.post("/removal/confirm", response_class=HTMLResponse, include_in_schema=False)
    async def confirm_post(request: Request) -> Response:
        values = await form(request)
        wait = limited(request)
        if wait:
            return _later(page(request, "confirm.html", 429, token=values.get("token", ""), error=_too_many(wait)),
                          wait)
        token = values.get("token", "")
        if not token:
            return page(request, "confirm.html", 422, token="", error="give the token from the mail")
        try:
            job = start("confirmation", "", lambda: ctx.lifecycle.confirm_removal(token))
        except Busy as e:
            return page(request, "confirm.html", 503, token=token, error=str(e))
        await ctx.jobs.settle(job, ctx.quick)
        if job.status == "error":
            return page(request, "confirm.html", 422, token=token, error=job.error)
        return RedirectResponse(job_location(job, False), status_code=303)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    async def job_page(request: Request, job_id: str) -> Response:
        job = ctx.jobs.get(job_id[:64])
        if job is None:
            return error_page(request, 404, "Not found", "No such request (answers are kept for an hour): look the "
                              "address up instead.")
        return page(request, "job.html", job=job, a=job.answer, policy=ctx.policy)

    # JSON API ----------------------------------------------------------------------------------

    api = APIRouter(prefix="/api/v1", tags=["dnsbl"])
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": JobOut, "description": "refused by the list's rules (the detail says why)"},
        429: {"model": JobOut, "description": "too many requests from this address or for this host"},
        503: {"model": ErrorOut, "description": "too many tests waiting"},
    }

    @api.get("/status", response_model=StatusOut)
    async def api_status() -> dict[str, Any]:
        """The zone, its caching times and how many hosts are in each state."""
        p = ctx.policy
        return {"zone": p.zone, "ttl": p.ttl, "negative_ttl": p.negative_ttl,
                "propagation_seconds": int(p.propagation.total_seconds()), "contact": p.contact,
                "counts": await db(ctx.store.counts)}

    @api.get("/lookup/{ip}", response_model=LookupOut, responses={422: {"model": ErrorOut}})
    async def api_lookup(request: Request, ip: str) -> Any:
        """Listed or not, why, the newest test's transcript, the history, and when the last change
        is seen by every resolver."""
        try:
            return await db(lookup_mod.lookup, ctx.store, ctx.policy, ip[: LIMITS["ip"]],
                            admin=admin_of(request) is not None)
        except ValueError as e:
            return JSONResponse({"detail": str(e)}, status_code=422)

    def api_limited(request: Request) -> JSONResponse | None:
        wait = limited(request)
        if wait:
            return JSONResponse({"detail": _too_many(wait)}, status_code=429,
                                headers={"Retry-After": str(math.ceil(wait))})
        return None

    def api_address(ip: str) -> str | JSONResponse:
        try:
            return str(store_mod.address(ip))
        except ValueError as e:
            return JSONResponse({"detail": str(e)}, status_code=422)

    @api.post("/nominations", response_model=JobOut, responses={202: {"model": JobOut}, **errors})
    async def api_nominate(request: Request, body: NominationIn) -> Response:
        """Ask for a relay test (confirm mode): listed with 127.0.0.2 only when a relay is confirmed."""
        refused = api_limited(request)
        if refused is not None:
            return refused
        ip = api_address(body.ip)
        if isinstance(ip, JSONResponse):
            return ip
        who = client(request)
        try:
            job = start("nomination", ip, lambda: ctx.lifecycle.nominate(ip, requester=who, source=who, via="api",
                                                                          reason=body.reason.strip()))
        except Busy as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        await ctx.jobs.settle(job, ctx.quick)
        return api_job_response(job)

    @api.post("/removals", response_model=JobOut, responses={202: {"model": JobOut}, **errors})
    async def api_removal(request: Request, body: RemovalIn) -> Response:
        """Ask for removal: the host is re-tested at once (after the mailed confirmation, when required);
        delisted when it refuses every relay test, else it stays listed with the new evidence."""
        refused = api_limited(request)
        if refused is not None:
            return refused
        ip = api_address(body.ip)
        if isinstance(ip, JSONResponse):
            return ip
        who = client(request)
        try:
            job = start("removal", ip, lambda: ctx.lifecycle.request_removal(
                ip, contact=body.contact.strip(), requester=who, source=who, reason=body.reason.strip(), via="api"))
        except Busy as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        await ctx.jobs.settle(job, ctx.quick)
        return api_job_response(job)

    @api.post("/removals/confirm", response_model=JobOut, responses={202: {"model": JobOut}, **errors})
    async def api_confirm(request: Request, body: ConfirmIn) -> Response:
        """Confirm a removal request with the mailed token; the re-test runs at once."""
        refused = api_limited(request)
        if refused is not None:
            return refused
        token = body.token.strip()
        try:
            job = start("confirmation", "", lambda: ctx.lifecycle.confirm_removal(token))
        except Busy as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        await ctx.jobs.settle(job, ctx.quick)
        return api_job_response(job)

    @api.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
    async def api_job(job_id: str) -> Any:
        """A test started by a POST: running, done (with the answer) or error."""
        job = ctx.jobs.get(job_id[:64])
        if job is None:
            return JSONResponse({"detail": "no such job (answers are kept for an hour)"}, status_code=404)
        return job_out(job)

    app.include_router(api)

    # Admin -------------------------------------------------------------------------------------

    @app.get("/admin/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form(request: Request, next: str = "/admin") -> Response:
        return page(request, "admin_login.html", next=_safe_next(next))

    @app.post("/admin/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_post(request: Request) -> Response:
        values = await form(request)
        nxt = _safe_next(values.get("next", "/admin"))
        wait = login_limit.hit(client(request))
        if wait:
            return _later(page(request, "admin_login.html", 429, next=nxt, user=values.get("user", ""),
                               error=_too_many(wait)), wait)
        user = values.get("user", "")
        ok = bool(user) and await db(ctx.admins.verify, user, values.get("password", ""))
        if not ok:
            log.event("web-login-failed", logging.WARNING, client=client(request), user=user)
            return page(request, "admin_login.html", 401, next=nxt, user=user,
                        error="wrong user or password, or not an administrator")
        log.event("web-login", client=client(request), user=user)
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(SESSION_COOKIE, sessions.issue(user.lower()), max_age=int(web.session_hours * 3600),
                        httponly=True, samesite="lax", secure=secure(request), path="/")
        return resp

    @app.post("/admin/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        await form(request)
        admin_of(request)
        nonce = getattr(request.state, "session_nonce", None)
        if nonce:
            sessions.revoke(nonce)
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def latest_audit(limit: int, before: int | None = None) -> list[Any]:
        if before is None:
            before = await db(_max_audit_id, ctx.store) + 1
        rows = await db(ctx.store.audit, after=max(0, before - 1 - limit), limit=limit)
        return [r for r in reversed(rows) if r.id < before]

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    async def admin_home(request: Request) -> Response:
        user = require_admin(request)
        counts = await db(ctx.store.counts)
        pending = await db(ctx.store.entries, PENDING, limit=50)
        audit = await latest_audit(20)
        return page(request, "admin_index.html", user=user, counts=counts, pending=pending, audit=audit,
                    jobs=ctx.jobs.running(), inflight=sorted(ctx.lifecycle.pool.inflight))

    @app.get("/admin/listings", response_class=HTMLResponse, include_in_schema=False)
    async def admin_listings(request: Request, state: str = LISTED, page_no: int = 1) -> Response:
        require_admin(request)
        st = state if state in STATES else None
        per = 100
        page_no = max(1, page_no)
        rows = await db(ctx.store.entries, st, limit=per + 1, offset=(page_no - 1) * per)
        return page(request, "admin_listings.html", rows=rows[:per], state=st or "all", states=STATES,
                    page_no=page_no, more=len(rows) > per, counts=await db(ctx.store.counts))

    @app.get("/admin/pending", response_class=HTMLResponse, include_in_schema=False)
    async def admin_pending(request: Request) -> Response:
        require_admin(request)
        pending = await db(ctx.store.entries, PENDING, limit=1000)
        return page(request, "admin_pending.html", pending=pending, jobs=ctx.jobs.running(),
                    inflight=sorted(ctx.lifecycle.pool.inflight), policy=ctx.policy)

    @app.get("/admin/audit", response_class=HTMLResponse, include_in_schema=False)
    async def admin_audit(request: Request, before: int | None = None) -> Response:
        require_admin(request)
        rows = await latest_audit(100, before)
        return page(request, "admin_audit.html", rows=rows, older=rows[-1].id if rows and rows[-1].id > 1 else None)

    @app.post("/admin/list", response_class=HTMLResponse, include_in_schema=False)
    async def admin_list(request: Request) -> Response:
        user = require_admin(request)
        values = await form(request)
        entry, reason = values.get("entry", ""), values.get("reason", "")
        code = values.get("code", "") or "127.0.0.2"
        days = values.get("expires_days", "")
        try:
            expires = timedelta(days=float(days)) if days else None
            if expires is not None and (expires.total_seconds() <= 0 or not math.isfinite(expires.total_seconds())):
                raise ValueError
        except (ValueError, OverflowError):
            return page(request, "admin_result.html", 422, error=f"expiry {days!r}: give a positive number of days")
        try:
            a = await db(ctx.lifecycle.add, entry, reason=reason, actor=f"{user} (web)", code=code, expires=expires)
        except LifecycleError as e:
            return page(request, "admin_result.html", 422, error=str(e), entry=entry)
        log.event("web-admin", user=user, action="list", entry=entry)
        return page(request, "admin_result.html", a=a, policy=ctx.policy)

    @app.post("/admin/delist", response_class=HTMLResponse, include_in_schema=False)
    async def admin_delist(request: Request) -> Response:
        user = require_admin(request)
        values = await form(request)
        entry, reason = values.get("entry", ""), values.get("reason", "")
        try:
            a = await db(ctx.lifecycle.remove, entry, reason=reason, actor=f"{user} (web)")
        except LifecycleError as e:
            return page(request, "admin_result.html", 422, error=str(e), entry=entry)
        log.event("web-admin", user=user, action="delist", entry=entry)
        return page(request, "admin_result.html", a=a, policy=ctx.policy)

    @app.post("/admin/retest", response_class=HTMLResponse, include_in_schema=False)
    async def admin_retest(request: Request) -> Response:
        user = require_admin(request)
        values = await form(request)
        try:
            ip = str(store_mod.address(values.get("ip", "")))
        except ValueError as e:
            return page(request, "admin_result.html", 422, error=str(e))
        try:
            job = start("retest", ip, lambda: ctx.lifecycle.retest(ip, actor=f"{user} (web)"))
        except Busy as e:
            return page(request, "admin_result.html", 503, error=str(e))
        await ctx.jobs.settle(job, ctx.quick)
        return RedirectResponse(job_location(job, False), status_code=303)

    app.add_middleware(BodyLimit)
    return app


def _max_audit_id(store: Store) -> int:
    # the store has no "newest entries" read; the audit log's largest id, read-only
    from sqlalchemy import func, select

    with store.engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(AuditLog.id), 0))).scalar_one())


def _safe_next(path: str) -> str:
    """Only our own admin pages (no open redirect)."""
    if path.startswith("/admin") and not path.startswith("//") and "\\" not in path and "://" not in path:
        return path[:200]
    return "/admin"


def _later(resp: Response, wait: float) -> Response:
    resp.headers["Retry-After"] = str(math.ceil(wait))
    return resp


def _too_many(wait: float) -> str:
    return f"too many requests from your address; try again in {math.ceil(wait)} s"


def _retry_after(a: Answer) -> dict[str, str]:
    if a.retry_after is None:
        return {}
    secs = max(1, math.ceil((a.retry_after - store_mod.utcnow()).total_seconds()))
    return {"Retry-After": str(secs)}


__all__ = ["WebContext", "create_app"]
