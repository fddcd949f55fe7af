"""Results of a relay test and the verdict rules (pure: values in, values out).

Outcome of one case:
- ``refused``: the server said no at MAIL, RCPT, DATA or after the dot (any 4xx/5xx);
- ``accepted-rcpt``: probe mode, MAIL and RCPT both got 250/251 (nmap's "accepted");
- ``accepted-data``: data/confirm mode, 250 after the dot (OpenVAS's modern rule);
- ``relayed``: confirm mode, the case's token arrived at the canary;
- ``error``: no answer could be had (timeout, disconnect twice, garbage).

Verdict of a target:
- ``open``: a relay case (not a control case) was relayed or, in probe and data mode,
  accepted for the remote recipient; in confirm mode only an arrival counts and cases accepted
  without arrival are named in the reason;
- ``auth-required``: the server answered 530 (the run stops there, as nmap's does);
- ``unreachable``: no session could be set up, or no case got an answer;
- ``closed``: otherwise, including a server that refuses the session itself (5xx greeting or
  HELO), which relays nothing for anyone it greets so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .reply import ServerReply

MODES = ("probe", "data", "confirm")


class Outcome(str, Enum):
    REFUSED = "refused"
    ACCEPTED_RCPT = "accepted-rcpt"
    ACCEPTED_DATA = "accepted-data"
    RELAYED = "relayed"
    ERROR = "error"


class Verdict(str, Enum):
    OPEN = "open"
    CLOSED = "closed"
    AUTH_REQUIRED = "auth-required"
    UNREACHABLE = "unreachable"


ACCEPTED = (Outcome.ACCEPTED_RCPT, Outcome.ACCEPTED_DATA, Outcome.RELAYED)


@dataclass
class Exchange:
    """One command (or the greeting, command "") and the reply it got (None: none came)."""

    command: str
    reply: ServerReply | None

    def to_json(self) -> dict[str, object]:
        return {"command": self.command, "reply": self.reply.to_json() if self.reply else None}


@dataclass
class CaseResult:
    id: str
    name: str
    mail_from: str  # the command lines as sent
    rcpt_to: str
    relay: bool  # False for control cases
    outcome: Outcome = Outcome.ERROR
    stage: str = ""  # where it ended: mail, rcpt, data, dot, confirm; or the failing stage
    replies: list[Exchange] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)  # "C: ..." / "S: ..." / "-- note"
    token: str = ""
    error: str = ""
    attempts: int = 0

    @property
    def accepted(self) -> bool:
        return self.outcome in ACCEPTED

    @property
    def last_reply(self) -> ServerReply | None:
        for ex in reversed(self.replies):
            if ex.reply is not None:
                return ex.reply
        return None

    def to_json(self, transcript: bool = True) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id, "name": self.name, "mail_from": self.mail_from, "rcpt_to": self.rcpt_to,
            "relay": self.relay, "outcome": self.outcome.value, "stage": self.stage,
            "replies": [ex.to_json() for ex in self.replies], "token": self.token, "error": self.error,
            "attempts": self.attempts,
        }
        if transcript:
            out["transcript"] = list(self.transcript)
        return out


@dataclass
class SmuggleResult:
    id: str
    name: str
    ends_data: bool | None = None  # the server answered the smuggled commands: it ended DATA early
    delivered: bool | None = None  # confirm mode: the smuggled message arrived at the canary
    replies: list[Exchange] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)
    token: str = ""  # of the smuggled message
    outer_token: str = ""  # of the first message
    error: str = ""

    def to_json(self, transcript: bool = True) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id, "name": self.name, "ends_data": self.ends_data, "delivered": self.delivered,
            "replies": [ex.to_json() for ex in self.replies], "token": self.token, "error": self.error,
        }
        if transcript:
            out["transcript"] = list(self.transcript)
        return out


@dataclass
class TargetResult:
    target: str  # as given
    host: str
    port: int
    mode: str
    verdict: Verdict = Verdict.UNREACHABLE
    reason: str = ""
    banner: str = ""  # the greeting, as one string
    values: dict[str, str] = field(default_factory=dict)  # the placeholders used
    extensions: dict[str, str] = field(default_factory=dict)  # EHLO keywords
    tls: str = ""  # "TLSv1.3 TLS_AES_256_GCM_SHA384" when STARTTLS was used
    cases: list[CaseResult] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    smuggling: list[SmuggleResult] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)  # transcript of the first session's set-up
    sessions: int = 0
    reconnects: int = 0
    error: str = ""  # why the target is unreachable
    auth_reply: ServerReply | None = None
    session_refused: ServerReply | None = None  # a 5xx greeting or HELO: nothing is relayed for us
    elapsed: float = 0.0
    complete: bool = False  # False while running, or when interrupted / out of time

    @property
    def relays(self) -> list[CaseResult]:
        """Relay cases the server fell for, as the verdict counts them."""
        return [c for c in self.cases if counts_as_relay(c, self.mode)]

    @property
    def unconfirmed(self) -> list[CaseResult]:
        """Confirm mode: relay cases accepted after the dot whose token never arrived."""
        return [c for c in self.cases if self.mode == "confirm" and c.relay and c.outcome is Outcome.ACCEPTED_DATA]

    def to_json(self, transcript: bool = True) -> dict[str, object]:
        return {
            "target": self.target, "host": self.host, "port": self.port, "mode": self.mode,
            "verdict": self.verdict.value, "reason": self.reason, "banner": self.banner,
            "values": dict(self.values), "extensions": dict(self.extensions), "tls": self.tls,
            "relays": [c.id for c in self.relays],
            "cases": [c.to_json(transcript) for c in self.cases], "not_run": list(self.not_run),
            "smuggling": [m.to_json(transcript) for m in self.smuggling],
            "setup": list(self.setup) if transcript else [], "sessions": self.sessions,
            "reconnects": self.reconnects, "error": self.error,
            "auth_reply": self.auth_reply.to_json() if self.auth_reply else None,
            "session_refused": self.session_refused.to_json() if self.session_refused else None,
            "elapsed": round(self.elapsed, 3), "complete": self.complete,
        }


def counts_as_relay(case: CaseResult, mode: str) -> bool:
    if not case.relay:
        return False
    if mode == "confirm":
        return case.outcome is Outcome.RELAYED
    return case.outcome in ACCEPTED


def decide(result: TargetResult) -> tuple[Verdict, str]:
    """The verdict and a one-line reason for a target's results."""
    relays = result.relays
    if relays:
        ids = ", ".join(c.id for c in relays)
        how = {"probe": "accepted at RCPT", "data": "accepted after the dot", "confirm": "arrived at the canary"}[result.mode]
        return Verdict.OPEN, f"{len(relays)} relay case(s) {how}: {ids}"
    if result.auth_reply is not None:
        return Verdict.AUTH_REQUIRED, f"{result.auth_reply.code} {result.auth_reply.text}".strip()
    if result.session_refused is not None:
        return Verdict.CLOSED, f"the server refused the session: {result.error}"
    if result.error and not result.cases:
        return Verdict.UNREACHABLE, result.error
    answered = [c for c in result.cases if c.outcome is not Outcome.ERROR]
    if not answered:
        return Verdict.UNREACHABLE, result.error or ("no case got an answer" if result.cases else "no case was run")
    refused = sum(1 for c in result.cases if c.outcome is Outcome.REFUSED)
    notes = [f"{refused} case(s) refused"]
    errors = len(result.cases) - len(answered)
    if errors:
        notes.append(f"{errors} case(s) without an answer")
    if result.unconfirmed:
        notes.append("accepted but never arrived: " + ", ".join(c.id for c in result.unconfirmed))
    controls = [c.id for c in result.cases if not c.relay and c.accepted]
    if controls:
        notes.append("control case(s) accepted (not relays): " + ", ".join(controls))
    if result.not_run:
        notes.append(f"{len(result.not_run)} case(s) not run")
    if result.error:
        notes.append(result.error)
    return Verdict.CLOSED, "; ".join(notes)


def fill_values(*, banner_name: str, ehlo_name: str, host: str, ip: str, canary_domain: str, outside_ip: str,
                sender: str, recipient: str, rand: str, target_name: str = "", target_domain: str = "") -> dict[str, str]:
    """The placeholders for one target (catalogue.py): T from the banner, else EHLO, else the host."""
    name = target_name or next((n for n in (banner_name, ehlo_name, host) if looks_like_hostname(n)), host)
    name = name.rstrip(".").lower()
    labels = name.split(".")
    domain = target_domain or (".".join(labels[1:]) if len(labels) >= 3 else name)
    literal = ip if ":" not in ip else "IPv6:" + ip
    return {"T": name, "IP": literal, "D": domain.rstrip(".").lower(), "X": canary_domain, "XIP": outside_ip,
            "s": sender, "u": recipient, "rand": rand}


def looks_like_hostname(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(labels) >= 2 and all(
        0 < len(label) < 64 and label.replace("-", "").isalnum() and label.isascii() and not label.startswith("-")
        for label in labels
    ) and not labels[-1].isdigit()
