#!/usr/bin/env python3
"""Relay throughput (issue 3): submitted mail delivered to a remote MX, end to end.

Clients submit 2000 messages of 4 KiB for user@remote.test; the remote MX is Postfix's
`smtp-sink` on loopback, which counts every message it receives (`-c`). The figure is messages
delivered per second from the start of submission to the moment smtp-sink counted the last one.

  - relayguard serve: a fresh data folder per round, `[delivery] transport` routes remote.test
    to the sink; clients submit on the submission port with STARTTLS (self-signed, unverified)
    and AUTH PLAIN, one login per session, many messages per session;
  - Postfix: a private instance on loopback (bench/run.py's `Postfix`, plus a transport map to
    the sink and a self-signed pair for STARTTLS); clients submit to its smtpd with STARTTLS but
    without AUTH (relay allowed by mynetworks = 127.0.0.0/8): Postfix is spared the logins (one
    per session; relayguard's first costs a scrypt, the others hit its login cache).

Both queue durably (fsync before the 250) and deliver with their default concurrency. The
client is the same Python smtplib code for both: `--procs` processes x threads, `--sessions`
SMTP sessions in all, each sending its share of the messages over one connection. The peers run
in interleaved rounds (order alternating) against the same sink; the best round counts.
Everything is on 127.0.0.1, every wait is bounded, processes and the temporary folder are
removed at the end (also on error or Ctrl-C). `--profile` runs relayguard's first round under
cProfile (event-loop thread only); `--py-spy` samples all its threads with py-spy instead.
`--plain` (a diagnostic, not the issue's load) lets relayguard too relay for a trusted network
without AUTH, Postfix's terms, so the share of the logins shows. Each round line ends with what creating a file
in the data folder costs at that moment: both peers create and delete files per message, and on
this machine's ext4 without a journal that cost follows how many files anyone deleted nearby in
the last minutes (from about 20 us to 700 us), which moves both peers' figures.
"""

from __future__ import annotations

import argparse
import collections
import math
import multiprocessing as mp
import os
import pstats
import queue
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from run import (  # bench/run.py: the shared process, port and Postfix helpers
    PY,
    BenchError,
    Cleanup,
    Postfix,
    create_cost_us,
    free_port,
    peer_folder,
    postfix_unavailable,
    start_run,
    stop_proc,
    wait_port,
)

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
DOMAIN = "remote.test"
USER, PASSWORD = "bench@localhost", "bench-secret"
TOTAL_DEADLINE = 900  # seconds: the whole run is aborted (and cleaned up) after this
TARGET_VS_POSTFIX = 1.0


# The remote MX ------------------------------------------------------------------------------------


class Sink:
    """`smtp-sink -c`: prints `sess=N quit=N mesg=N` + CR after every session, QUIT and "."; a
    reader thread keeps the message count and the time it last grew."""

    def __init__(self, root: Path, cleanup: Cleanup) -> None:
        self.port = free_port()
        self.count = 0
        self.last = 0.0  # perf_counter() when the count last grew
        self._cond = threading.Condition()
        self._err = open(root / "smtp-sink.err", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL,
        )
        cleanup.push(f"stop smtp-sink {self.proc.pid}", self.stop)
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port, self.proc, "smtp-sink")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd, tail = self.proc.stdout.fileno(), b""
        while chunk := os.read(fd, 65536):
            now = time.perf_counter()
            *records, tail = (tail + chunk).split(b"\r")
            for rec in reversed(records):
                if b"mesg=" in rec:
                    n = int(rec.rsplit(b"mesg=", 1)[1])
                    with self._cond:
                        if n > self.count:
                            self.count, self.last = n, now
                            self._cond.notify_all()
                    break

    def wait_for(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= n, timeout)

    def stop(self) -> None:
        stop_proc(self.proc)
        self._err.close()


# The relays ---------------------------------------------------------------------------------------


