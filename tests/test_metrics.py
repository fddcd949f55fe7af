"""Prometheus metrics (issue 9): scraped from a running `relayguard serve` on the web listener's
/metrics, the counters move after accepted mail, a refused relay, a delivery attempt, DNS queries,
a removal request; the metrics' own listener; the DNS answer classification of the UDP loop."""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import USERS, client_tls, free_port
from relayguard import metrics
from relayguard.config import load, load_text
from relayguard.dnsbl.responder import Responder
from relayguard.dnsbl.zone import Zone

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(url: str, check, timeout: float = 15.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def dns_query(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=5)


def test_counters_move_on_mail_relay_delivery_dns_and_requests(make_server):
    web_port = free_port()
    srv = make_server(tables=f'[web]\nlisten = "127.0.0.1:{web_port}"', dnsbl="allow_private = true")
    url = f"http://127.0.0.1:{web_port}/metrics"
    settings = load(srv.root / "relayguard.toml")
    dns_port = int(settings.dnsbl.dns_listen.rsplit(":", 1)[1])
    zone = settings.dnsbl.zone
    before = scrape(url)
    for name in ("relayguard_smtp_sessions_total", "relayguard_smtp_refused_total", "relayguard_queue_entries",
                 "relayguard_dns_queries_total", "relayguard_selfcheck_open_relay", "process_cpu_seconds_total"):
        assert any(key[0] == name for key in before), name

    # accepted: one message for a local user
    with srv.smtp() as s:
        s.sendmail("sender@example.org", ["alice@localhost"], b"Subject: hi\r\n\r\nhello\r\n")
    # refused: a relay attempt from an untrusted, unauthenticated client
    with srv.smtp() as s:
        s.ehlo("client.example")
        s.mail("spammer@example.org")
        code, _ = s.rcpt("victim@example.net")
        assert code == 554
    # queued: an authenticated user's mail to a remote domain (its delivery is deferred: no DNS)
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=10) as s:
        s.starttls(context=client_tls())
        s.login("alice@localhost", USERS["alice@localhost"])
        s.sendmail("alice@localhost", ["carol@example.net"], b"Subject: out\r\n\r\nbye\r\n")
    # DNS: not listed, the apex, then listed once the CLI lists an address and the zone follows
    assert dns_query(dns_port, f"9.0.0.127.{zone}").rcode() == dns.rcode.NXDOMAIN
    assert dns_query(dns_port, zone, "SOA").answer
    subprocess.run([sys.executable, "-m", "relayguard", "dnsbl", "add", "127.0.0.10", "--reason", "metrics test",
                    "-c", str(srv.root / "relayguard.toml")], cwd=srv.root, check=True, capture_output=True)
    wait_for(url, lambda s: value(s, "relayguard_dnsbl_listed") == 1)
    assert dns_query(dns_port, f"10.0.0.127.{zone}").answer
    # a removal request through the API (the address is not listed: answered at once)
    req = urllib.request.Request(f"http://127.0.0.1:{web_port}/api/v1/removals", method="POST",
                                 data=json.dumps({"ip": "127.0.0.11"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 202)

    after = wait_for(url, lambda s: value(s, "relayguard_delivery_attempts_total") >= 1)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("relayguard_smtp_sessions_total", service="smtp") == 2
    assert moved("relayguard_smtp_sessions_total", service="submission") == 1
    assert moved("relayguard_smtp_messages_accepted_total") == 2
    assert moved("relayguard_smtp_recipients_accepted_total", route="local") == 1
    assert moved("relayguard_smtp_recipients_accepted_total", route="relay") == 1
    assert moved("relayguard_smtp_refused_total", reason="relay_denied") == 1
    assert moved("relayguard_smtp_auth_total", result="ok") == 1
    assert moved("relayguard_smtp_tls_total", result="ok") == 1
    assert moved("relayguard_smtp_store_seconds_count") == 2
    assert moved("relayguard_smtp_session_seconds_count") == 3
    assert moved("relayguard_smtp_error_replies_total") >= 1
    assert moved("relayguard_delivery_attempts_total") >= 1
    assert moved("relayguard_delivery_recipients_total", outcome="deferred") >= 1
    assert value(after, "relayguard_queue_entries", state="deferred") + \
        value(after, "relayguard_queue_entries", state="active") == 1
    assert moved("relayguard_dns_queries_total", transport="udp", answer="not_listed") == 1
    assert moved("relayguard_dns_queries_total", transport="udp", answer="apex") == 1
    assert moved("relayguard_dns_queries_total", transport="udp", answer="listed") == 1
    assert value(after, "relayguard_dnsbl_listed") == 1
    assert moved("relayguard_dnsbl_removal_requests_total", via="api") == 1
    assert value(after, "relayguard_smtp_sessions_active", service="smtp") == 0


def test_refusals_by_reason_limits_and_protocol(make_server):
    web_port = free_port()
    srv = make_server(extra="max_connections_per_ip = 1", tables=f'[web]\nlisten = "127.0.0.1:{web_port}"')
    url = f"http://127.0.0.1:{web_port}/metrics"
    before = scrape(url)
    with srv.smtp() as s:
        s.ehlo("client.example")
        with pytest.raises(smtplib.SMTPConnectError):  # a second connection from this address gets 421
            srv.smtp()
        assert s.docmd("XYZZY")[0] >= 500  # an unknown command: a protocol error reply
    after = wait_for(url, lambda s: value(s, "relayguard_smtp_refused_total", reason="limits") >= 1)
    assert value(after, "relayguard_smtp_refused_total", reason="limits") - \
        value(before, "relayguard_smtp_refused_total", reason="limits") == 1
    assert value(after, "relayguard_smtp_error_replies_total") > value(before, "relayguard_smtp_error_replies_total")


def test_own_listener_serves_metrics_only_at_metrics():
    settings = load_text(f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n', "test.toml")

    async def run() -> None:
        server = await metrics.start(settings)
        assert server is not None
        url = "http://127.0.0.1:{}".format(server.address[1])
        try:
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url + "/metrics", timeout=5).read())
            assert b"relayguard_smtp_sessions_total" in body and b"relayguard_dns_queries_total" in body
            with pytest.raises(urllib.error.HTTPError) as e:
                await asyncio.to_thread(lambda: urllib.request.urlopen(url + "/other", timeout=5))
            assert e.value.code == 404
            om = urllib.request.Request(url + "/metrics", headers={"Accept": "application/openmetrics-text"})
            ctype = await asyncio.to_thread(lambda: urllib.request.urlopen(om, timeout=5).headers["Content-Type"])
            assert ctype.startswith("application/openmetrics-text")
        finally:
            await server.stop()

    asyncio.run(run())
    assert asyncio.run(metrics.start(load_text("", "test.toml"))) is None  # no [metrics] listen: no listener


def test_serve_starts_the_own_listener(make_server):
    port = free_port()
    srv = make_server(tables=f'[metrics]\nlisten = "127.0.0.1:{port}"')
    with srv.smtp() as s:
        s.noop()
    samples = wait_for(f"http://127.0.0.1:{port}/metrics",
                       lambda s: value(s, "relayguard_smtp_sessions_total", service="smtp") >= 1)
    assert value(samples, "relayguard_smtp_sessions_total", service="smtp") >= 1


def test_dns_answers_are_classified_from_the_response_header():
    zone = Zone("bl.example.test")
    zone.add_many([int.from_bytes(bytes([127, 0, 0, 2]), "big")])
    r = Responder(zone)
    apex = metrics.dns_apex_end(r.origin_labels)
    cases = {
        "listed": dns.message.make_query("2.0.0.127.bl.example.test", "A"),
        "not_listed": dns.message.make_query("3.0.0.127.bl.example.test", "A"),
        "apex": dns.message.make_query("bl.example.test", "SOA"),
        "nodata": dns.message.make_query("2.0.0.127.bl.example.test", "MX"),
        "refused": dns.message.make_query("example.org", "A"),
    }
    for answer, query in cases.items():
        counts = [0] * len(metrics.DNS_ANSWERS)
        metrics.count_dns(counts, r.answer(query.to_wire()), apex)
        assert counts[metrics.DNS_ANSWERS.index(answer)] == 1, answer
    counts = [0] * len(metrics.DNS_ANSWERS)
    metrics.count_dns(counts, r.answer(b"\x12\x34\x01"), apex)  # unreadable header: no answer
    assert counts[metrics.DNS_DROPPED] == 1
    counts = [0] * len(metrics.DNS_ANSWERS)
    metrics.count_dns(counts, r.answer(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff"), apex)
    assert counts[metrics.DNS_ANSWERS.index("formerr")] == 1


def test_metrics_off_the_web_listener(make_server):
    web_port = free_port()
    srv = make_server(tables=f'[web]\nlisten = "127.0.0.1:{web_port}"\n[metrics]\nweb = false')
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10)
    assert e.value.code == 404
    assert srv.proc.poll() is None


def test_self_check_verdict_is_exposed(make_server):
    web_port = free_port()
    srv = make_server(tables=f'[web]\nlisten = "127.0.0.1:{web_port}"\n[relaytest]\nself_check = true')
    url = f"http://127.0.0.1:{web_port}/metrics"
    samples = wait_for(url, lambda s: value(s, "relayguard_selfcheck_last_run_timestamp_seconds") > 0, timeout=60)
    target = f"127.0.0.1:{srv.smtp_port}"
    assert value(samples, "relayguard_selfcheck_verdict", target=target, verdict="closed") == 1
    assert value(samples, "relayguard_selfcheck_verdict", target=target, verdict="open") == 0
    assert value(samples, "relayguard_selfcheck_open_relay") == 0
    assert value(samples, "relayguard_selfcheck_seconds_count") == 1
