"""`relayguard trace` wired to the rest of relayguard (issue 7): the DNSBL checker over real loopback
DNS (tests/dnsbl_fixtures.py), relayguard's own list from a real SQLite store, `--nominate`
through the blacklist's lifecycle against a loopback open relay and against relayguard's own
closed server, and `--send` through a running relayguard into a Maildir."""

from __future__ import annotations

import email
import json
import os
from email import policy
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relayguard import cli_trace
from relayguard.cli_app import app
from relayguard.dnsbl.lifecycle import Lifecycle, Policy
from relayguard.dnsbl.store import Store
from relayguard.trace.submit import SendError, send_report

from conftest import USERS, free_port
from dnsbl_fixtures import FakeList, ListServer
from fakes import FakeDNS
from relay_fixtures import FixtureThread
from test_trace_cli import SPAM

RELAY, ORIGIN = "198.51.100.20", "203.0.113.66"


def run(*args: str, cwd: Path, env: dict[str, str] | None = None):
    old = os.getcwd()
    os.chdir(cwd)  # ./relayguard.toml and the relative store path are the test's
    try:
        return CliRunner().invoke(app, ["trace", *args], env=env)
    finally:
        os.chdir(old)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "spam.eml").write_bytes(SPAM)
    return tmp_path


@pytest.fixture(scope="module")
def dnsbls():
    server = ListServer(
        FakeList("bl.test", {RELAY: ["127.0.0.2"]}, txt={RELAY: "open relay, see http://bl.test/?198.51.100.20"}),
        FakeList("pbl.test", {ORIGIN: ["127.0.0.11"]}),  # a policy list: dynamic space
        FakeList("wl.test", {RELAY: ["127.0.2.1"]}),  # an allowlist
        FakeList("dead.test", mode="timeout"),
        FakeList("world.test", world=True),
        FakeList("bl.relayguard.test", {RELAY: ["127.0.0.2"]}),  # must not be asked: the store answers
    )
    yield server
    server.close()


def reject_config(dnsbls: ListServer, sites: list[str], extra: str = "") -> str:
    return (f"[reject]\ndnsbl_sites = {json.dumps(sites)}\ndns_servers = [\"{dnsbls.address}\"]\ntimeout = 1.0\n"
            + extra)


# DNSBLs -----------------------------------------------------------------------------------------


def test_dnsbl_listing_of_the_relay_exits_1(site, dnsbls):
    (site / "relayguard.toml").write_text(reject_config(dnsbls, ["bl.test*2", "wl.test*-1", "pbl.test=127.0.0.[2..3]"]))
    r = run("spam.eml", cwd=site)
    assert r.exit_code == 1, r.output
    out = flat(r.output)
    assert "Listings (asked: bl.test, wl.test, pbl.test)" in out
    assert f"{RELAY} listed on bl.test (127.0.0.2: open relay, see http://bl.test/?198.51.100.20)" in out
    assert "wl.test" not in out.split("Listings", 1)[1].split("Abuse contacts")[0].replace("asked: bl.test, wl.test", "")
    assert f"{ORIGIN} listed" not in out  # pbl.test answered 127.0.0.11, outside its filter

    doc = json.loads(run("spam.eml", "--json", cwd=site).output)
    assert doc["listed"] is True and doc["lists"] == ["bl.test", "wl.test", "pbl.test"]
    assert doc["listings"] == {RELAY: [{"ip": RELAY, "zone": "bl.test", "answer": "127.0.0.2",
                                         "reason": "open relay, see http://bl.test/?198.51.100.20"}]}
    relay = doc["dnsbl"][RELAY]
    assert relay["score"] == 1 and {m["zone"] for m in relay["matches"]} == {"bl.test", "wl.test"}
    assert doc["dnsbl"][ORIGIN]["matches"] == [] and doc["dnsbl"][ORIGIN]["score"] == 0
    assert {a["zone"]: a["status"] for a in doc["dnsbl"][ORIGIN]["lists"]}["pbl.test"] == "listed"
    assert set(doc["dnsbl"]) == {RELAY, ORIGIN}  # the untrusted public addresses; 10.0.0.2 is trusted


