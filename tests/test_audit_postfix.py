"""Postfix configuration audit: the reader (main.cf, master.cf, expansion, defaults) and every rule.

Each rule is triggered by a minimal change to a safe base configuration and is absent from
the base; the fixtures under tests/fixtures/audit/postfix are a realistic open and closed pair.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relayguard.audit import AuditError, Severity, audit
from relayguard.audit import postfix as P

FIXTURES = Path(__file__).parent / "fixtures" / "audit" / "postfix"

SAFE_MAIN = """\
compatibility_level = 3.6
myhostname = mx.example.org
mydomain = example.org
mydestination = $myhostname, localhost
mynetworks = 127.0.0.1/32 [::1]/128
smtpd_forbid_bare_newline = yes
"""
SAFE_MASTER = "smtp      inet  n       -       y       -       -       smtpd\n"


def write(tmp: Path, main: str = "", master: str = "", files: dict[str, str] | None = None, base: bool = True) -> Path:
    """A configuration folder: the safe base plus `main` lines (later lines win, as in Postfix);
    a line `-name` removes that parameter from the base."""
    tmp.mkdir(parents=True, exist_ok=True)
    drop = {line[1:].strip() for line in main.splitlines() if line.startswith("-")}
    kept = "".join(line + "\n" for line in SAFE_MAIN.splitlines() if line.split(" =")[0] not in drop)
    main = "".join(line + "\n" for line in main.splitlines() if not line.startswith("-"))
    (tmp / "main.cf").write_text((kept if base else "") + main)
    (tmp / "master.cf").write_text(SAFE_MASTER + master)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    return tmp


def findings(tmp: Path, **kw: object) -> dict[str, Severity]:
    report = audit("postfix", tmp, **kw)  # type: ignore[arg-type]
    out: dict[str, Severity] = {}
    for f in report.findings:
        if f.rule not in out or f.severity.rank < out[f.rule].rank:
            out[f.rule] = f.severity
    return out


def test_safe_base_has_no_findings(tmp_path: Path) -> None:
    report = audit("postfix", write(tmp_path))
    assert report.findings == []
    assert report.verdict == "clean"


# -- the reader -------------------------------------------------------------------------


def config(main: str, master: str | None = SAFE_MASTER) -> P.PostfixConfig:
    return P.read(main, "main.cf", master, "master.cf", "/etc/postfix")


def test_expansion_forms() -> None:
    cfg = config("myhostname = mx.example.org\na = one\nb = $a ${a} $(a) $$a\nc = ${a?{yes}:{no}} ${zz?{yes}:{no}}\n"
                 "d = ${a:x}${zz:y}\ne = ${a?set}${zz?unset}\n")
    assert cfg.value("b") == "one one one $a"
    assert cfg.value("c") == "yes no"
    assert cfg.value("d") == "y"
    assert cfg.value("e") == "set"
    assert cfg.value("mydomain") == "example.org"
    assert cfg.value("mydestination") == "mx.example.org, localhost.example.org, localhost"


@pytest.mark.parametrize(("level", "relay", "style", "domains"), [
    ("0", "", "subnet", "$mydestination"),
    ("1", "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination", "subnet", "$mydestination"),
    ("2", "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination", "host", ""),
    ("3.6", "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination", "host", ""),
])
def test_defaults_follow_compatibility_level(level: str, relay: str, style: str, domains: str) -> None:
    cfg = config(f"compatibility_level = {level}\nmyhostname = mx.example.org\n")
    assert cfg.value("smtpd_relay_restrictions") == relay
    assert cfg.value("mynetworks_style") == style
    assert cfg.value("relay_domains") == (cfg.value("mydestination") if domains else "")


def test_continuation_comments_and_last_definition_wins() -> None:
    cfg = config("a = 1\nsmtpd_relay_restrictions =\n    permit_mynetworks,\n# comment inside\n    reject_unauth_destination\na = 2\n")
    assert P.split_list(cfg.value("smtpd_relay_restrictions")) == ["permit_mynetworks", "reject_unauth_destination"]
    assert cfg.value("a") == "2"
    assert cfg.setting("a").line == 6


def test_master_overrides_per_service() -> None:
    master = (SAFE_MASTER + "submission inet n - y - - smtpd\n  -o smtpd_sasl_auth_enable=yes\n"
              "  -o { smtpd_relay_restrictions = permit_sasl_authenticated, reject }\n  -o smtpd_client_restrictions=$mua\n")
    cfg = config("mua = permit_sasl_authenticated, reject\n", master)
    smtp, sub = cfg.smtpd_services()
    assert sub.key == "submission/inet"
    assert cfg.value("smtpd_relay_restrictions", sub) == "permit_sasl_authenticated, reject"
    assert cfg.value("smtpd_client_restrictions", sub) == "permit_sasl_authenticated, reject"
    assert cfg.value("smtpd_sasl_auth_enable", smtp) == "no"
    assert cfg.setting("smtpd_sasl_auth_enable", sub).line == 2


@pytest.mark.parametrize(("main", "master", "file", "line", "text"), [
    ("a = 1\nfoo bar\n", SAFE_MASTER, "main.cf", 2, "missing '='"),
    ("relay_domains = ${foo\n", SAFE_MASTER, "main.cf", 1, "truncated macro reference"),
    ("mynetworks = $b\nb = $mynetworks\n", SAFE_MASTER, "main.cf", 1, "unreasonable macro call nesting"),
    ("", "smtp inet n - y\n", "master.cf", 1, "bad field count"),
    ("", "smtp inett n - y - - smtpd\n", "master.cf", 1, "invalid type field"),
    ("", "smtp inet n - y - - smtpd\n  -o foo\n", "master.cf", 1, "missing '='"),
    ("", "smtp inet n - y - - smtpd -o\n", "master.cf", 1, "-o without"),
    ("", "smtp inet n - y - - smtpd -o { a = b\n", "master.cf", 1, "missing '}'"),
])
def test_malformed_input_names_file_and_line(tmp_path: Path, main: str, master: str, file: str, line: int, text: str) -> None:
    (tmp_path / "main.cf").write_text(main)
    (tmp_path / "master.cf").write_text(master)
    with pytest.raises(AuditError) as e:
        audit("postfix", tmp_path)  # expansion errors surface while the rules read the values
    assert e.value.file == str(tmp_path / file)
    assert e.value.line == line
    assert text in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / file}:{line}: ")


def test_missing_main_cf_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no main.cf"):
        audit("postfix", tmp_path)


def test_unreadable_table_file_is_an_error(tmp_path: Path) -> None:
    d = write(tmp_path, "smtpd_relay_restrictions = check_client_access cidr:$config_directory/clients, reject_unauth_destination\n")
    (d / "clients").mkdir()
    with pytest.raises(AuditError, match="is a directory"):
        audit("postfix", d)


def test_malformed_table_names_its_line(tmp_path: Path) -> None:
    d = write(tmp_path, "smtpd_relay_restrictions = check_sender_access hash:/etc/postfix/senders, reject_unauth_destination\n",
              files={"senders": "good.example OK\nlonely\n"})
    with pytest.raises(AuditError) as e:
        audit("postfix", d)
    assert (e.value.file, e.value.line) == (str(d / "senders"), 2)


# -- the rules: one minimal trigger each -----------------------------------------------------

CASES = [
    # mynetworks wider than the host, public, or 0/0
    ("mynetworks = 0.0.0.0/0\n", "", {}, "postfix/mynetworks-wide", Severity.OPEN_RELAY),
    ("mynetworks = [::]/0\n", "", {}, "postfix/mynetworks-wide", Severity.OPEN_RELAY),
    ("mynetworks = 127.0.0.1/32 5.0.0.0/8\n", "", {}, "postfix/mynetworks-wide", Severity.OPEN_RELAY),
    ("mynetworks = 127.0.0.1/32 8.8.8.0/28\n", "", {}, "postfix/mynetworks-wide", Severity.WEAKNESS),
    ("mynetworks = 127.0.0.1/32 10.0.0.0/8\n", "", {}, "postfix/mynetworks-wide", Severity.INFO),
    ("mynetworks = /etc/postfix/networks\n", "", {"networks": "# ours\n127.0.0.1/32\n4.0.0.0/8\n"}, "postfix/mynetworks-wide", Severity.OPEN_RELAY),
    ("mynetworks = cidr:/etc/postfix/networks.cidr\n", "", {"networks.cidr": "0.0.0.0/0 whatever\n"}, "postfix/mynetworks-wide", Severity.OPEN_RELAY),
    ("-mynetworks\nmynetworks_style = class\n", "", {}, "postfix/mynetworks-style", Severity.WEAKNESS),
    ("-mynetworks\nmynetworks_style = subnet\n", "", {}, "postfix/mynetworks-style", Severity.INFO),
    # relay restrictions without reject_unauth_destination, or with a permit before it
    ("smtpd_relay_restrictions = permit_mynetworks, permit, reject_unauth_destination\n", "", {}, "postfix/relay-open", Severity.OPEN_RELAY),
    ("smtpd_relay_restrictions =\nsmtpd_recipient_restrictions = permit_mynetworks, check_sender_access inline:{example.org=OK}, reject_unauth_destination\n",
     "", {}, "postfix/relay-open", Severity.OPEN_RELAY),
    ("smtpd_relay_restrictions = check_helo_access hash:/etc/postfix/helo, reject_unauth_destination\n", "", {"helo": "mx.example.org OK\n"},
     "postfix/relay-open", Severity.OPEN_RELAY),
    ("smtpd_relay_restrictions = check_client_access cidr:/etc/postfix/clients, reject_unauth_destination\n", "",
     {"clients": "127.0.0.1 OK\n0.0.0.0/0 OK\n"}, "postfix/relay-open", Severity.OPEN_RELAY),
    ("smtpd_relay_restrictions = check_client_access pcre:/etc/postfix/clients.pcre, reject_unauth_destination\n", "",
     {"clients.pcre": "/^unknown$/ OK\n"}, "postfix/relay-open", Severity.OPEN_RELAY),
    ("smtpd_relay_restrictions = check_recipient_access hash:/etc/postfix/rcpt, reject_unauth_destination\n", "", {"rcpt": "com OK\n"},
     "postfix/relay-open", Severity.OPEN_RELAY),
    ("smtpd_restriction_classes = open_up\nopen_up = permit\nsmtpd_relay_restrictions = open_up, reject_unauth_destination\n", "", {},
     "postfix/relay-open", Severity.OPEN_RELAY),
    ("smtpd_relay_restrictions = permit_mynetworks, warn_if_reject reject_unauth_destination, reject_non_fqdn_recipient, defer_if_permit\n"
     "smtpd_relay_restrictions = permit_mynetworks, warn_if_reject reject_unauth_destination\nsmtpd_recipient_restrictions =\n",
     "", {}, "postfix/relay-open", Severity.OPEN_RELAY),
    ("smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated\n", "", {}, "postfix/relay-restrictions-missing", Severity.WEAKNESS),
    ("smtpd_recipient_restrictions = permit_mynetworks, permit, reject_unauth_destination\n", "", {}, "postfix/permit-before-reject", Severity.WEAKNESS),
    ("smtpd_relay_restrictions = permit_mynetworks, permit_mx_backup, reject_unauth_destination\n", "", {}, "postfix/relay-conditional", Severity.WEAKNESS),
    ("smtpd_relay_restrictions = check_policy_service inet:127.0.0.1:10040, reject_unauth_destination\n", "", {}, "postfix/relay-conditional", Severity.WEAKNESS),
    ("smtpd_relay_restrictions = check_sender_access mysql:/etc/postfix/senders.cf, reject_unauth_destination\n", "", {}, "postfix/relay-conditional", Severity.WEAKNESS),
    ("smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticatd, reject_unauth_destination\n", "", {}, "postfix/unknown-restriction", Severity.WEAKNESS),
    ("smtpd_relay_restrictions = permit_mynetworks, check_recipient_access inline:{partner.example.net=OK}, reject_unauth_destination\n", "", {},
     "postfix/relay-to-domain", Severity.WEAKNESS),
    ("smtpd_relay_restrictions = permit_mynetworks, warn_if_reject reject_unauth_destination, reject\n", "", {},
     "postfix/warn-if-reject", Severity.WEAKNESS),
    # permit_auth_destination misuse
    ("smtpd_relay_restrictions = permit_mynetworks, permit_auth_destination\nsmtpd_recipient_restrictions = reject_unauth_destination\n", "", {},
     "postfix/permit-auth-destination", Severity.WEAKNESS),
    ("smtpd_relay_restrictions = permit_mynetworks, permit_auth_destination, permit, reject\n", "", {},
     "postfix/permit-auth-destination", Severity.OPEN_RELAY),
    # allow_untrusted_routing, relay_domains
    ("allow_untrusted_routing = yes\nrelay_domains = partner.example.net\n", "", {}, "postfix/allow-untrusted-routing", Severity.OPEN_RELAY),
    ("allow_untrusted_routing = yes\n", "", {}, "postfix/allow-untrusted-routing", Severity.WEAKNESS),
    ("relay_domains = com\n", "", {}, "postfix/relay-domains-wide", Severity.OPEN_RELAY),
    ("relay_domains = .com\nparent_domain_matches_subdomains =\n", "", {}, "postfix/relay-domains-wide", Severity.OPEN_RELAY),
    ("relay_domains = hash:/etc/postfix/relay\n", "", {"relay": "partner.example.net x\nco.uk x\n"}, "postfix/relay-domains-wide", Severity.OPEN_RELAY),
    ("relay_domains = static:all\n", "", {}, "postfix/relay-domains-wide", Severity.OPEN_RELAY),
    # AUTH without TLS, smuggling, submission
    ("smtpd_sasl_auth_enable = yes\n", "", {}, "postfix/tls-auth-only", Severity.WEAKNESS),
    ("smtpd_forbid_bare_newline = no\n", "", {}, "postfix/bare-newline", Severity.WEAKNESS),
    ("", "submission inet n - y - - smtpd\n  -o mynetworks=0.0.0.0/0\n", {}, "postfix/mynetworks-wide", Severity.OPEN_RELAY),
    ("", "submission inet n - y - - smtpd\n  -o smtpd_relay_restrictions=permit_mynetworks,permit,reject\n", {}, "postfix/relay-open", Severity.OPEN_RELAY),
    ("", "submission inet n - y - - smtpd\n  -o syslog_name=postfix/submission\n", {}, "postfix/submission-no-auth", Severity.WEAKNESS),
    # unknown and undefined settings are information, never a crash
    ("smtpd_relay_restrictons = permit\n", "", {}, "postfix/unknown-parameter", Severity.INFO),
    ("smtpd_client_restrictions = $mua_client_restrictions\n", "", {}, "postfix/undefined-parameter", Severity.INFO),
    ("", "smtp inet n - y - - smtpd -o smtpd_bogus_thing=1\n", {}, "postfix/unknown-parameter", Severity.INFO),
]


@pytest.mark.parametrize(("main", "master", "files", "rule", "severity"), CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_rule_triggered_by_minimal_config(tmp_path: Path, main: str, master: str, files: dict[str, str], rule: str, severity: Severity) -> None:
    found = findings(write(tmp_path, main, master, files))
    assert found.get(rule) == severity, found
    report = audit("postfix", tmp_path)
    assert report.open_relay == (Severity.OPEN_RELAY in found.values())
    for f in report.findings:
        assert f.why and f.fix and f.setting and f.file


def test_compatibility_level_unset_and_no_restrictions(tmp_path: Path) -> None:
    found = findings(write(tmp_path, "myhostname = mx.example.org\nmynetworks = 127.0.0.1/32\nsmtpd_forbid_bare_newline = yes\n", base=False))
    assert found["postfix/compatibility-level"] is Severity.INFO
    # level 0: no relay restrictions and no recipient restrictions -> smtpd refuses to start
    assert found["postfix/relay-restrictions-missing"] is Severity.WEAKNESS
    assert "postfix/relay-open" not in found


def test_ignored_leading_whitespace_line(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("  orphan = 1\n" + SAFE_MAIN)
    (tmp_path / "master.cf").write_text(SAFE_MASTER)
    report = audit("postfix", tmp_path)
    [f] = [f for f in report.findings if f.rule == "postfix/ignored-line"]
    assert (f.line, f.severity) == (1, Severity.INFO)


def test_missing_master_cf_assumes_stock_service(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text(SAFE_MAIN + "mynetworks = 0.0.0.0/0\n")
    found = findings(tmp_path)
    assert found["postfix/no-master-cf"] is Severity.INFO
    assert found["postfix/mynetworks-wide"] is Severity.OPEN_RELAY


@pytest.mark.parametrize(("version", "expected"), [
    (None, Severity.INFO), ("3.7.11", Severity.WEAKNESS), ("3.7.5", Severity.WEAKNESS), ("3.9.1", None), ("3.10.0", None),
])
def test_bare_newline_depends_on_version(tmp_path: Path, version: str | None, expected: Severity | None) -> None:
    d = write(tmp_path, "-smtpd_forbid_bare_newline\n")
    assert findings(d, mta_version=version).get("postfix/bare-newline") == expected


def test_loopback_only_services_are_not_open_relays(tmp_path: Path) -> None:
    d = write(tmp_path, "mynetworks = 0.0.0.0/0\ninet_interfaces = loopback-only\n")
    report = audit("postfix", d)
    assert not report.open_relay
    assert findings(d)["postfix/mynetworks-wide"] is Severity.INFO
    d2 = write(tmp_path / "b", "", "127.0.0.1:10025 inet n - n - - smtpd -o mynetworks=0.0.0.0/0\n")
    assert not audit("postfix", d2).open_relay


def test_safe_variants_stay_clean(tmp_path: Path) -> None:
    """Things that look alike but are safe produce no relay finding."""
    safe = [
        "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination\n",
        "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination, check_sender_access inline:{example.org=OK}\n",
        "smtpd_relay_restrictions = permit_mynetworks, permit_auth_destination, reject\n",
        "smtpd_relay_restrictions =\nsmtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n",
        "relay_domains = partner.example.net, localhost\nallow_untrusted_routing = no\n",
        "smtpd_sasl_auth_enable = yes\nsmtpd_tls_auth_only = yes\n",
        "smtpd_relay_restrictions = permit_mynetworks, check_client_access inline:{127.0.0.2=OK}, reject_unauth_destination\n",
    ]
    for i, main in enumerate(safe):
        report = audit("postfix", write(tmp_path / str(i), main))
        assert report.verdict == "clean", (main, [(f.rule, f.why) for f in report.findings])


# -- fixtures ----------------------------------------------------------------------------------


def test_closed_fixture_is_clean() -> None:
    report = audit("postfix", FIXTURES / "closed", mta_version="3.7.11")
    assert report.verdict == "clean", [(f.rule, f.why) for f in report.findings]


def test_open_fixture_is_an_open_relay() -> None:
    report = audit("postfix", FIXTURES / "open")
    assert report.open_relay
    [f] = [f for f in report.findings if f.rule == "postfix/relay-open"]
    assert f.line == 9 and f.file.endswith("main.cf")
    assert "sender_access:2" in f.why
