"""The blacklist's lifecycle: nominate -> test -> list; removal request -> re-test -> delist or keep.

The rules (ORDB's, made exact; docs/dnsbl.md is the operator's version):

- A nominated address is tested with the relay tester in ``confirm`` mode
  (`relayguard.relaytest.check_target`) and listed with 127.0.0.2 only when a relay case's test
  message actually arrived at the canary. Anything else (closed, auth-required, unreachable,
  accepted but never delivered) leaves it not listed; the test run is kept as evidence.
- A removal request (optionally confirmed by a token mailed to the contact through relayguard's
  own MTA) triggers an immediate re-test: no relay case delivered (closed or auth-required) ->
  delisted; still relaying -> stays listed with the new evidence; unreachable -> stays listed
  (nothing shows it was fixed) and the answer says so.
- Limits: per requester (nominations + removal requests per hour), per host (requests per day
  from anyone), and a cool-down: a host tested within `cooldown` is not tested again; the
  answer repeats the last result and says when a new test is possible.
- Listed hosts are re-tested every `retest_interval` (90 days); a listing not re-confirmed
  within `expire_after` expires; a re-test that cannot reach the host is tried again after
  `retry_after`. Manual listings and imports are not re-tested and expire only when given an
  expiry.
- Every answer carries `effective_at`: now + the zone TTL (positive answers cached) + the
  negative TTL (SOA minimum, "not listed" cached): by then every resolver agrees.

Tests run in a bounded pool (`concurrency` at once, one at a time per address) on the event
loop; database calls go to a thread, so DNS and web on the same loop never wait for them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Awaitable, Callable

from .. import metrics
from ..relaytest import Canary, RelayTestOptions, TargetResult, Verdict, check_target, make_canary
from . import store as store_mod
from .store import LISTED, NOT_LISTED, PENDING, HostRecord, Store, TestRunRecord, canonical, utcnow

Mailer = Callable[[str, str, bytes], Awaitable[None]]  # (envelope sender, recipient, message)

LISTING_CODE = "127.0.0.2"  # ORDB / NJABL: open relay


class LifecycleError(Exception):
    """A request that cannot be carried out (bad address, no canary, mail not sent)."""


@dataclass
class Policy:
    zone: str = "bl.relayguard.test"
    ttl: int = 2100
    negative_ttl: int = 2100
    port: int = 25  # SMTP port nominated hosts are tested on
    concurrency: int = 4
    retest_interval: timedelta = timedelta(days=90)
    expire_after: timedelta = timedelta(days=180)
    retry_after: timedelta = timedelta(hours=24)
    cooldown: timedelta = timedelta(hours=1)
    requests_per_hour: int = 10  # per requester
    host_requests_per_day: int = 50  # per host, from anyone
    removal_confirm: bool = False
    confirm_within: timedelta = timedelta(hours=48)
    confirm_url: str = ""  # "{token}" is replaced; "" = only the CLI command is given
    allow_private: bool = False  # test and list private, loopback and reserved addresses (tests, labs)
    contact: str = "postmaster@localhost"
    mail_from: str = "dnsbl@localhost"
    pending_timeout: timedelta = timedelta(minutes=30)  # a pending test older than this is stale

    @classmethod
    def from_settings(cls, settings: Any) -> "Policy":
        d = settings.dnsbl
        host = settings.server.hostname
        return cls(zone=d.zone, ttl=d.ttl, negative_ttl=d.negative_ttl, port=d.test_port, concurrency=d.test_concurrency,
                   retest_interval=timedelta(days=d.retest_days), expire_after=timedelta(days=d.expire_days),
                   retry_after=timedelta(hours=d.retry_hours), cooldown=timedelta(seconds=d.cooldown),
                   requests_per_hour=d.requests_per_hour, host_requests_per_day=d.host_requests_per_day,
                   removal_confirm=d.removal_confirm, confirm_within=timedelta(hours=d.confirm_hours),
                   confirm_url=d.confirm_url, allow_private=d.allow_private,
                   contact=d.contact or f"postmaster@{host}", mail_from=d.mail_from or f"dnsbl@{host}")

    @property
    def propagation(self) -> timedelta:
        return timedelta(seconds=self.ttl + self.negative_ttl)


def options_from_settings(settings: Any) -> RelayTestOptions:
    """The relay tester's options for the list's tests: confirm mode, the [relaytest] canary."""
    r = settings.relaytest
    return RelayTestOptions(mode="confirm", helo=r.helo, canary_domain=r.canary_domain, canary_listen=r.canary_listen,
                            canary_maildir=r.canary_maildir, timeout=r.timeout, confirm_timeout=r.confirm_timeout,
                            connections=r.connections)


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


@dataclass
class Answer:
    """What a requester (CLI, web, API) is told. `action` is the machine-readable outcome."""

    ip: str
    action: str  # listed | not-listed | delisted | still-listed | already-listed | untestable | cooldown |
    #              rate-limited | awaiting-confirmation | queued | pending | referred | changed | expired | refused
    listed: bool  # the state after the request
    message: str
    effective_at: datetime | None = None  # when every resolver agrees (None: nothing changed)
    verdict: str = ""
    relays: list[str] = field(default_factory=list)
    test_run_id: int | None = None
    request_id: int | None = None
    retry_after: datetime | None = None  # when a new test or request is possible
    host: HostRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip, "action": self.action, "listed": self.listed, "message": self.message,
            "effective_at": store_mod._iso(self.effective_at), "verdict": self.verdict, "relays": list(self.relays),
            "test_run_id": self.test_run_id, "request_id": self.request_id,
            "retry_after": store_mod._iso(self.retry_after), "host": self.host.to_json() if self.host else None,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


class SMTPMailer:
    """Sends through relayguard's own MTA over SMTP (its listener on loopback).

    The recipient must be one the MTA accepts from this host: a local mailbox, or any address
    when loopback is a trusted network (or give user/password for the submission port). In
    `serve`, prefer `inject_mailer(mta)`, which queues without a connection."""

    def __init__(self, host: str, port: int, *, user: str = "", password: str = "", timeout: float = 30.0) -> None:
        self.host, self.port, self.user, self.password, self.timeout = host, port, user, password, timeout

    async def __call__(self, sender: str, recipient: str, message: bytes) -> None:
        import aiosmtplib

        kw: dict[str, Any] = {}
        if self.user:
            kw.update(username=self.user, password=self.password, start_tls=True, validate_certs=False)
        else:
            kw.update(start_tls=False, use_tls=False)
        try:
            await aiosmtplib.send(message, sender=sender, recipients=[recipient], hostname=self.host, port=self.port,
                                  timeout=self.timeout, **kw)
        except (aiosmtplib.SMTPException, OSError) as e:
            raise LifecycleError(f"cannot send the confirmation to {recipient} via {self.host}:{self.port}: {e}") from None


def inject_mailer(mta: Any) -> Mailer:
    """A Mailer for `serve`: the message goes into the running MTA's queue (from <>)."""

    async def send(sender: str, recipient: str, message: bytes) -> None:
        await mta.inject(recipient, message)

    return send


