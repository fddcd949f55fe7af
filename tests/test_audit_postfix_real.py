"""The Postfix audit against the real thing (needs the `postfix` Debian package, root for the live part).

- The reader agrees with `postconf`: explicit settings (`postconf -n`), expanded values
  (`postconf -x`) and per-service overrides (`postconf -P -x`) for every fixture.
- The audit agrees with reality: a real Postfix runs each fixture on loopback and
  relayguard's relay tester (issue 4) probes it; the tester's verdict (open / closed) is the
  audit's verdict. The tester connects from 127.0.0.2, a stranger to the fixtures'
  mynetworks (127.0.0.1/32). Only operational settings are changed for the live copy
  (file locations, listening address and port, chroot off), never a relay setting.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from postfix_instance import POSTFIX, PostfixInstance

from relayguard.audit import audit
from relayguard.audit import postfix as P
from relayguard.relaytest import RelayTestOptions, Verdict, run

FIXTURES = Path(__file__).parent / "fixtures" / "audit" / "postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"

# What the reader must compute exactly as Postfix does, beyond what main.cf sets.
CHECKED = (
    "compatibility_level", "mydestination", "myorigin", "relay_domains", "mynetworks_style", "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions", "smtpd_client_restrictions", "allow_untrusted_routing", "smtpd_tls_auth_only",
    "smtpd_sasl_auth_enable", "smtpd_forbid_bare_newline", "parent_domain_matches_subdomains", "permit_mx_backup_networks",
    "inet_interfaces", "smtpd_tls_security_level", "proxy_read_maps", "smtpd_restriction_classes", "append_dot_mydomain",
    "smtpd_relay_before_recipient_restrictions", "smtputf8_enable",
)

EXTRA_CONFIGS = {
    "compat-0": "myhostname = mail.example.net\nmynetworks = 127.0.0.1/32\nsmtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n",
    "compat-1": "compatibility_level = 1\nmyhostname = mail.example.net\n",
    "compat-2": "compatibility_level = 2\nmyhostname = mail.example.net\n",
    "expansions": ("compatibility_level = 3.6\nmyhostname = a.b.example.net\nx = one\ny = ${x?{set}:{unset}} ${nothing?{set}:{unset}} $(x)$$\n"
                   "z = ${x:fallback}${nothing:fallback}\nrelay_domains = $mydomain, ${x?$myhostname}\n"
                   "smtpd_client_restrictions =\n    permit_mynetworks,\n# a comment in between\n    reject\n"),
}
EXTRA_MASTER = ("smtp      inet  n       -       y       -       -       smtpd\n"
                "submission inet n       -       y       -       -       smtpd\n"
                "  -o smtpd_sasl_auth_enable=yes\n  -o { smtpd_relay_restrictions = permit_sasl_authenticated, reject }\n"
                "  -o smtpd_client_restrictions=$x\n  -o syslog_name=$y/$z\n"
                "127.0.0.1:10025 inet n - n - - smtpd -o mynetworks=127.0.0.0/8 -o smtpd_tls_auth_only=$smtputf8_enable\n")


def _postconf(*args: str) -> str:
    assert os.path.exists(POSTCONF), "postconf not found: install the postfix package (.ci/run does)"
    done = subprocess.run([POSTCONF, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" =")
        if sep:
            out[name.strip()] = " ".join(value.split())
    return out


def _configs(tmp_path: Path) -> list[Path]:
    dirs = [FIXTURES / "closed", FIXTURES / "open"]
    for name, main in EXTRA_CONFIGS.items():
        d = tmp_path / name
        d.mkdir()
        (d / "main.cf").write_text(main)
        (d / "master.cf").write_text(EXTRA_MASTER)
        dirs.append(d)
    return dirs


def _read(folder: Path) -> P.PostfixConfig:
    folder = folder.resolve()
    return P.read((folder / "main.cf").read_text(), str(folder / "main.cf"), (folder / "master.cf").read_text(),
                  str(folder / "master.cf"), str(folder))


def test_reader_agrees_with_postconf(tmp_path: Path) -> None:
    for folder in _configs(tmp_path):
        cfg = _read(folder)
        d = str(folder.resolve())
        explicit = _pairs(_postconf("-c", d, "-n"))
        explicit.pop("config_directory", None)
        ours = {n: " ".join(s.value.split()) for n, s in cfg.main.settings.items()}
        assert {n: ours.get(n) for n in explicit} == explicit, folder
        # postconf -n leaves out parameters nothing uses: exactly the ones the audit reports as unknown
        unknown = {f.setting.split(" =")[0] for f in audit("postfix", folder).findings if f.rule == "postfix/unknown-parameter"}
        assert set(ours) - set(explicit) == unknown, folder
        names = set(CHECKED) | set(cfg.main.settings) | {"mydomain"}
        if "mynetworks" not in cfg.main.settings:
            names -= {"proxy_read_maps"}  # holds $mynetworks, which Postfix computes from this host's interfaces
        names = sorted(names)
        expanded = _pairs(_postconf("-c", d, "-x", *names))
        assert set(names) - set(expanded) == unknown, folder
        for name in expanded:
            assert " ".join(cfg.value(name).split()) == expanded[name], (folder, name)
        per_service = _pairs(_postconf("-c", d, "-P", "-x"))
        overrides = {}
        for svc in cfg.services:
            for name in svc.overrides:
                overrides[f"{svc.name}/{svc.type}/{name}"] = " ".join(cfg.value(name, svc).split())
        assert overrides == per_service, folder


# -- a real Postfix on loopback ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LivePostfix(PostfixInstance):
    """`postfix start-fg` on a copy of a fixture: own queue, data and log; every inet service on 127.0.0.1."""

    def __init__(self, fixture: Path, root: Path) -> None:
        assert os.path.exists(POSTFIX), "postfix not found: install the postfix package (.ci/run does)"
        assert os.geteuid() == 0, "running a real Postfix needs root"
        self.root = root
        self.conf = root / "conf"
        shutil.copytree(fixture, self.conf)
        (root / "queue").mkdir()
        (root / "data").mkdir()
        pw = pwd.getpwnam("postfix")
        os.chown(root / "data", pw.pw_uid, pw.pw_gid)
        self.port = _free_port()
        with open(self.conf / "main.cf", "a") as f:
            f.write(f"\n# relayguard live test: where this instance keeps its files (no relay setting here)\n"
                    f"queue_directory = {root}/queue\ndata_directory = {root}/data\n"
                    f"maillog_file = {root}/maillog\nmaillog_file_prefixes = {root}\n"
                    "inet_protocols = ipv4\nalias_maps =\nalias_database =\n")
        lines = []
        for line in (self.conf / "master.cf").read_text().splitlines():
            m = re.match(r"^(\S+)(\s+inet\s.*)$", line)
            if m:
                line = f"127.0.0.1:{self.port if m.group(1) == 'smtp' else _free_port()}{m.group(2)}"
            m = re.match(r"^(\S+\s+\S+\s+[-yn]\s+[-yn]\s+)y(\s.*)$", line)
            if m:
                line = f"{m.group(1)}n{m.group(2)}"
            lines.append(line)
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")
        for table in self.conf.iterdir():
            if table.suffix == "" and table.is_file():
                subprocess.run([POSTFIX.replace("postfix", "postmap"), "-c", str(self.conf), f"hash:{table}"], capture_output=True)
        self.start()


@pytest.fixture
def live_root():
    """A folder the postfix user can reach (pytest's own tmp folders are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="relayguard-postfix-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("name", ["open", "closed"])
def test_audit_agrees_with_live_relay_test(live_root: Path, name: str) -> None:
    report = audit("postfix", FIXTURES / name)
    live = LivePostfix(FIXTURES / name, live_root)
    try:
        [result] = run([f"127.0.0.1:{live.port}"], RelayTestOptions(bind="127.0.0.2", timeout=15))
    finally:
        live.stop()
    assert result.verdict in (Verdict.OPEN, Verdict.CLOSED), (result.reason, live.log()[-3000:])
    assert "fatal" not in live.log()
    assert (result.verdict is Verdict.OPEN) == report.open_relay, (name, result.reason, [f.rule for f in report.findings])
    assert report.open_relay == (name == "open")
