"""`relayguard dnsbl nominate/request-removal/add/remove/show/entries/import/export/maintain` as an
operator runs them: exit codes (0 not listed, 1 listed, 2 error), --json, Rich tables, and a
nomination against a real open relay on loopback with the command's own canary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from relay_fixtures import FixtureThread


def rg(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", "dnsbl", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, COLUMNS="200"))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder with a relayguard.toml on the defaults plus a store in it (found as ./relayguard.toml)."""
    (tmp_path / "relayguard.toml").write_text('[server]\nhostname = "bl.example.test"\n[dnsbl]\nttl = 600\nnegative_ttl = 300\n')
    return tmp_path


def test_add_show_entries_remove(site):
    r = rg("add", "192.0.2.7", "--reason", "seen relaying spam", cwd=site)
    assert r.returncode == 0, r.stderr
    assert "LISTED" in r.stdout and "takes effect everywhere by" in r.stdout
    r = rg("add", "198.51.100.0/24", "--reason", "farm", "--code", "127.0.0.3", "--json", cwd=site)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["action"] == "listed" and out["host"]["code"] == "127.0.0.3"
    assert (site / "var" / "relayguard.db").exists()  # the default store url
    r = rg("show", "192.0.2.7", cwd=site)
    assert r.returncode == 1 and "LISTED" in r.stdout and "manual: seen relaying spam" in r.stdout
    assert 'TXT "Open relay: listed after a confirmed relay test; see https://bl.relayguard.test/lookup?ip=192.0.2.7"' in r.stdout
    r = rg("show", "198.51.100.9", "--json", cwd=site)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["listed"] and out["covering"][0]["network"] == "198.51.100.0/24"
    r = rg("show", "203.0.113.1", cwd=site)
    assert r.returncode == 0 and "NOT LISTED" in r.stdout
    r = rg("entries", "--json", cwd=site)
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 2
    r = rg("entries", cwd=site)
    assert "192.0.2.7/32" in r.stdout and "198.51.100.0/24" in r.stdout and "2 listed" in r.stdout
    r = rg("remove", "198.51.100.9", "--reason", "x", cwd=site)
    assert r.returncode == 2 and "part of 198.51.100.0/24" in r.stderr
    r = rg("remove", "192.0.2.7", "--reason", "owner fixed it", "--json", cwd=site)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["action"] == "delisted" and out["effective_at"]
    r = rg("show", "192.0.2.7", "--json", cwd=site)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and not out["listed"]
    assert [e["action"] for e in out["history"]] == ["listed", "delisted"]
    assert out["history"][1]["reason"] == "manual: owner fixed it"


def test_usage_errors_exit_2(site):
    assert rg("add", "192.0.2.7", cwd=site).returncode == 2  # no reason
    r = rg("add", "mail.example.com", "--reason", "x", cwd=site)
    assert r.returncode == 2 and "not an IP address" in r.stderr
    r = rg("remove", "192.0.2.99", "--reason", "x", cwd=site)
    assert r.returncode == 2 and "is not listed" in r.stderr
    r = rg("entries", "--state", "bogus", cwd=site)
    assert r.returncode == 2
    r = rg("nominate", "10.0.0.1", cwd=site)
    assert r.returncode == 2 and "not a public address" in r.stderr
    r = rg("nominate", "8.8.8.8", cwd=site)
    assert r.returncode == 2 and "canary" in r.stderr
    (site / "bad.toml").write_text('[store]\nurl = "mysql://x"\n')
    r = rg("entries", "-c", str(site / "bad.toml"), cwd=site)
    assert r.returncode == 2 and "store.url" in r.stderr
    r = rg("export", "--format", "tinydns", cwd=site)
    assert r.returncode == 2


def test_nominate_show_transcript_and_removal_against_a_real_relay(tmp_path):
    ft = FixtureThread()
    try:
        canary = free_port()
        mta, port = ft.mta(accepts=lambda rcpt: True, forward_to=("127.0.0.1", canary),
                           forward_rcpt="relaytest@canary.test")
        (tmp_path / "relayguard.toml").write_text(f"""
[relaytest]
canary_domain = "canary.test"
canary_listen = "127.0.0.1:{canary}"
timeout = 5
confirm_timeout = 10

[dnsbl]
test_port = {port}
allow_private = true
cooldown = 0
""")
        r = rg("nominate", "127.0.0.1", "--reason", "relayed spam to us", "--json", cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        out = json.loads(r.stdout)
        assert out["action"] == "listed" and out["verdict"] == "open" and out["relays"]
        r = rg("show", "127.0.0.1", "--transcript", cwd=tmp_path)
        assert r.returncode == 1
        assert "arrived at the canary" in r.stdout and "C: RCPT TO:" in r.stdout and "nomination" in r.stdout
        mta.accepts = lambda rcpt: False  # fixed
        r = rg("request-removal", "127.0.0.1", "--contact", "owner@example.net", "--reason", "closed", cwd=tmp_path)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "DELISTED" in r.stdout and "takes effect everywhere by" in r.stdout
        r = rg("nominate", "127.0.0.1", cwd=tmp_path)
        assert r.returncode == 0 and "NOT-LISTED" in r.stdout
    finally:
        ft.close()


def test_import_and_export(site):
    f = site / "old.ip4set"
    f.write_text(":127.0.0.2:Listed by the old list\n192.0.2.1\n192.0.2.2 :3:three\nnot-an-ip\n!192.0.2.9\n")
    r = rg("import", str(f), cwd=site)
    assert r.returncode == 2 and "line 4" in r.stderr and "nothing imported" in r.stderr
    assert json.loads(rg("entries", "--json", cwd=site).stdout)["total"] == 0
    r = rg("import", str(f), "--skip-bad", "--json", cwd=site)
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out["added"] == 2 and out["bad_lines"] == 1 and out["exclusions_skipped"] == 1
    r = rg("show", "192.0.2.1", "--json", cwd=site)
    h = json.loads(r.stdout)["history"][0]
    assert h["reason"] == "imported from old.ip4set" and len(h["evidence"]["sha256"]) == 64
    r = rg("export", "--json", cwd=site)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["entries"] == 2 and out["rbldnsd"].startswith("rbldnsd ")
    trie = Path(out["files"]["ip4trie"]).read_text()
    assert "192.0.2.1/32 :127.0.0.2:Listed by the old list" in trie and "192.0.2.2/32 :127.0.0.3:three" in trie
    assert Path(out["files"]["ip4tset"]).parent == site / "var" / "dnsbl"
    r = rg("export", "--format", "bind", "-o", str(site / "zone.db"), cwd=site)
    assert r.returncode == 0 and "2 entries" in r.stdout
    text = (site / "zone.db").read_text()
    assert '1.2.0.192 IN TXT "Listed by the old list"' in text and "$TTL 600" in text
    r = rg("maintain", cwd=site)
    assert r.returncode == 0 and "nothing due" in r.stdout
