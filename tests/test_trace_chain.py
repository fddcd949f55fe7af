"""The trust chain: configured and inferred trust, MSA, originating-IP headers, findings."""

from __future__ import annotations

import email
import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.trace import TrustConfig, analyse, analyse_message
from relayguard.trace.chain import is_private, parse_networks

D = "Mon, 8 Jan 2024 10:00:{:02d} +0000"

# our side: an internal store behind a public MX (192.0.2.10)
STORE = "from mx.victim.example (mx.victim.example [10.0.0.2]) by store.victim.example (Postfix) with ESMTP id C3C3C3; " + D.format(9)
PUBLIC_MX_HOP = ("from mx.victim.example (mx.victim.example [192.0.2.10]) by store.victim.example (Postfix) with ESMTP "
                 "id C4C4C4; " + D.format(9))
RELAY = ("from relay.openrelay.example (relay.openrelay.example [198.51.100.20]) by mx.victim.example (Postfix) with "
         "ESMTP id A1A1A1 for <bob@victim.example>; " + D.format(5))
SPAMMER = ("from spammer.example (dyn-203-0-113-66.isp.example [203.0.113.66]) by relay.openrelay.example "
           "(8.17.1/8.17.1) with SMTP id B2B2B2; " + D.format(0))


def kinds(chain):
    return [f.kind for f in chain.findings]


def finding(chain, kind):
    return [f for f in chain.findings if f.kind == kind]


def test_direct_spam_inferred_trust():
    chain = analyse([SPAMMER.replace("relay.openrelay.example (8.17.1/8.17.1)", "mx.victim.example (Postfix)")])
    assert chain.inferred and chain.last_trusted is None
    assert chain.first_untrusted is chain.origin is chain.relays[0]
    assert chain.origin.ip == "203.0.113.66" and chain.abused_relay is None
    assert kinds(chain) == ["first-untrusted", "origin"]


def test_open_relay_behind_an_internal_hop():
    chain = analyse([STORE, RELAY, SPAMMER])
    assert [r.trusted for r in chain.relays] == [True, False, False]
    assert chain.last_trusted.ip == "10.0.0.2"
    assert chain.first_untrusted.ip == "198.51.100.20"
    assert chain.origin.ip == "203.0.113.66"
    assert chain.abused_relay.ip == "198.51.100.20"
    assert chain.untrusted_public_ips() == ["198.51.100.20", "203.0.113.66"]
    assert kinds(chain) == ["last-trusted", "first-untrusted", "origin", "relay"]
    assert json.loads(json.dumps(chain.to_dict()))["origin"]["ip"] == "203.0.113.66"


def test_configured_trusted_networks_take_our_public_mx_in():
    inferred = analyse([PUBLIC_MX_HOP, RELAY, SPAMMER])
    assert inferred.first_untrusted.ip == "192.0.2.10"  # a public address ends inferred trust at once
    configured = analyse([PUBLIC_MX_HOP, RELAY, SPAMMER], TrustConfig.from_strings(trusted=["192.0.2.0/24"]))
    assert not configured.inferred
    assert [r.trusted for r in configured.relays] == [True, False, False]
    assert configured.first_untrusted.ip == "198.51.100.20"
    assert configured.relays[0].internal  # internal defaults to trusted


def test_internal_networks_alone_stand_for_trusted():
    chain = analyse([PUBLIC_MX_HOP, RELAY], TrustConfig.from_strings(internal=["192.0.2.10"]))
    assert [(r.trusted, r.internal) for r in chain.relays] == [(True, True), (False, False)]


def test_trusted_but_not_internal():
    chain = analyse([PUBLIC_MX_HOP, RELAY, SPAMMER],
                    TrustConfig.from_strings(trusted=["192.0.2.0/24", "198.51.100.0/24"], internal=["192.0.2.0/24"]))
    assert [(r.trusted, r.internal) for r in chain.relays] == [(True, True), (True, False), (False, False)]


SUBMISSION = ("from [192.168.1.5] (cpe-203-0-113-9.isp.example [203.0.113.9]) by smtp.victim.example (Postfix) with "
              "ESMTPSA id D4D4D4; " + D.format(1))


@pytest.mark.parametrize("config", [None, TrustConfig.from_strings(trusted=["10.0.0.0/8"])])
def test_authentication_keeps_trust(config):
    hop0 = "from smtp.victim.example (smtp.victim.example [10.0.0.3]) by mx.victim.example (Postfix) with ESMTP id E5E5E5; " + D.format(2)
    chain = analyse([hop0, SUBMISSION], config)
    assert all(r.trusted for r in chain.relays)
    assert chain.first_untrusted is None and chain.origin is None
    assert kinds(chain)[-1] == "first-untrusted"
    assert "did not come from outside" in chain.findings[-1].message


