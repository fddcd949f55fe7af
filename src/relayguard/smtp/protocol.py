"""Sans-I/O SMTP server protocol: bytes in, events and replies out.

The driver (mta/server.py) feeds received bytes with `receive_data`, pulls events with
`next_event`, answers the events that need a decision (`reply`, `authenticated`,
`tls_started`) and writes `data_to_send()`. Nothing here touches a socket or a file, so every
rule below is tested directly.

Choices where the RFCs leave room (documented in docs/mta.md):
- Only CR LF . CR LF ends DATA. A bare CR or LF in message data makes the server read on to
  the real end of data, discard the message and answer 550 5.5.2; a bare CR or LF in a command
  line gets 550 5.5.2 and the line is not executed. No smuggled second message either way.
- Input pending after HELO/EHLO/DATA/NOOP, or before the greeting, is a pipelining violation
  (RFC 2920): 554 5.5.0 and disconnect, like Postfix's smtpd_forbid_unauth_pipelining.
- Plaintext buffered after STARTTLS is discarded before the handshake (CVE-2011-0411).
- Enhanced status codes on every reply except the greeting, EHLO, 334 and 354 (RFC 2034).
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from dataclasses import dataclass, field

from ..addr import AddressError, Mailbox, parse_path, split_path_and_params
from .replies import (
    AUTH_OK,
    AUTH_REQUIRED,
    BAD_SEQUENCE_HELO,
    OK,
    SYNC_ERROR,
    Reply,
)

# A data line longer than this is passed on in pieces, so memory stays bounded.
_MAX_PARTIAL_LINE = 64 * 1024


@dataclass(frozen=True)
class Limits:
    max_line_length: int = 2048
    max_recipients: int = 100
    max_message_size: int = 50 * 1024 * 1024
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    error_sleep: float = 1.0


# Events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Helo:
    name: str
    esmtp: bool


@dataclass(frozen=True)
class MailFrom:
    """Needs a decision: `reply()`; a positive reply opens the transaction."""

    mailbox: Mailbox
    params: dict[str, str | None]


@dataclass(frozen=True)
class RcptTo:
    """Needs a decision: `reply()`; a positive reply adds the recipient."""

    mailbox: Mailbox
    params: dict[str, str | None]
    text: str  # the path as the client wrote it, for reply texts


@dataclass(frozen=True)
class DataStart:
    pass


@dataclass(frozen=True)
class DataChunk:
    data: bytes


@dataclass(frozen=True)
class DataEnd:
    """Needs a decision: `reply()` after the message is safely stored."""


@dataclass(frozen=True)
class DataDiscarded:
    """The message was refused by the protocol (bare CR/LF, size); the reply is already queued."""

    reason: str


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class AuthRequest:
    """Needs a decision: `authenticated(identity)` or `reply(refusal)`."""

    mechanism: str
    authzid: str
    username: str
    password: str


@dataclass(frozen=True)
class StartTLS:
    """The 220 is queued and buffered input dropped: flush, handshake, then `tls_started()`."""


@dataclass(frozen=True)
class Closing:
    reason: str


Event = Helo | MailFrom | RcptTo | DataStart | DataChunk | DataEnd | DataDiscarded | Reset | AuthRequest | StartTLS | Closing


@dataclass
class Envelope:
    mail_from: Mailbox | None = None
    mail_params: dict[str, str | None] = field(default_factory=dict)
    rcpts: list[Mailbox] = field(default_factory=list)


class ProtocolError(Exception):
    """A driver used the connection out of order (a bug in relayguard, not in the client)."""


class ServerConnection:
    """One SMTP server session's protocol state."""

    def __init__(
        self,
        hostname: str,
        limits: Limits = Limits(),
        *,
        tls_available: bool = False,
        tls_active: bool = False,
        auth_available: bool = False,
        require_auth: bool = False,
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.auth_available = auth_available
        self.require_auth = require_auth
        self.helo: str | None = None
        self.esmtp = False
        self.identity: str | None = None  # authenticated user
        self.envelope = Envelope()
        self.errors = 0
        self.closed = False
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._greeted = False
        self._awaiting: type | None = None
        self._skip_to_eol = False
        self._auth_state: tuple[str, ...] | None = None  # mechanism + collected fields
        # DATA state
        self._in_data = False
        self._line_start = True
        self._data_size = 0
        self._data_problem: Reply | None = None
        self._discard_reason = ""
        self._pending_value: object = None
        self._delay = 0.0

    # Driver API ------------------------------------------------------------------------------

    def greeting(self) -> None:
        """Queue the greeting; input that came before it is a synchronization error."""
        self._greeted = True
        if self._buf:
            self._close(SYNC_ERROR, "talked before the greeting")
        else:
            self._send(Reply(220, "", f"{self.hostname} ESMTP relayguard"))

    def receive_data(self, data: bytes) -> None:
        if not self.closed:
            self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def take_delay(self) -> float:
        """Seconds the driver should wait before sending (tarpit after repeated errors)."""
        d, self._delay = self._delay, 0.0
        return d

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_event(self) -> Event | None:
        """The next event, or None when more input or an answer to the last event is needed."""
        while not self._events:
            if self.closed or self._awaiting or not self._greeted:
                return None
            if not (self._step_data() if self._in_data else self._step_command()):
                return None
        return self._events.popleft()

    def reply(self, reply: Reply) -> None:
        """Answer the pending MailFrom, RcptTo, DataEnd or AuthRequest."""
        pending = self._awaiting
        if pending is None:
            raise ProtocolError("no event is waiting for a reply")
        self._awaiting = None
        ok = reply.positive
        if pending is MailFrom and ok:
            self.envelope.mail_from, self.envelope.mail_params = self._pending_value
        elif pending is RcptTo and ok:
            self.envelope.rcpts.append(self._pending_value)
        elif pending is DataEnd:
            self.envelope = Envelope()
        if pending is AuthRequest and reply.code == 235:
            raise ProtocolError("use authenticated() to accept a login")
        self._send(reply)

    def authenticated(self, identity: str) -> None:
        if self._awaiting is not AuthRequest:
            raise ProtocolError("no AUTH is waiting")
        self._awaiting = None
        self.identity = identity
        self._send(AUTH_OK)

    def tls_started(self) -> None:
        """The handshake finished: the session starts over (RFC 3207 4.2)."""
        if self._awaiting is not StartTLS:
            raise ProtocolError("no STARTTLS is waiting")
        self._awaiting = None
        self.tls_active = True
        self.helo = None
        self.esmtp = False
        self.envelope = Envelope()

    def close(self, reply: Reply, reason: str) -> None:
        """Driver-initiated close (timeouts, caps): queue the reply and stop."""
        self._close(reply, reason)

    # Output helpers --------------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        if reply.code >= 400 and reply.code != 421:
            self.errors += 1
            if self.errors >= self.limits.hard_error_limit:
                self._close(Reply(421, "4.7.0", f"{self.hostname} Error: too many errors"), "too many errors")
                return
            if self.errors > self.limits.soft_error_limit:
                self._delay += self.limits.error_sleep
        self._out.append(reply.encode())

    def _close(self, reply: Reply, reason: str) -> None:
        if self.closed:
            return
        self._out.append(reply.encode())
        self.closed = True
        self._buf.clear()
        self._events.append(Closing(reason))

    def _await(self, event: Event, kind: type, value: object = None) -> None:
        self._awaiting = kind
        self._pending_value = value
        self._events.append(event)

    # Commands --------------------------------------------------------------------------------

    def _step_command(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) - buf.endswith(b"\r") > self.limits.max_line_length:  # CR may await its LF
                if not self._skip_to_eol:
                    self._send(Reply(500, "5.5.2", "Error: line too long"))
                self._skip_to_eol = True
                keep = buf[-1:] if buf.endswith(b"\r") else b""
                buf[:] = keep
            return False
        raw = bytes(buf[:end])
        del buf[: end + 2]
        if self._skip_to_eol:
            self._skip_to_eol = False
            return True
        if b"\n" in raw or b"\r" in raw:
            self._send(Reply(550, "5.5.2", "Error: bare <CR> or <LF> received in command"))
            return True
        if len(raw) > self.limits.max_line_length:
            self._send(Reply(500, "5.5.2", "Error: line too long"))
            return True
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._send(Reply(500, "5.5.2", "Error: command is not valid UTF-8"))
            return True
        if self._auth_state is not None:
            self._auth_continue(line)
            return True
        verb, _, arg = line.partition(" ")
        handler = getattr(self, "_cmd_" + verb.upper(), None) if verb.isalpha() else None
        if handler is None:
            self._send(Reply(502, "5.5.2", "Error: command not recognized") if verb else Reply(500, "5.5.2", "Error: bad syntax"))
        else:
            handler(arg.strip())
        return True

    def _must_not_pipeline(self) -> bool:
        """RFC 2920: after these commands the client must wait for our reply."""
        if self._buf:
            self._close(SYNC_ERROR, "pipelining violation")
            return True
        return False

    def _cmd_HELO(self, arg: str, esmtp: bool = False) -> None:
        if not arg:
            self._send(Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname"))
            return
        if self._must_not_pipeline():
            return
        self.helo, self.esmtp = arg, esmtp
        self.envelope = Envelope()
        self._events.append(Helo(arg, esmtp))
        if not esmtp:
            self._send(Reply(250, "", self.hostname))
            return
        lines = [self.hostname, "PIPELINING", f"SIZE {self.limits.max_message_size}"]
        if self.tls_available and not self.tls_active:
            lines.append("STARTTLS")
        if self.auth_available and self.tls_active and self.identity is None:
            lines.append("AUTH PLAIN LOGIN")
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]
        self._send(Reply(250, "", tuple(lines)))

    def _cmd_EHLO(self, arg: str) -> None:
        self._cmd_HELO(arg, esmtp=True)

    def _cmd_NOOP(self, arg: str) -> None:
        if not self._must_not_pipeline():
            self._send(OK)

    def _cmd_RSET(self, arg: str) -> None:
        if arg:
            self._send(Reply(501, "5.5.4", "Syntax: RSET"))
            return
        self.envelope = Envelope()
        self._events.append(Reset())
        self._send(OK)

    def _cmd_QUIT(self, arg: str) -> None:
        self._close(Reply(221, "2.0.0", "Bye"), "quit")

    def _cmd_VRFY(self, arg: str) -> None:
        if not arg:
            self._send(Reply(501, "5.5.4", "Syntax: VRFY address"))
        else:
            self._send(Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"))

    def _cmd_HELP(self, arg: str) -> None:
        self._send(Reply(214, "2.0.0", "See RFC 5321"))

    def _cmd_STARTTLS(self, arg: str) -> None:
        if arg:
            self._send(Reply(501, "5.5.4", "Syntax: STARTTLS"))
        elif not self.tls_available:
            self._send(Reply(502, "5.5.1", "Error: command not implemented"))
        elif self.tls_active:
            self._send(Reply(503, "5.5.1", "Error: TLS already active"))
        else:
            self._buf.clear()  # CVE-2011-0411: nothing sent in clear may run inside TLS
            self._send(Reply(220, "2.0.0", "Ready to start TLS"))
            self._await(StartTLS(), StartTLS)

    def _cmd_MAIL(self, arg: str) -> None:
        if self.helo is None:
            self._send(BAD_SEQUENCE_HELO)
            return
        if self.envelope.mail_from is not None:
            self._send(Reply(503, "5.5.1", "Error: nested MAIL command"))
            return
        if self.require_auth and self.identity is None:
            self._send(AUTH_REQUIRED)
            return
        if not arg[:5].upper() == "FROM:":
            self._send(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return
        try:
            path, params = split_path_and_params(arg[5:])
            box = parse_path(path, allow_null=True)
        except AddressError as e:
            self._send(Reply(e.code, e.enhanced, f"<{arg[5:].strip()}>: Sender address rejected: {e.text}"))
            return
        problem = self._check_mail_params(params)
        if problem:
            self._send(problem)
            return
        self._await(MailFrom(box, params), MailFrom, (box, params))

    def _check_mail_params(self, params: dict[str, str | None]) -> Reply | None:
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    return Reply(501, "5.5.4", "Bad message size syntax")
                if int(value) > self.limits.max_message_size:
                    return Reply(552, "5.3.4", "Message size exceeds fixed limit")
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    return Reply(501, "5.5.4", "Bad BODY keyword")
            elif key == "SMTPUTF8":
                if value is not None:
                    return Reply(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key != "AUTH":
                return Reply(555, "5.5.4", f"Unsupported option: {key}")
        return None

    def _cmd_RCPT(self, arg: str) -> None:
        if self.envelope.mail_from is None:
            self._send(Reply(503, "5.5.1", "Error: need MAIL command"))
            return
        if not arg[:3].upper() == "TO:":
            self._send(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return
        if len(self.envelope.rcpts) >= self.limits.max_recipients:
            self._send(Reply(452, "4.5.3", "Error: too many recipients"))
            return
        text = arg[3:].strip()
        try:
            path, params = split_path_and_params(arg[3:])
            box = parse_path(path, allow_null=False)
        except AddressError as e:
            self._send(Reply(e.code, e.enhanced, f"<{text.strip('<>')}>: Recipient address rejected: {e.text}"))
            return
        if params:
            self._send(Reply(555, "5.5.4", f"Unsupported option: {next(iter(params))}"))
            return
        self._await(RcptTo(box, params, path.strip().removeprefix("<").removesuffix(">")), RcptTo, box)

    def _cmd_DATA(self, arg: str) -> None:
        if arg:
            self._send(Reply(501, "5.5.4", "Syntax: DATA"))
        elif self.envelope.mail_from is None:
            self._send(Reply(503, "5.5.1", "Error: need MAIL command"))
        elif not self.envelope.rcpts:
            self._send(Reply(554, "5.5.1", "Error: no valid recipients"))
        elif not self._must_not_pipeline():
            self._in_data = True
            self._line_start = True
            self._data_size = 0
            self._data_problem = None
            self._events.append(DataStart())
            self._send(Reply(354, "", "End data with <CR><LF>.<CR><LF>"))

    # AUTH (RFC 4954) -------------------------------------------------------------------------

    def _cmd_AUTH(self, arg: str) -> None:
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if self.helo is None:
            self._send(BAD_SEQUENCE_HELO)
        elif not self.auth_available:
            self._send(Reply(502, "5.5.1", "Error: authentication not enabled"))
        elif not self.tls_active:
            self._send(Reply(538, "5.7.11", "Encryption required for requested authentication mechanism"))
        elif self.identity is not None:
            self._send(Reply(503, "5.5.1", "Error: already authenticated"))
        elif self.envelope.mail_from is not None:
            self._send(Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
        elif mech not in ("PLAIN", "LOGIN"):
            self._send(Reply(504, "5.5.4", "Unsupported authentication mechanism"))
        else:
            self._auth_state = (mech,)
            if initial:
                self._auth_continue(initial)
            else:
                self._auth_prompt()

    def _auth_prompt(self) -> None:
        mech, *got = self._auth_state or ("",)
        prompt = "" if mech == "PLAIN" else ("VXNlcm5hbWU6" if not got else "UGFzc3dvcmQ6")
        self._out.append(f"334 {prompt}\r\n".encode())

    def _auth_continue(self, line: str) -> None:
        mech, *got = self._auth_state or ("",)
        if line.strip() == "*":
            self._auth_state = None
            self._send(Reply(501, "5.7.0", "Authentication aborted"))
            return
        try:
            value = "" if line.strip() == "=" else base64.b64decode(line.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            self._auth_state = None
            self._send(Reply(501, "5.5.2", "Error: cannot decode response"))
            return
        if mech == "LOGIN" and not got:
            self._auth_state = (mech, value)
            self._auth_prompt()
            return
        self._auth_state = None
        if mech == "PLAIN":
            parts = value.split("\0")
            if len(parts) != 3:
                self._send(Reply(501, "5.5.2", "Error: malformed PLAIN response"))
                return
            authzid, user, password = parts
        else:
            authzid, user, password = "", got[0], value
        self._await(AuthRequest(mech, authzid, user, password), AuthRequest)

    # DATA ------------------------------------------------------------------------------------

    def _step_data(self) -> bool:
        """Consume complete lines (or a long partial line) of message data."""
        buf = self._buf
        last = buf.rfind(b"\r\n")
        if last < 0:
            if len(buf) <= _MAX_PARTIAL_LINE:
                return False
            cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            piece = bytes(buf[:cut])
            del buf[:cut]
            if b"\r" in piece or b"\n" in piece:
                self._refuse_data("bare CR or LF")
            self._emit(piece[1:] if self._line_start and piece.startswith(b".") else piece)
            self._line_start = False
            return True
        if self._line_start and buf.startswith(b".\r\n"):
            end = 0
        else:
            end = buf.find(b"\r\n.\r\n")
            end = -1 if end < 0 else end + 2
        region = bytes(buf[: (end if end >= 0 else last + 2)])
        del buf[: (end + 3 if end >= 0 else last + 2)]
        crlf = region.count(b"\r\n")
        if region.count(b"\r") != crlf or region.count(b"\n") != crlf:
            self._refuse_data("bare CR or LF")
        if self._line_start and region.startswith(b"."):
            region = region[1:]
        self._emit(region.replace(b"\r\n.", b"\r\n"))
        self._line_start = True
        if end >= 0:
            self._finish_data()
        return True

    def _refuse_data(self, reason: str) -> None:
        if self._data_problem is None:
            self._data_problem = Reply(550, "5.5.2", "Error: bare <CR> or <LF> received in message data")
            self._discard_reason = reason

    def _emit(self, data: bytes) -> None:
        if self._data_problem is not None or not data:
            return
        self._data_size += len(data)
        if self._data_size > self.limits.max_message_size:
            self._data_problem = Reply(552, "5.3.4", "Error: message file too big")
            self._discard_reason = "message too big"
            return
        self._events.append(DataChunk(data))

    def _finish_data(self) -> None:
        self._in_data = False
        if self._data_problem is not None:
            self.envelope = Envelope()
            self._events.append(DataDiscarded(self._discard_reason))
            self._send(self._data_problem)
        else:
            self._await(DataEnd(), DataEnd)
