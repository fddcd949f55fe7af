"""`relayguard status` against a running server and a stopped one."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import USERS, client_tls


def status(srv) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", "status", "--json", "-c", "relayguard.toml"],
                          cwd=srv.root, capture_output=True, text=True, timeout=60)


def test_status_of_a_running_then_stopped_server(make_server):
    srv = make_server()
    with srv.smtp(srv.submission_port) as smtp:  # leave one message in the queue
        smtp.starttls(context=client_tls())
        smtp.login("alice@localhost", USERS["alice@localhost"])
        smtp.sendmail("alice@localhost", ["friend@remote.test"], b"Subject: x\r\n\r\nx\r\n")
    r = status(srv)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert {x["service"] for x in report["listeners"] if x["up"]} == {"smtp", "submission", "dnsbl-dns"}
    assert report["queue"]["pending"] == 1 and report["store"]["healthy"] and report["store"]["listed"] == 0
    srv.stop()
    r = status(srv)
    assert r.returncode == 1 and not any(x["up"] for x in json.loads(r.stdout)["listeners"])
