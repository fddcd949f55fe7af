#!/usr/bin/env python3
"""relayguard benchmarks (`make bench`): accept throughput against peers, and memory under load.

1. Accept throughput: Postfix's `smtp-source` (20 sessions, 2000 messages of 4 KiB, no
   pipelining) against
     - relayguard serve: default settings, a fresh data folder, mail delivered to a local
       Maildir (every message and directory fsync'd before the 250);
     - bench/discard_sink.py: an aiosmtpd handler that throws mail away (no disk at all);
     - a private Postfix on loopback that queues durably and delivers to a Maildir with local(8)
       (needs root and the Debian `postfix` package; skipped with the reason otherwise).
   Timed from outside (wall clock around smtp-source). The peers run in interleaved rounds and
   the best round counts, so a burst of load from other processes on the machine hurts all
   peers alike and the figure is the least disturbed one; every round is printed too.
2. Memory: peak RSS (VmHWM) of `relayguard serve` after 10 clients each send a 20 MB message
   at the same time.
3. Relay throughput (issue 3): bench/relay.py, run after the above (`--no-relay` skips it).

All traffic stays on 127.0.0.1; every wait is bounded; servers are stopped and the temporary
folder removed at the end (also on error or Ctrl-C). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SENDER, RCPT = "a@example.test", "postmaster@localhost"
TOTAL_DEADLINE = 900  # seconds: the whole run is aborted (and cleaned up) after this

TARGET_VS_SINK = 1.0
TARGET_VS_POSTFIX = 1.2
TARGET_RSS_MB = 100


class BenchError(Exception):
    pass


# Processes and cleanup ----------------------------------------------------------------------------


class Cleanup:
    """Undo actions, run in reverse order exactly once."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, action: Callable[[], None]) -> None:
        self._actions.append((what, action))

    def run(self) -> None:
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except Exception as e:  # keep cleaning up
                print(f"cleanup: {what}: {e}", file=sys.stderr)


def start_run(prefix: str, deadline: int, keep: bool) -> tuple[Cleanup, Path]:
    """A run's set-up: SIGTERM ends it like Ctrl-C, SIGALRM after `deadline` seconds aborts it,
    and a temporary folder that the returned Cleanup removes (unless `keep`)."""

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def on_alarm(signum: int, frame: object) -> None:
        raise BenchError(f"still running after {deadline}s: aborted")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(deadline)
    cleanup = Cleanup()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o755)  # Postfix's unprivileged processes must reach their folders inside
    if not spread_subfolders(tmp):
        print(f"note: {tmp} takes no ext4 T attribute: the peers' files may sit among others' deleted ones")
    if keep:
        print(f"temporary folder kept: {tmp}")
    else:
        cleanup.push(f"remove {tmp}", lambda: shutil.rmtree(tmp, ignore_errors=True))
    return cleanup, tmp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s") from None
            time.sleep(0.05)


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def count_files(folder: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(folder))
    except FileNotFoundError:
        return 0


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def spread_subfolders(folder: Path) -> bool:
    """Give `folder` ext4's T attribute (chattr +T): each folder made in it starts in a block
    group of its own, so no peer's files sit among inodes another peer (or an earlier run, or the
    test suite) deleted. On ext4 without a journal, as on the machine these figures come from,
    creating a file scans past every free inode of its group deleted in the last 5 to 300 seconds
    (the kernel's recently_deleted()): after a few thousand deletions nearby a create cost up to
    1 ms instead of 20 us, and a durable peer creates files per message. The group is chosen
    from a hash of the new folder's name: `peer_folder` names differ from run to run, or a run
    would land where the last one just deleted everything. False where the filesystem has no
    such attribute (the figures then depend on what ran before)."""
    flags = array.array("i", [0])
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        flags[0] |= _FS_TOPDIR_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def peer_folder(tmp: Path, name: str) -> Path:
    """A folder for one peer in the run's folder, named `name` plus the run's random suffix."""
    return tmp / f"{name}-{tmp.name.rsplit('-', 1)[-1]}"


