"""`relayguard trace` on whole messages: text, --json, --arf, lists, contacts, RDAP, errors, and a
message that went through a running relayguard server."""

from __future__ import annotations

import email
import json
import smtplib
import subprocess
import sys
import threading
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relayguard.cli_app import app

SPAM = (
    b"Received: from mx.victim.example (mx.victim.example [10.0.0.2])\n"
    b"\tby store.victim.example (Postfix) with ESMTP id C3C3C3\n"
    b"\tfor <bob@victim.example>; Mon, 8 Jan 2024 10:00:06 +0000\n"
    b"Received: from relay.openrelay.example (relay.openrelay.example [198.51.100.20])\n"
    b"\tby mx.victim.example (Postfix) with ESMTP id A1A1A1\n"
    b"\tfor <bob@victim.example>; Mon, 8 Jan 2024 10:00:05 +0000\n"
    b"Received: from spammer.example (dyn-203-0-113-66.isp.example [203.0.113.66])\n"
    b"\tby relay.openrelay.example (8.17.1/8.17.1) with SMTP id B2B2B2;\n"
    b"\tMon, 8 Jan 2024 10:00:00 +0000\n"
    b"Return-Path: <spam@spammer.example>\n"
    b"From: Spam <spam@spammer.example>\n"
    b"To: bob@victim.example\n"
    b"Subject: buy now\n"
    b"Date: Mon, 8 Jan 2024 10:00:00 +0000\n"
    b"\n"
    b"Buy now!\n"
)


def run(*args: str, cwd: Path, input: bytes | None = None):
    import os

    old = os.getcwd()
    os.chdir(cwd)  # so that no ./relayguard.toml of the caller is read
    try:
        return CliRunner().invoke(app, ["trace", *args], input=input)
    finally:
        os.chdir(old)


@pytest.fixture
def spam(tmp_path: Path) -> Path:
    path = tmp_path / "spam.eml"
    path.write_bytes(SPAM)
    return path


def test_text_output(spam, tmp_path):
    r = run(str(spam), cwd=tmp_path)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "3 Received field(s), 3 relay(s)" in out
    assert "probable origin: 203.0.113.66 (dyn-203-0-113-66.isp.example)" in out
    assert "relay used by the origin: 198.51.100.20" in out
    assert "abuse@isp.example (rfc2142: isp.example)" in out
    assert "no list configured: set [reject] dnsbl_sites or give --zone" in out


def test_listed_relay_exits_1(spam, tmp_path):
    (tmp_path / "relays.txt").write_text("# our confirmed open relays\n198.51.100.0/24 :127.0.0.2:open relay\n")
    r = run(str(spam), "--list", str(tmp_path / "relays.txt"), cwd=tmp_path)
    assert r.exit_code == 1, r.output
    assert "198.51.100.20 listed on relays.txt" in r.output
    (tmp_path / "other.txt").write_text("192.0.2.0/24\n2001:db8::/32\n")
    assert run(str(spam), "--list", str(tmp_path / "other.txt"), cwd=tmp_path).exit_code == 0


def test_json(spam, tmp_path):
    (tmp_path / "relays.txt").write_text("203.0.113.66\n")
    r = run(str(spam), "--json", "--list", str(tmp_path / "relays.txt"), cwd=tmp_path)
    assert r.exit_code == 1
    doc = json.loads(r.output)
    assert doc["trust"] == "inferred" and doc["received"] == 3
    assert [x["trusted"] for x in doc["relays"]] == [True, False, False]
    assert doc["origin"]["ip"] == "203.0.113.66" and doc["abused_relay"]["ip"] == "198.51.100.20"
    assert doc["first_untrusted"]["ip"] == "198.51.100.20" and doc["last_trusted"]["ip"] == "10.0.0.2"
    assert doc["listed"] is True and doc["listings"]["203.0.113.66"][0]["zone"] == "relays.txt"
    assert doc["contacts"]["203.0.113.66"][0]["address"] == "abuse@isp.example"
    assert {f["kind"] for f in doc["findings"]} >= {"last-trusted", "first-untrusted", "origin", "relay"}
    assert doc["arf"] is None


