"""qmail configuration audit: rcpthosts, morercpthosts, percenthack, tcp.smtp RELAYCLIENT rules, run scripts."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayguard.audit import AuditError, Severity, audit
from relayguard.audit.qmail import rule_network

FIXTURES = Path(__file__).parent / "fixtures" / "audit" / "qmail"
SAFE_RULES = '127.:allow,RELAYCLIENT=""\n:allow\n'


def write(tmp: Path, rcpthosts: str | None = "example.org\n.example.org\n", rules: str | None = SAFE_RULES,
          files: dict[str, str] | None = None) -> Path:
    (tmp / "control").mkdir(parents=True, exist_ok=True)
    if rcpthosts is not None:
        (tmp / "control" / "rcpthosts").write_text(rcpthosts)
    if rules is not None:
        (tmp / "tcp.smtp").write_text(rules)
    for name, text in (files or {}).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    return tmp


def found(path: Path, **kw: object) -> dict[str, Severity]:
    out: dict[str, Severity] = {}
    for f in audit("qmail", path, **kw).findings:  # type: ignore[arg-type]
        if f.rule not in out or f.severity.rank < out[f.rule].rank:
            out[f.rule] = f.severity
    return out


def test_safe_base_is_clean(tmp_path: Path) -> None:
    report = audit("qmail", write(tmp_path))
    assert report.findings == [] and report.verdict == "clean"


@pytest.mark.parametrize(("address", "network"), [
    ("", "0.0.0.0/0"), ("127.", "127.0.0.0/8"), ("192.168.1.", "192.168.1.0/24"), ("10.1.2.3", "10.1.2.3/32"),
    ("1.2.3.0-63", "1.2.3.0/26"), ("=host.example.org", None),
])
def test_rule_addresses(address: str, network: str | None) -> None:
    net = rule_network(address)
    assert (str(net) if net else None) == network


CASES = [
    (None, SAFE_RULES, {}, "qmail/no-rcpthosts", Severity.OPEN_RELAY),
    ("example.org\n.com\n", SAFE_RULES, {}, "qmail/rcpthosts-wide", Severity.OPEN_RELAY),
    ("example.org\n", SAFE_RULES, {"control/morercpthosts": ".net\n"}, "qmail/rcpthosts-wide", Severity.OPEN_RELAY),
    ("", SAFE_RULES, {}, "qmail/empty-rcpthosts", Severity.INFO),
    ("example.org\n", '127.:allow,RELAYCLIENT=""\n:allow,RELAYCLIENT=""\n', {}, "qmail/relayclient-wide", Severity.OPEN_RELAY),
    ("example.org\n", '127.:allow,RELAYCLIENT=""\n24.:allow,RELAYCLIENT=""\n:allow\n', {}, "qmail/relayclient-wide", Severity.OPEN_RELAY),
    ("example.org\n", '127.:allow,RELAYCLIENT=""\n81.2.69.:allow,RELAYCLIENT=""\n:allow\n', {}, "qmail/relayclient-wide", Severity.WEAKNESS),
    ("example.org\n", '127.:allow,RELAYCLIENT=""\n10.:allow,RELAYCLIENT=""\n:allow\n', {}, "qmail/relayclient-wide", Severity.INFO),
    ("example.org\n", '=:allow,RELAYCLIENT=""\n:allow\n', {}, "qmail/relayclient-wide", Severity.OPEN_RELAY),
    ("example.org\n", '=.example.org:allow,RELAYCLIENT=""\n:allow\n', {}, "qmail/relayclient-by-name", Severity.WEAKNESS),
    ("example.org\n", SAFE_RULES, {"control/percenthack": "example.org\n"}, "qmail/percenthack", Severity.OPEN_RELAY),
    ("example.org\n", SAFE_RULES, {"control/percenthack": "other.example\n"}, "qmail/percenthack", Severity.WEAKNESS),
    ("example.org\n", None, {"supervise/qmail-smtpd/run": "#!/bin/sh\nexec env RELAYCLIENT= tcpserver 0 smtp qmail-smtpd\n"},
     "qmail/relayclient-global", Severity.OPEN_RELAY),
    ("example.org\n", None, {}, "qmail/no-tcprules", Severity.INFO),
]


@pytest.mark.parametrize(("rcpthosts", "rules", "files", "rule", "severity"), CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_rule_triggered_by_minimal_config(tmp_path: Path, rcpthosts: str | None, rules: str | None, files: dict[str, str], rule: str, severity: Severity) -> None:
    result = found(write(tmp_path, rcpthosts, rules, files))
    assert result.get(rule) == severity, result
    report = audit("qmail", tmp_path)
    assert report.open_relay == (Severity.OPEN_RELAY in result.values())
    assert all(f.why and f.fix and f.file for f in report.findings)


def test_rules_named_by_the_run_script(tmp_path: Path) -> None:
    d = write(tmp_path, rules=None, files={
        "supervise/qmail-smtpd/run": "#!/bin/sh\nexec tcpserver -v -R -x /etc/tcp.smtp.cdb -c 20 0 smtp /var/qmail/bin/qmail-smtpd\n",
        "tcp.smtp": ':allow,RELAYCLIENT=""\n'})
    [f] = [f for f in audit("qmail", d).findings if f.rule == "qmail/relayclient-wide"]
    assert (f.file, f.line) == (str(d / "tcp.smtp"), 1)


def test_explicit_tcprules_option(tmp_path: Path) -> None:
    d = write(tmp_path, rules=None)
    rules = tmp_path / "elsewhere.smtp"
    rules.write_text('127.:allow,RELAYCLIENT=""\n:allow,RELAYCLIENT=""\n')
    assert found(d, tcprules=rules)["qmail/relayclient-wide"] is Severity.OPEN_RELAY


@pytest.mark.parametrize(("rules", "line"), [("127.:allow\nno colon here\n", 2), ("127.:permit\n", 1), ('127.:allow,RELAYCLIENT\n', 1)])
def test_malformed_tcprules(tmp_path: Path, rules: str, line: int) -> None:
    d = write(tmp_path, rules=rules)
    with pytest.raises(AuditError) as e:
        audit("qmail", d)
    assert (e.value.file, e.value.line) == (str(d / "tcp.smtp"), line)
    assert "unable to parse" in str(e.value)


def test_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(AuditError, match="qmail folder"):
        audit("qmail", tmp_path / "file")


def test_fixtures() -> None:
    assert audit("qmail", FIXTURES / "closed").verdict == "clean"
    opened = audit("qmail", FIXTURES / "open")
    assert opened.open_relay
    assert opened.rules(Severity.OPEN_RELAY) == {"qmail/no-rcpthosts", "qmail/relayclient-wide", "qmail/percenthack"}