def test_msa_networks_trust_everything_older():
    msa_hop = ("from submit.victim.example (submit.victim.example [192.0.2.25]) by mx.victim.example (Postfix) with "
               "ESMTP id F6F6F6; " + D.format(3))
    client = "from laptop (cpe-203-0-113-9.isp.example [203.0.113.9]) by submit.victim.example (Postfix) with ESMTP id G7G7G7; " + D.format(2)
    cfg = TrustConfig.from_strings(trusted=["192.0.2.0/24"], msa=["192.0.2.25/32"])
    chain = analyse([msa_hop, client], cfg)
    assert [r.trusted for r in chain.relays] == [True, True]
    assert chain.relays[0].msa and not chain.relays[1].msa
    without = analyse([msa_hop, client], TrustConfig.from_strings(trusted=["192.0.2.0/24"]))
    assert [r.trusted for r in without.relays] == [True, False]


WEBMAIL = ("from webmail.provider.example (webmail.provider.example [198.51.100.30]) by mx.victim.example (Postfix) "
           "with ESMTPS id H8H8H8; " + D.format(4))


def test_originating_ip_header_is_the_last_hop_when_configured():
    headers = {"X-Originating-IP": ["[203.0.113.77]"]}
    plain = analyse([WEBMAIL], TrustConfig(), headers)
    assert plain.origin.ip == "198.51.100.30" and len(plain.relays) == 1
    cfg = TrustConfig(originating_headers=("x-originating-ip",))
    chain = analyse([WEBMAIL], cfg, headers)
    assert chain.relays[-1].synthetic and chain.relays[-1].header == "x-originating-ip"
    assert chain.origin.ip == "203.0.113.77"
    assert chain.abused_relay.ip == "198.51.100.30"
    assert "203.0.113.77" in chain.untrusted_public_ips()


def test_analyse_message_reads_received_and_originating_headers():
    msg = email.message_from_string(f"Received: {WEBMAIL}\nX-Originating-IP: 203.0.113.78\nSubject: x\n\nbody\n")
    chain = analyse_message(msg, TrustConfig(originating_headers=("X-Originating-IP",)))
    assert chain.origin.ip == "203.0.113.78" and chain.received_count == 1


def test_by_mismatch_stops_the_walk():
    forged = ("from real-origin.example ([192.0.2.99]) by not-the-spammer.example with SMTP id ZZZZZZ; " + D.format(0))
    chain = analyse([STORE, RELAY, SPAMMER, forged])
    assert chain.origin.ip == "203.0.113.66"  # nothing below the break is believed
    (f,) = finding(chain, "by-mismatch")
    assert f.index == 3 and f.severity == "warning" and "not-the-spammer.example" in f.message


@pytest.mark.parametrize("by", ["relay.openrelay.example", "RELAY.OpenRelay.example.", "relay", "mx2.openrelay.example"])
def test_by_matching_is_lenient_about_names(by):
    chain = analyse([RELAY, SPAMMER.replace("by relay.openrelay.example", f"by {by}")])
    assert chain.origin.ip == "203.0.113.66" and not finding(chain, "by-mismatch")


def test_by_as_an_address_literal():
    older = SPAMMER.replace("by relay.openrelay.example", "by [198.51.100.20]")
    assert analyse([RELAY, older]).origin.ip == "203.0.113.66"
    wrong = SPAMMER.replace("by relay.openrelay.example", "by [198.51.100.21]")
    assert finding(analyse([RELAY, wrong]), "by-mismatch")


def test_private_addresses_outside_the_trusted_part():
    isp = "from isp-smtp.example (isp-smtp.example [198.51.100.40]) by mx.victim.example (Postfix) with ESMTP id I9I9I9; " + D.format(3)
    lan = "from pc ([192.168.0.7]) by isp-smtp.example (8.17.1/8.17.1) with SMTP id J0J0J0; " + D.format(2)
    chain = analyse([isp, lan])
    assert chain.origin.ip == "198.51.100.40" and chain.abused_relay is None
    (f,) = finding(chain, "private-untrusted")
    assert f.ip == "192.168.0.7" and f.severity == "info"  # the sender's own LAN, at the bottom

    gw = "from gw.isp-smtp.example ([10.1.1.1]) by isp-smtp.example (8.17.1/8.17.1) with SMTP id K1K1K1; " + D.format(2)
    src = "from spammer ([203.0.113.5]) by gw.isp-smtp.example (8.17.1/8.17.1) with SMTP id L2L2L2; " + D.format(1)
    chain = analyse([isp, gw, src])
    assert chain.origin.ip == "203.0.113.5"
    assert chain.abused_relay.ip == "198.51.100.40"  # the nearest public host above the origin
    (f,) = finding(chain, "private-untrusted")
    assert f.ip == "10.1.1.1" and f.severity == "warning"


def test_time_travel():
    late = SPAMMER.replace(D.format(0), "Mon, 8 Jan 2024 12:00:00 +0000")
    (f,) = finding(analyse([RELAY, late]), "time-travel")
    assert f.index == 1 and "1 h 59 min" in f.message and f.severity == "warning"
    slightly = SPAMMER.replace(D.format(0), "Mon, 8 Jan 2024 10:05:00 +0000")
    assert not finding(analyse([RELAY, slightly]), "time-travel")  # within the clock skew allowed
    strict = TrustConfig(max_skew=timedelta(seconds=30))
    assert finding(analyse([RELAY, slightly], strict), "time-travel")
    other_zone = SPAMMER.replace(D.format(0), "Mon, 8 Jan 2024 11:00:00 +0100")  # the same instant as 10:00 UTC
    assert not finding(analyse([RELAY, other_zone]), "time-travel")


