"""Exim configuration audit: the reader (macros, .ifdef, .include, lists, ACLs) and every rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayguard.audit import AuditError, Severity, audit
from relayguard.audit.exim import split_list

FIXTURES = Path(__file__).parent / "fixtures" / "audit" / "exim"

MAIN = """\
primary_hostname = mx.example.org
domainlist local_domains = @ : localhost : example.org
domainlist relay_to_domains =
hostlist   relay_from_hosts = <; 127.0.0.1 ; ::1
acl_smtp_rcpt = acl_check_rcpt
"""
ACL = """\
acl_check_rcpt:
  accept  hosts = :
  deny    domains       = +local_domains
          local_parts   = ^[.] : ^.*[@%!/|]
  require verify        = sender
  accept  hosts         = +relay_from_hosts
  accept  authenticated = *
  require message = relay not permitted
          domains = +local_domains : +relay_to_domains
  accept
"""


def write(tmp: Path, main: str = "", acl: str = ACL, before_relay_check: str = "") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    acl = acl.replace("  require message = relay not permitted", before_relay_check + "  require message = relay not permitted")
    (tmp / "exim4.conf").write_text(MAIN + main + "\nbegin acl\n\n" + acl + "\nbegin routers\n\ndnslookup:\n  driver = dnslookup\n")
    return tmp / "exim4.conf"


def found(path: Path) -> dict[str, Severity]:
    out: dict[str, Severity] = {}
    for f in audit("exim", path).findings:
        if f.rule not in out or f.severity.rank < out[f.rule].rank:
            out[f.rule] = f.severity
    return out


def test_safe_base_is_clean(tmp_path: Path) -> None:
    report = audit("exim", write(tmp_path))
    assert report.findings == [] and report.verdict == "clean"


def test_list_syntax() -> None:
    assert split_list("a : b::c : ") == ["a", "b:c", ""]
    assert split_list("<; 127.0.0.1 ; ::1") == ["127.0.0.1", "::1"]
    assert split_list("") == []
    assert split_list(":") == ["", ""]


CASES = [
    # an rcpt ACL that accepts before (or without) the relay require
    ("", ACL, "  accept  verify = recipient\n", "exim/rcpt-acl-open", Severity.OPEN_RELAY),
    ("", ACL, "  accept  senders = postmaster@example.org\n", "exim/rcpt-acl-open", Severity.OPEN_RELAY),
    ("", ACL, "  accept  domains = !+local_domains\n", "exim/rcpt-acl-open", Severity.OPEN_RELAY),
    ("", ACL, "  accept  condition = ${if eq{$acl_m0}{1}}\n", "exim/rcpt-acl-conditional", Severity.WEAKNESS),
    ("", "acl_check_rcpt:\n  accept  hosts = :\n  accept\n", "", "exim/rcpt-acl-open", Severity.OPEN_RELAY),
    ("", "acl_check_rcpt:\n  require verify = sender\n  accept  local_parts = postmaster\n", "", "exim/rcpt-acl-open", Severity.OPEN_RELAY),
    ("", "acl_check_rcpt:\n  accept  acl = acl_always\n  deny\nacl_always:\n  accept\n", "", "exim/rcpt-acl-open", Severity.OPEN_RELAY),
    ("", "acl_check_rcpt:\n  deny    dnslists = zen.spamhaus.org\n  accept\n", "", "exim/rcpt-acl-open", Severity.OPEN_RELAY),
    # relay_from_hosts = * or broad networks
    ("hostlist relay_from_hosts = *\n", ACL, "", "exim/hostlist-wide", Severity.OPEN_RELAY),
    ("hostlist relay_from_hosts = <; 127.0.0.1 ; 0.0.0.0/0\n", ACL, "", "exim/hostlist-wide", Severity.OPEN_RELAY),
    ("hostlist relay_from_hosts = 127.0.0.1 : 2001::db8::::/16\n", ACL, "", "exim/hostlist-wide", Severity.OPEN_RELAY),
    ("hostlist relay_from_hosts = 127.0.0.1 : 81.2.69.0/28\n", ACL, "", "exim/hostlist-wide", Severity.WEAKNESS),
    ("hostlist relay_from_hosts = 127.0.0.1 : 10.0.0.0/8\n", ACL, "", "exim/hostlist-wide", Severity.INFO),
    ("domainlist relay_to_domains = *\n", ACL, "", "exim/domainlist-wide", Severity.OPEN_RELAY),
    ("domainlist relay_to_domains = *.com\n", ACL, "", "exim/domainlist-wide", Severity.OPEN_RELAY),
    ("domainlist relay_to_domains = @mx_any\n", ACL, "", "exim/domainlist-mx", Severity.WEAKNESS),
    # percent hack, domain literals
    ("percent_hack_domains = *\n", ACL, "", "exim/percent-hack", Severity.WEAKNESS),
    ("percent_hack_domains = example.org\n", ACL, "", "exim/percent-hack", Severity.INFO),
    ("allow_domain_literals\n", ACL, "", "exim/domain-literals", Severity.WEAKNESS),
    ("allow_domain_literals = yes\n", ACL, "", "exim/domain-literals", Severity.WEAKNESS),
    # unknown settings are information
    ("no_such_option = 1\n", ACL, "", "exim/unknown-option", Severity.INFO),
    ("", ACL, "  warn    frobnicate = yes\n", "exim/unknown-condition", Severity.INFO),
    ("acl_smtp_rcpt = acl_nonexistent\n", ACL, "", "exim/rcpt-acl-missing", Severity.WEAKNESS),
    ("acl_smtp_rcpt = ${if eq{1}{1}{acl_check_rcpt}}\n", ACL, "", "exim/rcpt-acl-expanded", Severity.WEAKNESS),
]


@pytest.mark.parametrize(("main", "acl", "before", "rule", "severity"), CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_rule_triggered_by_minimal_config(tmp_path: Path, main: str, acl: str, before: str, rule: str, severity: Severity) -> None:
    result = found(write(tmp_path, main, acl, before))
    assert result.get(rule) == severity, result
    report = audit("exim", tmp_path / "exim4.conf")
    assert report.open_relay == (Severity.OPEN_RELAY in result.values())
    assert all(f.why and f.fix and f.file and f.line for f in report.findings)


def test_no_rcpt_acl_refuses_everything(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace("acl_smtp_rcpt = acl_check_rcpt\n", ""))
    assert found(path) == {"exim/no-rcpt-acl": Severity.INFO}


def test_safe_variants(tmp_path: Path) -> None:
    variants = [
        # the wiki's deny form of the relay check
        ("", "acl_check_rcpt:\n  accept  hosts = :\n  deny    message = relay not permitted\n          !domains = +local_domains : +relay_to_domains\n"
             "          !authenticated = *\n          !hosts = +relay_from_hosts\n  accept\n", ""),
        ("", "acl_check_rcpt:\n  deny    domains = !+local_domains\n  accept\n", ""),
        ("", ACL, "  accept  domains = +local_domains\n          verify = recipient\n"),
        ("", ACL, "  accept  local_parts = postmaster\n          domains = +local_domains\n"),
        ("", "acl_check_rcpt:\n  accept  domains = +local_domains\n  accept  hosts = +relay_from_hosts\n", ""),
        ("local_interfaces = <; 127.0.0.1 ; ::1\nhostlist relay_from_hosts = *\n", ACL, ""),  # loopback only: info
        ("", ACL, "  accept  dnslists = list.dnswl.org\n"),  # a stranger cannot list itself on an allow list
        ("", "acl_check_rcpt:\n  deny    dnslists = zen.spamhaus.org\n  require domains = +local_domains\n  accept\n", ""),
    ]
    for i, (main, acl, before) in enumerate(variants):
        report = audit("exim", write(tmp_path / str(i), main, acl, before))
        assert not report.open_relay, (i, [(f.rule, f.why) for f in report.findings])
        assert report.verdict in ("clean",), (i, [(f.rule, f.why) for f in report.findings])


def test_macros_ifdef_and_include(tmp_path: Path) -> None:
    (tmp_path / "relay.conf").write_text("hostlist relay_from_hosts = RELAY_NETS\n")
    path = tmp_path / "exim4.conf"
    path.write_text(MAIN.replace("hostlist   relay_from_hosts = <; 127.0.0.1 ; ::1\n", "")
                    + "RELAY_NETS = 127.0.0.1 : 0.0.0.0/0\n.ifdef RELAY_NETS\n.include /etc/exim4/relay.conf\n.else\nnever_users = root\n.endif\n"
                    + ".ifdef NOT_DEFINED\nbroken line without equals\n.endif\n"
                    + "\nbegin acl\n\n" + ACL)
    report = audit("exim", path)
    [f] = [f for f in report.findings if f.rule == "exim/hostlist-wide"]
    assert (f.file, f.line, f.severity) == (str(tmp_path / "relay.conf"), 1, Severity.OPEN_RELAY)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("primary_hostname = x\n.ifdef FOO\n", 2, ".endif missing"),
    ("primary_hostname = x\n.endif\n", 2, ".endif without matching"),
    ("primary_hostname = x\nbegin frobs\n", 2, "unknown section name"),
    ("primary_hostname = x\nbegin acl\n  accept hosts = :\n", 3, "before any ACL name"),
    ("primary_hostname = x\nbegin acl\nacl_check_rcpt:\n  acept hosts = :\n", 4, "unknown ACL verb"),
    ("primary_hostname = x\nbegin acl\nacl_check_rcpt:\n  accept hosts\n", 4, "missing '='"),
    ("primary_hostname = x\nThis is not an option\n", 2, "malformed"),
    ("domainlist local_domains\n", 1, "malformed domainlist"),
    ("primary_hostname = x\n.include /etc/exim4/missing.conf\n", 2, "not found"),
])
def test_malformed(tmp_path: Path, text: str, line: int, message: str) -> None:
    (tmp_path / "exim4.conf").write_text(text)
    with pytest.raises(AuditError) as e:
        audit("exim", tmp_path / "exim4.conf")
    assert (e.value.file, e.value.line) == (str(tmp_path / "exim4.conf"), line), str(e.value)
    assert message in str(e.value)


def test_fixtures() -> None:
    closed = audit("exim", FIXTURES / "closed")
    assert closed.verdict == "clean", [(f.rule, f.why) for f in closed.findings]
    opened = audit("exim", FIXTURES / "open")
    assert opened.open_relay
    assert opened.rules() == {"exim/hostlist-wide", "exim/rcpt-acl-open", "exim/percent-hack", "exim/domain-literals"}
    [acl] = [f for f in opened.findings if f.rule == "exim/rcpt-acl-open"]
    assert "verify = recipient" in acl.setting
