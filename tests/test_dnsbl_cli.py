"""`relayguard dnsbl check`: exit codes, table, JSON, errors (loopback DNS only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dnsbl_fixtures import FakeList, ListServer


@pytest.fixture(scope="module")
def lists():
    server = ListServer(
        FakeList("bl.test", {"192.0.2.1": ["127.0.0.2"], "2001:db8::1": ["127.0.0.4"], "192.0.2.3": ["127.255.255.254"]},
                 txt={"192.0.2.1": "Open relay; see http://bl.test/?192.0.2.1"}),
        FakeList("dbl.test", {"spam.example.test": ["127.0.1.2"]}),
        FakeList("wl.test", {"192.0.2.2": ["127.0.2.1"]}),
        FakeList("dead.test", mode="timeout"),
        FakeList("world.test", world=True),
    )
    yield server
    server.close()


def check(lists: ListServer, *args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", "dnsbl", "check", "--nameserver", lists.address, *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd, env=dict(os.environ, COLUMNS="200"))


def test_listed_exits_1_with_a_table(lists) -> None:
    r = check(lists, "192.0.2.1", "-z", "bl.test", "-z", "dbl.test")
    assert r.returncode == 1, r.stderr
    assert "192.0.2.1  LISTED  score 1 (threshold 1)" in r.stdout
    row = next(line for line in r.stdout.splitlines() if "bl.test" in line and "127.0.0.2" in line)
    assert "listed" in row and "Open relay; see http://bl.test/?192.0.2.1" in row and "+1" in row
    assert "NXDOMAIN" in r.stdout  # dbl.test's answer
    assert "event=" not in r.stderr  # no log noise for people


def test_clean_exits_0(lists) -> None:
    r = check(lists, "192.0.2.200", "-z", "bl.test")
    assert r.returncode == 0 and "CLEAN" in r.stdout


def test_json_for_several_targets_ipv6_and_domains(lists) -> None:
    r = check(lists, "192.0.2.200", "2001:db8::1", "spam.example.test", "-z", "bl.test=127.0.0.[2..11]*2",
              "-z", "dbl.test", "--threshold", "2", "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert [(o["target"], o["kind"], o["verdict"], o["score"]) for o in out] == [
        ("192.0.2.200", "ipv4", "clean", 0), ("2001:db8::1", "ipv6", "listed", 2), ("spam.example.test", "domain", "clean", 1)]
    v6 = out[1]["lists"][0]
    assert v6["zone"] == "bl.test" and v6["codes"] == ["127.0.0.4"] and v6["query"].endswith(".8.b.d.0.1.0.0.2.bl.test")
    assert out[1]["matches"] == [{"site": "bl.test=127.0.0.[2..11]*2", "zone": "bl.test", "weight": 2, "codes": ["127.0.0.4"]}]


def test_error_codes_shown_as_errors_not_listings(lists) -> None:
    r = check(lists, "192.0.2.3", "-z", "bl.test", "--json")
    assert r.returncode == 0
    a = json.loads(r.stdout)[0]["lists"][0]
    assert a["status"] == "error" and a["errors"] == ["127.255.255.254"] and a["codes"] == []
    assert "public or unattributed resolver" in a["meanings"]["127.255.255.254"]


def test_allowlist_weight(lists) -> None:
    assert check(lists, "192.0.2.2", "-z", "wl.test*-5").returncode == 0


def test_no_answer_is_undecided_exit_2(lists) -> None:
    r = check(lists, "192.0.2.200", "-z", "bl.test", "-z", "dead.test", "--timeout", "0.4")
    assert r.returncode == 2
    assert "192.0.2.200: undecided: no answer from dead.test" in r.stderr


def test_unhealthy_list_is_skipped_with_a_warning(lists) -> None:
    r = check(lists, "192.0.2.200", "-z", "world.test", "-z", "bl.test")
    assert r.returncode == 0
    assert "warning: world.test skipped: lists 127.0.0.1" in r.stderr
    assert check(lists, "192.0.2.200", "-z", "world.test", "--no-health").returncode == 1


def test_lists_from_the_configuration(lists, tmp_path) -> None:
    (tmp_path / "relayguard.toml").write_text('[reject]\ndnsbl_sites = ["bl.test*3"]\nthreshold = 3\n')
    r = check(lists, "192.0.2.1", "--json", cwd=tmp_path)
    assert r.returncode == 1 and json.loads(r.stdout)[0]["score"] == 3


@pytest.mark.parametrize("args, message", [
    (("1.2.3", "-z", "bl.test"), "not a valid IP address"),
    (("192.0.2.0/24", "-z", "bl.test"), "networks are not checked"),
    (("192.0.2.1", "-z", "bl.test=127.0.0.[9..2]"), "runs backwards"),
    (("192.0.2.1", "-z", "bl.test", "--threshold", "0"), "--threshold"),
    (("192.0.2.1", "-z", "bl.test", "--nameserver", "not-an-ip"), "--nameserver"),
])
def test_bad_input_exits_2(lists, args, message) -> None:
    r = check(lists, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
