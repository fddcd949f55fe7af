"""sendmail configuration audit: .mc and .cf readers, access and relay-domains files, every rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayguard.audit import AuditError, Severity, audit

FIXTURES = Path(__file__).parent / "fixtures" / "audit" / "sendmail"

SAFE_MC = """\
divert(-1)dnl
# a minimal relay-safe .mc
divert(0)dnl
include(`/usr/share/sendmail/cf/m4/cf.m4')dnl
OSTYPE(`linux')dnl
FEATURE(`access_db')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""
SAFE_ACCESS = "Connect:127.0.0.1 RELAY\nConnect:localhost RELAY\n"


def write(tmp: Path, mc_extra: str = "", access: str = SAFE_ACCESS, relay_domains: str | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "sendmail.mc").write_text(SAFE_MC.replace("MAILER(`local')dnl\n", mc_extra + "MAILER(`local')dnl\n"))
    (tmp / "access").write_text(access)
    if relay_domains is not None:
        (tmp / "relay-domains").write_text(relay_domains)
    return tmp / "sendmail.mc"


def found(path: Path) -> dict[str, Severity]:
    out: dict[str, Severity] = {}
    for f in audit("sendmail", path).findings:
        if f.rule not in out or f.severity.rank < out[f.rule].rank:
            out[f.rule] = f.severity
    return out


def test_safe_base_is_clean(tmp_path: Path) -> None:
    report = audit("sendmail", write(tmp_path))
    assert report.findings == [] and report.verdict == "clean"


CASES = [
    ("FEATURE(`promiscuous_relay')dnl\n", SAFE_ACCESS, None, "sendmail/promiscuous_relay", Severity.OPEN_RELAY),
    ("FEATURE(relay_local_from)dnl\n", SAFE_ACCESS, None, "sendmail/relay_local_from", Severity.OPEN_RELAY),
    ("FEATURE(`loose_relay_check')dnl\n", SAFE_ACCESS, None, "sendmail/loose_relay_check", Severity.OPEN_RELAY),
    ("FEATURE(`relay_entire_domain')dnl\n", SAFE_ACCESS, None, "sendmail/relay_entire_domain", Severity.WEAKNESS),
    ("FEATURE(`relay_based_on_MX')dnl\n", SAFE_ACCESS, None, "sendmail/relay_based_on_MX", Severity.WEAKNESS),
    ("FEATURE(`accept_unresolvable_domains')dnl\n", SAFE_ACCESS, None, "sendmail/accept_unresolvable_domains", Severity.WEAKNESS),
    ("FEATURE(`relay_mail_from')dnl\n", SAFE_ACCESS, None, "sendmail/relay_mail_from", Severity.WEAKNESS),
    ("FEATURE(`relay_mail_from')dnl\n", SAFE_ACCESS + "From:boss@example.org RELAY\n", None, "sendmail/relay_mail_from", Severity.OPEN_RELAY),
    ("", SAFE_ACCESS + "Connect:62 RELAY\n", None, "sendmail/access-relay", Severity.OPEN_RELAY),
    ("", SAFE_ACCESS + "62.104.5 RELAY\n", None, "sendmail/access-relay", Severity.WEAKNESS),
    ("", SAFE_ACCESS + "Connect:192.168 RELAY\n", None, "sendmail/access-relay", Severity.INFO),
    ("", SAFE_ACCESS + "Connect:IPv6:2001 RELAY\n", None, "sendmail/access-relay", Severity.OPEN_RELAY),
    ("", SAFE_ACCESS + "To:com RELAY\n", None, "sendmail/access-relay", Severity.OPEN_RELAY),
    ("", SAFE_ACCESS + "net RELAY\n", None, "sendmail/access-relay", Severity.OPEN_RELAY),
    ("", SAFE_ACCESS, "partner.example.net\norg\n", "sendmail/relay-domains-wide", Severity.OPEN_RELAY),
    ("", SAFE_ACCESS, "partner.example.net\n81.2\n", "sendmail/relay-domains-wide", Severity.OPEN_RELAY),
    ("RELAY_DOMAIN(`partner.example.net com')dnl\n", SAFE_ACCESS, None, "sendmail/relay-domains-wide", Severity.OPEN_RELAY),
    ("define(`confAUTH_MECHANISMS', `LOGIN PLAIN')dnl\n", SAFE_ACCESS, None, "sendmail/auth-plaintext", Severity.WEAKNESS),
    ("FEATURE(`no_such_thing')dnl\n", SAFE_ACCESS, None, "sendmail/unknown-feature", Severity.INFO),
]


@pytest.mark.parametrize(("mc", "access", "relay_domains", "rule", "severity"), CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_rule_triggered_by_minimal_config(tmp_path: Path, mc: str, access: str, relay_domains: str | None, rule: str, severity: Severity) -> None:
    result = found(write(tmp_path, mc, access, relay_domains))
    assert result.get(rule) == severity, result
    report = audit("sendmail", tmp_path / "sendmail.mc")
    assert report.open_relay == (severity is Severity.OPEN_RELAY)
    assert all(f.why and f.fix and f.file for f in report.findings)


def test_access_entries_point_at_their_line(tmp_path: Path) -> None:
    report = audit("sendmail", write(tmp_path, access=SAFE_ACCESS + "# wide\nConnect:62 RELAY\n"))
    [f] = report.findings
    assert (f.file, f.line) == (str(tmp_path / "access"), 4)


def test_safe_variants(tmp_path: Path) -> None:
    cases = [
        ("define(`confAUTH_MECHANISMS', `LOGIN PLAIN')dnl\ndefine(`confAUTH_OPTIONS', `A p')dnl\n", SAFE_ACCESS, None),
        ("", SAFE_ACCESS + "To:partner.example.net RELAY\nConnect:203.0.113.5 RELAY\nFrom:x@example.org REJECT\n", "partner.example.net\nlocalhost\n"),
        ("dnl FEATURE(`promiscuous_relay')\n# FEATURE(`promiscuous_relay') in a comment\n", SAFE_ACCESS, None),
    ]
    for i, (mc, access, rd) in enumerate(cases):
        report = audit("sendmail", write(tmp_path / str(i), mc, access, rd))
        assert report.verdict == "clean", [(f.rule, f.setting) for f in report.findings]


def test_loopback_only_daemon_is_not_an_open_relay(tmp_path: Path) -> None:
    mc = "DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Port=smtp, Addr=127.0.0.1')dnl\nFEATURE(`promiscuous_relay')dnl\n"
    result = found(write(tmp_path, mc))
    assert result["sendmail/promiscuous_relay"] is Severity.INFO


def test_access_file_without_access_db(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(SAFE_MC.replace("FEATURE(`access_db')dnl\n", ""))
    assert found(path) == {"sendmail/access-unused": Severity.INFO}


@pytest.mark.parametrize(("text", "line", "message"), [
    ("FEATURE(`access_db')dnl\nFEATURE(`relay_local_from'\nMAILER(`smtp')dnl\n", 2, "missing ')'"),
    ("FEATURE(`access_db')dnl\ndefine(`confX', `unterminated)dnl\n", 2, "unterminated m4 quote"),
    ("FEATURE()dnl\n", 1, "without a feature name"),
])
def test_malformed_mc(tmp_path: Path, text: str, line: int, message: str) -> None:
    (tmp_path / "sendmail.mc").write_text(text)
    with pytest.raises(AuditError) as e:
        audit("sendmail", tmp_path / "sendmail.mc")
    assert (e.value.file, e.value.line) == (str(tmp_path / "sendmail.mc"), line)
    assert message in str(e.value)


def test_malformed_access_file(tmp_path: Path) -> None:
    write(tmp_path, access="Connect:127.0.0.1 RELAY\nlonely-key\n")
    with pytest.raises(AuditError) as e:
        audit("sendmail", tmp_path / "sendmail.mc")
    assert (e.value.file, e.value.line) == (str(tmp_path / "access"), 2)


def test_malformed_cf(tmp_path: Path) -> None:
    text = (FIXTURES / "closed-cf" / "sendmail.cf").read_text() + "Zbogus line\n"
    (tmp_path / "sendmail.cf").write_text(text)
    with pytest.raises(AuditError) as e:
        audit("sendmail", tmp_path / "sendmail.cf")
    assert e.value.line == len(text.splitlines())
    assert "unknown configuration line" in str(e.value)


def test_cf_without_relay_denied_rule(tmp_path: Path) -> None:
    text = (FIXTURES / "closed-cf" / "sendmail.cf").read_text().replace('R$*\t\t\t$#error $@ 5.7.1 $: "550 Relaying denied"\n', "")
    (tmp_path / "sendmail.cf").write_text(text)
    assert found(tmp_path / "sendmail.cf") == {"sendmail/no-relay-check": Severity.OPEN_RELAY,
                                               "sendmail/access-missing": Severity.INFO}


def test_cf_from_before_relay_control(tmp_path: Path) -> None:
    (tmp_path / "sendmail.cf").write_text("V7\nDj$w\nS0\nR$*\t$#local $: $1\n")
    assert found(tmp_path / "sendmail.cf") == {"sendmail/no-relay-check": Severity.OPEN_RELAY}


@pytest.mark.parametrize(("name", "verdict", "rules"), [
    ("closed-mc", "clean", set()),
    ("closed-cf", "clean", set()),
    ("open-mc", "open-relay", {"sendmail/promiscuous_relay", "sendmail/relay_local_from", "sendmail/loose_relay_check",
                               "sendmail/relay_entire_domain", "sendmail/relay_based_on_MX", "sendmail/accept_unresolvable_domains",
                               "sendmail/access-relay", "sendmail/relay-domains-wide", "sendmail/auth-plaintext"}),
    ("open-cf", "open-relay", {"sendmail/promiscuous_relay", "sendmail/relay_local_from", "sendmail/auth-plaintext", "sendmail/access-relay"}),
])
def test_fixtures(name: str, verdict: str, rules: set[str]) -> None:
    report = audit("sendmail", FIXTURES / name)
    assert report.verdict == verdict
    assert report.rules() == rules