def create_cost_us(folder: Path, n: int = 200) -> float:
    """Kernel CPU (microseconds) to create one empty file in a new folder in `folder` (a block
    group of its own, as each peer's): every durable peer pays it per queued or delivered file,
    the discard sink never. Near many recent deletions it was seen to reach 700 us on this
    machine (`spread_subfolders`), so the figure is printed per run."""
    probe = peer_folder(folder, "create-probe")
    probe.mkdir()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
    for i in range(n):
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    cost = (resource.getrusage(resource.RUSAGE_THREAD).ru_stime - before) / n * 1e6
    shutil.rmtree(probe)
    return cost


# Peers --------------------------------------------------------------------------------------------


class Relayguard:
    """`relayguard serve` in its own folder with a fresh data directory."""

    def __init__(self, root: Path, cleanup: Cleanup, extra_smtp: str = "", log_level: str | None = None) -> None:
        # Defaults except the per-client cap: it is 20, smtp-source's 20 sessions reconnect
        # right after QUIT, and the slot of the closed session can still be counted then (421).
        self.root = root
        root.mkdir(parents=True)
        self.port = free_port()
        cfg = root / "relayguard.toml"
        cfg.write_text(
            f"""[server]
hostname = "mx.bench.test"
data_dir = "var"
{f'log_level = "{log_level}"' if log_level else ""}

[smtp]
listen = ["127.0.0.1:{self.port}"]
submission_listen = ["127.0.0.1:{free_port()}"]
max_connections_per_ip = 100
{extra_smtp}

[domains]
local = ["localhost"]
"""
        )
        self.log = root / "serve.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [PY, "-m", "relayguard", "serve", "-c", str(cfg)],
                cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        cleanup.push(f"stop relayguard {self.proc.pid}", lambda: stop_proc(self.proc))
        wait_port(self.port, self.proc, "relayguard serve")

    @property
    def maildir_new(self) -> Path:
        return self.root / "var" / "mail" / "localhost" / "postmaster" / "new"

    def stop(self) -> None:
        stop_proc(self.proc)


