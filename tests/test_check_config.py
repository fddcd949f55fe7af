"""`relayguard check-config`: validation without starting anything, and risky settings named."""

from __future__ import annotations

import json
import subprocess
import sys

from relayguard.check_config import findings
from relayguard.config import Settings


def keys(settings: Settings, self_check=None) -> dict[str, str]:
    return {f.key: f.severity.value for f in findings(settings, self_check)}


def test_the_defaults_are_clean():
    assert keys(Settings()) == {}


def test_risky_settings_are_named():
    s = Settings(relay={"trusted_networks": ["0.0.0.0/0", "10.0.0.0/8"]}, server={"hostname": "localhost"},
                 smtp={"listen": ["0.0.0.0:25"]}, delivery={"smarthost_user": "u"}, tls={"cert": "c.pem"})
    found = findings(s)
    assert [(f.key, f.severity.value) for f in found if f.key == "relay.trusted_networks"] == [
        ("relay.trusted_networks", "open-relay"), ("relay.trusted_networks", "info")]
    assert {"server.hostname", "reject.dnsbl_sites", "relaytest.self_check", "delivery.smarthost_user", "tls"} <= set(keys(s))


def test_an_open_self_check_verdict_is_an_open_relay_finding():
    status = {"listeners": [{"target": "127.0.0.1:25", "verdict": "open"}]}
    assert keys(Settings(), status) == {"relaytest.self_check": "open-relay"}


def rg(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_exit_codes(tmp_path):
    assert rg("check-config", cwd=tmp_path).returncode == 0
    (tmp_path / "open.toml").write_text('[relay]\ntrusted_networks = ["0.0.0.0/0"]\n')
    r = rg("check-config", "-c", "open.toml", "--json", cwd=tmp_path)
    assert r.returncode == 1 and json.loads(r.stdout)[0]["severity"] == "open-relay"
    (tmp_path / "bad.toml").write_text('[smtp]\nmax_recipients = -1\n')
    r = rg("check-config", "-c", "bad.toml", cwd=tmp_path)
    assert r.returncode == 2 and "bad.toml:2: smtp.max_recipients" in r.stderr
    assert not (tmp_path / "var").exists()  # nothing was started or created