def test_zone_option_and_origin_listing(site, dnsbls):
    (site / "relayguard.toml").write_text(reject_config(dnsbls, ["bl.test"]))
    doc = json.loads(run("spam.eml", "--json", "--zone", "pbl.test", cwd=site).output)
    assert doc["lists"] == ["pbl.test"] and list(doc["listings"]) == [ORIGIN]
    assert doc["listings"][ORIGIN][0]["answer"] == "127.0.0.11" and doc["listed"] is True


def test_dead_and_broken_lists_are_notes_not_listings(site, dnsbls):
    (site / "relayguard.toml").write_text(reject_config(dnsbls, ["dead.test", "world.test"]))
    r = run("spam.eml", "--json", cwd=site)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["listings"] == {} and doc["listed"] is False
    assert any(n.startswith(f"DNSBL dead.test did not answer for {RELAY}") for n in doc["notes"])
    assert any(n.startswith("DNSBL world.test skipped: lists 127.0.0.1") for n in doc["notes"])
    text = flat(run("spam.eml", cwd=site).output)
    assert "note: DNSBL dead.test did not answer" in text and f"none of {RELAY}, {ORIGIN} is listed" in text


def test_bad_zone_or_nameserver_exits_2(site, dnsbls):
    r = run("spam.eml", "--zone", "bl.test=127.0.0.[9..2]", cwd=site)
    assert r.exit_code == 2 and "runs backwards" in flat(r.output)
    r = run("spam.eml", "--zone", "bl.test", "--nameserver", "not-an-ip", cwd=site)
    assert r.exit_code == 2 and "--nameserver" in r.output


def test_reverse_dns_asks_the_configured_resolver(site):
    """A hop whose receiving MTA recorded no name: with --network its PTR is asked of the same
    servers as the DNSBLs, and the name found gives the RFC 2142 contact."""
    fake = FakeDNS({("66.113.0.203.in-addr.arpa", "PTR"): ["cpe-203-0-113-66.isp.example."]})
    try:
        (site / "relayguard.toml").write_text('[trace]\nrdap_url = "http://127.0.0.1:9/"\n')
        (site / "m.eml").write_bytes(SPAM.replace(b"(dyn-203-0-113-66.isp.example [203.0.113.66])", b"([203.0.113.66])"))
        r = run("m.eml", "--json", "--network", "--nameserver", fake.address, cwd=site)
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        assert doc["reverse_dns"] == {ORIGIN: "cpe-203-0-113-66.isp.example"}  # 198.51.100.20 has no PTR
        c = doc["contacts"][ORIGIN][0]
        assert (c["address"], c["source"], c["target"]) == ("abuse@isp.example", "rfc2142", "isp.example")
        assert "cpe-203-0-113-66.isp.example" in c["note"]
        doc = json.loads(run("m.eml", "--json", "--nameserver", fake.address, cwd=site).output)
        assert doc["reverse_dns"] == {}  # no network lookups unless asked
    finally:
        fake.close()


# relayguard's own list (the store) --------------------------------------------------------------


def own_store(site: Path) -> Store:
    return Store(f"sqlite:///{site}/var/relayguard.db")  # the default url, relative to the folder


