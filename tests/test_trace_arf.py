"""ARF (RFC 5965) reports, parsed back with the stdlib email package."""

from __future__ import annotations

import email
from datetime import datetime, timezone
from email import policy

import pytest

from relayguard.trace import analyse_message
from relayguard.trace.arf import FeedbackReport, build_report, human_text, report_for
from relayguard.trace.contacts import AbuseOverrides, ContactFinder
from relayguard.trace.investigate import Listing, investigate

ORIGINAL = (
    b"Received: from relay.openrelay.example (relay.openrelay.example [198.51.100.20])\n"
    b"\tby mx.victim.example (Postfix) with ESMTP id A1A1A1 for <bob@victim.example>;\n"
    b"\tMon, 8 Jan 2024 10:00:05 +0000\n"
    b"Received: from spammer.example (dyn-203-0-113-66.isp.example [203.0.113.66])\n"
    b"\tby relay.openrelay.example (8.17.1/8.17.1) with SMTP id B2B2B2; Mon, 8 Jan 2024 10:00:00 +0000\n"
    b"Return-Path: <spam@spammer.example>\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=spammer.example; s=x;\n"
    b"\th=from:subject; bh=abc=; b=def=\n"
    b"From: Spam <spam@spammer.example>\n"
    b"To: bob@victim.example\n"
    b"Subject: =?utf-8?q?Cheap_pills?=\n"
    b"Date: Mon, 8 Jan 2024 10:00:00 +0000\n"
    b"\n"
    b"Buy now! \xe9\xff binary-ish 8bit body\n"
    b"--not-a-boundary\n"
)
REQUIRED = ("Feedback-Type", "User-Agent", "Version")


@pytest.fixture
def inv():
    msg = email.message_from_bytes(ORIGINAL, policy=policy.compat32)
    lookups = [lambda ip: [Listing(ip, "relays.bl.example", "127.0.0.2", "open relay")] if ip == "198.51.100.20" else []]
    return investigate(analyse_message(msg), lookups=lookups,
                       contacts=ContactFinder(AbuseOverrides.parse("isp.example: abuse-desk@isp.example")))


def parse(data: bytes):
    return email.message_from_bytes(data, policy=policy.default)


def test_round_trip_has_every_required_part_and_field(inv):
    fields = report_for(inv, ORIGINAL)
    data = build_report(ORIGINAL, fields, sender="postmaster@victim.example",
                        recipients=[c.address for c in inv.recipients()], human=human_text(inv),
                        date=datetime(2024, 1, 9, 8, 0, tzinfo=timezone.utc))
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF throughout
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "feedback-report"
    assert msg["To"] == "abuse-desk@isp.example, abuse@openrelay.example"
    assert msg["From"] == "postmaster@victim.example" and msg["Message-ID"] and msg["Date"]
    assert not msg.defects
    human, feedback, original = msg.iter_parts()
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "203.0.113.66" in text and "198.51.100.20" in text and "relays.bl.example" in text

    assert feedback.get_content_type() == "message/feedback-report"
    fb = feedback.get_payload()[0]
    for name in REQUIRED:
        assert len(fb.get_all(name)) == 1, name
    assert fb["Feedback-Type"] == "abuse" and fb["Version"] == "1" and fb["User-Agent"].startswith("relayguard/")
    assert fb["Source-IP"] == "203.0.113.66"
    assert fb["Original-Mail-From"] == "<spam@spammer.example>"
    assert fb["Original-Rcpt-To"] == "<bob@victim.example>"
    assert fb["Arrival-Date"] == "Mon, 08 Jan 2024 10:00:05 +0000"
    assert fb["Reporting-MTA"] == "dns; mx.victim.example"
    assert fb.get_all("Reported-Domain") == ["isp.example", "openrelay.example"]
    assert fb["Incidents"] == "1"

    assert original.get_content_type() == "message/rfc822"
    inner = original.get_payload()[0]
    assert inner["Subject"] == "Cheap pills" and inner["DKIM-Signature"].startswith("v=1")
    # the original travels byte for byte (CRLF line ends aside)
    assert ORIGINAL.replace(b"\n", b"\r\n") in data


def test_headers_only_variant(inv):
    data = build_report(ORIGINAL, report_for(inv, ORIGINAL), sender="a@victim.example", recipients=["b@isp.example"],
                        human="see attached", headers_only=True)
    parts = list(parse(data).iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/feedback-report", "text/rfc822-headers"]
    assert b"Buy now" not in data and b"Subject: =?utf-8?q?Cheap_pills?=" in data


def test_optional_and_repeatable_fields():
    report = FeedbackReport(feedback_type="fraud", original_rcpt_to=["a@x.example", "b@x.example"],
                            reported_uri=["http://phish.example/"], authentication_results=["mx.example; spf=fail"],
                            arrival_date=datetime(2024, 1, 1, 0, 0), incidents=3)
    fb = parse(build_report(b"Subject: x\r\n\r\nbody\r\n", report, sender="a@victim.example", recipients=[],
                            human="x")).get_payload()[1].get_payload()[0]
    assert fb["Feedback-Type"] == "fraud"
    assert fb.get_all("Original-Rcpt-To") == ["<a@x.example>", "<b@x.example>"]
    assert fb["Reported-URI"] == "http://phish.example/" and fb["Incidents"] == "3"
    assert fb["Arrival-Date"] == "Mon, 01 Jan 2024 00:00:00 +0000"  # naive means UTC
    assert fb["Source-IP"] is None and fb["Original-Mail-From"] is None


def test_field_values_cannot_inject_lines():
    report = FeedbackReport(original_mail_from="x@y\r\nFeedback-Type: virus")
    fb = parse(build_report(b"Subject: x\r\n\r\nbody\r\n", report, sender="a@b.example", recipients=["c@d.example"],
                            human="x")).get_payload()[1].get_payload()[0]
    assert fb.get_all("Feedback-Type") == ["abuse"]


def test_unknown_feedback_type_is_refused():
    with pytest.raises(ValueError, match="feedback type"):
        FeedbackReport(feedback_type="spammy").fields()
