"""Probe mode with PIPELINING (RFC 2920): MAIL, RCPT and RSET in one write, same verdicts as one at a time."""

from __future__ import annotations

import asyncio

from relay_fixtures import FakeMTA

from relayguard.relaytest import Outcome, RelayTestOptions, Verdict, check_target
from relayguard.relaytest.catalogue import CASES


def probe(pipelining: bool, **fixture):
    async def go():
        mta = FakeMTA(**fixture)
        port = await mta.start()
        try:
            return await check_target(f"127.0.0.1:{port}", RelayTestOptions(timeout=5.0, pipelining=pipelining)), mta
        finally:
            await mta.stop()

    return asyncio.run(go())


def test_pipelined_and_lockstep_runs_agree():
    accepts = lambda rcpt: "%" in rcpt  # noqa: E731
    (fast, mta_fast), (slow, mta_slow) = probe(True, accepts=accepts), probe(False, accepts=accepts)
    assert fast.verdict is slow.verdict is Verdict.OPEN
    assert [(c.id, c.outcome, c.stage) for c in fast.cases] == [(c.id, c.outcome, c.stage) for c in slow.cases]
    assert len(fast.cases) == len(CASES) and fast.relays
    # one MAIL and one RCPT a case either way; pipelined, each case's three leave before any reply is read
    for mta in (mta_fast, mta_slow):
        assert sum(c[:4].upper() == "MAIL" for c in mta.commands) == sum(c[:4].upper() == "RCPT" for c in mta.commands) \
            == len(CASES)
    case = fast.cases[0].transcript
    first_reply = next(i for i, line in enumerate(case) if line.startswith("S: "))
    assert [line.split(":")[0] for line in case[first_reply - 3:first_reply]] == ["C", "C", "C"]
    assert case[first_reply - 1] == "C: RSET"


def test_refused_mail_still_reads_every_pipelined_reply():
    r, mta = probe(True, auth=True)  # 530 to MAIL: the RCPT after it gets 503, RSET 250
    assert r.verdict is Verdict.AUTH_REQUIRED and r.auth_reply.code == 530
    first = r.cases[0]
    assert first.outcome is Outcome.REFUSED and first.stage == "mail" and first.last_reply.code == 530
    assert [line[:6] for line in first.transcript if line.startswith("S: ")][:4] == ["S: 530", "S: 503", "S: 250", "S: 221"]
