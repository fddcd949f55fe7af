"""`relayguard relaytest` as a user runs it: exit codes, tables, JSON, transcripts, confirm mode
with the built-in canary, target files, usage errors and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relayguard.relaytest.catalogue import CASES

from conftest import free_port
from relay_fixtures import FixtureThread


def rg(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", "relaytest", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, COLUMNS="200"))


@pytest.fixture
def fixtures():
    ft = FixtureThread()
    yield ft
    ft.close()


def test_closed_server_exit_0_and_json_has_every_transcript(server, tmp_path):
    r = rg(f"127.0.0.1:{server.smtp_port}", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (target,) = json.loads(r.stdout)
    assert target["verdict"] == "closed" and target["relays"] == []
    assert len(target["cases"]) == len(CASES)
    for case in target["cases"]:
        assert case["outcome"] == "refused"
        assert any(line.lower().startswith("c: rcpt to:") for line in case["transcript"])
        assert case["replies"][-1]["reply"]["code"] >= 500


def test_open_fixture_exit_1_table_names_the_tricks(fixtures, tmp_path):
    _, port = fixtures.mta(accepts=lambda rcpt: "%" in rcpt)
    r = rg(f"127.0.0.1:{port}", "--case", "R1", "--case", "S2", "--transcript", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "OPEN" in r.stdout and "R1" in r.stdout and "accepted-rcpt" in r.stdout
    assert "C: RCPT TO:<relaytest%example.com@[127.0.0.1]>" in r.stdout


def test_confirm_mode_with_the_built_in_canary(fixtures, tmp_path):
    canary_port = free_port()
    mta, port = fixtures.mta(accepts=lambda rcpt: rcpt.startswith("<@"), forward_to=("127.0.0.1", canary_port),
                             forward_rcpt="relaytest@canary.test")
    r = rg(f"127.0.0.1:{port}", "--mode", "confirm", "--canary-listen", f"127.0.0.1:{canary_port}",
           "--canary-domain", "canary.test", "--confirm-timeout", "30", "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    (target,) = json.loads(r.stdout)
    relayed = {c["id"] for c in target["cases"] if c["outcome"] == "relayed"}
    assert relayed == set(target["relays"]) == {"R8", "R9", "N10", "N13"}
    assert len(mta.messages) == 4


def test_targets_from_a_file_and_unreachable_exit_2(server, tmp_path):
    (tmp_path / "targets").write_text(f"# ours\n127.0.0.1:{server.smtp_port}\n\n127.0.0.1:{free_port()}  # nothing there\n")
    r = rg("-i", "targets", "--case", "S2", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "2 targets" in r.stdout and "closed" in r.stdout and "unreachable" in r.stdout


def test_smuggling_probe_from_the_command_line(fixtures, tmp_path):
    _, port = fixtures.mta(accepts=lambda rcpt: "postmaster" in rcpt.lower(), extra_ends=(b"\n.\n",))
    r = rg(f"127.0.0.1:{port}", "--mode", "data", "--smuggling", "--case", "S2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (target,) = json.loads(r.stdout)
    assert {m["id"]: m["ends_data"] for m in target["smuggling"]}["M1"] is True
    assert [m["id"] for m in target["smuggling"] if m["ends_data"]] == ["M1"]


@pytest.mark.parametrize("args, message", [
    (["--mode", "bogus", "127.0.0.1:25"], "mode must be one of"),
    ([], "no target given"),
    (["--mode", "confirm", "127.0.0.1:25"], "needs --canary-listen"),
    (["--smuggling", "127.0.0.1:25"], "needs mode data or confirm"),
    (["127.0.0.1:99999"], "not a target"),
    (["-i", "missing.txt"], "cannot read"),
    (["--case", "Z9", "127.0.0.1:25"], "unknown case id"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    r = rg(*args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stderr)


def test_list_prints_the_catalogue(tmp_path):
    r = rg("--list", "--json", cwd=tmp_path)
    assert r.returncode == 0
    assert [c["id"] for c in json.loads(r.stdout)] == [c.id for c in CASES]


def test_ctrl_c_prints_what_is_done(server, fixtures, tmp_path):
    silent, port = fixtures.mta(silent=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relayguard", "relaytest", f"127.0.0.1:{server.smtp_port}", f"127.0.0.1:{port}",
         "--concurrency", "1", "--timeout", "60", "--json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background shell may have ignored it
    try:
        assert silent.connected.wait(30)  # the first target is done, the second has started
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted: 1 of 2 targets done" in err
    assert [(t["target"], t["verdict"]) for t in json.loads(out)] == [(f"127.0.0.1:{server.smtp_port}", "closed")]