def test_helo_claiming_to_be_us():
    evil = RELAY.replace("from relay.openrelay.example (", "from mx.victim.example (")
    (f,) = finding(analyse([evil]), "helo-forged")
    assert "our own name" in f.message
    literal = RELAY.replace("from relay.openrelay.example (", "from [192.0.2.200] (")
    assert "another public address" in finding(analyse([literal]), "helo-forged")[0].message
    nat = RELAY.replace("from relay.openrelay.example (", "from [192.168.1.9] (")
    assert not finding(analyse([nat]), "helo-forged")


def test_forged_line_claiming_our_host_below_the_boundary():
    fake = ("from trusted-partner.example (trusted-partner.example [192.0.2.77]) by mx.victim.example (Postfix) with "
            "ESMTP id M3M3M3; " + D.format(0))
    chain = analyse([STORE, RELAY.replace("relay.openrelay.example", "mx.victim.example", 2), fake])
    assert finding(chain, "forged-line") or finding(chain, "helo-forged")
    assert chain.origin.ip != "192.0.2.77"


def test_unreadable_lines_below_the_boundary_are_findings():
    chain = analyse([STORE, "from garbled nonsense", RELAY, "from more (garbage", SPAMMER])
    assert [i for i, _ in chain.unparseable] == [1, 3]
    assert [f.index for f in finding(chain, "unparseable")] == [3]


def test_skipped_fields_and_may_be_forged():
    forged_rdns = SPAMMER.replace("[203.0.113.66])", "[203.0.113.66] (may be forged))")
    chain = analyse(["(qmail 1 invoked by uid 89); 8 Jan 2024 10:00:00 -0000", RELAY, forged_rdns])
    assert chain.skipped == [0]
    assert finding(chain, "forged-rdns")[0].ip == "203.0.113.66"


def test_no_relays_at_all():
    chain = analyse(["by mx.victim.example (Postfix, from userid 0) id X; " + D.format(0)])
    assert chain.relays == [] and kinds(chain) == ["no-relays"]
    assert analyse([]).findings[0].kind == "no-relays"


def test_ipv6_chain_with_unique_local_addresses():
    internal = "from mx.victim.example (mx.victim.example [IPv6:fd00::2]) by store.victim.example (Postfix) with ESMTP id N4N4N4; " + D.format(9)
    external = "from mail.example.net (mail.example.net [IPv6:2001:db8:1::25]) by mx.victim.example (Postfix) with ESMTPS id O5O5O5; " + D.format(8)
    chain = analyse([internal, external])
    assert [r.trusted for r in chain.relays] == [True, False]
    assert chain.origin.ip == "2001:db8:1::25"


def test_authenticated_relay_is_a_compromised_account_not_an_open_relay():
    victim_hop = RELAY
    origin = SPAMMER.replace("with SMTP", "with ESMTPA")
    chain = analyse([victim_hop, origin])
    assert chain.abused_relay.ip == "198.51.100.20"
    assert finding(chain, "authenticated-relay")


def test_helpers():
    assert is_private("10.1.2.3") and is_private("fe80::1") and is_private("100.64.0.1") and is_private("::1")
    assert not is_private("192.0.2.1") and not is_private("2001:db8::1") and not is_private("junk")
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks(["10.0.0.0/33"])
    assert TrustConfig.from_strings(trusted=["192.0.2.1"]).configured


_pieces = st.sampled_from([
    "from ", "by ", " by ", " with ", "ESMTPSA", "(", ")", "[", "]", ";", " ", "10.0.0.1", "192.0.2.1",
    "198.51.100.20", "2001:db8::1", "fd00::1", "mx.victim.example", "relay.openrelay.example", "spammer.example",
    "(Postfix)", "helo=", "(may be forged)", "Mon, 8 Jan 2024 10:00:00 +0000", "Tue, 9 Jan 2024 23:00:00 -0800",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_pieces, max_size=25).map("".join), max_size=8),
       st.booleans(), st.lists(st.sampled_from(["[192.0.2.9]", "junk", "2001:db8::7", ""]), max_size=2))
def test_analyse_never_raises(fields, configured, originating):
    cfg = TrustConfig.from_strings(trusted=["10.0.0.0/8"] if configured else [], msa=["10.0.0.9"],
                                   originating_headers=["X-Originating-IP"])
    chain = analyse(fields, cfg, {"X-Originating-IP": originating})
    json.dumps(chain.to_dict())
    assert chain.origin is None or chain.origin in chain.relays
    if chain.abused_relay is not None:
        assert not chain.abused_relay.trusted and chain.abused_relay is not chain.origin
