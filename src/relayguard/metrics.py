"""Prometheus metrics of `relayguard serve` (prometheus-client), each defined once, here.

Call sites are one line (`metrics.refused("relay denied")`, `metrics.DSN.labels("failed").inc()`).
The values are served at `/metrics` on the web listener and, with `[metrics] listen`, on an
address of their own (`start`, called by serve). Every name and label is listed in
docs/operations.md.

Two kinds are read at scrape time instead of being counted as they happen:
- DNS queries: the UDP loop of dnsbl/dnsserver.py is the hottest code in the process, so it
  counts in a plain list of ints (`DNS_UDP`, indexed by `DNS_ANSWERS`), no lock, no call;
- the queue's sizes and the open SMTP sessions: read from the running QueueRunner and
  MailServer (`watch_queue`, `watch_mta`), so nothing has to be kept in step.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from . import log

prometheus_client.disable_created_metrics()  # no *_created series: half the output, no use here

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SESSION = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
_SLOW = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# SMTP ------------------------------------------------------------------------------------------

SMTP_SESSIONS = Counter("relayguard_smtp_sessions", "SMTP sessions started (past the connection caps)", ["service"])
SMTP_SESSION_SECONDS = Histogram("relayguard_smtp_session_seconds", "Duration of SMTP sessions", buckets=_SESSION)
SMTP_REFUSED = Counter("relayguard_smtp_refused", "Refusals of SMTP clients, by reason", ["reason"])
SMTP_RECIPIENTS = Counter("relayguard_smtp_recipients_accepted", "Recipients accepted (RCPT TO), by route",
                          ["route"])
SMTP_MESSAGES = Counter("relayguard_smtp_messages_accepted", "Messages accepted and stored (250 after DATA)")
SMTP_BYTES = Counter("relayguard_smtp_received_bytes", "Bytes of accepted messages")
SMTP_STORE_SECONDS = Histogram("relayguard_smtp_store_seconds", "Time to make an accepted message durable "
                               "(Maildirs and queue, fsync'd)", buckets=_FAST)
SMTP_ERROR_REPLIES = Counter("relayguard_smtp_error_replies", "4xx and 5xx replies sent (every cause, "
                             "policy and protocol)")
SMTP_AUTH = Counter("relayguard_smtp_auth", "AUTH attempts, by result", ["result"])
SMTP_TLS = Counter("relayguard_smtp_tls", "STARTTLS handshakes, by result", ["result"])

# raw reason (log field) -> label of relayguard_smtp_refused_total
_REFUSALS = {
    "relay denied": "relay_denied",
    "dnsbl": "dnsbl",
    "dnsbl unknown": "dnsbl",
    "connection cap": "limits",
    "per-ip cap": "limits",
    "auth rate": "limits",
    "message too big": "limits",
    "talked before the greeting": "protocol",
    "pipelining violation": "protocol",
    "too many errors": "protocol",
    "bare CR or LF": "protocol",
    "timeout": "timeout",
    "unknown user": "unknown_user",
    "bad address": "bad_address",
    "sender": "sender",
    "tls failed": "tls",
}
_REFUSED = {reason: SMTP_REFUSED.labels(label) for reason, label in _REFUSALS.items()}
_REFUSED_OTHER = SMTP_REFUSED.labels("other")
_SESSIONS = {False: SMTP_SESSIONS.labels("smtp"), True: SMTP_SESSIONS.labels("submission")}
_ROUTES = {"local": SMTP_RECIPIENTS.labels("local"), "relay": SMTP_RECIPIENTS.labels("relay")}
for _result in ("ok", "fail", "rate-limited"):
    SMTP_AUTH.labels(_result)
for _result in ("ok", "failed"):
    SMTP_TLS.labels(_result)


def refused(reason: str) -> None:
    """One refusal; `reason` as the log line gives it ("relay denied", "per-ip cap", ...)."""
    _REFUSED.get(reason, _REFUSED_OTHER).inc()


def session_started(submission: bool) -> None:
    _SESSIONS[submission].inc()


def session_ended(seconds: float, error_replies: int) -> None:
    SMTP_SESSION_SECONDS.observe(seconds)
    if error_replies:
        SMTP_ERROR_REPLIES.inc(error_replies)


def rcpt(accepted: bool, reason: str) -> None:
    """The RCPT decision: an accepted route ("local", "relay") or a refusal reason."""
    if accepted:
        (_ROUTES.get(reason) or SMTP_RECIPIENTS.labels(reason)).inc()
    else:
        refused(reason)


def message_accepted(size: int, seconds: float) -> None:
    SMTP_MESSAGES.inc()
    SMTP_BYTES.inc(size)
    SMTP_STORE_SECONDS.observe(seconds)


# Queue and delivery ----------------------------------------------------------------------------

DELIVERY_ATTEMPTS = Counter("relayguard_delivery_attempts", "Delivery attempts (one per destination domain of a "
                            "queue entry)")
DELIVERY_RECIPIENTS = Counter("relayguard_delivery_recipients", "Recipient outcomes of delivery attempts",
                              ["outcome"])
DELIVERY_SECONDS = Histogram("relayguard_delivery_seconds", "Duration of one delivery attempt (routing, "
                             "connection, transaction)", buckets=_SLOW)
DSN = Counter("relayguard_dsn", "Delivery status notifications queued, by action", ["action"])
_OUTCOMES = {"sent": "sent", "pending": "deferred", "failed": "failed"}
_DELIVERED = {state: DELIVERY_RECIPIENTS.labels(label) for state, label in _OUTCOMES.items()}
for _action in ("failed", "delayed"):
    DSN.labels(_action)


def delivery(states: Iterable[str], seconds: float) -> None:
    """One attempt to one destination: its recipients' new states ("sent", "pending", "failed")."""
    DELIVERY_ATTEMPTS.inc()
    DELIVERY_SECONDS.observe(seconds)
    for state in states:
        (_DELIVERED.get(state) or DELIVERY_RECIPIENTS.labels(state)).inc()


