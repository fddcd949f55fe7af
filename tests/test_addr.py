"""Path parsing and Postfix-style resolution (REFERENCES.md sections 1 and 2)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from relayguard.addr import (
    AddressError,
    Mailbox,
    Resolved,
    normalise_domain,
    parse_path,
    resolve,
    split_path_and_params,
)
from relayguard.relay import relay_decision

T = "mx.example.test"
IP = "192.0.2.1"
X = "canary.test"
LOCAL = frozenset({T, f"[{IP}]", "[IPv6:2001:db8::25]"})


def _fill(template: str) -> str:
    return template.replace("{T}", T).replace("{IP}", IP).replace("{X}", X)


def _resolve_text(path: str, local_domains=LOCAL) -> Resolved:
    return resolve(parse_path(path, allow_null=False), local_domains)


# --- parsing ---------------------------------------------------------------

PARSE_CASES = [
    # relay catalogue R1-R13 (RCPT forms)
    ("<u%{X}@[{IP}]>", "u%{X}", "[{IP}]"),
    ("<u%{X}@{T}>", "u%{X}", "{T}"),
    ('<"u@{X}">', "u@{X}", ""),
    ('<"u%{X}">', "u%{X}", ""),
    ("<u@{X}@[{IP}]>", "u@{X}", "[{IP}]"),
    ('<"u@{X}"@[{IP}]>', "u@{X}", "[{IP}]"),
    ("<u@{X}@{T}>", "u@{X}", "{T}"),
    ("<@[{IP}]:u@{X}>", "u", "{X}"),
    ("<@{T}:u@{X}>", "u", "{X}"),
    ("<{X}!u>", "{X}!u", ""),
    ("<{X}!u@[{IP}]>", "{X}!u", "[{IP}]"),
    ("<{X}!u@{T}>", "{X}!u", "{T}"),
    ("<u@[{IP}]>", "u", "[{IP}]"),
    # sender forms S2-S9 as paths
    ("<s@{X}>", "s", "{X}"),
    ("<s>", "s", ""),
    ("<postmaster@{T}>", "postmaster", "{T}"),
    ("<s@localhost>", "s", "localhost"),
    # case is kept as written
    ("<U%CANARY.TEST@MX.Example.TEST>", "U%CANARY.TEST", "MX.Example.TEST"),
    ("<User@[IPv6:2001:DB8::25]>", "User", "[IPv6:2001:DB8::25]"),
    ("<u@[ipv6:::1]>", "u", "[ipv6:::1]"),
    ("<u@[IPv6:::ffff:192.0.2.1]>", "u", "[IPv6:::ffff:192.0.2.1]"),
    # trailing dot, no angle brackets
    ("<u@{T}.>", "u", "{T}."),
    ("u@{X}", "u", "{X}"),
    ("u%{X}@{T}", "u%{X}", "{T}"),
    # source routes, several hops, literal hops
    ("<@a.test,@[{IP}],@b.test:u@{X}>", "u", "{X}"),
    ("<@[IPv6:2001:db8::1]:u@{X}>", "u", "{X}"),
    # quoted local parts
    ('<"a b>c"@{X}>', "a b>c", "{X}"),
    ('<"a\\"b\\\\c"@{X}>', 'a"b\\c', "{X}"),
    ('<"\\a"@{X}>', "a", "{X}"),
    ('<"first.last"@{X}>', "first.last", "{X}"),
    # SMTPUTF8
    ("<用户@例子.测试>", "用户", "例子.测试"),
    ('<"ü ser"@bücher.de>', "ü ser", "bücher.de"),
    # Postfix resolver vectors that parse
    ("H!H!a[b]", "H!H!a[b]", ""),
    ("a[b]%H%H", "a[b]%H%H", ""),
    ("user@[1.2.3.4]@dom", "user@[1.2.3.4]", "dom"),
    ("user%[1.2.3.4]@dom", "user%[1.2.3.4]", "dom"),
    ("[1.2.3.4]!user@dom", "[1.2.3.4]!user", "dom"),
    ("user@1.2.3", "user", "1.2.3"),
]


@pytest.mark.parametrize(("path", "local", "domain"), PARSE_CASES)
def test_parse_path(path: str, local: str, domain: str) -> None:
    assert parse_path(_fill(path), allow_null=False) == Mailbox(_fill(local), _fill(domain))


def test_null_path_only_where_allowed() -> None:
    box = parse_path("<>", allow_null=True)
    assert box == Mailbox("", "") and box.is_null and str(box) == ""
    with pytest.raises(AddressError) as exc:
        parse_path("<>", allow_null=False)
    assert (exc.value.code, exc.value.enhanced) == (501, "5.1.3")


def _max_path(extra: int) -> str:
    """A path exactly 256 octets long (brackets included), plus `extra` octets."""
    domain = ".".join(["d" * 60] * 4)  # 243 octets
    local = "l" * (256 - 2 - 1 - len(domain) + extra)
    return f"<{local}@{domain}>"


def test_path_length_limit() -> None:
    assert len(_max_path(0)) == 256
    parse_path(_max_path(0), allow_null=False)
    with pytest.raises(AddressError):
        parse_path(_max_path(1), allow_null=False)
    # octets, not characters: each 'é' is two octets in UTF-8
    with pytest.raises(AddressError):
        parse_path(_max_path(0).replace("l", "é", 1), allow_null=False)


BAD_PATHS = [
    "",
    "<",
    "<u@x.test",
    "u@x.test>",
    "<<u@x.test>>",
    '<"u@x.test>',
    '"u',
    "<u\r@x.test>",
    "<u\n@x.test>",
    "<u\x00@x.test>",
    "<u@x.test\x7f>",
    "<u\x85@x.test>",
    "<u\u2028@x.test>",
    "<u\ud800@x.test>",
    '<"u\t"@x.test>',
    "<@x.test>",
    '<""@x.test>',
    '<"">',
    "<a%@>",
    "<@>",
    "a%@",
    "@",
    "<u@>",
    "<u@.>",
    "<u@-bad.test>",
    "<u@bad-.test>",
    "<u@a..b>",
    "<u@a.b..>",
    "<u@a_b.test>",
    "<u@a b.test>",
    f"<u@{'a' * 64}.test>",
    "<u@[1.2.3]>",
    "<u@[256.1.1.1]>",
    "<u@[01.2.3.4]>",
    "<u@[IPv6:1.2.3.4]>",
    "<u@[IPv6:::1%eth0]>",
    "<u@[IPv6:::g]>",
    "<u@[tag:stuff]>",
    "<u@[]>",
    "<u@[1.2.3.4].>",
    "<a b@x.test>",
    "<a..b@x.test>",
    "<.a@x.test>",
    "<a.@x.test>",
    '<"a"b@x.test>',
    '<"a".b@x.test>',
    '<a"b"@x.test>',
    "<a(b)@x.test>",
    "<a,b@x.test>",
    "<a:b@x.test>",
    "<a\\b@x.test>",
    "<@:u@x.test>",
    "<@a.test,u@x.test>",
    "<@a.test:>",
    "<@a.test>",
    "<@a_b:u@x.test>",
    "<@[1.2.3]:u@x.test>",
    "<@[IPv6:::1:u@x.test>",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths(path: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_path(path, allow_null=False)
    assert (exc.value.code, exc.value.enhanced) == (501, "5.1.3")
    assert str(exc.value) == exc.value.text == "Bad recipient address syntax"
    # a reverse-path gets the sender code
    if path != "<>":
        with pytest.raises(AddressError) as exc:
            parse_path(path, allow_null=True)
        assert (exc.value.code, exc.value.enhanced) == (501, "5.1.7")
        assert exc.value.text == "Bad sender address syntax"


# --- canonical text ---------------------------------------------------------

@pytest.mark.parametrize(
    ("box", "text"),
    [
        (Mailbox("a.b", "x.test"), "a.b@x.test"),
        (Mailbox("a@b", "x.test"), '"a@b"@x.test'),
        (Mailbox("a..b", "x.test"), '"a..b"@x.test'),
        (Mailbox('a"b\\c', "x.test"), '"a\\"b\\\\c"@x.test'),
        (Mailbox("a b", ""), '"a b"'),
        (Mailbox("u%x", ""), "u%x"),
        (Mailbox("用户", "例子.测试"), "用户@例子.测试"),
        (Mailbox("", ""), ""),
    ],
)
def test_mailbox_str(box: Mailbox, text: str) -> None:
    assert str(box) == text


# --- ESMTP parameters -------------------------------------------------------

@pytest.mark.parametrize(
    ("arg", "path", "params"),
    [
        ("<u@x.test>", "<u@x.test>", {}),
        (" <u@x.test> SIZE=10 BODY=8BITMIME", "<u@x.test>", {"SIZE": "10", "BODY": "8BITMIME"}),
        ("<u@x.test> smtputf8", "<u@x.test>", {"SMTPUTF8": None}),
        ("<u@x.test> Auth=<>", "<u@x.test>", {"AUTH": "<>"}),
        ("<u@x.test>  SIZE=1  ", "<u@x.test>", {"SIZE": "1"}),
        ('<"a b>c"@x.test> SIZE=10', '<"a b>c"@x.test>', {"SIZE": "10"}),
        ('<"a\\"> b"@x.test>', '<"a\\"> b"@x.test>', {}),
        ("<>", "<>", {}),
        ("<> SIZE=0", "<>", {"SIZE": "0"}),
        ("u@x.test SIZE=1", "u@x.test", {"SIZE": "1"}),
        ('"a b"@x.test NOTIFY=NEVER', '"a b"@x.test', {"NOTIFY": "NEVER"}),
        ("<u@x.test> ENVID=ü", "<u@x.test>", {"ENVID": "ü"}),
    ],
)
def test_split_path_and_params(arg: str, path: str, params: dict) -> None:
    assert split_path_and_params(arg) == (path, params)


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "   ",
        "<u@x.test",
        '<"u@x.test>',
        '"a b@x.test',
        "<u@x.test>SIZE=1",
        "<u@x.test>>",
        "<u@x.test> SIZE=",
        "<u@x.test> =1",
        "<u@x.test> -SIZE=1",
        "<u@x.test> SI_ZE=1",
        "<u@x.test> SIZE=a=b",
        "<u@x.test> X=\x01",
        "<u@x.test>\tSIZE=1",
        "<u@x.test> SIZE=1 size=2",
        "<u@x.test> SMTPUTF8 SMTPUTF8",
    ],
)
def test_split_errors(arg: str) -> None:
    with pytest.raises(AddressError) as exc:
        split_path_and_params(arg)
    assert (exc.value.code, exc.value.enhanced) == (501, "5.5.4")


def test_duplicate_parameter_named() -> None:
    with pytest.raises(AddressError, match="SIZE"):
        split_path_and_params("<u@x.test> SIZE=1 size=2")


# --- resolution -------------------------------------------------------------

@pytest.mark.parametrize(
    ("domain", "normal"),
    [
        ("MX.Example.Test.", "mx.example.test"),
        ("a..", "a."),
        ("[192.0.2.1]", "[192.0.2.1]"),
        ("[IPv6:2001:DB8:0:0:0:0:0:25]", "[IPv6:2001:db8::25]"),
        ("[ipv6:::1]", "[IPv6:::1]"),
        ("[Garbage]", "[garbage]"),
        ("", ""),
    ],
)
def test_normalise_domain(domain: str, normal: str) -> None:
    assert normalise_domain(domain) == normal


RELAY_TRICKS = [
    "<u%{X}@[{IP}]>",
    "<u%{X}@{T}>",
    '<"u@{X}">',
    '<"u%{X}">',
    "<u@{X}@[{IP}]>",
    '<"u@{X}"@[{IP}]>',
    "<u@{X}@{T}>",
    "<@[{IP}]:u@{X}>",
    "<@{T}:u@{X}>",
    "<{X}!u>",
    "<{X}!u@[{IP}]>",
    "<{X}!u@{T}>",
    # variants no public tester sends
    "<U%CANARY.TEST@MX.EXAMPLE.TEST>",
    '<"u%{X}."@{T}.>',
    "<u%{X}@[IPv6:2001:DB8:0::25]>",
    "u%{X}@{T}",
    "<{T}!{X}!u@{T}>",
    "<u%{X}%{T}@{T}>",
    '<"u%{X}"@{T}>',
    '<"{X}!u"@{T}>',
    "<@{T},@[{IP}]:u%{X}@{T}>",
]


@pytest.mark.parametrize("path", RELAY_TRICKS)
def test_relay_tricks_resolve_remote(path: str) -> None:
    res = _resolve_text(_fill(path))
    assert (res.local.lower(), res.domain, res.is_local, res.routed) == ("u", X, False, False)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("<{X}!u%{T}@{T}>", "u%{T}@{X}"),  # bang before percent: the hop is X
        ("<u%{T}%{X}@{T}>", "u%{T}@{X}"),
        ('<"u@{T}"@{X}>', '"u@{T}"@{X}'),  # remote domain: its local part is not ours to read
        ("<{X}!{X}!u@[{IP}]>", "{X}!u@{X}"),
    ],
)
def test_routed_remote(path: str, text: str) -> None:
    res = _resolve_text(_fill(path))
    assert (str(res), res.is_local, res.routed) == (_fill(text), False, True)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("<u@[{IP}]>", "u@[{IP}]"),  # R13: the control, really ours
        ("<u@{T}>", "u@{T}"),
        ("<U@MX.Example.Test.>", "U@{T}"),
        ("<u@[IPv6:2001:db8:0:0::25]>", "u@[IPv6:2001:db8::25]"),
        ("<u%{T}@{T}>", "u@{T}"),  # routing through ourselves to ourselves
        ("<{T}!u@[{IP}]>", "u@{T}"),
        ('<"u@[{IP}]"@{T}>', "u@[{IP}]"),
        ('<"a b"@{T}>', '"a b"@{T}'),
    ],
)
def test_local_addresses(path: str, text: str) -> None:
    res = _resolve_text(_fill(path))
    assert res.is_local and not res.routed
    assert str(res) == _fill(text)


@pytest.mark.parametrize("path", ["<a%b@{T}>", "<a@b@{T}>", "<b!a@{T}>", '<"a@b"@{T}>'])
def test_postfix_consequences(path: str) -> None:
    res = _resolve_text(_fill(path))
    assert (res.local, res.domain, res.is_local, res.routed) == ("a", "b", False, False)


# Postfix resolver vectors, "dom" local. Derived by hand from the loop:
# H!H!a[b]: no domain -> treated as local -> leftmost '!' -> H!a[b]@H (H remote, '!' left: routed)
# a[b]%H%H: rightmost '%' -> a[b]%H@H (routed)
# user@[1.2.3.4]@dom, user%[1.2.3.4]@dom, [1.2.3.4]!user@dom -> user@[1.2.3.4]
POSTFIX_VECTORS = [
    ("H!H!a[b]", "H!a[b]", "h", False, True),
    ("a[b]%H%H", "a[b]%H", "h", False, True),
    ("user@[1.2.3.4]@dom", "user", "[1.2.3.4]", False, False),
    ("user%[1.2.3.4]@dom", "user", "[1.2.3.4]", False, False),
    ("[1.2.3.4]!user@dom", "user", "[1.2.3.4]", False, False),
]


@pytest.mark.parametrize(("path", "local", "domain", "is_local", "routed"), POSTFIX_VECTORS)
def test_postfix_vectors(path, local, domain, is_local, routed) -> None:
    res = _resolve_text(path, {"dom"})
    assert (res.local, res.domain, res.is_local, res.routed) == (local, domain, is_local, routed)
    verdict = relay_decision(res, authenticated=False, trusted=False, original=path)
    assert not verdict.accept and verdict.code == 554


@pytest.mark.parametrize("path", ["user@[1.2.3.4]@dom", "user%[1.2.3.4]@dom", "[1.2.3.4]!user@dom"])
def test_postfix_vectors_literal_local(path: str) -> None:
    res = _resolve_text(path, {"dom", "[1.2.3.4]"})
    assert (str(res), res.is_local, res.routed) == ("user@[1.2.3.4]", True, False)


def test_bang_path_through_local_hops() -> None:
    res = _resolve_text("H!H!a[b]", {"h"})
    assert (res.local, res.domain, res.is_local, res.routed) == ("a[b]", "h", True, False)


@pytest.mark.parametrize(
    "box",
    [
        Mailbox("a%", ""),  # a%@
        Mailbox("", ""),  # @ / the null path
        Mailbox("a%", "dom"),  # a%@dom -> a@ (null domain)
        Mailbox("a@", "dom"),  # "a@"@dom
        Mailbox("!u", "dom"),
        Mailbox("u!", "dom"),
        Mailbox("u", ""),  # no domain at all
        Mailbox("user", "1.2.3"),
        Mailbox("user", "1.2.3.4"),
        Mailbox("user", "127.1"),
        Mailbox("user", "0x7f000001"),
        Mailbox("user", "0x7f.0.0.0x1"),
        Mailbox("user", "host.123"),
        Mailbox("user@1.2.3.4", "dom"),
        Mailbox("user%0x7f000001", "dom"),
        Mailbox("u@bad_domain", "dom"),
        Mailbox("u@a..", "dom"),
        Mailbox("u@[1.2.3]", "dom"),
        Mailbox("a%b!c", "dom"),  # bang first: c@a%b, not a domain
        Mailbox("u\r\n", "dom"),
        Mailbox("u", "x\r\n"),
    ],
)
def test_resolve_errors(box: Mailbox) -> None:
    with pytest.raises(AddressError) as exc:
        resolve(box, {"dom"})
    assert (exc.value.code, exc.value.enhanced, exc.value.text) == (501, "5.1.3", "Bad address syntax")


@pytest.mark.parametrize("path", ["a%@", "@", "<a%@>", "<@>"])
def test_null_domain_paths_refused(path: str) -> None:
    with pytest.raises(AddressError) as exc:
        _resolve_text(path, {"dom"})
    assert exc.value.code == 501


def test_numeric_domain_refused_bracketed_accepted() -> None:
    with pytest.raises(AddressError):
        _resolve_text("user@1.2.3", {"dom"})
    with pytest.raises(AddressError):
        _resolve_text("<user@1.2.3.4>", {"dom"})
    assert str(_resolve_text("<user@[1.2.3.4]>", {"dom"})) == "user@[1.2.3.4]"
    assert _resolve_text("<user@1.2.3.example>", {"dom"}).domain == "1.2.3.example"


def test_rewrites_are_bounded() -> None:
    box = Mailbox("u" + "%l" * 5000, "l")
    res = resolve(box, {"l"})
    assert res.is_local and res.routed
    assert not relay_decision(res, authenticated=False, trusted=False, original=str(box)).accept


def test_resolved_str() -> None:
    assert str(Resolved("a@b", "x", False, True)) == '"a@b"@x'
    assert str(Resolved("u", "[IPv6:::1]", True, False)) == "u@[IPv6:::1]"


# --- properties -------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "u", "U", "a", "ü", "%", "!", "@", '"', "[", "]", ":", ".", ",", "\\", " ", "<", ">",
        X, "CANARY.test", T, "MX.Example.Test.", f"[{IP}]", "[IPv6:2001:db8::25]",
        "1.2.3.4", "[1.2.3.4]", "0x7f000001",
    ]
)
_WRAPS = st.sampled_from(
    [
        "{}", "<{}>", "{}@" + T, "<{}@" + T + ".>", "<{}@[" + IP + "]>",
        '<"{}"@' + T + ">", '<"{}">', "<@" + T + ":{}>", "<@[" + IP + "],@a.test:{}@" + T + ">",
    ]
)


_WORDS = st.sampled_from(
    ["u", "U", "ü", X, "CANARY.test", T, "MX.Example.Test.", f"[{IP}]", "[IPv6:2001:DB8::25]",
     "[1.2.3.4]", "1.2.3.4", "x.test", ""]
)
_OPS = st.sampled_from(["%", "!", "@"])


@st.composite
def _addresses(draw) -> str:
    """Mostly well-formed routing chains (word op word op ...), sometimes raw soup."""
    if draw(st.booleans()):
        body = "".join(draw(st.lists(_PIECES, max_size=12)))
    else:
        body = draw(_WORDS) + "".join(op + w for op, w in draw(st.lists(st.tuples(_OPS, _WORDS), max_size=6)))
    return draw(_WRAPS).replace("{}", body)


@settings(max_examples=3000, deadline=None)
@given(_addresses())
def test_untrusted_acceptance_is_always_local(path: str) -> None:
    try:
        res = _resolve_text(path)
    except AddressError:
        return
    verdict = relay_decision(res, authenticated=False, trusted=False, original=path)
    if verdict.accept:
        assert res.is_local and not res.routed
        assert not any(c in res.local for c in "@!%")
        assert res.domain in LOCAL
    else:
        assert (verdict.code, verdict.enhanced) == (554, "5.7.1")
    # what we resolved to is a fixed point: resolving it again changes nothing
    assert resolve(Mailbox(res.local, res.domain), LOCAL) == res


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300), st.booleans())
def test_only_address_errors(arg: str, allow_null: bool) -> None:
    try:
        path, _ = split_path_and_params(arg)
        resolve(parse_path(path, allow_null=allow_null), LOCAL)
    except AddressError:
        pass


@settings(max_examples=500, deadline=None)
@given(_addresses(), st.booleans())
def test_only_address_errors_structured(path: str, allow_null: bool) -> None:
    try:
        resolve(parse_path(path, allow_null=allow_null), LOCAL)
    except AddressError:
        pass


_LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True) | st.sampled_from(
    ["bücher", "例子", "xn--bcher-kva"]
)
_HOSTNAME = st.builds(
    lambda labels, dot: ".".join(labels) + dot,
    st.lists(_LABEL, min_size=1, max_size=4).filter(lambda ls: not ls[-1].isdigit()),
    st.sampled_from(["", "."]),
)
_DOMAIN = st.one_of(
    st.just(""),
    _HOSTNAME,
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[ipv6:{ip.exploded}]"),
)
_LOCAL = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30
) | st.lists(_PIECES, min_size=1, max_size=8).map("".join)


@settings(max_examples=1500, deadline=None)
@given(_LOCAL, _DOMAIN)
def test_round_trip(local: str, domain: str) -> None:
    box = Mailbox(local, domain)
    assume(len(str(box).encode()) + 2 <= 256)
    assert parse_path(str(box), allow_null=False) == box
    assert parse_path(f"<{box}>", allow_null=True) == box
    path, params = split_path_and_params(f"<{box}> SIZE=1")
    assert parse_path(path, allow_null=False) == box and params == {"SIZE": "1"}
