"""The command line and the configuration file, as an administrator uses them."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from relayguard import config
from relayguard.sample_config import sample_config


def rg(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_defaults_match_the_design():
    s = config.Settings()
    assert s.smtp.listen == ["127.0.0.1:2525"] and s.smtp.submission_listen == ["127.0.0.1:2587"]
    assert s.domains.local == ["localhost"] and s.relay.trusted_networks == []
    assert s.server.data_dir == "var"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[smtp]\nlisten = [\"127.0.0.1:25\"]\nmax_recipents = 5\n", "cfg.toml:3: smtp.max_recipents: unknown setting"),
        ("[smtp]\n\nmax_recipients = \"many\"\n", "cfg.toml:3: smtp.max_recipients: Input should be a valid integer"),
        ("[relay]\ntrusted_networks = [\"10.0.0.0/33\"]\n", "cfg.toml:2: relay.trusted_networks"),
        ("[smtp]\nlisten = [\"nowhere\"]\n", "cfg.toml:2: smtp.listen"),
        ("[domains]\nlocal = [\"\"]\n", "cfg.toml:2: domains.local: empty domain name"),
        ("[aliases]\n\"postmaster@localhost\" = \"not an address\"\n", "cfg.toml:2: aliases.postmaster@localhost"),
        ("[smtp\n", "cfg.toml: Expected ']'"),
        ("[bogus]\nx = 1\n", "cfg.toml:1: bogus: unknown setting"),
    ],
)
def test_config_errors_name_the_file_key_and_line(tmp_path, text, expected):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    r = rg("serve", "-c", str(path), cwd=tmp_path)
    assert r.returncode == 2
    assert expected in r.stderr.replace(str(tmp_path) + "/", "").replace("\n", " ").replace("  ", " "), r.stderr


def test_missing_config_file(tmp_path):
    r = rg("serve", "-c", "nope.toml", cwd=tmp_path)
    assert r.returncode == 2 and "nope.toml: cannot read" in r.stderr


def test_sample_config_is_the_defaults():
    loaded = config.load_text(sample_config("mx.example.test"), "sample")
    assert loaded.model_dump() == config.Settings(server={"hostname": "mx.example.test"}).model_dump()


def test_init_writes_config_tls_pair_and_folders(tmp_path):
    r = rg("init", "site", "--hostname", "mx.example.test", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    site = tmp_path / "site"
    assert tomllib.loads((site / "relayguard.toml").read_text())["server"]["hostname"] == "mx.example.test"
    assert b"BEGIN CERTIFICATE" in (site / "var/tls/cert.pem").read_bytes()
    assert oct((site / "var/tls/key.pem").stat().st_mode & 0o777) == "0o600"
    assert (site / "var/mail").is_dir() and (site / "var/queue").is_dir()
    assert rg("init", "site", cwd=tmp_path).returncode == 2  # never overwrites


def test_user_add_list_del_never_stores_the_password(tmp_path):
    assert rg("user", "add", "carol@localhost", "--password-stdin", cwd=tmp_path, stdin="s3cret-pw\n").returncode == 0
    stored = (tmp_path / "var/users").read_text()
    assert "s3cret-pw" not in stored and stored.startswith("carol@localhost:$scrypt$")
    r = rg("user", "list", "--json", cwd=tmp_path)
    assert r.stdout.strip() == '["carol@localhost"]'
    assert rg("user", "del", "carol@localhost", cwd=tmp_path).returncode == 0
    assert rg("user", "del", "carol@localhost", cwd=tmp_path).returncode == 2
    assert rg("user", "add", "no-domain", "--password-stdin", cwd=tmp_path, stdin="x\n").returncode == 2


def test_serve_on_the_builtin_defaults(tmp_path):
    """What `make run` does: no config file, the design's default ports, mail into var/mail."""
    proc = subprocess.Popen([sys.executable, "-m", "relayguard", "serve"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", 2587), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.05)
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as smtp:
            assert smtp.sendmail("a@remote.test", ["postmaster@localhost"], b"Subject: hi\r\n\r\nhi\r\n") == {}
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                smtp.sendmail("a@remote.test", ["victim@remote.test"], b"Subject: hi\r\n\r\nhi\r\n")
        assert len(list((tmp_path / "var/mail/localhost/postmaster/new").iterdir())) == 1
        assert (tmp_path / "var/tls/cert.pem").exists()
        query = dns.message.make_query("2.0.0.127.bl.relayguard.test", "A")
        for _ in range(20):  # the DNS listener opens after the SMTP ones
            try:
                answer = dns.query.udp(query, "127.0.0.1", port=5300, timeout=0.5)
                break
            except (OSError, dns.exception.Timeout):
                continue
        assert [rr.to_text() for rr in answer.answer[0]] == ["127.0.0.2"]  # the DNSBL's RFC 5782 test point
        import urllib.request  # issue 5: the list's web pages on 127.0.0.1:8025

        with urllib.request.urlopen("http://127.0.0.1:8025/lookup?ip=127.0.0.2", timeout=10) as page:
            assert page.status == 200 and b"NOT LISTED" in page.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0