# DNSBL: DNS server, lifecycle, zone --------------------------------------------------------------

# Index of the per-answer counters; 1-15 are the rcode itself (never 0: a NOERROR is split in three).
DNS_NODATA, DNS_LISTED, DNS_APEX, DNS_DROPPED = 16, 17, 18, 19
DNS_ANSWERS = ("", "formerr", "servfail", "not_listed", "notimp", "refused") + tuple(
    f"rcode{n}" for n in range(6, 16)) + ("nodata", "listed", "apex", "dropped")
DNS_UDP = [0] * len(DNS_ANSWERS)  # written only by the UDP thread
DNS_TCP = [0] * len(DNS_ANSWERS)  # written only by the event loop
_DNS_SHOWN = {1, 3, 4, 5, DNS_NODATA, DNS_LISTED, DNS_APEX, DNS_DROPPED}  # always exposed, even at 0

DNS_AXFR = Counter("relayguard_dns_axfr", "Zone transfer requests, by result", ["result"])
DNS_NOTIFY = Counter("relayguard_dns_notify", "NOTIFY messages sent to secondaries")
DNSBL_NOMINATIONS = Counter("relayguard_dnsbl_nominations", "Nominations received, by channel", ["via"])
DNSBL_REMOVALS = Counter("relayguard_dnsbl_removal_requests", "Removal requests received, by channel", ["via"])
DNSBL_TESTS = Counter("relayguard_dnsbl_tests", "Relay tests run by the list, by trigger and verdict",
                      ["trigger", "verdict"])
DNSBL_TEST_SECONDS = Histogram("relayguard_dnsbl_test_seconds", "Duration of the list's relay tests", buckets=_SLOW)
DNSBL_CHANGES = Counter("relayguard_dnsbl_listing_changes", "Listing state changes, by action", ["action"])
DNSBL_LISTED = Gauge("relayguard_dnsbl_listed", "Entries (addresses and networks) in the served zone")
for _result in ("sent", "refused"):
    DNS_AXFR.labels(_result)


def dns_apex_end(origin_labels: Iterable[bytes]) -> int:
    """Offset in a response of the byte ending the question name when it is the zone's apex."""
    return 12 + sum(len(label) + 1 for label in origin_labels)


def count_dns(counts: list[int], out: bytes | None, apex_end: int) -> None:
    """The DNS answer classification of the UDP loop (which inlines it), for the TCP path."""
    if out is None:
        counts[DNS_DROPPED] += 1
        return
    rcode = out[3] & 15
    counts[rcode or (DNS_NODATA if not (out[6] or out[7]) else DNS_APEX if out[apex_end] == 0 else DNS_LISTED)] += 1


def dnsbl_test(trigger: str, verdict: str, seconds: float) -> None:
    DNSBL_TESTS.labels(trigger, verdict).inc()
    DNSBL_TEST_SECONDS.observe(seconds)


# Reject before receiving (the MTA's DNSBL checks) -----------------------------------------------

REJECT_CHECKS = Counter("relayguard_reject_checks", "DNSBL checks of SMTP clients, by action", ["action"])
REJECT_CHECK_SECONDS = Histogram("relayguard_reject_check_seconds", "Duration of the DNSBL checks of SMTP clients",
                                 buckets=_FAST)
for _action in ("accept", "reject", "defer"):
    REJECT_CHECKS.labels(_action)


def reject_check(action: str, seconds: float) -> None:
    REJECT_CHECKS.labels(action).inc()
    REJECT_CHECK_SECONDS.observe(seconds)


# Self-check ------------------------------------------------------------------------------------

SELFCHECK_VERDICT = Gauge("relayguard_selfcheck_verdict", "Last self-check of each SMTP listener: 1 for its "
                          "verdict, 0 for the others", ["target", "verdict"])
SELFCHECK_OPEN = Gauge("relayguard_selfcheck_open_relay", "1 when the last self-check found an open relay")
SELFCHECK_LAST = Gauge("relayguard_selfcheck_last_run_timestamp_seconds", "When the last self-check finished")
SELFCHECK_SECONDS = Histogram("relayguard_selfcheck_seconds", "Duration of the self-check of one listener",
                              buckets=_SLOW)
