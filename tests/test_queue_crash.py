"""Crash safety of the whole path: submission -> queue -> remote MX, with SIGKILLs along the way."""

from __future__ import annotations

import random
import signal
import smtplib
import threading
import time
import uuid

from conftest import USERS, client_tls, start_server
from fakes import FakeDNS, FakeMX
from test_outbound import free_port_everywhere, wait_for

MESSAGES = 500
CLIENTS = 4


def test_every_acknowledged_message_arrives_despite_sigkills(tmp_path):
    port = free_port_everywhere()
    dns_server = FakeDNS({("far.test", "MX"): ["10 mx.far.test."], ("mx.far.test", "A"): ["127.0.0.3"]})
    mx = FakeMX("127.0.0.3", port)
    delivery = f'dns_servers = ["{dns_server.address}"]\nport = {port}\nmin_backoff = 0.2\nmax_backoff = 0.5'
    extra = "auth_attempts_per_minute = 100000"
    root = tmp_path / "srv"
    state = {"srv": start_server(root, extra, delivery=delivery)}
    acked: set[str] = set()
    todo = [uuid.uuid4().hex for _ in range(MESSAGES)]
    lock = threading.Lock()
    deadline = time.monotonic() + 240

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                if not todo:
                    return
            try:
                srv = state["srv"]
                with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=10) as smtp:
                    smtp.starttls(context=client_tls())
                    smtp.login("alice@localhost", USERS["alice@localhost"])
                    while True:
                        with lock:
                            if not todo:
                                return
                            token = todo.pop()
                        try:
                            smtp.sendmail("alice@localhost", ["user@far.test"],
                                          f"Subject: {token}\r\n\r\n{token}\r\n".encode())
                        except (smtplib.SMTPException, OSError):
                            with lock:
                                todo.append(token)  # not acknowledged: send again
                            raise
                        with lock:
                            acked.add(token)
            except (smtplib.SMTPException, OSError):
                time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    rng = random.Random(5782)
    kills = sorted(rng.sample(range(50, MESSAGES - 50), 3))
    try:
        for threshold in kills:
            wait_for(lambda: len(acked) >= threshold or not any(t.is_alive() for t in threads), timeout=120)
            state["srv"].stop(signal.SIGKILL)
            state["srv"] = start_server(root, extra, delivery=delivery)
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic()))
        # One more kill while the queue drains, then let it finish.
        time.sleep(rng.uniform(0.0, 0.3))
        state["srv"].stop(signal.SIGKILL)
        state["srv"] = start_server(root, extra, delivery=delivery)
        assert len(acked) == MESSAGES
        arrived = wait_for(lambda: (lambda got: got if acked <= set(got) else None)(
            [m.data.split(b"Subject: ", 1)[1][:32].decode() for m in mx.messages]), timeout=120)
        wait_for(lambda: state["srv"].queued() == [], timeout=60)
        duplicates = len(arrived) - len(set(arrived))
        print(f"\n{MESSAGES} messages, {len(kills) + 1} SIGKILLs, {duplicates} delivered twice")
        assert duplicates <= MESSAGES // 20
    finally:
        state["srv"].stop()
        mx.close()
        dns_server.close()
