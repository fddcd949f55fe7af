"""The relay tester against real servers on loopback: relayguard itself, deliberately vulnerable
fixtures (tests/relay_fixtures.py) and broken ones (421, drops, silence, AUTH), with the canary."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from relayguard.relaytest import (CanaryReceiver, MaildirWatcher, Outcome, RelayTestOptions, Verdict, check_target,
                                  run_async)
from relayguard.relaytest.canary import find_tokens, new_token
from relayguard.relaytest.catalogue import CASES, SMUGGLING

from conftest import free_port
from relay_fixtures import FakeMTA

CANARY = "canary.test"
RELAY_IDS = {c.id for c in CASES if c.relay}

TRICKS = {
    "percent": lambda rcpt: "%" in rcpt,
    "quoted": lambda rcpt: '"' in rcpt,
    "source-route": lambda rcpt: rcpt.startswith("<@"),
}
OUTCOME = {"probe": Outcome.ACCEPTED_RCPT, "data": Outcome.ACCEPTED_DATA, "confirm": Outcome.RELAYED}


def options(mode: str = "probe", **kw) -> RelayTestOptions:
    kw.setdefault("timeout", 5.0)
    kw.setdefault("confirm_timeout", 20.0)
    return RelayTestOptions(mode=mode, canary_domain=CANARY, **kw)


def expected(result, accepts) -> set[str]:
    """The relay cases whose RCPT argument, as the tester renders it for this target, the fixture takes."""
    return {c.id for c in CASES if c.relay and accepts(c.commands(**result.values)[1].split(":", 1)[1].strip())}


async def against_fixture(mode: str, canary: CanaryReceiver | None = None, opts: dict | None = None, **fixture):
    mta = FakeMTA(forward_to=canary.address if canary else None, forward_rcpt=f"relaytest@{CANARY}", **fixture)
    port = await mta.start()
    try:
        result = await check_target(f"127.0.0.1:{port}", options(mode, **(opts or {})),
                                    canary=canary if mode == "confirm" else None)
    finally:
        await mta.stop()
    return result, mta


def run_fixture(mode: str, opts: dict | None = None, **fixture):
    async def go():
        async with CanaryReceiver("127.0.0.1:0", CANARY) as canary:
            result, mta = await against_fixture(mode, canary, opts, **fixture)
            return result, mta, canary

    return asyncio.run(go())


# relayguard's own server -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["probe", "data"])
def test_relayguard_server_is_closed_every_case_refused(server, mode):
    r = asyncio.run(check_target(f"127.0.0.1:{server.smtp_port}", options(mode)))
    assert r.verdict is Verdict.CLOSED and r.complete
    assert [c.id for c in r.cases] == [c.id for c in CASES]
    assert all(c.outcome is Outcome.REFUSED for c in r.cases), [(c.id, c.outcome, c.error) for c in r.cases]
    assert r.values["T"] == "mx.relayguard.test"
    assert r.sessions > 1  # sessions are replaced before the server's error tarpit starts


def test_relayguard_server_closed_over_starttls(server):
    r = asyncio.run(check_target(f"127.0.0.1:{server.smtp_port}", options("probe", starttls=True, cases=("S2", "R1", "V2"))))
    assert r.verdict is Verdict.CLOSED and r.tls.startswith("TLS")
    assert all(c.outcome is Outcome.REFUSED and c.stage == "rcpt" for c in r.cases)


def test_relayguard_with_loopback_trusted_is_named_open(make_server):
    srv = make_server(tables='[relay]\ntrusted_networks = ["127.0.0.0/8"]')
    r = asyncio.run(check_target(f"127.0.0.1:{srv.smtp_port}", options("probe")))
    assert r.verdict is Verdict.OPEN
    assert {"S1", "S2", "R1", "R8", "V1"} <= {c.id for c in r.relays}


def test_relayguard_smuggling_no_variant_ends_data(make_server):
    srv = make_server()
    r = asyncio.run(check_target(f"127.0.0.1:{srv.smtp_port}", options("data", smuggling=True, cases=("S2",))))
    assert r.verdict is Verdict.CLOSED
    assert [m.id for m in r.smuggling] == [m.id for m in SMUGGLING]
    assert all(m.ends_data is False and not m.error for m in r.smuggling), [(m.id, m.error) for m in r.smuggling]


# Vulnerable fixtures -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["probe", "data", "confirm"])
@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_fixture_tricks_are_named_exactly(trick, mode):
    accepts = TRICKS[trick]
    r, mta, canary = run_fixture(mode, accepts=accepts)
    want = expected(r, accepts)
    assert want and want != RELAY_IDS
    assert r.verdict is Verdict.OPEN
    assert {c.id for c in r.relays} == want
    for c in r.cases:
        if c.id in want:
            assert c.outcome is OUTCOME[mode], (c.id, c.outcome)
        else:
            assert c.outcome is Outcome.REFUSED and c.stage == "rcpt", (c.id, c.outcome, c.error)
            assert "250" in c.last_reply.text  # the fixture's refusals mention 250: still refusals
    if mode == "confirm":
        arrived = set().union(*(a.tokens for a in canary.arrivals))
        assert {c.token for c in r.relays} <= arrived
    if mode != "probe":
        assert len(mta.messages) == len(want)
    else:
        assert mta.messages == [] and not any(cmd.upper() == "DATA" for cmd in mta.commands)


@pytest.mark.parametrize("mode", ["probe", "data", "confirm"])
def test_fixture_relaying_everything(mode):
    r, mta, canary = run_fixture(mode, accepts=lambda rcpt: True)
    assert r.verdict is Verdict.OPEN
    assert {c.id for c in r.relays} == RELAY_IDS
    control = next(c for c in r.cases if c.id == "R13")
    assert control.accepted and not control.relay
    if mode == "confirm":
        assert len(canary.arrivals) == len(CASES)  # every message really arrived at the canary
        assert all(c.outcome is Outcome.RELAYED for c in r.cases)


def test_confirm_mode_without_forwarding_is_not_a_relay():
    """Accepted after the dot but never arriving (a black hole, or accept-then-bounce)."""
    async def go():
        async with CanaryReceiver("127.0.0.1:0", CANARY) as canary:
            mta = FakeMTA(accepts=lambda rcpt: "%" in rcpt)
            port = await mta.start()
            try:
                return await check_target(f"127.0.0.1:{port}", options("confirm", confirm_timeout=0.5, cases=("R2", "S2")),
                                          canary=canary)
            finally:
                await mta.stop()

    r = asyncio.run(go())
    assert r.verdict is Verdict.CLOSED and "never arrived: R2" in r.reason
    assert [c.outcome for c in r.cases] == [Outcome.REFUSED, Outcome.ACCEPTED_DATA]


# Broken servers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["421", "drop"])
def test_server_closing_mid_run_is_followed(fault):
    accepts = TRICKS["percent"]
    r, mta, _ = run_fixture("probe", accepts=accepts, every=6, fault=fault)
    assert r.verdict is Verdict.OPEN and r.complete
    assert {c.id for c in r.relays} == expected(r, accepts)
    assert not [c.id for c in r.cases if c.outcome is Outcome.ERROR]
    assert r.reconnects > 0 and any(c.attempts == 2 for c in r.cases)
    assert len(r.cases) == len(CASES)


def test_server_that_never_greets_is_unreachable():
    async def go():
        mta = FakeMTA(silent=True)
        port = await mta.start()
        try:
            return await check_target(f"127.0.0.1:{port}", options(timeout=0.5))
        finally:
            await mta.stop()

    r = asyncio.run(go())
    assert r.verdict is Verdict.UNREACHABLE and "timeout" in r.reason and not r.cases


def test_server_going_silent_after_ehlo_is_given_up():
    async def go():
        mta = FakeMTA(silent_after_ehlo=True)
        port = await mta.start()
        try:
            return await check_target(f"127.0.0.1:{port}", options(timeout=0.3))
        finally:
            await mta.stop()

    r = asyncio.run(go())
    assert r.verdict is Verdict.UNREACHABLE
    assert r.cases and all(c.outcome is Outcome.ERROR for c in r.cases) and r.not_run


def test_auth_required_stops_the_run():
    r, mta, _ = run_fixture("probe", auth=True)
    assert r.verdict is Verdict.AUTH_REQUIRED and r.auth_reply.code == 530
    assert r.not_run and len(r.cases) + len(r.not_run) == len(CASES)


def test_session_refused_and_connection_refused():
    r, _, _ = run_fixture("probe", greeting_code=554)
    assert r.verdict is Verdict.CLOSED and r.session_refused.code == 554
    r = asyncio.run(check_target(f"127.0.0.1:{free_port()}", options()))
    assert r.verdict is Verdict.UNREACHABLE and "cannot connect" in r.reason


# Smuggling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["data", "confirm"])
def test_smuggling_victim_is_named(mode):
    r, mta, canary = run_fixture(mode, {"smuggling": True, "cases": ("S2",)}, accepts=lambda rcpt: True,
                                 extra_ends=(b"\n.\n",))
    by_id = {m.id: m for m in r.smuggling}
    assert by_id["M1"].ends_data is True
    assert all(m.ends_data is False for m in r.smuggling if m.id != "M1"), [(m.id, m.ends_data, m.error) for m in r.smuggling]
    if mode == "confirm":
        assert by_id["M1"].delivered is True  # a second message arrived, without the first one's token
        assert all(m.delivered is False for m in r.smuggling if m.id != "M1")


# Canaries ----------------------------------------------------------------------------------------


def test_canary_receiver_takes_only_its_domain_and_finds_tokens_in_any_case():
    token = new_token()

    async def go():
        async with CanaryReceiver("127.0.0.1:0", CANARY) as canary:
            reader, writer = await asyncio.open_connection(*canary.address)
            out = []
            for line in [None, "EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<x@elsewhere.test>", f"RCPT TO:<X@SUB.{CANARY.upper()}.>",
                         "DATA", f"Subject: {token.upper()}\r\n\r\n..dot\r\n.", "QUIT"]:
                if line is not None:
                    writer.write(line.encode() + b"\r\n")
                while (reply := await reader.readline())[3:4] == b"-":
                    pass
                out.append(int(reply[:3]))
            writer.close()
            return out, await canary.wait([token], 5), canary

    codes, found, canary = asyncio.run(go())
    assert codes == [220, 250, 250, 550, 250, 354, 250, 221]
    assert found[token].rcpts == (f"<X@SUB.{CANARY.upper()}.>",)
    assert find_tokens(b"x " + token.encode() + b" y") == {token}


def test_maildir_watcher_sees_new_files(tmp_path: Path):
    token = new_token()
    (tmp_path / "new").mkdir()
    (tmp_path / "cur").mkdir()
    (tmp_path / "cur" / "old:2,S").write_text("an old message\n")

    async def go():
        async with MaildirWatcher(tmp_path) as watcher:
            assert await watcher.wait([token], 0.3) == {}
            tmp = tmp_path / "tmp-file"
            tmp.write_text(f"Subject: test\n\ntoken {token}\n")
            os.rename(tmp, tmp_path / "new" / "1.2.host")
            return await watcher.wait([token], 10)

    assert token in asyncio.run(go())


# Many targets --------------------------------------------------------------------------------------


def test_many_targets_ipv6_and_the_time_limit():
    """run_async keeps input order, tests [v6]:port targets, and stops at the overall time limit
    with what was done (the silent target is cut short, not waited for)."""
    async def go():
        closed = FakeMTA()
        v6 = FakeMTA(host="::1", accepts=lambda rcpt: "!" in rcpt)
        silent = FakeMTA(silent=True)
        ports = [await m.start() for m in (closed, v6, silent)]
        targets = [f"127.0.0.1:{ports[0]}", f"[::1]:{ports[1]}", f"127.0.0.1:{ports[2]}"]
        results: list = []
        try:
            await run_async(targets, options(timeout=30, rate=500, concurrency=3, time_limit=3), results=results)
        finally:
            for m in (closed, v6, silent):
                await m.stop()
        return targets, results

    targets, results = asyncio.run(go())
    assert [r.target for r in results] == targets
    closed, v6, silent = results
    assert closed.verdict is Verdict.CLOSED and closed.complete
    assert v6.verdict is Verdict.OPEN and v6.values["IP"] == "IPv6:::1"
    assert {c.id for c in v6.relays} == {c.id for c in CASES if c.relay and "!" in c.rcpt_to}
    assert not silent.complete and "time limit" in silent.reason
