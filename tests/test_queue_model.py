"""The queue record and its pure rules: backoff, outcomes, expiry, DSNs."""

from __future__ import annotations

import email
import email.policy
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayguard.mta.dsn import build_dsn
from relayguard.mta.queue import (
    FAILED,
    PENDING,
    SENT,
    CorruptEntry,
    Outcome,
    QueueEntry,
    Recipient,
    Schedule,
    apply_outcomes,
    backoff,
    finish_attempt,
    needs_delay_warning,
    unreported_failures,
)

SCHEDULE = Schedule(300, 4000, 5 * 86400)


def entry(*rcpts: str, sender: str = "alice@localhost", received: float = 1000.0) -> QueueEntry:
    return QueueEntry("Q1", sender, [Recipient(r) for r in rcpts], received)


@given(st.integers(0, 60), st.floats(0, 1))
def test_backoff_doubles_within_bounds(attempts, r):
    class Fixed(random.Random):
        def random(self) -> float:
            return r

    delay = backoff(attempts, SCHEDULE, Fixed())
    assert 300 <= delay <= 4000


def test_backoff_grows():
    mid = random.Random(0)
    assert backoff(1, SCHEDULE, mid) < backoff(4, SCHEDULE, mid) <= 4000


def test_outcomes_are_final_once_recorded():
    e = entry("a@x.test", "b@y.test")
    apply_outcomes(e, {"a@x.test": Outcome(SENT, "250 ok", "2.0.0", "mx.x.test")})
    apply_outcomes(e, {"a@x.test": Outcome(FAILED, "550 no", "5.1.1"), "b@y.test": Outcome(PENDING, "451 later", "4.3.0")})
    assert [r.state for r in e.recipients] == [SENT, PENDING]
    assert e.recipients[1].reply == "451 later"


def test_expiry_fails_pending_recipients_with_the_last_error():
    e = entry("a@x.test")
    e.recipients[0].reply = "451 4.3.0 try later"
    finish_attempt(e, 1000.0 + 10, SCHEDULE)
    assert e.pending() and 1010 + 300 <= e.next_attempt <= 1010 + 4000
    finish_attempt(e, 1000.0 + 5 * 86400, SCHEDULE)
    [r] = unreported_failures(e)
    assert r.state == FAILED and r.status == "4.4.7" and "451 4.3.0 try later" in r.reply


def test_delay_warning_once_and_never_for_bounces():
    e = entry("a@x.test")
    assert needs_delay_warning(e, 1000 + 3600, 1800)
    e.warned = True
    assert not needs_delay_warning(e, 1000 + 3600, 1800)
    assert not needs_delay_warning(entry("a@x.test", sender=""), 1000 + 3600, 1800)
    assert not needs_delay_warning(entry("a@x.test"), 1000 + 3600, 0)


def test_json_round_trip_and_corrupt_records():
    e = entry("a@x.test")
    assert QueueEntry.from_json(e.to_json()) == e
    for bad in ({}, {"queue_id": "Q"}, {**e.to_json(), "recipients": []},
                {**e.to_json(), "recipients": [{"address": "a", "state": "lost"}]}, [1, 2]):
        with pytest.raises(CorruptEntry):
            QueueEntry.from_json(bad)


def test_dsn_is_an_rfc3464_report():
    e = entry("a@x.test", "b@y.test")
    apply_outcomes(e, {"a@x.test": Outcome(FAILED, "550 5.1.1 <a@x.test>: no such user", "5.1.1", "mx.x.test"),
                       "b@y.test": Outcome(FAILED, "556 5.1.10 Domain y.test does not accept mail (null MX)", "5.1.10")})
    original = b"Subject: hello\r\nFrom: alice@localhost\r\n\r\nsecret body\r\n"
    raw = build_dsn(e, unreported_failures(e), original, reporting_mta="mx.example.test")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "alice@localhost" and msg["Auto-Submitted"] == "auto-replied"
    human, status, headers = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert [(r["Final-Recipient"], r["Action"], r["Status"]) for r in per_rcpt] == [
        ("rfc822; a@x.test", "failed", "5.1.1"), ("rfc822; b@y.test", "failed", "5.1.10")]
    assert per_rcpt[0]["Remote-MTA"] == "dns; mx.x.test"
    assert per_rcpt[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 <a@x.test>: no such user"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: hello" in raw and b"secret body" not in raw
