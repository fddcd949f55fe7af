"""The relay rule and the trusted-network check."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from relayguard.addr import Resolved, parse_path, resolve
from relayguard.relay import RelayDecision, is_trusted, relay_decision

T = "mx.example.test"
IP = "192.0.2.1"
X = "canary.test"
LOCAL = frozenset({T, f"[{IP}]"})

KINDS = {
    "local": Resolved("u", T, is_local=True, routed=False),
    "local-routed": Resolved("u%x", T, is_local=True, routed=True),
    "remote": Resolved("u", X, is_local=False, routed=False),
    "remote-routed": Resolved("u!v", X, is_local=False, routed=True),
}
CLIENTS = {"untrusted": (False, False), "authenticated": (True, False), "trusted": (False, True), "both": (True, True)}


@pytest.mark.parametrize(("kind", "client"), list(itertools.product(KINDS, CLIENTS)))
def test_rule_table(kind: str, client: str) -> None:
    authenticated, trusted = CLIENTS[client]
    verdict = relay_decision(KINDS[kind], authenticated=authenticated, trusted=trusted, original="u@x")
    expect_accept = kind == "local" or client != "untrusted"
    assert verdict.accept is expect_accept
    if expect_accept:
        assert verdict == RelayDecision(True, 250, "2.1.5", "Ok")
    else:
        assert verdict == RelayDecision(False, 554, "5.7.1", "<u@x>: Relay access denied")


def test_reply_text_is_postfix_style() -> None:
    res = resolve(parse_path("<a%b@x>", allow_null=False), {"x"})
    verdict = relay_decision(res, authenticated=False, trusted=False, original="a%b@x")
    assert f"{verdict.code} {verdict.enhanced} {verdict.text}" == "554 5.7.1 <a%b@x>: Relay access denied"


def test_reply_text_stays_on_one_line() -> None:
    verdict = relay_decision(KINDS["remote"], authenticated=False, trusted=False, original="u@x\r\n250 Ok")
    assert "\r" not in verdict.text and "\n" not in verdict.text


CATALOGUE = [
    ("R1", "u%{X}@[{IP}]"),
    ("R2", "u%{X}@{T}"),
    ("R3", '"u@{X}"'),
    ("R4", '"u%{X}"'),
    ("R5", "u@{X}@[{IP}]"),
    ("R6", '"u@{X}"@[{IP}]'),
    ("R7", "u@{X}@{T}"),
    ("R8", "@[{IP}]:u@{X}"),
    ("R9", "@{T}:u@{X}"),
    ("R10", "{X}!u"),
    ("R11", "{X}!u@[{IP}]"),
    ("R12", "{X}!u@{T}"),
    ("S1-S9", "u@{X}"),
]


def _fill(template: str) -> str:
    return template.replace("{T}", T).replace("{IP}", IP).replace("{X}", X)


@pytest.mark.parametrize(("trick", "rcpt"), CATALOGUE)
def test_catalogue_refused_for_untrusted(trick: str, rcpt: str) -> None:
    original = _fill(rcpt)
    res = resolve(parse_path(f"<{original}>", allow_null=False), LOCAL)
    verdict = relay_decision(res, authenticated=False, trusted=False, original=original)
    assert (verdict.accept, verdict.code, verdict.enhanced) == (False, 554, "5.7.1")
    assert verdict.text == f"<{original}>: Relay access denied"
    assert relay_decision(res, authenticated=True, trusted=False, original=original).accept


def test_catalogue_control_accepted() -> None:
    res = resolve(parse_path(f"<u@[{IP}]>", allow_null=False), LOCAL)  # R13
    assert relay_decision(res, authenticated=False, trusted=False, original=f"u@[{IP}]").accept


NETS = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"), ipaddress.ip_network("fe80::/10")]


@pytest.mark.parametrize(
    ("ip", "networks", "trusted"),
    [
        ("127.0.0.1", NETS, True),
        ("127.9.9.9", NETS, True),
        ("10.0.0.1", NETS, False),
        ("::1", NETS, True),
        ("::2", NETS, False),
        ("::ffff:127.0.0.1", NETS, True),
        ("::FFFF:7F00:1", NETS, True),
        ("::ffff:10.0.0.1", NETS, False),
        ("::ffff:10.0.0.1", [ipaddress.ip_network("::ffff:0:0/96")], True),
        ("fe80::1%eth0", NETS, True),
        ("127.0.0.1", [ipaddress.ip_network("::/0")], False),
        ("127.0.0.1", [], False),
        ("not-an-ip", NETS, False),
        ("", NETS, False),
    ],
)
def test_is_trusted(ip: str, networks, trusted: bool) -> None:
    assert is_trusted(ip, networks) is trusted
