"""The multi-list checker against real DNS on loopback (tests/dnsbl_fixtures.ListServer)."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from dnsbl_fixtures import FakeList, ListServer
from relayguard.dnsbl.checker import Checker, Target, TargetError, parse_target, zone_answer
from relayguard.dnsbl.sites import parse_sites
from relayguard.dnsbl.verdict import Codes, Status, Verdict, ZoneAnswer, classify, clean_text, decide, evaluate
from relayguard.dnsbl.zone import Listing, Zone


def run(coro):
    return asyncio.run(coro)


def checker(server: ListServer, *sites: str, **kw) -> Checker:
    kw.setdefault("timeout", 0.6)
    return Checker(parse_sites(sites), nameservers=[server.address], **kw)


# Query names (RFC 5782) -------------------------------------------------------------------------


def test_query_labels_for_ipv4_ipv6_mapped_and_domains() -> None:
    assert parse_target("192.0.2.99").label == "99.2.0.192"
    v6 = parse_target("2001:db8:1:2:3:4:567:89ab")
    assert v6.kind == "ipv6"
    assert v6.label == "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
    assert parse_target("::ffff:192.0.2.1") == parse_target("192.0.2.1")  # mapped: asked as IPv4
    assert parse_target("[192.0.2.1]").text == "192.0.2.1"
    d = parse_target("Spam.Example.TEST.")
    assert (d.kind, d.label, d.family) == ("domain", "spam.example.test", "domain")
    assert parse_target("bücher.test").label == "xn--bcher-kva.test"


@pytest.mark.parametrize("bad", ["", "1.2.3", "300.1.2.3", "10.0.0.0/8", "a b", "x" * 64 + ".test", "a..b", "-"])
def test_bad_targets_are_refused(bad: str) -> None:
    if bad == "-":
        parse_target(bad)  # a one-label name (like RFC 5782's TEST) is a domain
        return
    with pytest.raises(TargetError):
        parse_target(bad)


# Answers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lists():
    server = ListServer(
        FakeList("bl.a.test", {"192.0.2.1": ["127.0.0.2"], "2001:db8::1": ["127.0.0.4"], "192.0.2.7": ["127.0.0.2", "127.0.0.10"]},
                 txt={"192.0.2.1": "Open relay\r\n250 injected; see http://bl.a.test/?192.0.2.1"}),
        FakeList("bl.errors.test", {"192.0.2.1": ["127.255.255.254"], "192.0.2.2": ["127.255.255.252", "127.0.0.3"]}),
        FakeList("bl.outside.test", {"192.0.2.1": ["10.0.0.1", "192.0.2.55"]}),
        FakeList("bl.slow.test", {"192.0.2.1": ["127.0.0.3"]}, delay=0.2),
        FakeList("bl.dead.test", mode="timeout"),
        FakeList("bl.servfail.test", mode="servfail"),
        FakeList("bl.world.test", world=True),
        FakeList("bl.notest.test", {"192.0.2.1": ["127.0.0.2"]}, test_points=False),
        FakeList("dbl.test", {"spam.example.test": ["127.0.1.2"]}, txt={"spam.example.test": "spammy domain"}),
        FakeList("wl.test", {"192.0.2.9": ["127.0.2.1"]}),
    )
    yield server
    server.close()


def test_listed_with_txt_reason_and_unlisted(lists: ListServer) -> None:
    c = checker(lists, "bl.a.test")
    r = run(c.check("192.0.2.1"))
    a = r.answers[0]
    assert (a.status, a.codes.listed, a.qname) == (Status.LISTED, ("127.0.0.2",), "1.2.0.192.bl.a.test")
    assert a.txt and "Open relay" in a.txt[0]
    assert "\r" not in a.reason and "\n" not in a.reason  # DNS text is made safe for SMTP lines
    assert (r.verdict, r.score, r.summary()) == (Verdict.LISTED, 1, "bl.a.test=127.0.0.2*1")
    clean = run(c.check("192.0.2.200"))
    assert (clean.verdict, clean.answers[0].status, clean.answers[0].detail) == (Verdict.CLEAN, Status.CLEAN, "NXDOMAIN")


def test_txt_is_asked_only_for_positive_answers(lists: ListServer) -> None:
    c = checker(lists, "bl.a.test", health_check=False)
    before = lists.count("bl.a.test", "TXT")
    run(c.check("192.0.2.201"))
    assert lists.count("bl.a.test", "TXT") == before
    run(c.check("192.0.2.7"))
    assert lists.count("bl.a.test", "TXT") == before + 1


def test_ipv6_and_domains(lists: ListServer) -> None:
    c = checker(lists, "bl.a.test", "dbl.test")
    r6 = run(c.check("2001:db8::1"))
    assert r6.answer_by_zone["bl.a.test"].codes.listed == ("127.0.0.4",)
    assert r6.answer_by_zone["bl.a.test"].qname.startswith("1.0.0.0.") and r6.kind == "ipv6"
    rd = run(c.check("SPAM.example.test"))
    assert rd.answer_by_zone["dbl.test"].status is Status.LISTED
    assert rd.answer_by_zone["dbl.test"].txt == ("spammy domain",)
    assert rd.listed


def test_answers_outside_127_8_are_ignored(lists: ListServer) -> None:
    r = run(checker(lists, "bl.outside.test").check("192.0.2.1"))
    a = r.answers[0]
    assert a.status is Status.CLEAN and sorted(a.codes.ignored) == ["10.0.0.1", "192.0.2.55"]
    assert r.verdict is Verdict.CLEAN and r.score == 0


def test_error_codes_are_errors_never_listings(lists: ListServer) -> None:
    c = checker(lists, "bl.errors.test")
    r = run(c.check("192.0.2.1"))
    a = r.answers[0]
    assert a.status is Status.ERROR and a.codes.errors == ("127.255.255.254",) and a.codes.listed == ()
    assert r.verdict is Verdict.CLEAN and r.score == 0 and not r.matches
    # an unfiltered site still never scores an error code; a real code beside it does
    mixed = run(c.check("192.0.2.2")).answers[0]
    assert mixed.codes.listed == ("127.0.0.3",) and mixed.codes.errors == ("127.255.255.252",)


def test_timeouts_are_unknown_never_clean(lists: ListServer) -> None:
    c = checker(lists, "bl.a.test", "bl.dead.test", timeout=0.4)
    r = run(c.check("192.0.2.200"))
    dead = r.answer_by_zone["bl.dead.test"]
    assert dead.status is Status.UNKNOWN and "timeout" in dead.detail
    assert r.verdict is Verdict.UNKNOWN and r.unknown_zones() == ["bl.dead.test"]
    listed = run(c.check("192.0.2.1"))  # ... but a listing elsewhere decides on its own
    assert listed.verdict is Verdict.LISTED and listed.unknown_zones() == ["bl.dead.test"]
    two = checker(lists, "bl.a.test", "bl.dead.test*2", timeout=0.4, threshold=2)
    assert run(two.check("192.0.2.1")).verdict is Verdict.UNKNOWN  # 1 known, the dead list's 2 could decide


def test_timeouts_are_not_cached(lists: ListServer) -> None:
    c = checker(lists, "bl.dead.test", timeout=0.3, health_check=False)
    run(c.check("192.0.2.1"))
    n = lists.count("bl.dead.test")
    run(c.check("192.0.2.1"))
    assert lists.count("bl.dead.test") > n


def test_servfail_is_unknown(lists: ListServer) -> None:
    r = run(checker(lists, "bl.servfail.test").check("192.0.2.1"))
    assert r.answers[0].status is Status.UNKNOWN and r.verdict is Verdict.UNKNOWN


def test_lists_are_asked_in_parallel(lists: ListServer) -> None:
    slow = [FakeList(f"slow{i}.test", {"192.0.2.1": ["127.0.0.2"]}, delay=0.15) for i in range(12)]
    for fl in slow:
        lists.add(fl)
    c = checker(lists, *(fl.zone for fl in slow), timeout=3, health_check=False)
    start = time.perf_counter()
    r = run(c.check("192.0.2.99"))
    elapsed = time.perf_counter() - start
    assert r.verdict is Verdict.CLEAN and len(r.answers) == 12
    assert elapsed < 0.15 * 4, elapsed  # not 12 x 150 ms


def test_one_query_per_zone_and_shared_in_flight(lists: ListServer) -> None:
    c = checker(lists, "bl.slow.test=127.0.0.2", "bl.slow.test=127.0.0.3*2", "bl.slow.test*-1", health_check=False)

    async def many():
        return await asyncio.gather(*(c.check("192.0.2.1") for _ in range(20)))

    before = lists.count("bl.slow.test", "A")
    results = run(many())
    assert lists.count("bl.slow.test", "A") == before + 1
    assert c.queries == 2  # one A, one TXT for 20 checks of 3 sites on one zone
    r = results[0]
    assert [str(m.site) for m in r.matches] == ["bl.slow.test=127.0.0.3*2", "bl.slow.test*-1"]
    assert r.score == 1 and r.listed


def test_cache_follows_ttl_within_bounds_and_is_bounded(lists: ListServer) -> None:
    now = [1000.0]
    c = checker(lists, "bl.a.test", health_check=False, min_ttl=0, max_ttl=3600, cache_size=2, clock=lambda: now[0])
    run(c.check("192.0.2.1"))
    assert c.queries == 2
    hit = run(c.check("192.0.2.1"))
    assert c.queries == 2 and hit.answers[0].cached and hit.listed
    now[0] += 61  # the fixture's TTL is 60 s
    assert not run(c.check("192.0.2.1")).answers[0].cached
    # NXDOMAIN is cached for the SOA's negative TTL (30 s here)
    run(c.check("192.0.2.150"))
    q = c.queries
    now[0] += 20
    assert run(c.check("192.0.2.150")).answers[0].cached and c.queries == q
    now[0] += 15
    run(c.check("192.0.2.150"))
    assert c.queries == q + 1
    # bounded: 2 entries; the least recently used goes first
    run(c.check("192.0.2.151"))
    run(c.check("192.0.2.152"))
    assert len(c._cache) == 2
    # min_ttl raises short TTLs (Postfix caches at least 60 s)
    c2 = checker(lists, "bl.a.test", health_check=False, min_ttl=300, clock=lambda: now[0])
    run(c2.check("192.0.2.1"))
    now[0] += 200
    assert run(c2.check("192.0.2.1")).answers[0].cached


# Health (RFC 5782 test points) ------------------------------------------------------------------------


def test_unhealthy_lists_are_skipped_with_a_warning(lists: ListServer, capsys) -> None:
    c = checker(lists, "bl.world.test*5", "bl.notest.test*5", "bl.a.test")
    r = run(c.check("192.0.2.200"))
    world, notest = r.answer_by_zone["bl.world.test"], r.answer_by_zone["bl.notest.test"]
    assert world.status is Status.SKIPPED and "lists 127.0.0.1" in world.detail and "lists the world" in world.detail
    assert notest.status is Status.SKIPPED and "does not list 127.0.0.2" in notest.detail
    assert r.verdict is Verdict.CLEAN and r.score == 0  # the world-lister's "listing" does not count
    err = capsys.readouterr().err
    assert "event=dnsbl-unhealthy zone=bl.world.test" in err and "event=dnsbl-unhealthy zone=bl.notest.test" in err
    # the unhealthy list stays skipped for its real listings too
    assert run(c.check("192.0.2.1")).answer_by_zone["bl.notest.test"].status is Status.SKIPPED


def test_health_is_probed_again_and_a_list_recovers(capsys) -> None:
    fl = FakeList("flaky.test", {"192.0.2.1": ["127.0.0.2"]}, world=True)
    server = ListServer(fl)
    try:
        now = [0.0]
        c = checker(server, "flaky.test", health_interval=100, min_ttl=0, max_ttl=0, clock=lambda: now[0])
        run(c.refresh_health())
        assert c.health[("flaky.test", "ip")].healthy is False
        fl.world = False
        assert run(c.check("192.0.2.1")).answers[0].status is Status.SKIPPED  # not probed again yet
        now[0] += 101
        r = run(c.check("192.0.2.1"))  # stale: probed in parallel with the check
        assert r.answers[0].status is Status.LISTED and c.health[("flaky.test", "ip")].healthy is True
        assert "event=dnsbl-recovered zone=flaky.test" in capsys.readouterr().err
        fl.mode = "timeout"  # a probe without answers keeps the previous state
        now[0] += 101
        c.timeout = 0.3
        run(c.refresh_health())
        assert c.health[("flaky.test", "ip")].healthy is True
    finally:
        server.close()


def test_health_check_can_be_turned_off(lists: ListServer) -> None:
    r = run(checker(lists, "bl.notest.test", health_check=False).check("192.0.2.1"))
    assert r.listed and run(checker(lists, "bl.notest.test").check("192.0.2.1")).verdict is Verdict.CLEAN


def test_domain_lists_use_the_test_and_invalid_points(lists: ListServer) -> None:
    c = checker(lists, "dbl.test", "bl.world.test")
    r = run(c.check("ham.example.test"))
    assert r.answer_by_zone["bl.world.test"].status is Status.SKIPPED
    assert "lists invalid" in r.answer_by_zone["bl.world.test"].detail
    assert c.health[("dbl.test", "domain")].healthy is True


# relayguard's own list, answered in-process ---------------------------------------------------------


def test_own_zone_is_answered_from_memory_without_dns(lists: ListServer) -> None:
    zone = Zone("bl.relayguard.test")
    zone.add("127.0.0.5", Listing(reason="Open relay confirmed; see https://bl.relayguard.test/lookup?ip=$"))
    zone.add("2001:db8::/32")
    c = checker(lists, "bl.relayguard.test*2", "bl.a.test")
    c.add_local("bl.relayguard.test", zone_answer(zone))
    before = lists.count("bl.relayguard.test")
    r = run(c.check("127.0.0.5"))
    own = r.answer_by_zone["bl.relayguard.test"]
    assert own.local and own.status is Status.LISTED and own.codes.listed == ("127.0.0.2",)
    assert own.txt == ("Open relay confirmed; see https://bl.relayguard.test/lookup?ip=127.0.0.5",)
    assert r.score == 2 and r.listed
    assert run(c.check("2001:db8::77")).answer_by_zone["bl.relayguard.test"].status is Status.LISTED
    clean = run(c.check("192.0.2.200")).answer_by_zone["bl.relayguard.test"]
    assert clean.status is Status.CLEAN and clean.local
    assert c.health[("bl.relayguard.test", "ip")].healthy is True  # the Zone holds the RFC 5782 test points
    assert lists.count("bl.relayguard.test") == before == 0  # never asked over DNS
    zone.add("127.0.0.6")
    assert run(c.check("127.0.0.6")).listed  # no cache in between: a new listing counts at once


def test_a_failing_local_answerer_is_unknown_not_a_crash() -> None:
    def broken(target: Target):
        raise RuntimeError("store gone")

    c = Checker(parse_sites(["own.test"]), nameservers=["127.0.0.1:9"], local={"own.test": broken}, health_check=False)
    r = run(c.check("192.0.2.1"))
    assert r.answers[0].status is Status.UNKNOWN and r.verdict is Verdict.UNKNOWN


# Scoring and decisions (pure) ---------------------------------------------------------------------------


def answer(zone: str, status: Status, *codes: str, txt: str = "") -> ZoneAnswer:
    return ZoneAnswer(zone, f"x.{zone}", status, classify(codes), (txt,) if txt else ())


def test_classify() -> None:
    c = classify(["127.0.0.2", "127.0.0.2", "127.255.255.254", "10.1.1.1", "::1", "127.0.0.10"])
    assert c == Codes(("127.0.0.2", "127.0.0.10"), ("127.255.255.254",), ("10.1.1.1", "::1"))


def test_weights_threshold_and_allowlists() -> None:
    sites = parse_sites(["a.test*3", "b.test=127.0.0.[4..7]*2", "wl.test*-4"])
    both = [answer("a.test", Status.LISTED, "127.0.0.2"), answer("b.test", Status.LISTED, "127.0.0.5"),
            answer("wl.test", Status.CLEAN)]
    assert evaluate("x", "ipv4", sites, both, 5).verdict is Verdict.LISTED
    assert evaluate("x", "ipv4", sites, both, 6).verdict is Verdict.CLEAN
    allowed = both[:2] + [answer("wl.test", Status.LISTED, "127.0.2.1")]
    r = evaluate("x", "ipv4", sites, allowed, 1)
    assert r.score == 1 and r.listed
    assert evaluate("x", "ipv4", sites, allowed, 2).verdict is Verdict.CLEAN
    filtered = [answer("b.test", Status.LISTED, "127.0.0.2")]  # outside b.test's filter
    assert evaluate("x", "ipv4", sites, filtered, 1).score == 0


def test_unknown_only_when_the_missing_weight_could_change_the_outcome() -> None:
    sites = parse_sites(["a.test*3", "dead.test*2", "deadwl.test*-5"])
    dead = answer("dead.test", Status.UNKNOWN)
    assert evaluate("x", "ipv4", sites[:2], [answer("a.test", Status.LISTED, "127.0.0.2"), dead], 3).verdict is Verdict.LISTED
    assert evaluate("x", "ipv4", sites[:2], [answer("a.test", Status.CLEAN), dead], 3).verdict is Verdict.CLEAN
    assert evaluate("x", "ipv4", sites[:2], [answer("a.test", Status.CLEAN), dead], 2).verdict is Verdict.UNKNOWN
    # an allowlist that did not answer could have saved a listed client
    r = evaluate("x", "ipv4", sites, [answer("a.test", Status.LISTED, "127.0.0.2"), answer("dead.test", Status.CLEAN),
                                      answer("deadwl.test", Status.UNKNOWN)], 3)
    assert r.verdict is Verdict.UNKNOWN
    # skipped (unhealthy) lists are left out entirely
    r = evaluate("x", "ipv4", sites[:2], [answer("a.test", Status.CLEAN), answer("dead.test", Status.SKIPPED)], 2)
    assert r.verdict is Verdict.CLEAN


def test_decisions_use_postfix_wording() -> None:
    sites = parse_sites(["small.test", "big.test*3"])
    r = evaluate("192.0.2.1", "ipv4", sites, [answer("small.test", Status.LISTED, "127.0.0.2", txt="small reason"),
                                             answer("big.test", Status.LISTED, "127.0.0.4", txt="big\r\nreason\x00")], 2)
    d = decide(r, "192.0.2.1")
    assert d.action == "reject"
    assert d.text == "Service unavailable; Client host [192.0.2.1] blocked using big.test; big??reason?"
    no_txt = evaluate("192.0.2.1", "ipv4", sites[:1], [answer("small.test", Status.LISTED, "127.0.0.2")], 1)
    assert decide(no_txt, "192.0.2.1").text == "Service unavailable; Client host [192.0.2.1] blocked using small.test"
    unknown = evaluate("192.0.2.1", "ipv4", sites, [answer("small.test", Status.UNKNOWN), answer("big.test", Status.UNKNOWN)], 1)
    assert decide(unknown, "192.0.2.1").action == "accept"
    deferred = decide(unknown, "192.0.2.1", on_unknown="defer")
    assert deferred.action == "defer" and "no answer from small.test, big.test" in deferred.text
    scored = evaluate("192.0.2.1", "ipv4", sites, [answer("small.test", Status.LISTED, "127.0.0.2"),
                                                   answer("big.test", Status.CLEAN)], 2)
    d = decide(scored, "192.0.2.1")
    assert d.action == "accept" and d.header == "X-Relayguard-DNSBL: score=1 threshold=2 matches=small.test=127.0.0.2*1"
    assert decide(scored, "192.0.2.1", score_header=False).header == ""
    clean = evaluate("192.0.2.1", "ipv4", sites, [answer("small.test", Status.CLEAN), answer("big.test", Status.CLEAN)], 2)
    assert decide(clean, "192.0.2.1").header == ""
    assert clean_text("é\x1b[31m" + "x" * 300)[:6] == "??[31m" and len(clean_text("x" * 300)) == 200


def test_mapped_ipv6_client_is_checked_as_ipv4(lists: ListServer) -> None:
    r = run(checker(lists, "bl.a.test").check(ipaddress.ip_address("::ffff:192.0.2.1")))
    assert r.target == "192.0.2.1" and r.listed
