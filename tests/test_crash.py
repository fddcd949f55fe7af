"""SIGKILL during load: every message answered 250 is complete in every recipient's Maildir."""

from __future__ import annotations

import re
import secrets
import signal
import smtplib
import threading
import time

THREADS = 8
PER_THREAD = 30
RCPTS = ("postmaster@localhost", "alice@localhost")
KILL_AFTER_ACKS = 40


def content(thread: int, seq: int) -> bytes:
    """A few KB, CRLF lines, no leading dots: smtplib sends it unchanged and it is stored as is."""
    marker = f"{thread}-{seq}-{secrets.token_hex(6)}"
    lines = ["From: <sender@example.org>", f"Subject: crash test {marker}", ""]
    lines += [f"{marker} line {n:03d} " + secrets.token_hex(40) for n in range(30)]
    lines.append(f"END {marker}")
    return ("\r\n".join(lines) + "\r\n").encode()


def strip_received(message: bytes) -> bytes:
    assert message.startswith(b"Received: "), message[:200]
    lines = message.split(b"\r\n")
    n = 1
    while n < len(lines) and lines[n][:1] in (b"\t", b" "):
        n += 1
    return b"\r\n".join(lines[n:])


def test_acked_messages_survive_sigkill(make_server):
    srv = make_server()
    lock = threading.Lock()
    acked: list[tuple[str, bytes]] = []
    attempted: set[bytes] = set()
    unexpected: list[str] = []

    def client(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10) as s:
                s.ehlo(f"crash{n}.example")
                for i in range(PER_THREAD):
                    body = content(n, i)
                    code, text = s.mail("sender@example.org")
                    if code != 250:
                        unexpected.append(f"MAIL {code} {text!r}")
                        return
                    for rcpt in RCPTS:
                        code, text = s.rcpt(rcpt)
                        if code != 250:
                            unexpected.append(f"RCPT {code} {text!r}")
                            return
                    with lock:
                        attempted.add(body)
                    code, text = s.data(body)
                    if code != 250:
                        unexpected.append(f"DATA {code} {text!r}")
                        return
                    m = re.fullmatch(rb"2\.0\.0 Ok: queued as ([0-9A-F]+)", text)
                    if m is None:
                        unexpected.append(f"DATA reply {text!r}")
                        return
                    with lock:
                        acked.append((m.group(1).decode(), body))
        except (smtplib.SMTPServerDisconnected, OSError):
            pass  # the server was killed under us

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(THREADS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < KILL_AFTER_ACKS and time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    alive_at_kill = sum(t.is_alive() for t in threads)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads)

    assert unexpected == []
    assert len(acked) >= KILL_AFTER_ACKS
    assert alive_at_kill > 0 and len(acked) < THREADS * PER_THREAD  # killed while sending
    assert len({qid for qid, _ in acked}) == len(acked)

    for user in ("postmaster", "alice"):
        new = srv.data / "mail" / "localhost" / user / "new"
        files = {p.name: p.read_bytes() for p in new.iterdir()}
        for qid, body in acked:
            found = [name for name in files if qid in name]
            assert len(found) == 1, (user, qid, found)
            data = files[found[0]]
            assert data.endswith(body), (user, qid)
            assert strip_received(data) == body
            assert f" id {qid}".encode() in data.split(b"\r\n\r\n", 1)[0]
        # Nothing torn either: every file in new/ is a whole message that some client sent.
        for name, data in files.items():
            assert strip_received(data) in attempted, (user, name)
