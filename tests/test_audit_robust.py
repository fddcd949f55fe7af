"""Whatever the files hold, the audit returns a report or an AuditError naming the file: never a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayguard.audit import AuditError, Report, audit

FIXTURES = Path(__file__).parent / "fixtures" / "audit"

# Lines built from the characters and words configuration files are made of.
WORDS = st.sampled_from([
    "=", ":", ",", " ", "\t", "$", "{", "}", "(", ")", "`", "'", '"', "#", "!", "%", "@", "\\", "/", ".", "*", "<;", "-o",
    "permit", "reject_unauth_destination", "mynetworks", "relay_domains", "0.0.0.0/0", "[::]/0", "hash:", "cidr:",
    "${a?{b}:{c}}", "$(x)", "smtpd", "inet", "unix", "FEATURE(", "define(", "dnl", "RELAY", "Connect:", "To:",
    "accept", "deny", "require", "domains", "hosts", "begin acl", "acl_check_rcpt:", ".ifdef", ".endif", ".include",
    "allow", "RELAYCLIENT", "\n", "\n  ", "x", "1", "127.", "com",
])
TEXT = st.lists(WORDS, max_size=40).map("".join)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run(mta: str, files: dict[str, str], target: str = "") -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        try:
            report = audit(mta, root / target if target else root)
        except AuditError as e:
            assert e.file.startswith(str(root)) and str(e)
            return
        assert isinstance(report, Report)
        report.to_dict()


@SETTINGS
@given(main=TEXT, master=TEXT, table=TEXT)
def test_postfix_never_crashes(main: str, master: str, table: str) -> None:
    base = (FIXTURES / "postfix" / "closed" / "main.cf").read_text()
    _run("postfix", {"main.cf": base + main + "\nsmtpd_relay_restrictions = check_client_access cidr:/etc/postfix/t, " + main,
                     "master.cf": "smtp inet n - y - - smtpd\n" + master, "t": table})


@SETTINGS
@given(mc=TEXT, access=TEXT)
def test_sendmail_never_crashes(mc: str, access: str) -> None:
    _run("sendmail", {"sendmail.mc": "FEATURE(`access_db')dnl\n" + mc, "access": access, "relay-domains": access}, "sendmail.mc")
    _run("sendmail", {"sendmail.cf": "V10/Berkeley\n" + mc, "access": access}, "sendmail.cf")


@SETTINGS
@given(main=TEXT, acl=TEXT)
def test_exim_never_crashes(main: str, acl: str) -> None:
    _run("exim", {"exim4.conf": "acl_smtp_rcpt = acl_check_rcpt\n" + main + "\nbegin acl\nacl_check_rcpt:\n  accept " + acl}, "exim4.conf")


@SETTINGS
@given(rcpthosts=TEXT, rules=TEXT)
def test_qmail_never_crashes(rcpthosts: str, rules: str) -> None:
    _run("qmail", {"control/rcpthosts": rcpthosts, "control/percenthack": rcpthosts, "tcp.smtp": rules})