def test_own_list_from_the_store(site, dnsbls):
    (site / "relayguard.toml").write_text(reject_config(dnsbls, ["bl.relayguard.test*2", "pbl.test"]))
    r = run("spam.eml", "--json", cwd=site)
    doc = json.loads(r.output)
    assert r.exit_code == 1
    assert doc["lists"] == ["bl.relayguard.test", "pbl.test"]  # no store here: the own zone is asked over DNS
    assert doc["listings"][RELAY][0]["zone"] == "bl.relayguard.test" and dnsbls.count("bl.relayguard.test")
    assert any("no store at var/relayguard.db" in n for n in doc["notes"])
    assert not (site / "var").exists()  # a trace creates no database

    store = own_store(site)
    try:
        Lifecycle(store, Policy()).add("198.51.100.0/24", reason="seen relaying spam")
    finally:
        store.close()
    asked = dnsbls.count("bl.relayguard.test")
    r = run("spam.eml", "--json", cwd=site)
    doc = json.loads(r.output)
    assert r.exit_code == 1
    assert doc["lists"] == ["pbl.test", "bl.relayguard.test (relayguard's own list)"]
    (own,) = doc["listings"][RELAY]
    assert own["zone"] == "bl.relayguard.test" and own["answer"] == "127.0.0.2"
    assert own["reason"].startswith("Open relay: listed after a confirmed relay test; see "
                                    "https://bl.relayguard.test/lookup?ip=198.51.100.20")
    assert own["reason"].endswith("(as part of 198.51.100.0/24)")
    assert dnsbls.count("bl.relayguard.test") == asked  # read from the store, not over DNS
    out = flat(run("spam.eml", "--zone", "bl.test", cwd=site).output)
    assert f"{RELAY} listed on bl.relayguard.test (127.0.0.2: Open relay" in out and f"{RELAY} listed on bl.test" in out

    r = run("spam.eml", "--json", "--no-own-list", "--zone", "wl.test*-1", cwd=site)
    assert r.exit_code == 0 and json.loads(r.output)["lists"] == ["wl.test"]  # an allowlist match is no listing


# --nominate ------------------------------------------------------------------------------------


@pytest.fixture
def lab(site, monkeypatch):
    """A canary, the config for the list's tests, and the relay's address mapped to a loopback port
    (the trace's relay has a public address; the test servers listen on 127.0.0.1)."""
    ft = FixtureThread()
    canary = free_port()
    ports: dict[str, int] = {}
    (site / "relayguard.toml").write_text(f"""
[relaytest]
canary_domain = "canary.test"
canary_listen = "127.0.0.1:{canary}"
timeout = 5
confirm_timeout = 10

[dnsbl]
allow_private = true
cooldown = 0
""")
    real = cli_trace._lifecycle

    def lifecycle(settings, store):
        lc = real(settings, store)
        lc._targets = lambda ip: f"127.0.0.1:{ports[ip]}"
        return lc

    monkeypatch.setattr(cli_trace, "_lifecycle", lifecycle)
    yield ft, canary, ports
    ft.close()


def test_nominate_an_open_relay_lists_it(site, lab):
    ft, canary, ports = lab
    mta, ports[RELAY] = ft.mta(accepts=lambda rcpt: True, forward_to=("127.0.0.1", canary),
                               forward_rcpt="relaytest@canary.test")
    r = run("spam.eml", "--nominate", "--json", cwd=site)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    nom = doc["nomination"]
    assert nom["ip"] == RELAY and nom["action"] == "listed" and nom["verdict"] == "open" and nom["relays"]
    assert nom["reason"].startswith(f"relayguard trace: {RELAY} (relay.openrelay.example) passed on a message "
                                    f"from {ORIGIN}")
    assert doc["listed"] is True and doc["listings"][RELAY][0]["zone"] == "bl.relayguard.test"
    assert mta.sessions >= 1 and mta.messages  # the relay test really ran against it
    store = own_store(site)
    try:
        assert store.get(RELAY).listed
        (n,) = store.nominations(RELAY)
        assert n.via == "trace" and n.outcome == "listed" and n.reason == nom["reason"] and "(trace)" in n.requester
    finally:
        store.close()
    # the next trace finds it on the own list; a second nomination is answered without a test
    r = run("spam.eml", "--nominate", cwd=site)
    assert r.exit_code == 1
    out = flat(r.output)
    assert f"{RELAY} listed on bl.relayguard.test (127.0.0.2:" in out
    assert f"Nominated {RELAY} for a relay test: ALREADY-LISTED" in out


