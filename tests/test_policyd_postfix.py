"""relayguard as the policy server of a real Postfix (Debian package, root; REFERENCES.md section 6).

A private Postfix on loopback asks `check_policy_service inet:127.0.0.1:<port>` at RCPT; the
policy server is the one `relayguard serve` starts from [policyd]. Clients connect from other
loopback addresses:
- 127.0.0.2: listed in relayguard's own zone (the RFC 5782 test point), answered in-process;
- 127.0.0.5: listed by a loopback DNSBL (over DNS, with a TXT reason);
- 127.0.0.6: listed by a low-weight list only: accepted, Postfix prepends the score header;
- 127.0.0.1: clean: accepted, no header.
Accepted mail is relayed by Postfix to a fake MX, where the headers are read.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from postfix_instance import POSTFIX, PostfixInstance
from conftest import free_port

from dnsbl_fixtures import FakeList, ListServer
from fakes import FakeMX

REASON = "Open relay; see http://bl.test/lookup?ip=127.0.0.5"


class PrivatePostfix(PostfixInstance):
    """`postfix start-fg` with its own main.cf/master.cf, queue, data and log, on 127.0.0.1:PORT."""

    def __init__(self, root: Path, policy_port: int, mx_port: int) -> None:
        assert os.path.exists(POSTFIX), "postfix not found: install the Debian postfix package (.ci/run does)"
        assert os.geteuid() == 0, "running a real Postfix needs root"
        self.root = root
        self.port = free_port()
        conf, queue, data = root / "conf", root / "queue", root / "data"
        for d in (conf, queue, data):
            d.mkdir()
        pw = pwd.getpwnam("postfix")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        (conf / "transport").write_text(f"example.test smtp:[127.0.0.1]:{mx_port}\n")
        (conf / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pf.policy.test
mydestination = pf.policy.test
mynetworks = 127.0.0.1/32
relay_domains = example.test
transport_maps = texthash:{conf}/transport
smtp_dns_support_level = disabled
alias_maps =
alias_database =
biff = no
smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:{policy_port}
""")
        lines = []
        for line in Path("/usr/share/postfix/master.cf.dist").read_text().splitlines():
            cols = line.split()
            if line[:1].isalnum() and len(cols) >= 8:
                if cols[0] == "smtp" and cols[1] == "inet":
                    cols[0] = f"127.0.0.1:{self.port}"
                elif cols[1] == "inet":
                    continue  # only the one smtpd
                cols[4] = "n"  # no chroot
                line = " ".join(cols)
            lines.append(line)
        (conf / "master.cf").write_text("\n".join(lines) + "\n")
        self.conf = conf
        check = subprocess.run([POSTFIX, "-c", str(conf), "check"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr + self.log()
        self.start()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import start_server

    lists = ListServer(FakeList("bl.test", {"127.0.0.5": ["127.0.0.2"]}, txt={"127.0.0.5": REASON}),
                       FakeList("score.test", {"127.0.0.6": ["127.0.0.3"]}))
    mx = FakeMX("127.0.0.1", free_port())
    policy_port = free_port()
    rg = start_server(tmp_path_factory.mktemp("rg"), tables=f"""
[reject]
dnsbl_sites = ["bl.relayguard.test*2", "bl.test*2", "score.test"]
threshold = 2
dns_servers = ["{lists.address}"]
timeout = 1

[policyd]
listen = "127.0.0.1:{policy_port}"
""")
    root = Path(tempfile.mkdtemp(prefix="relayguard-policyd-"))
    root.chmod(0o755)  # the postfix user reaches its data folder
    pf = None
    try:
        pf = PrivatePostfix(root, policy_port, mx.server.server_address[1])
        yield pf, mx, rg
    finally:
        if pf is not None:
            pf.stop()
        rg.stop()
        mx.close()
        lists.close()
        shutil.rmtree(root, ignore_errors=True)


def swaks(port: int, source: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", "--timeout", "20", "--server", f"127.0.0.1:{port}", "--local-interface", source,
                           "--from", "sender@remote.test", "--to", "user@example.test", *extra],
                          capture_output=True, text=True, timeout=90)


def test_client_listed_in_relayguards_zone_is_refused_by_postfix(setup) -> None:
    pf, _, rg = setup
    r = swaks(pf.port, "127.0.0.2", "--quit-after", "RCPT")
    assert r.returncode == 24, r.stdout
    assert "554 5.7.1 <user@example.test>: Recipient address rejected: Service unavailable; " \
           "Client host [127.0.0.2] blocked using bl.relayguard.test; " in r.stdout
    assert "event=dnsbl client=127.0.0.2 at=policyd:RCPT verdict=listed" in rg.log()


def test_client_listed_by_a_dnsbl_is_refused_with_the_policy_text(setup) -> None:
    pf, _, _ = setup
    r = swaks(pf.port, "127.0.0.5", "--quit-after", "RCPT")
    assert r.returncode == 24, r.stdout
    assert "554 5.7.1 <user@example.test>: Recipient address rejected: Service unavailable; " \
           f"Client host [127.0.0.5] blocked using bl.test; {REASON}" in r.stdout


def _delivered(mx: FakeMX, token: str) -> bytes:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for m in mx.messages:
            if token.encode() in m.data:
                return m.data
        time.sleep(0.1)
    raise AssertionError("not relayed to the fake MX within 30 s")


def test_unlisted_client_is_accepted_without_header(setup) -> None:
    pf, mx, _ = setup
    token = uuid.uuid4().hex
    r = swaks(pf.port, "127.0.0.1", "--header", f"Subject: {token}")
    assert r.returncode == 0, r.stdout + pf.log()[-2000:]
    assert b"X-Relayguard-DNSBL" not in _delivered(mx, token)


def test_scored_client_is_accepted_and_postfix_prepends_the_score(setup) -> None:
    pf, mx, _ = setup
    token = uuid.uuid4().hex
    r = swaks(pf.port, "127.0.0.6", "--header", f"Subject: {token}")
    assert r.returncode == 0, r.stdout + pf.log()[-2000:]
    data = _delivered(mx, token)
    assert data.count(b"X-Relayguard-DNSBL: score=1 threshold=2 matches=score.test=127.0.0.3*1\r\n") == 1