SELFCHECK_VERDICTS = ("open", "closed", "auth-required", "unreachable", "skipped")


def selfcheck(target: str, verdict: str, seconds: float = 0.0) -> None:
    for v in SELFCHECK_VERDICTS:
        SELFCHECK_VERDICT.labels(target, v).set(1 if v == verdict else 0)
    if seconds:
        SELFCHECK_SECONDS.observe(seconds)


def selfcheck_done(verdicts: Iterable[str]) -> None:
    SELFCHECK_OPEN.set(1 if "open" in verdicts else 0)
    SELFCHECK_LAST.set(time.time())


# Read at scrape time ---------------------------------------------------------------------------

_queue: weakref.ref[Any] | None = None
_mta: weakref.ref[Any] | None = None


def watch_queue(runner: Any) -> None:
    """The QueueRunner whose sizes `relayguard_queue_entries` reports (the newest one)."""
    global _queue
    _queue = weakref.ref(runner)


def watch_mta(server: Any) -> None:
    """The MailServer whose sessions `relayguard_smtp_sessions_active` reports (the newest one)."""
    global _mta
    _mta = weakref.ref(server)


class _ScrapeTime:
    def collect(self) -> Iterator[Metric]:
        dns = CounterMetricFamily("relayguard_dns_queries", "DNS queries answered, by transport and answer "
                                  "(listed, not_listed, nodata, apex = the zone's SOA/NS, refused, formerr, "
                                  "notimp, dropped)", labels=["transport", "answer"])
        for transport, counts in (("udp", DNS_UDP), ("tcp", DNS_TCP)):
            for i, name in enumerate(DNS_ANSWERS):
                if counts[i] or i in _DNS_SHOWN:
                    dns.add_metric([transport, name], counts[i])
        yield dns
        mta = _mta() if _mta is not None else None
        if mta is not None:
            active = GaugeMetricFamily("relayguard_smtp_sessions_active", "SMTP sessions in progress",
                                       labels=["service"])
            sessions = list(mta.sessions)
            submission = sum(1 for s in sessions if s.submission)
            active.add_metric(["smtp"], len(sessions) - submission)
            active.add_metric(["submission"], submission)
            yield active
        runner = _queue() if _queue is not None else None
        if runner is not None:
            yield _queue_sizes(runner)


def _queue_sizes(runner: Any) -> GaugeMetricFamily:
    now = time.time()
    in_flight = set(runner.in_flight)
    waiting = [when for queue_id, when in list(runner.due.items()) if queue_id not in in_flight]
    due = sum(1 for when in waiting if when <= now)
    try:
        corrupt = sum(1 for p in runner.queue.corrupt.iterdir() if p.suffix == ".json")
    except OSError:
        corrupt = 0
    g = GaugeMetricFamily("relayguard_queue_entries", "Queue entries by state: active (being delivered), due "
                          "(waiting for a slot), deferred (waiting to retry), held (as of the last scan), "
                          "corrupt (moved aside)", labels=["state"])
    for state, n in (("active", len(in_flight)), ("due", due), ("deferred", len(waiting) - due),
                     ("held", getattr(runner, "held", 0)), ("corrupt", corrupt)):
        g.add_metric([state], n)
    return g


REGISTRY.register(_ScrapeTime())


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The metrics as (body, content type): Prometheus text, or OpenMetrics when `accept` asks."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type


# The metrics' own listener ---------------------------------------------------------------------

_MAX_HEAD = 8192
_READ_TIMEOUT = 10.0


class MetricsServer:
    """A minimal HTTP/1.x server on the serve loop for GET /metrics ([metrics] listen)."""

    def __init__(self, server: asyncio.base_events.Server, listen: str) -> None:
        self.server, self.listen = server, listen

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        method, target, *_ = lines[0].split(" ") + ["", ""]
        accept = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("accept:")), "")
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"GET /metrics\n", "text/plain; charset=utf-8"
        elif path != "/metrics":
            status, body, ctype = "404 Not Found", b"the metrics are at /metrics\n", "text/plain; charset=utf-8"
        else:
            body, ctype = exposition(accept)
            status = "200 OK"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1") + (body if method != "HEAD" else b""))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def start(settings: Any) -> MetricsServer | None:
    """For serve: the metrics on `[metrics] listen`, or None when it is empty (they stay on /metrics of
    the web listener). A busy port raises OSError, like every other listener."""
    from .hostport import parse_hostport

    listen = settings.metrics.listen
    if not listen:
        return None
    host, port = parse_hostport(listen)
    try:
        server = await asyncio.start_server(_handle, host, port, reuse_address=True, limit=_MAX_HEAD)
    except OSError as e:
        raise OSError(e.errno, f"metrics listen {listen}: {e.strerror}") from None
    log.event("listen", service="metrics", address=listen)
    return MetricsServer(server, listen)