class RelayguardRelay:
    """`relayguard serve` with one submission user and remote.test routed to the sink; `plain`:
    `port` is the SMTP port instead, relaying for 127.0.0.0/8 without AUTH (Postfix's terms)."""

    def __init__(self, root: Path, sink_port: int, cleanup: Cleanup, log_level: str | None, profile: Path | None,
                 plain: bool = False) -> None:
        # the venv's relayguard (make bench runs the venv python)
        from relayguard.mta.users import UserDB

        root.mkdir(parents=True)
        self.root, self.port, self.profile = root, free_port(), profile
        smtp_port, submission_port = (self.port, free_port()) if plain else (free_port(), self.port)
        cfg = root / "relayguard.toml"
        cfg.write_text(
            f"""[server]
hostname = "mx.bench.test"
data_dir = "var"
{f'log_level = "{log_level}"' if log_level else ""}

[smtp]
listen = ["127.0.0.1:{smtp_port}"]
submission_listen = ["127.0.0.1:{submission_port}"]
max_connections_per_ip = 1000
auth_attempts_per_minute = 100000

[relay]
trusted_networks = [{'"127.0.0.0/8"' if plain else ""}]

[domains]
local = ["localhost"]

[delivery]
dns_servers = ["127.0.0.1:9"]
transport = {{ "{DOMAIN}" = "127.0.0.1:{sink_port}" }}

[dnsbl]
dns_listen = "127.0.0.1:{free_port()}"
"""
        )
        UserDB(root / "var" / "users").set(USER, PASSWORD)
        self.log = root / "serve.log"
        prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [PY, *prof, "-m", "relayguard", "serve", "-c", str(cfg)],
                cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        cleanup.push(f"stop relayguard {self.proc.pid}", self.stop)
        wait_port(self.port, self.proc, "relayguard serve")
        deadline = time.monotonic() + 30
        while b"event=ready" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"relayguard serve did not get ready; see {self.log}")
            time.sleep(0.05)

    def queued(self) -> int:
        return sum(1 for _ in (self.root / "var" / "queue").glob("*.json"))

    def stop(self) -> None:
        stop_proc(self.proc)


class RelayPostfix(Postfix):
    """bench/run.py's private Postfix, plus `transport_maps` sending remote.test to the sink.

    Postfix.__init__ writes main.cf and master.cf, then runs `postfix check` and `start`: the
    extra settings go in just before the check, so the instance starts with them."""

    def __init__(self, root: Path, sink_port: int, cleanup: Cleanup) -> None:
        self._sink_port = sink_port
        super().__init__(root, cleanup)

    @property
    def master_pid(self) -> int | None:
        try:
            return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, verb: str) -> None:
        if verb == "check" and self._sink_port:
            transport = self.etc / "transport"
            transport.write_text(f"{DOMAIN} smtp:[127.0.0.1]:{self._sink_port}\n")
            # STARTTLS as relayguard offers it: a self-signed pair made for the run.
            cert, key = self.etc / "cert.pem", self.etc / "key.pem"
            self._cmd(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                       "/CN=pf.bench.test", "-keyout", str(key), "-out", str(cert)], "openssl")
            key.chmod(0o600)
            self._cmd([POSTCONF, "-c", str(self.etc), "-e", f"transport_maps = texthash:{transport}",
                       f"smtpd_tls_cert_file = {cert}", f"smtpd_tls_key_file = {key}",
                       "smtpd_tls_security_level = may"], "postconf")
            self._sink_port = 0
        super()._run(verb)

    @staticmethod
    def _cmd(cmd: list[str], what: str) -> None:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"{what} failed: {r.stderr.strip()[-300:]}")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children (cutime, cstime) and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stats[int(d)] = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for p, f in stats.items():
        kids[int(f[1])].append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += sum(int(x) for x in stats[p][11:15])  # utime stime cutime cstime
            todo += kids[p]
    return total / tick


# The clients --------------------------------------------------------------------------------------