class _Pool:
    """At most `size` tests at once; a second request for an address joins the test running."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._sem: asyncio.Semaphore | None = None
        self.inflight: dict[str, asyncio.Task[Any]] = {}

    async def run(self, key: str, factory: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """(result, joined): joined is True when another caller's test answered this one."""
        task = self.inflight.get(key)
        if task is not None:
            return await asyncio.shield(task), True
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.size)
        sem = self._sem

        async def guarded() -> Any:
            async with sem:
                return await factory()

        task = asyncio.get_running_loop().create_task(guarded())
        self.inflight[key] = task
        task.add_done_callback(lambda t: self.inflight.pop(key, None))
        return await asyncio.shield(task), False


class Lifecycle:
    """The list's decisions on top of a Store. One per event loop; `async with` starts the
    canary (when none was given) and stops it and any background tests at the end."""

    def __init__(self, store: Store, policy: Policy | None = None, options: RelayTestOptions | None = None, *,
                 canary: Canary | None = None, mailer: Mailer | None = None,
                 clock: Callable[[], datetime] = utcnow, targets: Callable[[str], str] | None = None) -> None:
        self.store = store
        self.policy = policy or Policy()
        self.options = options or RelayTestOptions(mode="confirm")
        self.options.mode = "confirm"
        self.canary = canary
        self._own_canary = False
        self.mailer = mailer
        self.clock = clock
        self._targets = targets  # ip -> "host:port" to test; default: the ip on policy.port
        self.pool = _Pool(self.policy.concurrency)
        self._background: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if self.canary is None and (self.options.canary_listen or self.options.canary_maildir):
            self.canary = make_canary(self.options)
            assert self.canary is not None
            await self.canary.start()
            self._own_canary = True

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._own_canary and self.canary is not None:
            await self.canary.stop()
            self.canary, self._own_canary = None, False

    async def __aenter__(self) -> "Lifecycle":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # helpers

    async def _db(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    def effective(self, now: datetime) -> datetime:
        return now + self.policy.propagation

    def _address(self, ip: str) -> str:
        try:
            addr = store_mod.address(ip)
        except ValueError as e:
            raise LifecycleError(str(e)) from None
        if not self.policy.allow_private and not addr.is_global:
            raise LifecycleError(f"{addr} is not a public address (private, loopback or reserved): it is not tested or listed")
        return str(addr)

    def target(self, ip: str) -> str:
        if self._targets is not None:
            return self._targets(ip)
        return f"[{ip}]:{self.policy.port}" if ":" in ip else f"{ip}:{self.policy.port}"

    async def _rate_limited(self, ip: str, requester: str, now: datetime) -> Answer | None:
        p = self.policy
        if requester:
            n = await self._db(self.store.recent_requests, since=now - timedelta(hours=1), requester=requester)
            if n >= p.requests_per_hour:
                return Answer(ip, "rate-limited", False, f"too many requests from {requester}: at most "
                              f"{p.requests_per_hour} an hour; try again later", retry_after=now + timedelta(hours=1))
        n = await self._db(self.store.recent_requests, since=now - timedelta(days=1), network=ip)
        if n >= p.host_requests_per_day:
            return Answer(ip, "rate-limited", False, f"too many requests for {ip}: at most {p.host_requests_per_day} "
                          "a day; try again tomorrow", retry_after=now + timedelta(days=1))
        return None

    def _cooling(self, host: HostRecord | None, now: datetime) -> datetime | None:
        """When a new test of this host is possible, if that is still in the future."""
        if host is None or host.last_tested is None or not self.policy.cooldown:
            return None
        ready = host.last_tested + self.policy.cooldown
        return ready if ready > now else None

    @staticmethod
    def _relays(result: TargetResult) -> list[str]:
        return [c.id for c in result.relays]

    async def _test(self, ip: str, *, trigger: str, requested_by: str) -> tuple[TestRunRecord, TargetResult]:
        """Run (or join) the confirm-mode test of `ip` and keep it as a test run."""
        if self.canary is None:
            raise LifecycleError("the list's tests need a canary: set [relaytest] canary_listen or canary_maildir "
                                 "(a domain whose mail reaches relayguard), see docs/dnsbl.md")

        async def go() -> tuple[TestRunRecord, TargetResult]:
            started = self.clock()
            t0 = time.monotonic()
            result = await check_target(self.target(ip), self.options, canary=self.canary)
            finished = started + timedelta(seconds=time.monotonic() - t0)
            metrics.dnsbl_test(trigger, result.verdict.value, time.monotonic() - t0)
            relays = self._relays(result) if result.verdict is Verdict.OPEN else []
            run_id = await self._db(self.store.add_test_run, ip, trigger=trigger, requested_by=requested_by,
                                    target=result.target, mode=result.mode, started=started, finished=finished,
                                    verdict=result.verdict.value, reason=result.reason, relays=relays,
                                    result=result.to_json())
            run = TestRunRecord(run_id, network_of(ip), trigger, requested_by, result.target, result.mode, started,
                                finished, result.verdict.value, result.reason, relays)
            return run, result

        (run, result), _joined = await self.pool.run(ip, go)
        return run, result

    def _listing_fields(self, now: datetime) -> dict[str, Any]:
        return {"code": LISTING_CODE, "txt": None, "source": "test", "last_listed": now,
                "next_retest": now + self.policy.retest_interval, "expires_at": now + self.policy.expire_after}

    # Nominate

    async def nominate(self, ip: str, *, requester: str = "", source: str = "", via: str = "cli", reason: str = "",
                       wait: bool = True) -> Answer:
        """Ask for a test; listed only when the test confirms a relay. With `wait=False` the test
        runs in the background and the answer is `queued`."""
        ip = self._address(ip)
        metrics.DNSBL_NOMINATIONS.labels(via).inc()
        now = self.clock()
        limited = await self._rate_limited(ip, requester, now)
        if limited is not None:
            return limited
        host = await self._db(self.store.get, ip)
        nom_args = dict(requester=requester, source=source, via=via, reason=reason, now=now)
        if host is not None and host.state == LISTED:
            nid = await self._db(self.store.add_nomination, ip, outcome="already-listed", **nom_args)
            return Answer(ip, "already-listed", True, f"{ip} is listed already (since {_when(host.last_listed)}: "
                          f"{host.reason})", request_id=nid, verdict=host.last_verdict, host=host)
        covering = await self._db(self.store.covering, ip)
        if covering:
            nid = await self._db(self.store.add_nomination, ip, outcome="already-listed", **nom_args)
            return Answer(ip, "already-listed", True, f"{ip} is listed already as part of {covering[0].network} "
                          f"({covering[0].reason})", request_id=nid, host=covering[0])
        if host is not None and host.state == PENDING and host.updated > now - self.policy.pending_timeout:
            nid = await self._db(self.store.add_nomination, ip, outcome="pending", **nom_args)
            return Answer(ip, "pending", False, f"a test of {ip} is running since {_when(host.updated)}; see "
                          f"`relayguard dnsbl show {ip}` for its result", request_id=nid, host=host)
        ready = self._cooling(host, now)
        if ready is not None:
            assert host is not None
            nid = await self._db(self.store.add_nomination, ip, outcome="cooldown", **nom_args)
            return Answer(ip, "cooldown", False, f"{ip} was tested at {_when(host.last_tested)} ({host.last_verdict}) "
                          f"and is not listed; a new test is possible after {_when(ready)}", request_id=nid,
                          verdict=host.last_verdict, retry_after=ready, host=host)
        if self.canary is None:
            raise LifecycleError("the list's tests need a canary: set [relaytest] canary_listen or canary_maildir "
                                 "(a domain whose mail reaches relayguard), see docs/dnsbl.md")
        nid = await self._db(self.store.add_nomination, ip, outcome="testing", **nom_args)
        await self._db(self.store.transition, ip, state=PENDING, action="nominated", actor=requester or via,
                       reason=reason or "nominated", evidence={"nomination": nid, "source": source, "via": via}, now=now)
        if not wait:
            task = asyncio.get_running_loop().create_task(self._nominated(ip, nid, requester or via))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return Answer(ip, "queued", False, f"a test of {ip} is queued; `relayguard dnsbl show {ip}` gives its result",
                          request_id=nid)
        return await self._nominated(ip, nid, requester or via)

    async def _nominated(self, ip: str, nid: int, actor: str) -> Answer:
        try:
            run, result = await self._test(ip, trigger="nomination", requested_by=actor)
        except BaseException as e:
            why = "cancelled" if isinstance(e, asyncio.CancelledError) else f"{type(e).__name__}: {e}"
            await self._db(self.store.transition, ip, state=NOT_LISTED, action="test-failed", actor=actor,
                           reason=f"the test could not run: {why}", evidence={"nomination": nid})
            await self._db(self.store.update_nomination, nid, outcome="test-failed")
            raise
        now = self.clock()
        evidence = {"test_run": run.id, "nomination": nid, "verdict": run.verdict, "relays": run.relays}
        if result.verdict is Verdict.OPEN:
            reason = (f"open relay confirmed: {len(run.relays)} relay case(s) delivered to the canary "
                      f"({', '.join(run.relays)})")
            host = await self._db(self.store.transition, ip, state=LISTED, action="listed", actor=actor, reason=reason,
                                  evidence=evidence, now=now, **self._listing_fields(now))
            await self._db(self.store.update_nomination, nid, outcome="listed", test_run_id=run.id)
            return Answer(ip, "listed", True, f"{ip} is an open relay and is now listed ({reason}); "
                          f"every resolver sees it by {_when(self.effective(now))}", effective_at=self.effective(now),
                          verdict=run.verdict, relays=run.relays, test_run_id=run.id, request_id=nid, host=host)
        reason = f"not listed: test {run.verdict}: {run.reason}"
        host = await self._db(self.store.transition, ip, state=NOT_LISTED, action="not-listed", actor=actor,
                              reason=reason, evidence=evidence, now=now)
        await self._db(self.store.update_nomination, nid, outcome="not-listed", test_run_id=run.id)
        return Answer(ip, "not-listed", False, f"{ip} is not listed: the test found no relay ({run.verdict}: "
                      f"{run.reason}); the result is kept", verdict=run.verdict, test_run_id=run.id, request_id=nid,
                      host=host)

    # Removal

    async def request_removal(self, ip: str, *, contact: str = "", requester: str = "", source: str = "",
                              reason: str = "", via: str = "cli") -> Answer:
        ip = self._address(ip)
        metrics.DNSBL_REMOVALS.labels(via).inc()
        contact = contact.strip()
        if contact:
            _check_contact(contact)
        elif self.policy.removal_confirm:
            raise LifecycleError("a removal request needs a contact address (the confirmation is mailed there)")
        now = self.clock()
        limited = await self._rate_limited(ip, requester or contact, now)
        if limited is not None:
            return limited
        req = dict(contact=contact, requester=requester or contact, source=source or via, reason=reason, now=now)
        host = await self._db(self.store.get, ip)
        if host is None or host.state != LISTED:
            covering = await self._db(self.store.covering, ip)
            if covering:
                net = covering[0]
                msg = (f"{ip} is listed as part of the network {net.network} ({net.reason}); a re-test of one host "
                       f"cannot lift a network listing: write to {self.policy.contact}")
                rid = await self._db(self.store.add_removal_request, ip, state="done", outcome="referred", answer=msg, **req)
                return Answer(ip, "referred", True, msg, request_id=rid, host=net)
            msg = f"{ip} is not listed; there is nothing to remove"
            rid = await self._db(self.store.add_removal_request, ip, state="done", outcome="not-listed", answer=msg, **req)
            return Answer(ip, "not-listed", False, msg, request_id=rid, host=host)
        ready = self._cooling(host, now)
        if ready is not None:
            msg = (f"{ip} was tested at {_when(host.last_tested)} ({host.last_verdict}) and stays listed; repeated "
                   f"requests do not trigger repeated tests: ask again after {_when(ready)}")
            rid = await self._db(self.store.add_removal_request, ip, state="done", outcome="cooldown", answer=msg, **req)
            return Answer(ip, "cooldown", True, msg, request_id=rid, retry_after=ready, verdict=host.last_verdict,
                          host=host)
        if self.policy.removal_confirm and self.mailer is not None:
            token = secrets.token_urlsafe(24)
            until = now + self.policy.confirm_within
            rid = await self._db(self.store.add_removal_request, ip, state="awaiting-confirmation",
                                 token_hash=token_hash(token), **req)
            await self._db(self.store.note, ip, action="removal-requested", actor=req["requester"],
                           reason=reason or "removal requested", evidence={"removal_request": rid, "contact": contact,
                                                                           "confirmation": "mailed"}, now=now)
            try:
                await self.mailer(self.policy.mail_from, contact, self._confirmation(ip, contact, token, until, req))
            except LifecycleError:
                await self._db(self.store.update_removal_request, rid, state="mail-failed", outcome="mail-failed")
                raise
            msg = (f"a confirmation was mailed to {contact}; {ip} is re-tested as soon as it is confirmed "
                   f"(before {_when(until)})")
            await self._db(self.store.update_removal_request, rid, answer=msg)
            return Answer(ip, "awaiting-confirmation", True, msg, request_id=rid, retry_after=until, host=host)
        rid = await self._db(self.store.add_removal_request, ip, state="confirmed", **req)
        await self._db(self.store.note, ip, action="removal-requested", actor=req["requester"],
                       reason=reason or "removal requested", evidence={"removal_request": rid, "contact": contact}, now=now)
        return await self._removal_test(ip, rid, req["requester"])

    def _confirmation(self, ip: str, contact: str, token: str, until: datetime, req: dict[str, Any]) -> bytes:
        p = self.policy
        msg = EmailMessage()
        msg["From"] = p.mail_from
        msg["To"] = contact
        msg["Subject"] = f"Confirm the removal request for {ip} from {p.zone}"
        msg["Date"] = format_datetime(self.clock())
        msg["Message-ID"] = make_msgid(domain=p.mail_from.rpartition("@")[2] or None)
        msg["Auto-Submitted"] = "auto-generated"
        how = f"  relayguard dnsbl confirm {token}\n"
        if p.confirm_url:
            how = f"  {p.confirm_url.replace('{token}', token)}\n\nor, on the list's host:\n\n" + how
        msg.set_content(
            f"Someone ({req['requester'] or 'unknown'}, from {req['source'] or 'unknown'}) asked to remove {ip}\n"
            f"from the open-relay list {p.zone}, giving this address as the contact.\n\n"
            f"If that was you, confirm the request:\n\n{how}\n"
            f"Then {ip} is tested again at once: if it refuses every relay test it is delisted; if it\n"
            f"still relays it stays listed and you are told which tests it failed.\n\n"
            f"The confirmation token is valid until {_when(until)}. If you did not ask for this,\n"
            f"ignore this message. Questions: {p.contact}\n")
        return bytes(msg)

    async def confirm_removal(self, token: str) -> Answer:
        now = self.clock()
        found = await self._db(self.store.removal_by_token, token_hash(token))
        if found is None:
            raise LifecycleError("unknown confirmation token")
        ip = found.network.split("/")[0]
        if found.state != "awaiting-confirmation":
            return Answer(ip, "refused", found.outcome == "still-listed",
                          f"this request was confirmed already ({found.outcome or found.state}): {found.answer}",
                          request_id=found.id)
        if found.created + self.policy.confirm_within < now:
            await self._db(self.store.update_removal_request, found.id, state="expired", outcome="expired")
            raise LifecycleError(f"the confirmation expired at {_when(found.created + self.policy.confirm_within)}; "
                                 "file a new removal request")
        claimed = await self._db(self.store.claim_removal, token_hash(token), now)
        if claimed is None:
            return Answer(ip, "refused", False, "this request was confirmed already", request_id=found.id)
        host = await self._db(self.store.get, ip)
        if host is None or host.state != LISTED:
            msg = f"{ip} is not listed any more; nothing to remove"
            await self._db(self.store.update_removal_request, found.id, state="done", outcome="not-listed", answer=msg)
            return Answer(ip, "not-listed", False, msg, request_id=found.id, host=host)
        return await self._removal_test(ip, found.id, found.requester or found.contact)

    async def _removal_test(self, ip: str, rid: int, actor: str) -> Answer:
        answer = await self._retest(ip, trigger="removal", actor=actor, evidence={"removal_request": rid})
        answer.request_id = rid
        outcome = {"delisted": "delisted", "still-listed": "still-listed", "untestable": "untestable"}.get(answer.action,
                                                                                                          answer.action)
        await self._db(self.store.update_removal_request, rid, state="done", outcome=outcome,
                       test_run_id=answer.test_run_id, answer=answer.message)
        return answer

    async def _retest(self, ip: str, *, trigger: str, actor: str, evidence: dict[str, Any]) -> Answer:
        """Re-test a listed host: delist when it relays no more, refresh when it still does."""
        run, result = await self._test(ip, trigger=trigger, requested_by=actor)
        now = self.clock()
        ev = dict(evidence, test_run=run.id, verdict=run.verdict, relays=run.relays)
        p = self.policy
        if result.verdict is Verdict.OPEN:
            reason = (f"still an open relay: {len(run.relays)} relay case(s) delivered to the canary "
                      f"({', '.join(run.relays)})")
            fields = self._listing_fields(now)
            fields.pop("source")
            host = await self._db(self.store.transition, ip, state=LISTED, action="confirmed", actor=actor,
                                  reason=reason, evidence=ev, now=now, **fields)
            ready = now + p.cooldown
            return Answer(ip, "still-listed", True, f"{ip} stays listed: the re-test at {_when(now)} found it still "
                          f"relaying ({', '.join(run.relays)}). Close the relay (relay only for your own users and "
                          f"networks), then ask again after {_when(ready)}", verdict=run.verdict, relays=run.relays,
                          test_run_id=run.id, retry_after=ready, host=host)
        if result.verdict in (Verdict.CLOSED, Verdict.AUTH_REQUIRED):
            reason = f"re-test found no relay ({run.verdict}: {run.reason})"
            host = await self._db(self.store.transition, ip, state=NOT_LISTED, action="delisted", actor=actor,
                                  reason=reason, evidence=ev, now=now)
            return Answer(ip, "delisted", False, f"{ip} is delisted: the re-test found no relay ({run.verdict}); "
                          f"every resolver has forgotten the listing by {_when(self.effective(now))}",
                          effective_at=self.effective(now), verdict=run.verdict, test_run_id=run.id, host=host)
        reason = f"re-test could not reach the host ({run.reason})"
        host = await self._db(self.store.transition, ip, state=LISTED, action="untestable", actor=actor, reason=reason,
                              evidence=ev, now=now, next_retest=now + p.retry_after)
        return Answer(ip, "untestable", True, f"{ip} stays listed: it could not be tested ({run.reason}). Make its "
                      f"SMTP port {p.port} reachable and ask again after {_when(now + p.cooldown)}; a listing that "
                      f"cannot be re-tested expires at {_when(host.expires_at)}", verdict=run.verdict,
                      test_run_id=run.id, retry_after=now + p.cooldown, host=host)

    async def retest(self, ip: str, *, actor: str = "admin") -> Answer:
        """An administrator's re-test of one host, now (no limits, no cool-down)."""
        ip = self._address(ip)
        host = await self._db(self.store.get, ip)
        if host is None or host.state != LISTED:
            # not listed: the same test as a nomination, without its limits
            nid = await self._db(self.store.add_nomination, ip, requester=actor, source="admin", via="retest",
                                 reason="administrator's test", outcome="testing", now=self.clock())
            await self._db(self.store.transition, ip, state=PENDING, action="nominated", actor=actor,
                           reason="administrator's test", evidence={"nomination": nid})
            return await self._nominated(ip, nid, actor)
        return await self._retest(ip, trigger="manual", actor=actor, evidence={})

    # Periodic work

    async def maintain(self, *, limit: int = 1000) -> list[Answer]:
        """Expire what is due, then re-test what is due (in the pool); the answers of both."""
        now = self.clock()
        answers: list[Answer] = []
        for host in await self._db(self.store.due_for_expiry, now):
            done = await self._db(self.store.transition, host.network, state=NOT_LISTED, action="expired",
                                  actor="maintenance", reason=f"listing expired at {_when(host.expires_at)} (last "
                                  f"confirmed {_when(host.last_listed)})", evidence={"expires_at": store_mod._iso(host.expires_at)},
                                  now=now)
            answers.append(Answer(host.network.split("/")[0], "expired", False, f"{host.network} expired",
                                  effective_at=self.effective(now), host=done))
        due = await self._db(self.store.due_for_retest, now, limit)

        async def one(h: HostRecord) -> Answer:
            ip = h.network.split("/")[0]
            try:
                return await self._retest(ip, trigger="retest", actor="maintenance", evidence={"scheduled": store_mod._iso(h.next_retest)})
            except LifecycleError as e:
                return Answer(ip, "untestable", True, str(e), host=h)

        answers.extend(await asyncio.gather(*(one(h) for h in due if h.network.endswith(("/32", "/128")))))
        return answers

    async def run_periodic(self, interval: float = 3600.0) -> None:
        """For `serve`: `maintain` every `interval` seconds until cancelled."""
        from .. import log

        while True:
            try:
                for a in await self.maintain():
                    log.event("dnsbl-maintain", ip=a.ip, action=a.action)
            except Exception as e:  # keep going; the next round may work
                log.event("dnsbl-maintain-error", error=e)
            await asyncio.sleep(interval)

    # Manual administration (no test; the reason is required)

    def add(self, entry: str, *, reason: str, actor: str = "admin", code: str = LISTING_CODE, txt: str | None = None,
            expires: timedelta | None = None) -> Answer:
        if not reason.strip():
            raise LifecycleError("a manual listing needs a reason")
        try:
            net = canonical(entry)
        except ValueError as e:
            raise LifecycleError(str(e)) from None
        if net.prefixlen < (8 if net.version == 4 else 32):
            raise LifecycleError(f"{net} is too wide to list (at most a /8 for IPv4, /32 for IPv6): never list the world")
        _check_code(code)
        now = self.clock()
        old = self.store.get(net)
        fields: dict[str, Any] = {"code": code, "txt": txt, "source": "manual", "next_retest": None,
                                  "expires_at": now + expires if expires else None}
        host = self.store.transition(net, state=LISTED, action="changed" if old and old.listed else "listed",
                                     actor=actor, reason=f"manual: {reason}", evidence={"manual": True}, now=now, **fields)
        ip = str(net) if net.prefixlen != net.max_prefixlen else str(net.network_address)
        return Answer(ip, "listed" if not (old and old.listed) else "changed", True,
                      f"{net} is listed ({code}); every resolver sees it by {_when(self.effective(now))}",
                      effective_at=self.effective(now), host=host)

    def remove(self, entry: str, *, reason: str, actor: str = "admin") -> Answer:
        if not reason.strip():
            raise LifecycleError("a manual delisting needs a reason")
        try:
            net = canonical(entry)
        except ValueError as e:
            raise LifecycleError(str(e)) from None
        ip = str(net) if net.prefixlen != net.max_prefixlen else str(net.network_address)
        host = self.store.get(net)
        if host is None or not host.listed:
            if net.prefixlen == net.max_prefixlen:
                covering = self.store.covering(ip)
                if covering:
                    raise LifecycleError(f"{ip} is not listed itself but as part of {covering[0].network}; "
                                         f"remove {covering[0].network} (and add back what should stay)")
            raise LifecycleError(f"{net} is not listed")
        now = self.clock()
        host = self.store.transition(net, state=NOT_LISTED, action="delisted", actor=actor, reason=f"manual: {reason}",
                                     evidence={"manual": True}, now=now)
        return Answer(ip, "delisted", False, f"{net} is delisted; every resolver has forgotten it by "
                      f"{_when(self.effective(now))}", effective_at=self.effective(now), host=host)


def network_of(ip: str) -> str:
    return store_mod.network_text(ip)


def _check_code(code: str) -> None:
    try:
        a = ipaddress.IPv4Address(code)
    except ValueError:
        raise LifecycleError(f"return code {code!r} is not an IPv4 address") from None
    if not a.is_loopback or code == "127.0.0.1" or code.startswith("127.255.255."):
        raise LifecycleError(f"return code {code} must be in 127.0.0.2-127.255.255.251 (RFC 5782; 127.0.0.1 means "
                             "not listed, 127.255.255.x are error codes)")


def _check_contact(contact: str) -> None:
    from ..addr import AddressError, parse_path

    try:
        box = parse_path(contact, allow_null=False)
    except AddressError as e:
        raise LifecycleError(f"contact {contact!r}: {e}") from None
    if not box.domain:
        raise LifecycleError(f"contact {contact!r}: an address needs a domain")
