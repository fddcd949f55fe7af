"""The relay tester's pure parts: reply parser (with hypothesis), catalogue, verdict rules, targets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.relaytest.catalogue import CASES, SMUGGLING, by_id
from relayguard.relaytest.prober import parse_target, read_targets
from relayguard.relaytest.reply import ReplyError, enhanced_code, ReplyParser, ServerReply, ehlo_keywords, parse_replies
from relayguard.relaytest.result import (CaseResult, Outcome, TargetResult, Verdict, decide, fill_values,
                                         looks_like_hostname)
from relayguard.smtp.replies import Reply

VALUES = dict(T="mx.example.test", IP="192.0.2.10", D="example.test", X="canary.test", XIP="192.0.2.1",
              s="spammer", u="victim", rand="r4nd0m")

# Reply parser ------------------------------------------------------------------------------------

codes = st.integers(200, 599)
texts = st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40), min_size=1, max_size=5)
enhanced = st.one_of(st.just(""), st.builds(lambda a, b: f"{a}.{b}", st.integers(0, 999), st.integers(0, 999)))


@st.composite
def replies(draw) -> tuple[int, str, tuple[str, ...]]:
    code = draw(codes)
    tail = draw(enhanced)
    enh = f"{str(code)[0]}.{tail}" if tail and str(code)[0] in "245" else ""
    return code, enh, tuple(draw(texts))


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(replies(), min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=12))
def test_parser_reads_what_the_server_encoder_writes_cut_anywhere(items, cuts):
    wire = b"".join(Reply(code, enh, lines).encode() for code, enh, lines in items)
    parser = ReplyParser()
    got: list[ServerReply] = []
    for piece in chunks(wire, cuts):
        got += parser.feed(piece)
    assert not parser.pending
    assert got == parse_replies(wire)
    assert len(got) == len(items)
    for reply, (code, enh, lines) in zip(got, items):
        sent = tuple((f"{enh} {line}" if enh else line).rstrip(" ") for line in lines)
        assert reply.code == code
        assert reply.lines == sent
        assert reply.enhanced == (enh or enhanced_code(code, sent[0]))
        assert reply.accepted == (200 <= code < 300)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_fails_other_than_reply_error(data):
    parser = ReplyParser(max_line=128)
    try:
        for reply in parser.feed(data):
            assert 200 <= reply.code <= 599
    except ReplyError:
        pass


def test_a_refusal_that_mentions_250_is_a_refusal():
    (reply,) = parse_replies(b"554 5.7.1 <a%b@c>: Relay access denied; 250 ok\r\n")
    assert reply.code == 554 and not reply.accepted and reply.enhanced == "5.7.1"
    assert reply.text == "<a%b@c>: Relay access denied; 250 ok"


def test_multi_line_reply_and_ehlo_keywords():
    (reply,) = parse_replies(b"250-mx.example.test hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 starttls\r\n")
    assert reply.first == "mx.example.test hello"
    assert ehlo_keywords(reply) == {"PIPELINING": "", "SIZE": "1000", "STARTTLS": ""}


@pytest.mark.parametrize("wire", [b"250-a\r\n550 b\r\n", b"hello\r\n", b"25 x\r\n", b"250x\r\n", b"600 x\r\n"])
def test_malformed_replies_are_refused(wire):
    with pytest.raises(ReplyError):
        parse_replies(wire)


def test_bare_lf_and_no_text_and_enhanced_class_must_match():
    assert parse_replies(b"220 ready\n250\r\n")[1] == ServerReply(250, ("",), "")
    assert parse_replies(b"550 2.1.0 odd\r\n")[0].enhanced == ""  # class 2 on a 5xx reply is not an enhanced code
    assert parse_replies(b"451 4.7.1 later\r\n")[0].transient


def test_reply_line_length_is_bounded():
    with pytest.raises(ReplyError):
        ReplyParser(max_line=100).feed(b"250 " + b"x" * 200)


# Catalogue ---------------------------------------------------------------------------------------


def test_catalogue_has_every_trick_family_and_unique_ids():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 30
    for wanted in [f"S{i}" for i in range(1, 10)] + [f"R{i}" for i in range(1, 14)]:
        assert wanted in ids
    assert {c.case for c in CASES} >= {"", "upper", "mixed"}
    assert {c.verbs for c in CASES} >= {"", "lower", "mixed"}
    assert any(c.colon_space for c in CASES)
    assert [c.id for c in CASES if not c.relay] == ["R13"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_case_renders_to_two_command_lines(case):
    assert case.placeholders <= set(VALUES)
    mail, rcpt = case.commands(**VALUES)
    assert mail.upper().startswith("MAIL FROM:") and rcpt.upper().startswith("RCPT TO:")
    assert "{" not in mail + rcpt and "\r" not in mail + rcpt and "\n" not in mail + rcpt
    if case.verbs == "lower":
        assert mail.startswith("mail from:")
    if case.colon_space:
        assert mail.startswith("MAIL FROM: <")
    assert case.render(**VALUES) == (mail.split(":", 1)[1].strip(), rcpt.split(":", 1)[1].strip())


def test_by_id_and_smuggling_table():
    assert [c.id for c in by_id(["r1", "S1"])] == ["S1", "R1"]
    with pytest.raises(KeyError):
        by_id(["nope"])
    assert len({m.id for m in SMUGGLING}) == len(SMUGGLING) >= 7
    assert all(b"\r\n.\r\n" != m.ending for m in SMUGGLING)


# Verdicts ----------------------------------------------------------------------------------------


def _case(id_: str, outcome: Outcome, relay: bool = True) -> CaseResult:
    return CaseResult(id_, id_, "MAIL FROM:<a@b>", "RCPT TO:<c@d>", relay, outcome)


@pytest.mark.parametrize("mode, outcome, verdict", [
    ("probe", Outcome.ACCEPTED_RCPT, Verdict.OPEN),
    ("data", Outcome.ACCEPTED_DATA, Verdict.OPEN),
    ("confirm", Outcome.RELAYED, Verdict.OPEN),
    ("confirm", Outcome.ACCEPTED_DATA, Verdict.CLOSED),  # accepted, never arrived: not confirmed
    ("probe", Outcome.REFUSED, Verdict.CLOSED),
])
def test_verdict_rules(mode, outcome, verdict):
    r = TargetResult("t", "t", 25, mode, cases=[_case("S2", outcome), _case("S1", Outcome.REFUSED)])
    got, reason = decide(r)
    assert got is verdict
    if mode == "confirm" and outcome is Outcome.ACCEPTED_DATA:
        assert "never arrived: S2" in reason


def test_control_case_accepted_is_not_a_relay_and_errors_alone_are_unreachable():
    r = TargetResult("t", "t", 25, "probe", cases=[_case("R13", Outcome.ACCEPTED_RCPT, relay=False), _case("S1", Outcome.REFUSED)])
    assert decide(r)[0] is Verdict.CLOSED and "R13" in decide(r)[1]
    r = TargetResult("t", "t", 25, "probe", cases=[_case("S1", Outcome.ERROR)])
    assert decide(r)[0] is Verdict.UNREACHABLE
    r = TargetResult("t", "t", 25, "probe", error="cannot connect")
    assert decide(r) == (Verdict.UNREACHABLE, "cannot connect")


def test_relay_beats_auth_and_auth_beats_closed():
    auth = ServerReply(530, ("5.7.0 Authentication required",), "5.7.0")
    r = TargetResult("t", "t", 25, "probe", cases=[_case("S1", Outcome.REFUSED)], auth_reply=auth)
    assert decide(r) == (Verdict.AUTH_REQUIRED, "530 Authentication required")
    r.cases.append(_case("S2", Outcome.ACCEPTED_RCPT))
    assert decide(r)[0] is Verdict.OPEN


def test_placeholders_come_from_the_banner_then_ehlo_then_host():
    v = fill_values(banner_name="mx1.mail.example.org", ehlo_name="other.example", host="192.0.2.5", ip="192.0.2.5",
                    canary_domain="c.test", outside_ip="192.0.2.1", sender="s", recipient="u", rand="r")
    assert (v["T"], v["D"], v["IP"]) == ("mx1.mail.example.org", "mail.example.org", "192.0.2.5")
    v = fill_values(banner_name="ESMTP", ehlo_name="Mail.Example.ORG.", host="::1", ip="::1",
                    canary_domain="c.test", outside_ip="192.0.2.1", sender="s", recipient="u", rand="r")
    assert (v["T"], v["D"], v["IP"]) == ("mail.example.org", "example.org", "IPv6:::1")
    assert not looks_like_hostname("127.0.0.1") and not looks_like_hostname("localhost")


# Targets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("mx.example.test", ("mx.example.test", 25)), ("127.0.0.1:2525", ("127.0.0.1", 2525)),
    ("[::1]:2525", ("::1", 2525)), ("::1", ("::1", 25)), ("[2001:db8::1]", ("2001:db8::1", 25)),
])
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["", "host:0", "host:70000", "[::1:25", "a b:25"])
def test_parse_target_refuses(text):
    with pytest.raises(ValueError):
        parse_target(text)


def test_read_targets_skips_comments_and_blanks():
    assert read_targets(["# list", "", "a.example  # first", " b.example:2525 "]) == ["a.example", "b.example:2525"]


def test_the_docs_list_every_case():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "relaytest.md").read_text()
    rows = {line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| ")}
    missing = [c.id for c in CASES if c.id not in rows] + [m.id for m in SMUGGLING if m.id not in rows]
    assert not missing, f"docs/relaytest.md lacks {missing}"