def test_nominate_relayguard_itself_is_not_listed(site, lab, make_server):
    _ft, _canary, ports = lab
    srv = make_server()
    ports[RELAY] = srv.smtp_port
    r = run("spam.eml", "--nominate", "--arf", "report.eml", "--to", "me@victim.example", cwd=site)
    assert r.exit_code == 0, r.output
    out = flat(r.output)
    assert f"Nominated {RELAY} for a relay test: NOT-LISTED" in out and "the test found no relay (closed" in out
    store = own_store(site)
    try:
        host = store.get(RELAY)
        assert host.state == "not-listed" and host.last_verdict == "closed"
        (run_,) = store.test_runs(RELAY)
        assert run_.trigger == "nomination" and run_.verdict == "closed"
    finally:
        store.close()
    assert "decision=reject" in srv.log() and 'reason="relay denied"' in srv.log()  # it refused the relay cases


def test_nominate_the_origin_when_it_came_straight_to_us(site, lab):
    ft, _canary, ports = lab
    _mta, ports[ORIGIN] = ft.mta(accepts=lambda rcpt: False)
    top, rest = SPAM.split(b"Received: from relay.openrelay.example", 1)
    direct = top + (b"Received: from spammer.example (dyn-203-0-113-66.isp.example [203.0.113.66])\n"
                    b"\tby mx.victim.example (Postfix) with ESMTP id A1A1A1; Mon, 8 Jan 2024 10:00:05 +0000\n")
    direct += rest[rest.index(b"Return-Path:"):]
    (site / "direct.eml").write_bytes(direct)
    doc = json.loads(run("direct.eml", "--nominate", "--json", cwd=site).output)
    assert doc["abused_relay"] is None and doc["origin"]["ip"] == ORIGIN
    assert doc["nomination"]["ip"] == ORIGIN and doc["nomination"]["action"] == "not-listed"
    assert "sent the message to us directly" in doc["nomination"]["reason"]


def test_nominate_errors_exit_2(site):
    r = run("spam.eml", "--nominate", cwd=site)  # TEST-NET addresses are not public
    assert r.exit_code == 2 and "--nominate 198.51.100.20: 198.51.100.20 is not a public address" in flat(r.output)
    (site / "relayguard.toml").write_text("[dnsbl]\nallow_private = true\n")
    r = run("spam.eml", "--nominate", cwd=site)  # no canary configured
    assert r.exit_code == 2 and "the list's tests need a canary" in flat(r.output)
    r = run("spam.eml", "--nominate", "--trusted", "0.0.0.0/0", cwd=site)
    assert r.exit_code == 2 and "no public relay or origin" in flat(r.output)


# --send ------------------------------------------------------------------------------------------


def contacts(site: Path) -> Path:
    path = site / "abuse.txt"
    path.write_text("isp.example: postmaster@localhost\nopenrelay.example: bob@example.test\n")
    return path


def test_send_through_relayguard_submission_to_the_maildirs(site, make_server):
    srv = make_server()
    cfg = srv.root / "relayguard.toml"  # its submission listener is the default --smtp
    r = run("spam.eml", "-c", str(cfg), "--contacts", str(contacts(site)), "--send", "--reporter", "alice@localhost",
            "--smtp-user", "alice@localhost", "--no-own-list", cwd=site,
            env={"RELAYGUARD_SMTP_PASSWORD": USERS["alice@localhost"]})
    assert r.exit_code == 0, r.output
    out = flat(r.output)
    assert (f"report sent to postmaster@localhost, bob@example.test via 127.0.0.1:{srv.submission_port} "
            "(STARTTLS, as alice@localhost)") in out
    (got,) = srv.messages("postmaster")
    assert srv.messages("bob", "example.test")
    msg = email.message_from_bytes(got, policy=policy.default)
    assert msg["From"] == "alice@localhost" and msg["To"] == "postmaster@localhost, bob@example.test"
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "feedback-report"
    human, feedback, original = msg.iter_parts()
    fb = feedback.get_payload()[0]
    assert fb["Feedback-Type"] == "abuse" and fb["Source-IP"] == ORIGIN and fb["Version"] == "1"
    assert original.get_content_type() == "message/rfc822" and original.get_payload()[0]["Subject"] == "buy now"
    assert "It was passed on by 198.51.100.20" in human.get_content()
    top = msg.get_all("Received")[0]
    assert "by mx.relayguard.test" in top and "ESMTPSA" in top  # submitted over TLS, authenticated