class DiscardSink:
    def __init__(self, cleanup: Cleanup) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [PY, str(HERE / "discard_sink.py"), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        cleanup.push(f"stop aiosmtpd sink {self.proc.pid}", lambda: stop_proc(self.proc))
        wait_port(self.port, self.proc, "aiosmtpd discard sink")


class Postfix:
    """A private Postfix instance (REFERENCES.md section 6): own config, queue and data folders,
    listening on 127.0.0.1:PORT only, accepting mail for localhost from 127.0.0.0/8, queueing
    it durably (cleanup fsyncs the queue file before the 250) and delivering it with local(8)
    to a Maildir through an alias, as a real install delivers local mail."""

    def __init__(self, root: Path, cleanup: Cleanup) -> None:
        self.root = root
        self.port = free_port()
        etc, queue, data, box = root / "etc", root / "queue", root / "data", root / "maildir"
        for d in (etc, queue, data, box / "tmp", box / "new", box / "cur"):
            d.mkdir(parents=True)
        for d in (root, etc, queue):
            d.chmod(0o755)
        shutil.chown(data, "postfix")
        for d in (box, box / "tmp", box / "new", box / "cur"):
            shutil.chown(d, "nobody")
        self.maildir_new = box / "new"
        (etc / "aliases").write_text(f"postmaster {box}/\n")  # texthash: "key value"; a trailing / means Maildir
        (etc / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pf.bench.test
mydestination = localhost, pf.bench.test
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps = texthash:{etc}/aliases
alias_database =
allow_mail_to_files = alias
default_privs = nobody
biff = no
smtp_dns_support_level = disabled
maillog_file = {root}/maillog
maillog_file_prefixes = /tmp, /var
"""
        )
        lines = []
        for line in Path("/usr/share/postfix/master.cf.dist").read_text().splitlines():
            cols = line.split()
            if line[:1].isalnum() and len(cols) >= 8:
                if cols[0] == "smtp" and cols[1] == "inet":
                    cols[0] = f"127.0.0.1:{self.port}"
                cols[4] = "n"  # no chroot: the private queue has no chroot environment
                line = " ".join(cols)
            lines.append(line)
        (etc / "master.cf").write_text("\n".join(lines) + "\n")
        self.etc = etc
        self.stopped = False
        self._run("check")
        self._run("start")
        cleanup.push("stop postfix", self.stop)
        wait_port(self.port, None, "postfix smtpd")

    def _run(self, verb: str) -> None:
        r = subprocess.run([POSTFIX, "-c", str(self.etc), verb], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            tail = (self.root / "maillog").read_text(errors="replace")[-600:] if (self.root / "maillog").exists() else ""
            raise BenchError(f"postfix {verb} failed ({r.returncode}): {r.stderr.strip()} {tail.strip()}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        pid_file = self.root / "queue" / "pid" / "master.pid"
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        # `postfix stop` returns at once; wait for the master (and its children) to go.
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def postfix_unavailable() -> str | None:
    if not Path(POSTFIX).exists():
        return f"{POSTFIX} not found (apt-get install postfix)"
    if not Path("/usr/share/postfix/master.cf.dist").exists():
        return "/usr/share/postfix/master.cf.dist not found (Debian postfix package expected)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    return None


# Throughput ---------------------------------------------------------------------------------------


@dataclass
class Round:
    seconds: float
    cpu: float = float("nan")  # server CPU seconds during the run
    drained: float | None = None  # Postfix: seconds until every message was in the Maildir

    def rate(self, n: int) -> float:
        return n / self.seconds


@dataclass
class PeerResult:
    name: str
    rounds: list[Round] = field(default_factory=list)
    skipped: str | None = None

    def best(self, n: int) -> float:
        return max(r.rate(n) for r in self.rounds)

    def median(self, n: int) -> float:
        return statistics.median(r.rate(n) for r in self.rounds)


def smtp_source(port: int, a: argparse.Namespace, pid: int | None) -> Round:
    cmd = [SMTP_SOURCE, "-s", str(a.sessions), "-m", str(a.messages), "-l", str(a.size),
           "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}"]
    cpu0 = cpu_seconds(pid) if pid else float("nan")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.run_timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"smtp-source took more than {a.run_timeout}s on port {port}") from None
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
    if r.returncode != 0 or r.stderr.strip():
        raise BenchError(f"smtp-source failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return Round(elapsed, cpu)


def wait_count(folder: Path, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while count_files(folder) < n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def throughput(a: argparse.Namespace, tmp: Path, cleanup: Cleanup) -> list[PeerResult]:
    rg, sink, pf = PeerResult("relayguard"), PeerResult("aiosmtpd discard"), PeerResult("postfix")
    sink_srv = DiscardSink(cleanup)
    pf_srv = None
    why = "skipped (--no-postfix)" if a.no_postfix else postfix_unavailable()
    if why is None:
        try:
            pf_srv = Postfix(peer_folder(tmp, "postfix"), cleanup)
        except (BenchError, OSError, LookupError, subprocess.TimeoutExpired) as e:
            why = f"could not start a private Postfix: {e}"
    pf.skipped = why
    for i in range(a.rounds):
        # relayguard: a fresh server and data folder each round (nothing is deleted until the end,
        # so no round pays for another's deletions).
        srv = Relayguard(peer_folder(tmp, f"relayguard-{i}"), cleanup, log_level=a.log_level)
        r = smtp_source(srv.port, a, srv.proc.pid)
        got = count_files(srv.maildir_new)
        srv.stop()
        if got != a.messages:
            raise BenchError(f"relayguard stored {got} of {a.messages} messages; see {srv.log}")
        rg.rounds.append(r)
        sink.rounds.append(smtp_source(sink_srv.port, a, sink_srv.proc.pid))
        if pf_srv is not None:
            r = smtp_source(pf_srv.port, a, None)
            start = time.perf_counter() - r.seconds
            if not wait_count(pf_srv.maildir_new, a.messages * (i + 1), a.run_timeout):
                raise BenchError(f"postfix did not deliver {a.messages} messages within {a.run_timeout}s")
            r.drained = time.perf_counter() - start
            pf.rounds.append(r)
        line = "  ".join(f"{p.name} {p.rounds[-1].rate(a.messages):6.0f}" for p in (rg, sink, pf) if len(p.rounds) > i)
        print(f"  round {i + 1}/{a.rounds}: {line}  msgs/s", flush=True)
    if pf_srv is not None:
        pf_srv.stop()
    stop_proc(sink_srv.proc)
    return [rg, sink, pf]


# Memory -------------------------------------------------------------------------------------------


def _reply(f) -> tuple[int, str]:
    lines = []
    while True:
        line = f.readline()
        if not line:
            raise BenchError("connection closed")
        lines.append(line.decode(errors="replace").rstrip())
        if line[3:4] != b"-":
            return int(line[:3]), "\n".join(lines)


def _send_one(port: int, body: bytes, barrier: threading.Barrier, out: list[str], timeout: float) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s, s.makefile("rb") as f:
            expect = [(None, 220), (b"EHLO bench.test\r\n", 250),
                      (f"MAIL FROM:<{SENDER}> SIZE={len(body)}\r\n".encode(), 250),
                      (f"RCPT TO:<{RCPT}>\r\n".encode(), 250), (b"DATA\r\n", 354)]
            for cmd, code in expect:
                if cmd:
                    s.sendall(cmd)
                got, text = _reply(f)
                if got != code:
                    raise BenchError(f"{cmd!r}: {text}")
            barrier.wait()  # every client is in DATA: now all send at once
            view = memoryview(body)
            for i in range(0, len(body), 1 << 20):
                s.sendall(view[i : i + (1 << 20)])
            s.sendall(b".\r\n")
            got, text = _reply(f)
            out.append(text if got != 250 else "")
            s.sendall(b"QUIT\r\n")
    except (OSError, BenchError, threading.BrokenBarrierError) as e:
        barrier.abort()
        out.append(f"error: {e}")


def memory(a: argparse.Namespace, tmp: Path, cleanup: Cleanup) -> dict[str, float]:
    size = a.big_mb * 1_000_000
    srv = Relayguard(peer_folder(tmp, "relayguard-memory"), cleanup, f"max_message_size = {size + 10 * 1024 * 1024}")
    idle_kb = vm_kb(srv.proc.pid, "VmHWM")
    line = b"x" * 76 + b"\r\n"
    header = f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: big\r\n\r\n".encode()
    body = header + line * ((size - len(header)) // len(line) + 1)
    barrier = threading.Barrier(a.clients, timeout=60)
    results: list[str] = []
    threads = [threading.Thread(target=_send_one, args=(srv.port, body, barrier, results, a.run_timeout))
               for _ in range(a.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.run_timeout + 5)
    elapsed = time.perf_counter() - t0
    hwm_kb = vm_kb(srv.proc.pid, "VmHWM")
    stored = count_files(srv.maildir_new)
    srv.stop()
    problems = [r for r in results if r] + ([f"{a.clients - len(results)} clients hung"] if len(results) < a.clients else [])
    if problems or stored != a.clients:
        raise BenchError(f"memory run: {stored}/{a.clients} stored; {problems[:3]}")
    return {"idle_mb": idle_kb / 1024, "peak_mb": hwm_kb / 1024, "seconds": elapsed,
            "mb_per_s": a.clients * len(body) / 1e6 / elapsed}


# Report -------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds per peer (best counts)")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096, help="smtp-source message size (bytes)")
    ap.add_argument("--clients", type=int, default=10, help="memory test: concurrent big messages")
    ap.add_argument("--big-mb", type=int, default=20, help="memory test: message size (MB)")
    ap.add_argument("--run-timeout", type=float, default=120, help="seconds allowed per load run")
    ap.add_argument("--log-level", help="relayguard log_level for the throughput runs (default: its default, info)")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-relay", action="store_true", help="skip bench/relay.py (relay throughput, issue 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, Maildirs)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args()

    if not a.no_throughput and not Path(SMTP_SOURCE).exists():
        print(f"smtp-source not found at {SMTP_SOURCE}: install the Debian postfix package "
              "(see bench/run.py and REFERENCES.md section 6)", file=sys.stderr)
        return 2

    cleanup, tmp = start_run("relayguard-bench-", TOTAL_DEADLINE, a.keep)
    started = time.perf_counter()
    status = 0  # 1: a target missed, 2: the bench failed
    try:
        print(f"relayguard benchmarks ({os.cpu_count()} CPUs, python {sys.version.split()[0]}, data in {tmp}; "
              f"creating a file in a new folder there costs {create_cost_us(tmp):.0f} us of kernel CPU)")
        results: list[PeerResult] = []
        if not a.no_throughput:
            print(f"\nAccept throughput: smtp-source -s {a.sessions} -m {a.messages} -l {a.size} "
                  f"-f {SENDER} -t {RCPT}, {a.rounds} interleaved rounds")
            results = throughput(a, tmp, cleanup)
        mem = None
        if not a.no_memory:
            print(f"\nMemory: {a.clients} clients each sending a {a.big_mb} MB message at once ...", flush=True)
            mem = memory(a, tmp, cleanup)

        print("\n" + "=" * 78)
        if results:
            n = a.messages
            print(f"{'peer':<36}{'best msgs/s':>12}{'median':>9}{'CPU ms/msg':>12}  rounds")
            for p in results:
                if p.skipped:
                    print(f"{p.name:<36}  skipped: {p.skipped}")
                    continue
                cpu = min(r.cpu for r in p.rounds) / n * 1000
                label = {"relayguard": "relayguard (Maildir, fsync)" + (f" log={a.log_level}" if a.log_level else ""),
                         "aiosmtpd discard": "aiosmtpd discard sink (no disk)",
                         "postfix": "postfix 3 (queue+local Maildir)"}[p.name]
                extra = ""
                if p.name == "postfix":
                    extra = f"  (all delivered after {min(r.drained or 0 for r in p.rounds):.1f}s)"
                cpu_s = f"{cpu:12.2f}" if cpu == cpu else f"{'-':>12}"
                print(f"{label:<36}{p.best(n):12.0f}{p.median(n):9.0f}{cpu_s}  "
                      + " ".join(f"{r.rate(n):.0f}" for r in p.rounds) + extra)
            rg, sink, pf = results
            ratio = rg.best(n) / sink.best(n)
            print(f"{'ratio relayguard / aiosmtpd':<36}{ratio:12.2f}x  target >= {TARGET_VS_SINK}x  {verdict(ratio >= TARGET_VS_SINK)}")
            status |= int(ratio < TARGET_VS_SINK)
            if pf.skipped:
                print(f"{'ratio relayguard / postfix':<36}{'n/a':>12}   ({pf.skipped})")
            else:
                ratio = rg.best(n) / pf.best(n)
                print(f"{'ratio relayguard / postfix':<36}{ratio:12.2f}x  target >= {TARGET_VS_POSTFIX}x  {verdict(ratio >= TARGET_VS_POSTFIX)}")
                status |= int(ratio < TARGET_VS_POSTFIX)
        if mem:
            ok = mem["peak_mb"] <= TARGET_RSS_MB
            print(f"{'relayguard peak RSS (VmHWM)':<36}{mem['peak_mb']:10.1f} MB  target <= {TARGET_RSS_MB} MB  {verdict(ok)}"
                  f"  (idle {mem['idle_mb']:.1f} MB; {a.clients} x {a.big_mb} MB in {mem['seconds']:.1f}s, "
                  f"{mem['mb_per_s']:.0f} MB/s)")
            status |= int(not ok)
        print(f"\nbench took {time.perf_counter() - started:.0f}s")
    except (BenchError, KeyboardInterrupt) as e:
        print(f"\nbench aborted: {e}", file=sys.stderr)
        status = 2
    finally:
        signal.alarm(0)
        cleanup.run()
    if not a.no_relay and status != 2:  # after this run's cleanup: it has its own servers and deadline
        print("\n" + "=" * 78 + "\nbench/relay.py: relay throughput (issue 3)", flush=True)
        cmd = [PY, str(HERE / "relay.py")] + ["--no-postfix"] * a.no_postfix + ["--strict"] * a.strict
        relay = subprocess.Popen(cmd)
        try:
            rc = relay.wait()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: relay.py cleans up on SIGTERM too
            relay.send_signal(signal.SIGTERM)
            relay.wait(60)
            rc = 2
        status = 2 if rc == 2 else status | rc
    return status if status == 2 or a.strict else 0


if __name__ == "__main__":
    sys.exit(main())
