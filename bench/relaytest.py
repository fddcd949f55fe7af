#!/usr/bin/env python3
"""Open-relay tester benchmark (issue 4): relayguard relaytest beside nmap's smtp-open-relay.

1. One target, full battery, wall time of each tool as a user runs it (process start to exit),
   best of N rounds, interleaved:
     - an open target: a fixture that accepts every recipient (tests/relay_fixtures.py);
     - a closed target that tarpits errors: `relayguard serve` on its defaults
       (soft_error_limit 10, error_sleep 1 s, hard_error_limit 20).
   nmap is forced onto the non-standard port with `--script +smtp-open-relay`. relayguard runs
   with --json in the folder of the closed target's relayguard.toml (which has no [relaytest]
   table). The in-process battery time (relaytest's own `elapsed`, without Python's start-up)
   and the wall time with the Rich table instead of --json are printed too.
   Target: at least twice nmap's number of tests in at most half its time.
2. Many targets: 200 loopback fixture servers (every 4th an open relay through the percent
   hack), `relayguard relaytest -i FILE`: targets per second; nmap over the same 200 ports.

Needs nmap (Debian package `nmap`); without it only relayguard's figures are printed. All
traffic stays on 127.0.0.1; every wait is bounded. Run: .venv/bin/python bench/relaytest.py
[--rounds N] [--targets N]. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from relay_fixtures import FixtureThread  # noqa: E402

PY = sys.executable
NMAP = shutil.which("nmap")
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    return time.perf_counter() - start, proc


def nmap_cmd(ports: list[int]) -> list[str]:
    return [NMAP or "nmap", "-n", "-Pn", "-p", ",".join(map(str, ports)), "--script", "+smtp-open-relay",
            "--script-args", "smtp-open-relay.domain=example.com,smtp-open-relay.ip=127.0.0.1", "127.0.0.1"]


def nmap_tests(out: str) -> tuple[int, str]:
    m = re.search(r"\((\d+)/(\d+) tests\)", out)
    if m:
        return int(m.group(2)), "open"
    if "all tests failed" in out:
        return 16, "closed"  # the script has 16 tests and says so only when one passes
    return 0, "?"


def start_relayguard(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, sub = free_port(), free_port()
    (root / "relayguard.toml").write_text(
        f'[server]\nhostname = "mx.bench.test"\n[smtp]\nlisten = ["127.0.0.1:{port}"]\n'
        f'submission_listen = ["127.0.0.1:{sub}"]\n[delivery]\ndns_servers = ["127.0.0.1:9"]\n')
    proc = subprocess.Popen([PY, "-m", "relayguard", "serve", "-c", "relayguard.toml"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("relayguard serve did not start")
            time.sleep(0.05)


def one_target(name: str, port: int, rounds: int, cwd: Path) -> None:
    rg_best = nm_best = table_best = float("inf")
    rg_cases = nm_tests = 0
    rg_verdict = nm_verdict = "?"
    battery = float("inf")
    for _ in range(rounds):
        wall, proc = timed([PY, "-m", "relayguard", "relaytest", f"127.0.0.1:{port}", "--json"], cwd)
        (result,) = json.loads(proc.stdout)
        rg_best, battery = min(rg_best, wall), min(battery, result["elapsed"])
        rg_cases, rg_verdict = len(result["cases"]), result["verdict"]
        table_best = min(table_best, timed([PY, "-m", "relayguard", "relaytest", f"127.0.0.1:{port}"], cwd)[0])
        if NMAP:
            wall, proc = timed(nmap_cmd([port]), cwd)
            nm_best = min(nm_best, wall)
            nm_tests, nm_verdict = nmap_tests(proc.stdout)
    print(f"\n{name}  (best of {rounds})")
    print(f"  {'tool':<34}{'tests':>6}{'wall s':>10}{'tests/s':>10}  verdict")
    print(f"  {'relayguard relaytest (process)':<34}{rg_cases:>6}{rg_best:>10.3f}{rg_cases / rg_best:>10.0f}  {rg_verdict}")
    print(f"  {'relayguard battery (in-process)':<34}{rg_cases:>6}{battery:>10.3f}{rg_cases / battery:>10.0f}  {rg_verdict}")
    print(f"  {'relayguard, Rich table (process)':<34}{rg_cases:>6}{table_best:>10.3f}{rg_cases / table_best:>10.0f}  {rg_verdict}")
    if NMAP:
        print(f"  {'nmap smtp-open-relay':<34}{nm_tests:>6}{nm_best:>10.3f}{nm_tests / nm_best:>10.0f}  {nm_verdict}")
        ok = nm_tests > 0 and rg_cases >= 2 * nm_tests and rg_best <= nm_best / 2  # 0 tests: a target that failed
        print(f"  target (>= 2x tests in <= 1/2 time, process wall): {'met' if ok else 'NOT met'}"
              f"  [{rg_cases / max(nm_tests, 1):.1f}x tests, {rg_best / nm_best:.2f}x time]")


def many_targets(ft: FixtureThread, count: int, cwd: Path) -> None:
    ports, opened = [], 0
    for i in range(count):
        open_ = i % 4 == 0
        opened += open_
        _, port = ft.mta(accepts=(lambda rcpt: "%" in rcpt) if open_ else (lambda rcpt: False))
        ports.append(port)
    (cwd / "targets").write_text("".join(f"127.0.0.1:{p}\n" for p in ports))
    wall, proc = timed([PY, "-m", "relayguard", "relaytest", "-i", "targets", "--json", "--concurrency", "50"], cwd)
    results = json.loads(proc.stdout)
    found = sum(r["verdict"] == "open" for r in results)
    cases = sum(len(r["cases"]) for r in results)
    print(f"\n{count} loopback fixture servers ({opened} open)")
    print(f"  {'tool':<34}{'targets/s':>10}{'wall s':>10}{'tests':>8}  open found")
    print(f"  {'relayguard relaytest -i':<34}{count / wall:>10.1f}{wall:>10.2f}{cases:>8}  {found}")
    if NMAP:
        wall, proc = timed(nmap_cmd(ports), cwd)
        nm_open = proc.stdout.count("Server is an open relay")
        print(f"  {'nmap smtp-open-relay':<34}{count / wall:>10.1f}{wall:>10.2f}{16 * count:>8}  {nm_open}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", type=int, default=200)
    args = ap.parse_args()
    if not NMAP:
        print("nmap not found (apt-get install nmap): printing relayguard's figures only")
    # The bytecode an installed package has (pip compiles it), whether or not this shell lets
    # Python write it (PYTHONDONTWRITEBYTECODE): else every run compiles what changed since.
    compileall.compile_dir(ROOT / "src" / "relayguard", quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="rg-relaybench-"))
    ft = FixtureThread()
    serve = None
    try:
        _, open_port = ft.mta(accepts=lambda rcpt: True)
        serve, closed_port = start_relayguard(tmp)
        one_target("open target (accepts every recipient)", open_port, args.rounds, tmp)
        one_target("closed target with error tarpit (relayguard serve defaults)", closed_port, args.rounds, tmp)
        many_targets(ft, args.targets, tmp)
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(10)
            except subprocess.TimeoutExpired:
                serve.kill()
        ft.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    main()
