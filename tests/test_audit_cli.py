"""`relayguard audit MTA PATH` as an administrator runs it: exit codes, --json, the report, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "audit"


def rg(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", "audit", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(("mta", "closed", "opened"), [
    ("postfix", "postfix/closed", "postfix/open"),
    ("sendmail", "sendmail/closed-mc/sendmail.mc", "sendmail/open-cf/sendmail.cf"),
    ("exim", "exim/closed/exim4.conf", "exim/open"),
    ("qmail", "qmail/closed", "qmail/open"),
])
def test_exit_codes_and_json(mta: str, closed: str, opened: str) -> None:
    ok = rg(mta, FIXTURES / closed, "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["mta"] == mta and data["verdict"] in ("clean", "weakness")
    assert data["counts"]["open-relay"] == 0

    bad = rg(mta, FIXTURES / opened, "--json")
    assert bad.returncode == 1, bad.stderr
    data = json.loads(bad.stdout)
    assert data["verdict"] == "open-relay" and data["counts"]["open-relay"] >= 1
    for f in data["findings"]:
        assert set(f) == {"severity", "rule", "file", "line", "setting", "why", "fix", "service"}
        assert f["severity"] in ("open-relay", "weakness", "info")
        assert f["rule"].startswith(mta + "/")
        assert isinstance(f["line"], (int, type(None)))
    assert [f["severity"] for f in data["findings"]] == sorted((f["severity"] for f in data["findings"]),
                                                              key=["open-relay", "weakness", "info"].index)


def test_rich_report_names_file_line_and_fix() -> None:
    out = rg("postfix", FIXTURES / "postfix" / "open")
    assert out.returncode == 1
    assert "open-relay" in out.stdout and "OPEN RELAY" in out.stdout
    assert "main.cf:9" in out.stdout
    assert "fix:" in out.stdout
    assert "check_sender_access" in out.stdout


def test_clean_report(tmp_path: Path) -> None:
    out = rg("qmail", FIXTURES / "qmail" / "closed")
    assert out.returncode == 0
    assert "no open relay found" in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("frobmail", "/tmp"), "unknown MTA"),
    (("postfix", "/nonexistent/relayguard"), "no such file or folder"),
])
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    out = rg(*args)
    assert out.returncode == 2
    assert message in out.stderr


def test_malformed_file_exits_2_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("myhostname = mx.example.org\nthis line has no equals sign\n")
    out = rg("postfix", tmp_path)
    assert out.returncode == 2
    assert f"{tmp_path / 'main.cf'}:2: missing '='" in out.stderr
    assert out.stdout == ""


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "rcpthosts").write_text("example.org\n")
    (tmp_path / "tcp.smtp").write_text("127.:allow,RELAYCLIENT=\"\"\nbroken\n")
    out = rg("qmail", tmp_path)
    assert out.returncode == 2
    assert f"{tmp_path / 'tcp.smtp'}:2:" in out.stderr


def test_mta_version_option() -> None:
    plain = json.loads(rg("postfix", FIXTURES / "postfix" / "open", "--json").stdout)
    versioned = json.loads(rg("postfix", FIXTURES / "postfix" / "open", "--json", "--mta-version", "3.8.4").stdout)
    severity = {d["rule"]: d["severity"] for d in versioned["findings"]}
    assert severity["postfix/bare-newline"] == "weakness"
    assert {d["rule"]: d["severity"] for d in plain["findings"]}["postfix/bare-newline"] == "info"
