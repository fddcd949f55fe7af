"""The list's lifecycle against real SMTP servers on loopback: an open relay that really forwards
to the canary (tests/relay_fixtures.py), relayguard's own server, and relayguard's MTA carrying
the removal confirmation. Nominate -> listed only when confirmed; removal request -> re-test ->
delisted or kept with new evidence; cool-down, rate limits, periodic re-test and expiry."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest

from relayguard.dnsbl.lifecycle import Lifecycle, LifecycleError, Policy, SMTPMailer
from relayguard.dnsbl.store import LISTED, NOT_LISTED, Store
from relayguard.relaytest import CanaryReceiver, RelayTestOptions

from conftest import free_port
from relay_fixtures import FakeMTA

CANARY = "canary.test"


def options(**kw) -> RelayTestOptions:
    kw.setdefault("timeout", 5.0)
    kw.setdefault("confirm_timeout", 5.0)
    return RelayTestOptions(mode="confirm", canary_domain=CANARY, **kw)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/bl.db")
    yield s
    s.close()


class Lab:
    """A canary, FakeMTAs on their own loopback addresses and a Lifecycle that tests them."""

    def __init__(self, store: Store, canary: CanaryReceiver, clock: Clock, **policy) -> None:
        self.store, self.canary, self.clock = store, canary, clock
        self.ports: dict[str, int] = {}
        self.mtas: list[FakeMTA] = []
        policy.setdefault("allow_private", True)
        policy.setdefault("cooldown", timedelta(0))
        self.policy = Policy(**policy)
        self.lc = Lifecycle(store, self.policy, options(), canary=canary, clock=clock,
                            targets=lambda ip: f"{ip}:{self.ports[ip]}")

    async def relay(self, ip: str, open_: bool = True) -> FakeMTA:
        """An SMTP server on `ip` that relays everything to the canary (or nothing)."""
        mta = FakeMTA(host=ip, accepts=lambda rcpt: open_, forward_to=self.canary.address,
                      forward_rcpt=f"relaytest@{CANARY}")
        self.ports[ip] = await mta.start()
        self.mtas.append(mta)
        return mta

    async def close(self) -> None:
        for m in self.mtas:
            await m.stop()


def run_lab(store: Store, body, **policy):
    async def go():
        async with CanaryReceiver("127.0.0.1:0", CANARY) as canary:
            lab = Lab(store, canary, Clock(), **policy)
            try:
                return await body(lab)
            finally:
                await lab.close()

    return asyncio.run(go())


def close(mta: FakeMTA) -> None:
    """The administrator fixes the relay."""
    mta.accepts = lambda rcpt: False


# Nominate ----------------------------------------------------------------------------------------


def test_open_relay_is_listed_after_nomination_with_evidence(store):
    async def body(lab: Lab):
        await lab.relay("127.0.0.5")
        return await lab.lc.nominate("127.0.0.5", requester="alice", source="203.0.113.9", via="api", reason="spam via it")

    a = run_lab(store, body)
    assert a.action == "listed" and a.listed and a.verdict == "open" and a.relays
    assert a.effective_at is not None and "every resolver sees it by" in a.message
    assert ("127.0.0.5/32", "127.0.0.2", store.default_txt) in store.listed()
    h = store.get("127.0.0.5")
    assert h.source == "test" and h.code == "127.0.0.2" and "open relay confirmed" in h.reason
    assert h.next_retest - h.last_listed == timedelta(days=90)
    assert h.expires_at - h.last_listed == timedelta(days=180)
    (run,) = store.test_runs("127.0.0.5", with_result=True)
    assert run.trigger == "nomination" and run.verdict == "open" and run.relays == a.relays
    relayed = [c for c in run.result["cases"] if c["outcome"] == "relayed"]
    assert relayed and any("arrived at the canary" in line for line in relayed[0]["transcript"])
    (nom,) = store.nominations("127.0.0.5")
    assert (nom.requester, nom.source, nom.via, nom.reason, nom.outcome, nom.test_run_id) == (
        "alice", "203.0.113.9", "api", "spam via it", "listed", run.id)
    assert [(e.action, e.new_state) for e in store.history("127.0.0.5")] == [("nominated", "pending"), ("listed", LISTED)]
    assert store.history("127.0.0.5")[-1].evidence["test_run"] == run.id


def test_relayguard_itself_is_not_listed_result_kept(store, make_server):
    srv = make_server()

    async def body(lab: Lab):
        lab.ports["127.0.0.1"] = srv.smtp_port
        return await lab.lc.nominate("127.0.0.1", requester="bob")

    a = run_lab(store, body)
    assert a.action == "not-listed" and not a.listed and a.verdict == "closed" and a.effective_at is None
    assert store.listed() == []
    h = store.get("127.0.0.1")
    assert h.state == NOT_LISTED and h.last_verdict == "closed"
    (run,) = store.test_runs("127.0.0.1", with_result=True)
    assert run.verdict == "closed" and all(c["outcome"] == "refused" for c in run.result["cases"])
    assert store.nominations("127.0.0.1")[0].outcome == "not-listed"


def test_accepted_but_never_delivered_is_not_listed(store):
    """Confirm mode: 250 after the dot without arrival is no confirmed relay (ORDB's rule)."""

    async def body(lab: Lab):
        mta = await lab.relay("127.0.0.6")
        mta.forward_to = None  # takes everything, delivers nothing
        lab.lc.options.confirm_timeout = 1.5
        return await lab.lc.nominate("127.0.0.6")

    a = run_lab(store, body)
    assert a.action == "not-listed" and a.verdict == "closed" and store.listed() == []


def test_unreachable_host_is_not_listed(store):
    async def body(lab: Lab):
        lab.ports["127.0.0.7"] = free_port()  # nothing listens
        return await lab.lc.nominate("127.0.0.7")

    a = run_lab(store, body)
    assert a.action == "not-listed" and a.verdict == "unreachable"


def test_nominating_a_listed_host_tests_nothing(store):
    async def body(lab: Lab):
        mta = await lab.relay("127.0.0.5")
        first = await lab.lc.nominate("127.0.0.5")
        sessions = mta.sessions
        again = await lab.lc.nominate("127.0.0.5")
        return first, again, mta.sessions - sessions

    first, again, new_sessions = run_lab(store, body)
    assert first.action == "listed" and again.action == "already-listed" and again.listed and new_sessions == 0


def test_concurrent_nominations_share_one_test(store):
    async def body(lab: Lab):
        mta = await lab.relay("127.0.0.5")
        answers = await asyncio.gather(*(lab.lc.nominate("127.0.0.5", requester=f"r{i}") for i in range(3)))
        return answers, mta

    answers, mta = run_lab(store, body)
    actions = sorted(a.action for a in answers)
    assert actions.count("listed") >= 1 and set(actions) <= {"listed", "pending"}
    assert len(store.test_runs("127.0.0.5")) == 1


def test_queued_nomination_runs_in_the_background_pool(store):
    async def body(lab: Lab):
        await lab.relay("127.0.0.5")
        await lab.relay("127.0.0.8", open_=False)
        q1 = await lab.lc.nominate("127.0.0.5", wait=False)
        q2 = await lab.lc.nominate("127.0.0.8", wait=False)
        assert store.get("127.0.0.5").state == "pending"
        while lab.lc._background:
            await asyncio.sleep(0.05)
        return q1, q2

    q1, q2 = run_lab(store, body, concurrency=1)
    assert q1.action == q2.action == "queued"
    assert store.get("127.0.0.5").state == LISTED and store.get("127.0.0.8").state == NOT_LISTED


def test_private_addresses_and_nonsense_are_refused(store):
    lc = Lifecycle(store, Policy(), options())
    with pytest.raises(LifecycleError, match="not a public address"):
        asyncio.run(lc.nominate("10.1.2.3"))
    with pytest.raises(LifecycleError, match="not an IP address"):
        asyncio.run(lc.nominate("mx.example.com"))
    with pytest.raises(LifecycleError, match="canary"):
        asyncio.run(lc.nominate("192.0.2.200".replace("192.0.2.200", "8.8.8.8")))
    assert store.get("8.8.8.8") is None  # nothing recorded when the test cannot run


# Removal ------------------------------------------------------------------------------------------


def test_removal_after_the_fix_delists(store):
    async def body(lab: Lab):
        mta = await lab.relay("127.0.0.5")
        listed = await lab.lc.nominate("127.0.0.5")
        close(mta)
        lab.clock.advance(hours=2)
        removed = await lab.lc.request_removal("127.0.0.5", contact="owner@example.net", reason="closed it")
        return listed, removed

    listed, removed = run_lab(store, body)
    assert listed.action == "listed"
    assert removed.action == "delisted" and not removed.listed and removed.verdict == "closed"
    assert removed.effective_at is not None and "has forgotten the listing by" in removed.message
    assert store.listed() == []
    h = store.get("127.0.0.5")
    assert h.state == NOT_LISTED and h.delisted_at is not None and h.next_retest is None
    (req,) = store.removal_requests("127.0.0.5")
    assert (req.contact, req.state, req.outcome, req.test_run_id) == ("owner@example.net", "done", "delisted",
                                                                        removed.test_run_id)
    assert [e.action for e in store.history("127.0.0.5")] == ["nominated", "listed", "removal-requested", "delisted"]
    assert [r.trigger for r in store.test_runs("127.0.0.5")] == ["removal", "nomination"]


def test_failed_retest_keeps_the_listing_with_new_evidence(store):
    async def body(lab: Lab):
        await lab.relay("127.0.0.5")
        await lab.lc.nominate("127.0.0.5")
        first = store.get("127.0.0.5")
        lab.clock.advance(days=3)
        return first, await lab.lc.request_removal("127.0.0.5", contact="owner@example.net")

    first, a = run_lab(store, body)
    assert a.action == "still-listed" and a.listed and a.relays and a.test_run_id
    assert "stays listed" in a.message and "Close the relay" in a.message and a.retry_after
    h = store.get("127.0.0.5")
    assert h.state == LISTED and h.last_listed > first.last_listed and h.next_retest > first.next_retest
    last = store.history("127.0.0.5")[-1]
    assert last.action == "confirmed" and last.evidence["test_run"] == a.test_run_id
    assert store.removal_requests("127.0.0.5")[0].outcome == "still-listed"


def test_untestable_host_stays_listed_and_says_why(store):
    async def body(lab: Lab):
        mta = await lab.relay("127.0.0.5")
        await lab.lc.nominate("127.0.0.5")
        await mta.stop()
        lab.mtas.remove(mta)
        return await lab.lc.request_removal("127.0.0.5")

    a = run_lab(store, body)
    assert a.action == "untestable" and a.listed and "could not be tested" in a.message
    assert store.get("127.0.0.5").state == LISTED


def test_removal_of_unlisted_and_network_listed_hosts(store):
    async def body(lab: Lab):
        lab.lc.add("127.0.9.0/24", reason="a whole relay farm")
        return (await lab.lc.request_removal("127.0.0.50"), await lab.lc.request_removal("127.0.9.9"))

    not_listed, referred = run_lab(store, body)
    assert not_listed.action == "not-listed" and not not_listed.listed
    assert referred.action == "referred" and referred.listed and "127.0.9.0/24" in referred.message


def test_cooldown_no_repeated_tests(store):
    async def body(lab: Lab):
        mta = await lab.relay("127.0.0.5")
        await lab.lc.nominate("127.0.0.5")
        sessions = mta.sessions
        again = await lab.lc.request_removal("127.0.0.5")
        again2 = await lab.lc.request_removal("127.0.0.5")
        no_test = mta.sessions - sessions
        lab.clock.advance(hours=1, seconds=1)
        close(mta)
        later = await lab.lc.request_removal("127.0.0.5")
        return again, again2, no_test, later

    again, again2, no_test, later = run_lab(store, body, cooldown=timedelta(hours=1))
    assert again.action == again2.action == "cooldown" and again.listed and no_test == 0
    assert again.retry_after and "ask again after" in again.message
    assert later.action == "delisted"


def test_rate_limits_per_requester_and_per_host(store):
    async def body(lab: Lab):
        await lab.relay("127.0.0.8", open_=False)
        lab.ports["127.0.0.9"] = lab.ports["127.0.0.8"]
        out = [await lab.lc.nominate("127.0.0.8", requester="mallory") for _ in range(3)]
        out.append(await lab.lc.nominate("127.0.0.9", requester="mallory"))
        out.append(await lab.lc.nominate("127.0.0.8", requester="someone else"))
        return out

    out = run_lab(store, body, requests_per_hour=3, host_requests_per_day=3, cooldown=timedelta(hours=1))
    assert [a.action for a in out] == ["not-listed", "cooldown", "cooldown", "rate-limited", "rate-limited"]
    assert "mallory" in out[3].message and "127.0.0.8" in out[4].message
    assert len(store.test_runs("127.0.0.8")) == 1


def test_removal_confirmed_by_mail_through_relayguards_mta(store, make_server):
    srv = make_server()

    async def body(lab: Lab):
        mta = await lab.relay("127.0.0.5")
        await lab.lc.nominate("127.0.0.5")
        close(mta)
        lab.lc.mailer = SMTPMailer("127.0.0.1", srv.smtp_port)
        asked = await lab.lc.request_removal("127.0.0.5", contact="alice@localhost", reason="fixed",
                                             requester="203.0.113.7")
        assert store.get("127.0.0.5").state == LISTED  # nothing happens before the confirmation
        for _ in range(100):
            if srv.messages("alice"):
                break
            await asyncio.sleep(0.05)
        (message,) = srv.messages("alice")
        token = re.search(rb"relayguard dnsbl confirm (\S+)", message).group(1).decode()
        with pytest.raises(LifecycleError, match="unknown confirmation token"):
            await lab.lc.confirm_removal("not-the-token")
        done = await lab.lc.confirm_removal(token)
        twice = await lab.lc.confirm_removal(token)
        return asked, message, done, twice

    asked, message, done, twice = run_lab(store, body, removal_confirm=True, mail_from="dnsbl@localhost")
    assert asked.action == "awaiting-confirmation" and "alice@localhost" in asked.message
    assert b"Subject: Confirm the removal request for 127.0.0.5" in message and b"203.0.113.7" in message
    assert done.action == "delisted" and store.listed() == []
    assert twice.action == "refused"
    (req,) = store.removal_requests("127.0.0.5")
    assert req.state == "done" and req.outcome == "delisted" and req.confirmed_at is not None


def test_confirmation_expires(store):
    sent: list[bytes] = []

    async def mailer(sender: str, rcpt: str, message: bytes) -> None:
        sent.append(message)

    async def body(lab: Lab):
        await lab.relay("127.0.0.5")
        await lab.lc.nominate("127.0.0.5")
        lab.lc.mailer = mailer
        await lab.lc.request_removal("127.0.0.5", contact="owner@example.net")
        token = re.search(rb"relayguard dnsbl confirm (\S+)", sent[0]).group(1).decode()
        lab.clock.advance(hours=49)
        with pytest.raises(LifecycleError, match="expired"):
            await lab.lc.confirm_removal(token)

    run_lab(store, body, removal_confirm=True)
    assert store.removal_requests("127.0.0.5")[0].state == "expired" and store.get("127.0.0.5").listed


# Periodic re-test, expiry, manual actions -------------------------------------------------------


def test_periodic_retest_and_expiry(store):
    async def body(lab: Lab):
        fixed = await lab.relay("127.0.0.5")
        await lab.relay("127.0.0.6")
        gone = await lab.relay("127.0.0.7")
        for ip in ("127.0.0.5", "127.0.0.6", "127.0.0.7"):
            assert (await lab.lc.nominate(ip)).action == "listed"
        assert await lab.lc.maintain() == []  # nothing due yet
        close(fixed)
        await gone.stop()
        lab.mtas.remove(gone)
        lab.clock.advance(days=91)
        first = {a.ip: a.action for a in await lab.lc.maintain()}
        lab.clock.advance(days=100)  # the unreachable one is never re-confirmed: it expires
        second = {a.ip: a.action for a in await lab.lc.maintain()}
        return first, second

    first, second = run_lab(store, body)
    assert first == {"127.0.0.5": "delisted", "127.0.0.6": "still-listed", "127.0.0.7": "untestable"}
    assert second.get("127.0.0.7") == "expired"
    assert store.get("127.0.0.7").state == NOT_LISTED and store.history("127.0.0.7")[-1].action == "expired"
    assert store.get("127.0.0.6").state == LISTED
    assert [r.trigger for r in store.test_runs("127.0.0.5")] == ["retest", "nomination"]


def test_manual_add_remove_need_reasons_and_state_when(store):
    clock = Clock()
    lc = Lifecycle(store, Policy(ttl=100, negative_ttl=20), options(), clock=clock)
    a = lc.add("192.0.2.0/25", reason="spam farm", code="127.0.0.3", expires=timedelta(days=7))
    assert a.action == "listed" and a.effective_at == clock.now + timedelta(seconds=120)
    h = store.get("192.0.2.0/25")
    assert h.code == "127.0.0.3" and h.source == "manual" and h.expires_at == clock.now + timedelta(days=7)
    assert lc.add("192.0.2.0/25", reason="now .4", code="127.0.0.4").action == "changed"
    with pytest.raises(LifecycleError, match="needs a reason"):
        lc.add("192.0.2.9", reason=" ")
    with pytest.raises(LifecycleError, match="127.0.0.1 means"):
        lc.add("192.0.2.9", reason="x", code="127.0.0.1")
    with pytest.raises(LifecycleError, match="too wide"):
        lc.add("10.0.0.0/7", reason="x")
    with pytest.raises(LifecycleError, match="part of 192.0.2.0/25"):
        lc.remove("192.0.2.9", reason="x")
    with pytest.raises(LifecycleError, match="is not listed"):
        lc.remove("203.0.113.1", reason="x")
    r = lc.remove("192.0.2.0/25", reason="cleaned up")
    assert r.action == "delisted" and store.listed() == [] and "has forgotten it by" in r.message
    assert [(e.action, e.reason) for e in store.history("192.0.2.0/25")] == [
        ("listed", "manual: spam farm"), ("changed", "manual: now .4"), ("delisted", "manual: cleaned up")]


def test_lifecycle_on_postgresql(postgres):
    """The same nominate -> list -> removal -> delist on a PostgreSQL store."""
    s = Store(postgres.new_database())
    try:
        async def body(lab: Lab):
            mta = await lab.relay("127.0.0.5")
            listed = await lab.lc.nominate("127.0.0.5")
            close(mta)
            return listed, await lab.lc.request_removal("127.0.0.5")

        listed, removed = run_lab(s, body)
        assert listed.action == "listed" and removed.action == "delisted"
        assert [e.action for e in s.history("127.0.0.5")] == ["nominated", "listed", "removal-requested", "delisted"]
    finally:
        s.close()
