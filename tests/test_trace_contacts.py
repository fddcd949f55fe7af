"""Abuse contacts: the override file, RDAP (served by a local HTTP fixture), RFC 2142, the PSL,
and the lookups seam of `investigate`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relayguard.trace import analyse
from relayguard.trace.contacts import (AbuseOverrides, ContactFinder, HttpRdap, OverrideError, RdapError,
                                       rdap_abuse_emails, rfc2142_contact)
from relayguard.trace.investigate import Listing, investigate
from relayguard.trace.psl import registered_domain

OVERRIDES = """\
# abuse.net style overrides
example.com: abuse@example.com
mail.example.com: noc@example.com, security@example.com   # more specific
bücher.example: abuse@bücher.example
198.51.100.0/24: abuse@net.example
198.51.100.128/25: abuse@subnet.example
2001:db8::/32: v6-abuse@net.example
"""


def test_override_file():
    o = AbuseOverrides.parse(OVERRIDES)
    assert [c.address for c in o.for_host("x.mail.example.com")] == ["noc@example.com", "security@example.com"]
    assert [c.address for c in o.for_host("WWW.Example.COM.")] == ["abuse@example.com"]
    assert o.for_host("example.org") == [] and o.for_host("192.0.2.1") == []
    assert o.for_host("mail.bücher.example")[0].address == "abuse@bücher.example"
    assert o.for_ip("198.51.100.7")[0].target == "198.51.100.0/24"
    assert o.for_ip("198.51.100.200")[0].address == "abuse@subnet.example"  # longest prefix wins
    assert o.for_ip("2001:db8::1")[0].address == "v6-abuse@net.example"
    assert o.for_ip("203.0.113.1") == [] and o.for_ip("junk") == []


@pytest.mark.parametrize("text, message", [
    ("example.com abuse@example.com\n", "ov:1: expected 'domain: address'"),
    ("\n# c\nexample.com:\n", "ov:3: expected 'domain: address'"),
    ("example.com: not-an-address\n", "ov:1: 'not-an-address' is not a mail address"),
    ("exa mple.com x: abuse@example.com\n", "ov:1: 'exa mple.com x' is neither a domain"),
    ("example.com: abuse@\n", "ov:1: 'abuse@' is not a mail address"),
    ("example.com: abuse@example..com\n", "ov:1: 'abuse@example..com' is not a mail address"),
    ("example.com: abuse@example.com.\n", "ov:1: 'abuse@example.com.' is not a mail address"),
])
def test_override_errors_name_file_and_line(text, message):
    with pytest.raises(OverrideError, match=message.replace(".", r"\.").replace("(", r"\(")):
        AbuseOverrides.parse(text, "ov")


def test_override_addresses_may_be_local_mailboxes():
    """The operator's own file may name a single-label domain (a lab's postmaster@localhost); RDAP may not."""
    o = AbuseOverrides.parse("isp.example: postmaster@localhost, desk@isp.example\n")
    assert [c.address for c in o.for_host("mail.isp.example")] == ["postmaster@localhost", "desk@isp.example"]
    doc = {"entities": [{"roles": ["abuse"], "vcardArray": ["vcard", [["email", {}, "text", "abuse@localhost"]]]}]}
    assert rdap_abuse_emails(doc) == []


def test_override_file_unreadable(tmp_path):
    with pytest.raises(OverrideError, match="cannot read"):
        AbuseOverrides.load(tmp_path / "missing")
    (tmp_path / "ok").write_text(OVERRIDES, encoding="utf-8")
    assert AbuseOverrides.load(tmp_path / "ok").domains["example.com"] == ["abuse@example.com"]


def _entity(handle, roles, email=None, entities=()):
    ent = {"objectClassName": "entity", "handle": handle, "roles": roles, "entities": list(entities)}
    if email:
        ent["vcardArray"] = ["vcard", [["version", {}, "text", "4.0"], ["fn", {}, "text", handle],
                                       ["email", {"type": "work"}, "text", email]]]
    return ent


RDAP_DOC = {
    "objectClassName": "ip network", "handle": "NET-198-51-100-0-1", "startAddress": "198.51.100.0",
    "entities": [
        _entity("REG-1", ["registrant"], "owner@net.example",
                entities=[_entity("ABUSE-1", ["abuse"], "abuse@net.example")]),
        _entity("TECH-1", ["technical"], "noc@net.example"),
        _entity("ABUSE-2", ["Abuse", "technical"], "abuse@net.example"),
        _entity("ABUSE-3", ["abuse"], "not an address"),
    ],
}


def test_rdap_abuse_emails():
    assert rdap_abuse_emails(RDAP_DOC) == ["abuse@net.example"]
    assert rdap_abuse_emails({}) == [] and rdap_abuse_emails([1, 2]) == [] and rdap_abuse_emails(None) == []
    assert rdap_abuse_emails({"entities": [{"roles": ["abuse"], "vcardArray": ["vcard", "junk"]}, "x"]}) == []


class _Rdap(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/ip/198.51.100.20":  # the bootstrap redirector sends us to the registry
            self.send_response(302)
            self.send_header("Location", "/registry/ip/198.51.100.20")
            self.end_headers()
            return
        if self.path == "/registry/ip/198.51.100.20":
            body = json.dumps(RDAP_DOC).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/rdap+json")
        elif self.path == "/ip/203.0.113.9":
            body = b"<html>not json</html>"
            self.send_response(200)
        else:
            body = b'{"errorCode": 404}'
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def rdap_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Rdap)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_http_rdap_against_a_local_server(rdap_server):
    client = HttpRdap(f"http://127.0.0.1:{rdap_server.server_address[1]}", timeout=5)
    assert client.abuse_contacts("198.51.100.20") == ["abuse@net.example"]
    assert rdap_server.paths[:2] == ["/ip/198.51.100.20", "/registry/ip/198.51.100.20"]
    with pytest.raises(RdapError, match="HTTP 404"):
        client.abuse_contacts("192.0.2.1")
    with pytest.raises(RdapError, match="not JSON"):
        client.abuse_contacts("203.0.113.9")


def test_http_rdap_connection_refused():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    with pytest.raises(RdapError):
        HttpRdap(f"http://127.0.0.1:{port}/", timeout=2).abuse_contacts("198.51.100.20")


@pytest.mark.parametrize("host, domain", [
    ("mail.example.co.uk", "example.co.uk"), ("a.b.example.com.", "example.com"), ("EXAMPLE.com", "example.com"),
    ("example", ""), ("co.uk", ""), ("192.0.2.1", ""), ("[IPv6:2001:db8::1]", ""), ("", ""), ("a..b.com", ""),
])
def test_registered_domain(host, domain):
    assert registered_domain(host) == domain


def test_rfc2142():
    c = rfc2142_contact("dyn-203-0-113-66.isp.example.co.uk")
    assert (c.address, c.source, c.target) == ("abuse@example.co.uk", "rfc2142", "example.co.uk")
    assert rfc2142_contact("10.0.0.1") is None


class FakeRdap:
    def __init__(self, answers, fail=False):
        self.answers, self.fail, self.asked = answers, fail, []

    def abuse_contacts(self, ip):
        self.asked.append(ip)
        if self.fail:
            raise RdapError(f"RDAP {ip}: down")
        return self.answers.get(ip, [])


def test_contact_order_override_then_rdap_then_rfc2142():
    rdap = FakeRdap({"198.51.100.20": ["abuse@net.example"]})
    finder = ContactFinder(AbuseOverrides.parse("isp.example: desk@isp.example"), rdap)
    assert [c.source for c in finder.find("203.0.113.66", ["dyn.isp.example"])] == ["override"]
    assert rdap.asked == []  # an override settles it: no network
    got = finder.find("198.51.100.20", ["relay.openrelay.example"])
    assert [(c.address, c.source) for c in got] == [("abuse@net.example", "rdap"), ("abuse@openrelay.example", "rfc2142")]
    broken = ContactFinder(rdap=FakeRdap({}, fail=True))
    assert [c.source for c in broken.find("198.51.100.20", ["relay.openrelay.example"])] == ["rfc2142"]
    assert broken.errors == ["RDAP 198.51.100.20: down"]
    assert ContactFinder(rfc2142=False).find("198.51.100.20", ["relay.openrelay.example"]) == []


RELAY = ("from relay.openrelay.example (relay.openrelay.example [198.51.100.20]) by mx.victim.example (Postfix) with "
         "ESMTP id A1A1A1; Mon, 8 Jan 2024 10:00:05 +0000")
SPAMMER = ("from spammer.example ([203.0.113.66]) by relay.openrelay.example (8.17.1/8.17.1) with SMTP id B2B2B2; "
           "Mon, 8 Jan 2024 10:00:00 +0000")


def test_investigate_asks_every_list_about_untrusted_public_addresses():
    asked = []

    def own_list(ip):
        asked.append(ip)
        return [Listing(ip, "relays.bl.relayguard.test", "127.0.0.2", "confirmed open relay")] if ip == "198.51.100.20" else []

    def broken_list(ip):
        raise TimeoutError("no answer")

    names = {"203.0.113.66": "cpe-203-0-113-66.isp.example"}
    inv = investigate(analyse([RELAY, SPAMMER]), lookups=[own_list, broken_list], reverse=names.get,
                      contacts=ContactFinder(rdap=FakeRdap({"203.0.113.66": ["abuse@isp.example"]})))
    assert asked == ["198.51.100.20", "203.0.113.66"]
    assert inv.listed and list(inv.listings) == ["198.51.100.20"]
    assert inv.reverse == {"203.0.113.66": "cpe-203-0-113-66.isp.example"}
    assert [c.address for c in inv.recipients()] == ["abuse@isp.example", "abuse@openrelay.example"]
    assert len([e for e in inv.errors if "no answer" in e]) == 2
    assert json.loads(json.dumps(inv.to_dict()))["listed"] is True


def test_not_listed_when_only_others_are():
    inv = investigate(analyse([RELAY, SPAMMER]), lookups=[lambda ip: []])
    assert not inv.listed and inv.listings == {}
