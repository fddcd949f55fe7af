"""Stand-ins for the internet, on loopback: a DNS server (dnspython wire format) and remote MXs."""

from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class FakeDNS:
    """Authoritative answers from a dict {(name, type): [rdata text]} over UDP on 127.0.0.1."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in records.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            for q in query.question:
                name = q.name.to_text(omit_final_dot=True).lower()
                rdtype = dns.rdatatype.to_text(q.rdtype)
                if not any(n == name for n, _ in self.records):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                elif (name, rdtype) in self.records:
                    response.answer.append(dns.rrset.from_text(q.name, 60, "IN", rdtype, *self.records[(name, rdtype)]))
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes


@dataclass
class MXBehaviour:
    """What the fake MX answers: accept, or fail the first `tempfail` RCPTs with 451,
    or refuse every RCPT with 550 (`reject`), or drop the connection after the greeting (`drop`)."""

    tempfail: int = 0
    reject: bool = False
    drop: bool = False
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    active: int = 0
    max_active: int = 0


class _Handler(socketserver.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        b: MXBehaviour = self.server.behaviour  # type: ignore[attr-defined]
        with b.lock:
            b.connections += 1
            b.active += 1
            b.max_active = max(b.max_active, b.active)
        try:
            self._session()
        except (ConnectionError, TimeoutError):
            pass  # the client went away (a killed server): nothing to record
        finally:
            with b.lock:
                b.active -= 1

    def _session(self) -> None:
        b: MXBehaviour = self.server.behaviour  # type: ignore[attr-defined]
        self.wfile.write(b"220 fake-mx ESMTP\r\n")
        if b.drop:
            return
        mail_from, rcpts = "", []
        while line := self.rfile.readline(4096):
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd[:4].upper()
            if verb == "EHLO":
                self.wfile.write(b"250-fake-mx\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
            elif verb == "MAIL":
                mail_from, rcpts = cmd.split(":", 1)[1].strip().split(" ")[0].strip("<>"), []
                self.wfile.write(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                with b.lock:
                    if b.reject:
                        reply = b"550 5.1.1 no such user here\r\n"
                    elif b.tempfail > 0:
                        b.tempfail -= 1
                        reply = b"451 4.3.0 try again later\r\n"
                    else:
                        rcpts.append(cmd.split(":", 1)[1].strip().strip("<>"))
                        reply = b"250 2.1.5 ok\r\n"
                self.wfile.write(reply)
            elif verb == "DATA":
                self.wfile.write(b"354 go\r\n")
                data = bytearray()
                while (chunk := self.rfile.readline()) != b".\r\n":
                    if not chunk:
                        return  # the client died mid-message: nothing was delivered
                    data += chunk[1:] if chunk.startswith(b".") else chunk
                with b.lock:
                    b.messages.append(Received(mail_from, rcpts, bytes(data)))
                self.wfile.write(b"250 2.0.0 queued\r\n")
            elif verb == "RSET":
                mail_from, rcpts = "", []
                self.wfile.write(b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 2.0.0 bye\r\n")
                return
            else:
                self.wfile.write(b"250 2.0.0 ok\r\n")


class FakeMX:
    """A remote MX on a loopback address, recording what it accepted."""

    def __init__(self, host: str, port: int, behaviour: MXBehaviour | None = None) -> None:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((host, port), _Handler)
        self.server.daemon_threads = True
        self.behaviour = behaviour or MXBehaviour()
        self.server.behaviour = self.behaviour  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    @property
    def messages(self) -> list[Received]:
        with self.behaviour.lock:
            return list(self.behaviour.messages)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