def test_trusted_option_moves_the_boundary(spam, tmp_path):
    doc = json.loads(run(str(spam), "--json", "--trusted", "10.0.0.0/8", "--trusted", "198.51.100.0/24",
                         cwd=tmp_path).output)
    assert doc["trust"] == "configured"
    assert [x["trusted"] for x in doc["relays"]] == [True, True, False]
    assert doc["first_untrusted"]["ip"] == "203.0.113.66" and doc["abused_relay"] is None


def test_arf_report_to_the_override_contact(spam, tmp_path):
    (tmp_path / "abuse.txt").write_text("isp.example: abuse-desk@isp.example\n")
    out = tmp_path / "report.eml"
    r = run(str(spam), "--arf", str(out), "--contacts", str(tmp_path / "abuse.txt"), "--reporter",
            "abuse-reports@victim.example", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert "abuse report written to" in r.output and "abuse-desk@isp.example" in r.output
    msg = email.message_from_bytes(out.read_bytes(), policy=policy.default)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "feedback-report"
    assert msg["From"] == "abuse-reports@victim.example"
    assert msg["To"] == "abuse-desk@isp.example, abuse@openrelay.example"
    fb = list(msg.iter_parts())[1].get_payload()[0]
    assert fb["Source-IP"] == "203.0.113.66" and fb["Feedback-Type"] == "abuse"
    assert list(msg.iter_parts())[2].get_payload()[0]["Subject"] == "buy now"


def test_arf_to_and_headers_only(spam, tmp_path):
    out = tmp_path / "r.eml"
    r = run(str(spam), "--arf", str(out), "--to", "me@victim.example", "--headers-only", "--feedback-type", "fraud",
            cwd=tmp_path)
    assert r.exit_code == 0, r.output
    msg = email.message_from_bytes(out.read_bytes(), policy=policy.default)
    assert msg["To"] == "me@victim.example"
    assert [p.get_content_type() for p in msg.iter_parts()][2] == "text/rfc822-headers"
    assert list(msg.iter_parts())[1].get_payload()[0]["Feedback-Type"] == "fraud"


def test_config_file_trace_section(spam, tmp_path):
    (tmp_path / "abuse.txt").write_text("openrelay.example: relay-abuse@openrelay.example\n")
    (tmp_path / "relayguard.toml").write_text(
        '[server]\nhostname = "mx.victim.example"\n\n[trace]\ntrusted_networks = ["10.0.0.0/8"]\n'
        'originating_ip_headers = ["X-Originating-IP"]\nabuse_contacts_file = "abuse.txt"\n')
    msg = SPAM.replace(b"Return-Path:", b"X-Originating-IP: [192.0.2.44]\nReturn-Path:")
    (tmp_path / "m.eml").write_bytes(msg)
    out = tmp_path / "r.eml"
    doc = json.loads(run("m.eml", "--json", "--arf", str(out), cwd=tmp_path).output)
    assert doc["trust"] == "configured" and doc["origin"]["ip"] == "192.0.2.44"
    assert doc["origin"]["synthetic"] and doc["abused_relay"]["ip"] == "203.0.113.66"
    assert email.message_from_bytes(out.read_bytes())["From"] == "postmaster@mx.victim.example"
    assert doc["contacts"]["203.0.113.66"][0]["address"] == "abuse@isp.example"


class _Rdap(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/ip/198.51.100.20":
            body = json.dumps({"entities": [{"roles": ["abuse"], "vcardArray": [
                "vcard", [["version", {}, "text", "4.0"], ["email", {}, "text", "abuse@rir-net.example"]]]}]}).encode()
            self.send_response(200)
        else:
            body = b"{}"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_network_lookups_use_the_configured_rdap_service(spam, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Rdap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "relayguard.toml").write_text(
            f'[trace]\nrdap_url = "http://127.0.0.1:{server.server_address[1]}/"\n')
        doc = json.loads(run(str(spam), "--json", "--network", cwd=tmp_path).output)
    finally:
        server.shutdown()
        server.server_close()
    assert doc["contacts"]["198.51.100.20"][0] == {"address": "abuse@rir-net.example", "source": "rdap",
                                                   "target": "198.51.100.20", "note": ""}
    assert any("HTTP 404" in e for e in doc["errors"])  # the origin's registry had nothing: RFC 2142 instead
    assert doc["contacts"]["203.0.113.66"][0]["source"] == "rfc2142"


@pytest.mark.parametrize("args, content, message", [
    (["missing.eml"], None, "missing.eml: cannot read"),
    (["m.eml"], b"Subject: no trace\n\nbody\n", "no Received field"),
    (["m.eml"], b"  \n", "empty input"),
    (["m.eml", "--trusted", "10.0.0.0/33"], SPAM, "'10.0.0.0/33' is not an IP network"),
    (["m.eml", "--contacts", "abuse.txt"], SPAM, "abuse.txt:1: expected 'domain: address'"),
    (["m.eml", "--list", "bad-list.txt"], SPAM, "bad-list.txt:2: 'nonsense' is not an IP address"),
    (["m.eml", "--feedback-type", "spam"], SPAM, "'spam' is not one of"),
])
def test_input_errors_exit_2(tmp_path, args, content, message):
    if content is not None:
        (tmp_path / "m.eml").write_bytes(content)
    (tmp_path / "abuse.txt").write_text("no colon here\n")
    (tmp_path / "bad-list.txt").write_text("192.0.2.1\nnonsense\n")
    r = run(*args, cwd=tmp_path)
    assert r.exit_code == 2
    assert message in " ".join(r.output.split())


def test_standard_input_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "relayguard", "trace", "-", "--json"], input=SPAM, cwd=tmp_path,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["origin"]["ip"] == "203.0.113.66"
    bad = subprocess.run([sys.executable, "-m", "relayguard", "trace", "-"], input=b"", cwd=tmp_path,
                         capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"empty input" in bad.stderr


def test_a_message_delivered_by_relayguard(server, tmp_path):
    """relayguard's own Received field on top of the hops the message already had."""
    before = len(server.messages("postmaster"))
    body = SPAM.split(b"Received: from relay.openrelay.example", 1)[1]
    message = b"Received: from relay.openrelay.example" + body
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:
        smtp.sendmail("spam@spammer.example", ["postmaster@localhost"], message.replace(b"\n", b"\r\n"))
    delivered = server.messages("postmaster")[before:]
    assert len(delivered) == 1
    (tmp_path / "got.eml").write_bytes(delivered[0])
    doc = json.loads(run("got.eml", "--json", cwd=tmp_path).output)
    top = doc["relays"][0]
    assert top["by"] == "mx.relayguard.test" and top["ip"] == "127.0.0.1" and top["trusted"]
    assert top["id"] and top["with"].startswith("ESMTP")
    # 127.0.0.1 is private, so inferred trust goes on to the next hop, which is public: trust ends there
    assert doc["first_untrusted"]["ip"] == "198.51.100.20"


def test_list_file_formats(tmp_path):
    from relayguard.cli_trace import file_list_lookup

    path = tmp_path / "own-relays.txt"
    path.write_text("# relayguard export, rbldnsd ip4set\n$TTL 2100\n:127.0.0.2:listed\n"
                    "198.51.100.0/24 :127.0.0.2:confirmed open relay\n!198.51.100.7\n"
                    "203.0.113.5:127.0.0.3:open proxy\n2001:db8::/32 plain reason\n192.0.2.1\n")
    lookup = file_list_lookup(path)
    assert [(x.zone, x.answer, x.reason) for x in lookup("198.51.100.20")] == [
        ("own-relays.txt", "198.51.100.0/24", "confirmed open relay")]
    assert lookup("198.51.100.7") == []  # excluded
    assert lookup("203.0.113.5")[0].reason == "open proxy"
    assert lookup("2001:db8::1")[0].reason == "plain reason"
    assert lookup("192.0.2.1")[0].reason == "" and lookup("10.0.0.1") == []
