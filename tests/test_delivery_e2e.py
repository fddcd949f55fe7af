"""Delivery through a running server: aliases, reverse DNS in Received, big messages in bounded memory."""

from __future__ import annotations

import json
import socket
import uuid


def vm_hwm_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_aliases_fan_out_to_maildirs_and_queue(make_server):
    srv = make_server(tables='[aliases]\n"sales@example.test" = ["alice@localhost", "partner@remote.test"]')
    token = uuid.uuid4().hex
    with srv.smtp() as smtp:
        assert smtp.sendmail("buyer@remote.test", ["sales@example.test"], f"Subject: {token}\r\n\r\nhi\r\n") == {}
    assert any(token.encode() in m for m in srv.messages("alice"))
    [entry] = srv.queued()
    env = json.loads(entry.read_text())
    assert [r["address"] for r in env["recipients"]] == ["partner@remote.test"]
    assert env["mail_from"] == "buyer@remote.test"
    assert token in entry.with_suffix(".msg").read_text()


def test_received_names_forward_confirmed_reverse_dns(make_server):
    srv = make_server("reverse_dns = true")
    with srv.smtp() as smtp:
        smtp.ehlo("client.example")
        smtp.sendmail("a@remote.test", ["postmaster@localhost"], b"Subject: rdns\r\n\r\nhi\r\n")
    [msg] = srv.messages("postmaster")
    first = msg.split(b"\r\n", 1)[0].decode()
    name = socket.getnameinfo(("127.0.0.1", 0), socket.NI_NAMEREQD)[0]
    assert first == f"Received: from client.example ({name} [127.0.0.1])"


def test_a_50_mb_message_streams_to_disk_in_bounded_memory(make_server):
    srv = make_server("max_message_size = 60000000")
    line = b"x" * 998 + b"\r\n"
    count = 50 * 1024 * 1024 // len(line)
    with socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=30) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            while (r := f.readline())[3:4] == b"-":
                pass
            return r

        assert reply().startswith(b"220")
        for command, code in ((b"EHLO c\r\n", b"250"), (b"MAIL FROM:<a@remote.test>\r\n", b"250"),
                              (b"RCPT TO:<postmaster@localhost>\r\n", b"250"), (b"DATA\r\n", b"354")):
            s.sendall(command)
            assert reply().startswith(code)
        chunk = line * 256
        for _ in range(count // 256):
            s.sendall(chunk)
        s.sendall(line * (count % 256) + b".\r\n")
        assert reply().startswith(b"250 2.0.0 Ok: queued as")
    [path] = [p for p in srv.all_mail() if "postmaster" in str(p)]
    data = path.read_bytes()
    assert data.startswith(b"Received: ")
    assert len(data) - (data.index(b"\r\n" + line) + 2) == count * len(line)
    assert vm_hwm_kib(srv.proc.pid) < 100 * 1024