def test_send_json_explicit_smtp_and_partial_refusal(site, make_server):
    srv = make_server()
    r = run("spam.eml", "--json", "--send", "--smtp", f"127.0.0.1:{srv.smtp_port}", "--to", "postmaster@localhost",
            "--to", "nobody@localhost", "--reporter", "reports@victim.example", cwd=site)
    assert r.exit_code == 2, r.output  # one recipient refused: the user must know
    sent = json.loads(r.output)["sent"]
    assert sent["accepted"] == ["postmaster@localhost"] and "550" in sent["refused"]["nobody@localhost"]
    assert sent["tls"] is True and sent["authenticated"] is False and "queued" in sent["reply"].lower()
    assert len(srv.messages("postmaster")) == 1


@pytest.mark.parametrize("port, args, env, message", [
    ("submission_port", ["--smtp-user", "alice@localhost"], {"RELAYGUARD_SMTP_PASSWORD": "wrong"},
     "authentication as alice@localhost failed: 535"),
    ("submission_port", [], {}, "refused the sender <alice@localhost>: 530"),  # submission needs AUTH
    ("smtp_port", ["--to", "x@example.org"], {}, "refused every recipient: <x@example.org> 554"),  # no relaying
])
def test_send_refused_exits_2(site, make_server, port, args, env, message):
    srv = make_server()
    r = run("spam.eml", "--send", "--smtp", f"127.0.0.1:{getattr(srv, port)}", "--reporter", "alice@localhost",
            "--contacts", str(contacts(site)), *args, cwd=site, env=env)
    assert r.exit_code == 2, r.output
    assert message in flat(r.output) and not srv.messages("postmaster")


def test_send_errors_exit_2(site):
    port = free_port()  # nothing listens there
    r = run("spam.eml", "--send", "--smtp", f"127.0.0.1:{port}", "--to", "a@b.example", cwd=site)
    assert r.exit_code == 2 and f"cannot connect to 127.0.0.1:{port}" in flat(r.output)
    r = run("spam.eml", "--send", "--smtp", "127.0.0.1:99999", cwd=site)
    assert r.exit_code == 2 and "--smtp" in r.output
    r = run("spam.eml", "--send", "--smtp-password", "x", cwd=site)
    assert r.exit_code == 2 and "--smtp-password needs --smtp-user" in r.output
    # no contact found (the RFC 2142 contacts are there; an override that matches nothing is not the point):
    (site / "bare.eml").write_bytes(SPAM.replace(b"dyn-203-0-113-66.isp.example", b"203.0.113.66")
                                    .replace(b"relay.openrelay.example (relay.openrelay.example", b"x (unknown"))
    r = run("bare.eml", "--send", "--smtp", f"127.0.0.1:{port}", cwd=site)
    assert r.exit_code == 2 and "no abuse contact was found" in flat(r.output)


def test_send_report_never_sends_a_password_in_clear():
    ft = FixtureThread()
    try:
        mta, port = ft.mta(accepts=lambda rcpt: True)  # no STARTTLS
        with pytest.raises(SendError, match="offers no STARTTLS: the password is not sent in clear"):
            send_report(b"Subject: x\r\n\r\nx\r\n", sender="a@b.example", recipients=["c@d.example"], host="127.0.0.1",
                        port=port, user="a", password="secret")
        assert not any("AUTH" in c.upper() for c in mta.commands)
        res = send_report(b"Subject: x\r\n\r\nbody\r\n", sender="a@b.example", recipients=["c@d.example"],
                          host="127.0.0.1", port=port)
        assert res.accepted == ["c@d.example"] and not res.tls and mta.messages[-1].endswith(b"body\r\n")
    finally:
        ft.close()