def message(size: int, tag: str) -> bytes:
    head = (f"From: <{USER}>\r\nTo: <user@{DOMAIN}>\r\nSubject: relay bench {tag}\r\n"
            f"Message-ID: <{tag}@bench.test>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = (line * (size // len(line) + 1))[: max(size - len(head) - 2, 0)]
    return head + body + b"\r\n"


def _session(port: int, auth: bool, count: int, size: int, tag: str, timeout: float, out: list[str]) -> None:
    """`auth`: log in after STARTTLS (relayguard's submission); else STARTTLS only (Postfix)."""
    sent = 0
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            smtp.starttls(context=ctx)
            if auth:
                smtp.login(USER, PASSWORD)
            for i in range(count):
                smtp.sendmail(USER, [f"user@{DOMAIN}"], message(size, f"{tag}.{i}"))
                sent += 1
    except (OSError, smtplib.SMTPException) as e:
        out.append(f"session {tag}: {sent}/{count} sent, then {type(e).__name__}: {e}")


def _client_proc(port: int, auth: bool, counts: list[int], size: int, tag: str, timeout: float,
                 go: mp.Barrier, results: mp.Queue) -> None:
    errors: list[str] = []
    threads = [threading.Thread(target=_session, args=(port, auth, n, size, f"{tag}.{j}", timeout, errors))
               for j, n in enumerate(counts)]
    try:
        go.wait(60)
    except threading.BrokenBarrierError:
        results.put(["start barrier broken"])
        return
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(errors)


@dataclass
class Round:
    submitted: float  # seconds until every client had its 250s
    delivered: float  # seconds until the sink counted the last message
    cpu: float = float("nan")  # server CPU seconds (Postfix: master and all its children)


@dataclass
class Peer:
    name: str
    rounds: list[Round] = field(default_factory=list)
    skipped: str | None = None

    def best(self, n: int) -> float:
        return max(n / r.delivered for r in self.rounds)


def load(port: int, auth: bool, sink: Sink, a: argparse.Namespace, tag: str, pid: int | None) -> Round:
    """Submit a.messages over a.sessions sessions from a.procs processes; time until the sink has them all.
    `pid`: the server, whose CPU (with its descendants', for Postfix's master) is measured."""
    per = [a.messages // a.sessions + (1 if i < a.messages % a.sessions else 0) for i in range(a.sessions)]
    procs_n = min(a.procs, a.sessions)
    groups = [per[i::procs_n] for i in range(procs_n)]
    ctx = mp.get_context("fork")
    go, results = ctx.Barrier(procs_n + 1), ctx.Queue()
    procs = [ctx.Process(target=_client_proc, args=(port, auth, g, a.size, f"{tag}.p{i}", a.run_timeout, go, results),
                         daemon=True) for i, g in enumerate(groups)]
    for p in procs:
        p.start()
    finished = False
    try:
        base = sink.count
        go.wait(60)  # every client process is up: start the clock
        cpu0 = tree_cpu(pid) if pid else float("nan")
        t0 = time.perf_counter()
        errors: list[str] = []
        for _ in procs:
            errors += results.get(timeout=a.run_timeout)
        submitted = time.perf_counter() - t0
        if errors:
            raise BenchError(f"{tag}: {len(errors)} sessions failed: {errors[:3]}")
        if not sink.wait_for(base + a.messages, max(a.run_timeout - submitted, 1)):
            raise BenchError(f"{tag}: the sink got {sink.count - base} of {a.messages} messages within {a.run_timeout}s")
        cpu = tree_cpu(pid) - cpu0 if pid else float("nan")
        finished = True
        return Round(submitted, sink.last - t0, cpu)
    except (threading.BrokenBarrierError, queue.Empty) as e:
        raise BenchError(f"{tag}: clients did not start or finish in time ({type(e).__name__})") from None
    finally:  # clients that are done exit by themselves; on error or Ctrl-C they are killed at once
        deadline = time.monotonic() + (5 if finished else 0)
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)


class Spy:
    """`py-spy record --threads --format raw` on a process until stop(): stacks of busy threads."""

    def __init__(self, binary: str, pid: int, out: Path, cleanup: Cleanup) -> None:
        self.out = out
        self.log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([binary, "record", "-p", str(pid), "-r", "100", "--threads", "--format", "raw",
                                      "-o", str(out)], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        cleanup.push(f"stop py-spy {self.proc.pid}", self.stop)
        time.sleep(0.5)  # attached before the load starts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def print_spy(path: Path, top: int) -> None:
    if not path.exists():
        print(f"  no py-spy output at {path} (see {path.with_suffix('.log')})")
        return
    own, incl, threads, total = collections.Counter(), collections.Counter(), collections.Counter(), 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        n = int(count)
        total += n
        threads[thread.split(":")[-1].strip().rstrip("0123456789").rstrip("_") or thread] += n
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            if "relayguard/" in f:
                incl[f] += n
    if not total:
        print("  py-spy took no samples")
        return
    print(f"\n--- relayguard serve, py-spy: {total} samples of busy threads (wall clock, waits in locks and fsync included) ---")
    print("by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in threads.most_common(6)))
    print(f"top {top} by own samples:")
    for f, n in own.most_common(top):
        print(f"  {n / total:6.1%}  {f}")
    print(f"top {top} relayguard functions, inclusive:")
    for f, n in incl.most_common(top):
        print(f"  {n / total:6.1%}  {f}")


def print_profile(path: Path, top: int) -> None:
    if not path.exists():
        print(f"  no profile written at {path}")
        return
    for key in ("tottime", "cumulative"):
        print(f"\n--- relayguard serve, cProfile (event loop thread only), top {top} by {key} ---")
        pstats.Stats(str(path)).strip_dirs().sort_stats(key).print_stats(top)


# Main ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per peer (best counts)")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096, help="message size (bytes)")
    ap.add_argument("--sessions", type=int, default=20, help="SMTP sessions in all (one login each for relayguard)")
    ap.add_argument("--procs", type=int, default=4, help="client processes the sessions are spread over")
    ap.add_argument("--run-timeout", type=float, default=180, help="seconds allowed per load run")
    ap.add_argument("--log-level", help="relayguard log_level (default: its default, info)")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--plain", action="store_true",
                    help="diagnostic: relayguard too relays for a trusted network, STARTTLS without AUTH")
    ap.add_argument("--profile", action="store_true", help="run relayguard under cProfile and print its hotspots")
    ap.add_argument("--py-spy", nargs="?", const="py-spy", metavar="BIN",
                    help="sample relayguard's first round with py-spy (all threads) and print its hotspots")
    ap.add_argument("--top", type=int, default=25, help="--profile, --py-spy: functions shown")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, queues)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    a = ap.parse_args()
    if a.sessions < 1 or a.messages < a.sessions:
        ap.error("need at least one session and one message per session")

    if not Path(SMTP_SINK).exists():
        print(f"smtp-sink not found at {SMTP_SINK}: install the Debian postfix package", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("smtp-sink must start as root here (it drops to nobody with -u)", file=sys.stderr)
        return 2

    cleanup, tmp = start_run("relayguard-relaybench-", TOTAL_DEADLINE, a.keep)
    started = time.perf_counter()
    status = 0
    n = a.messages
    try:
        print(f"relay throughput ({os.cpu_count()} CPUs, python {sys.version.split()[0]}, data in {tmp})")
        print(f"  {n} messages of {a.size} bytes to user@{DOMAIN}, {a.sessions} sessions over {a.procs} client "
              f"processes, smtp-sink on loopback as the MX, {a.rounds} interleaved rounds")
        # Both peers create (and delete) files per message; on this machine's ext4 without a journal
        # a create costs more the more files were deleted nearby in the last minutes (see
        # run.spread_subfolders: each peer's folder has a block group of its own).
        print(f"  creating a file in a new folder costs {create_cost_us(tmp):.0f} us of kernel CPU now")
        sink = Sink(tmp, cleanup)
        rg, pf = Peer("relayguard"), Peer("postfix")
        pf_srv = None
        pf.skipped = "skipped (--no-postfix)" if a.no_postfix else postfix_unavailable()
        if pf.skipped is None:
            try:
                pf_srv = RelayPostfix(peer_folder(tmp, "postfix"), sink.port, cleanup)
            except (BenchError, OSError, LookupError, subprocess.TimeoutExpired) as e:
                pf.skipped = f"could not start a private Postfix: {e}"
        profile = tmp / "serve.prof" if a.profile else None
        spy_bin = (shutil.which(a.py_spy) or a.py_spy) if a.py_spy else None
        spy_out = tmp / "serve.spy.txt"

        def run_relayguard(i: int) -> None:
            srv = RelayguardRelay(peer_folder(tmp, f"relayguard-{i}"), sink.port, cleanup, a.log_level, profile if i == 0 else None,
                                  plain=a.plain)
            spy = Spy(spy_bin, srv.proc.pid, spy_out, cleanup) if spy_bin and i == 0 else None
            r = load(srv.port, not a.plain, sink, a, f"rg{i}", srv.proc.pid)
            if spy:
                spy.stop()
            left = srv.queued()
            srv.stop()
            if left:
                print(f"  note: {left} entries still in relayguard's queue after delivery (finishing)")
            rg.rounds.append(r)

        def run_postfix(i: int) -> None:
            assert pf_srv is not None
            pf.rounds.append(load(pf_srv.port, False, sink, a, f"pf{i}", pf_srv.master_pid))

        for i in range(a.rounds):
            order = [run_relayguard] + ([run_postfix] if pf_srv else [])
            for run_peer in order if i % 2 == 0 else order[::-1]:
                run_peer(i)
            line = "  ".join(f"{p.name} {n / p.rounds[-1].delivered:6.0f} (accepted {n / p.rounds[-1].submitted:4.0f})"
                             for p in (rg, pf) if len(p.rounds) > i)
            print(f"  round {i + 1}/{a.rounds}: {line}  msgs/s  (file create: {create_cost_us(tmp):.0f} us)", flush=True)
        time.sleep(1)  # late duplicates, if any, reach the sink
        extra = sink.count - n * (len(rg.rounds) + len(pf.rounds))
        if pf_srv is not None:
            pf_srv.stop()

        print("\n" + "=" * 78)
        print(f"{'relay, end to end (submit -> sink)':<40}{'best msgs/s':>12}{'accepted':>10}{'CPU ms/msg':>12}  rounds")
        for p in (rg, pf):
            if p.skipped:
                print(f"{p.name:<40}  skipped: {p.skipped}")
                continue
            best = max(p.rounds, key=lambda r: n / r.delivered)
            cpu = min(r.cpu for r in p.rounds) / n * 1000
            label = {"relayguard": "relayguard (STARTTLS, trusted net)" if a.plain else
                     "relayguard (STARTTLS + AUTH submission)", "postfix": "postfix 3 (STARTTLS, mynetworks)"}[p.name]
            cpu_s = f"{'-':>12}" if math.isnan(cpu) else f"{cpu:12.2f}"
            print(f"{label:<40}{p.best(n):12.0f}{n / best.submitted:10.0f}{cpu_s}  "
                  + " ".join(f"{n / r.delivered:.0f}" for r in p.rounds))
        print(f"{'messages the sink got beyond ' + str(n) + ' per round':<40}{extra:12d}  (duplicates)")
        if pf.skipped:
            print(f"{'ratio relayguard / postfix':<40}{'n/a':>12}   ({pf.skipped})")
        else:
            ratio = rg.best(n) / pf.best(n)
            verdict = "ok" if ratio >= TARGET_VS_POSTFIX else "BELOW TARGET"
            print(f"{'ratio relayguard / postfix':<40}{ratio:12.2f}x  target >= {TARGET_VS_POSTFIX}x  {verdict}")
            status |= int(ratio < TARGET_VS_POSTFIX)
        if a.plain:
            print("  (--plain: both relay for a trusted network, STARTTLS without AUTH; not the issue's load)")
        else:
            print("  (both take STARTTLS; relayguard also a login per session, Postfix relays for mynetworks without AUTH)")
        if profile:
            print_profile(profile, a.top)
        if spy_bin:
            print_spy(spy_out, a.top)
        print(f"\nbench took {time.perf_counter() - started:.0f}s")
    except (BenchError, KeyboardInterrupt) as e:
        print(f"\nbench aborted: {e}", file=sys.stderr)
        status = 2
    finally:
        signal.alarm(0)
        cleanup.run()
    return status if status == 2 or a.strict else 0


if __name__ == "__main__":
    sys.exit(main())
