"""Every known relay trick, as data: one table that the tester, the MTA's tests and docs share.

Placeholders, filled per target by `Case.render`: {T} target host name, {IP} target IPv4
address, {D} the target's own domain, {X} the outside (canary) domain, {XIP} an outside IPv4
address (the canary's), {s}/{u} sender and
recipient local parts, {rand} a random label.

`Case.commands` gives the two command lines exactly as the tester sends them (verb case and
the space after the colon are part of some tricks). `SMUGGLING` is the table of end-of-data
variants for the inbound smuggling probe (REFERENCES.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Formatter


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    mail_from: str  # the whole MAIL FROM argument, brackets included
    rcpt_to: str  # the whole RCPT TO argument
    probes: str
    source: str
    relay: bool = True  # False for control cases that are not relays when accepted
    case: str = ""  # "upper" or "mixed": letter case applied to the rendered addresses
    verbs: str = ""  # "lower" or "mixed": letter case of MAIL FROM / RCPT TO ("" = upper)
    colon_space: bool = False  # "MAIL FROM: <x>": a space after the colon (RFC 5321 forbids it)

    def render(self, **values: str) -> tuple[str, str]:
        return _recase(self.mail_from.format(**values), self.case), _recase(self.rcpt_to.format(**values), self.case)

    def commands(self, **values: str) -> tuple[str, str]:
        """The MAIL and RCPT command lines (without CRLF) as sent for this case."""
        mail_from, rcpt_to = self.render(**values)
        sep = ": " if self.colon_space else ":"
        return (_recase("MAIL FROM", self.verbs) + sep + mail_from, _recase("RCPT TO", self.verbs) + sep + rcpt_to)

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(_fields(self.mail_from) | _fields(self.rcpt_to))


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(template) if name}


def _recase(text: str, case: str) -> str:
    if case == "lower":
        return text.lower()
    if case == "upper":
        return text.upper()
    if case == "mixed":
        return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(text))
    return text


_NMAP = "nmap smtp-open-relay, Metasploit smtp_relay, OpenVAS smtp_relay2"
_POSTFIX = "Postfix trivial-rewrite resolver tests"
_NEW = "relayguard (no public tester)"

CASES: tuple[Case, ...] = (
    Case("S1", "null sender", "<>", "<{u}@{X}>", "bounces relayed for anyone", _NMAP),
    Case("S2", "fully external", "<{s}@{X}>", "<{u}@{X}>", "plain third-party relay", _NMAP),
    Case("S3", "sender = server name", "<{s}@{T}>", "<{u}@{X}>", "trust in own host name as sender", _NMAP),
    Case("S4", "sender = IP literal", "<{s}@[{IP}]>", "<{u}@{X}>", "trust in own address as sender", _NMAP),
    Case("S5", "sender at localhost", "<{s}@localhost>", "<{u}@{X}>", "trust in localhost sender", _NMAP),
    Case("S6", "unqualified sender", "<{s}>", "<{u}@{X}>", "unqualified sender taken as local", _NMAP),
    Case("S7", "random subdomain sender", "<{s}@{rand}.{X}>", "<{u}@{X}>", "relay for unresolvable senders", "MAPS"),
    Case("S8", "postmaster sender", "<postmaster@{T}>", "<{u}@{X}>", "trust in postmaster sender", "ORVE"),
    Case("S9", "spoofed local-domain sender", "<{s}@{D}>", "<{u}@{X}>", "relay_local_from style trust", "sendmail docs"),
    Case("R1", "percent hack, IP literal", "<{s}@[{IP}]>", "<{u}%{X}@[{IP}]>", "percent hack", _NMAP),
    Case("R2", "percent hack, host name", "<{s}@{T}>", "<{u}%{X}@{T}>", "percent hack", _NMAP),
    Case("R3", "quoted address, no domain", "<{s}@[{IP}]>", '<"{u}@{X}">', "quoted @ in local part", _NMAP),
    Case("R4", "quoted percent, no domain", "<{s}@[{IP}]>", '<"{u}%{X}">', "quoted percent hack", _NMAP),
    Case("R5", "double @, IP literal", "<{s}@[{IP}]>", "<{u}@{X}@[{IP}]>", "@ routing", _NMAP),
    Case("R6", "quoted local part at IP", "<{s}@[{IP}]>", '<"{u}@{X}"@[{IP}]>', "quoted @ routing", _NMAP),
    Case("R7", "double @, host name", "<{s}@{T}>", "<{u}@{X}@{T}>", "@ routing", _NMAP),
    Case("R8", "source route via IP", "<{s}@[{IP}]>", "<@[{IP}]:{u}@{X}>", "source route", _NMAP),
    Case("R9", "source route via name", "<{s}@[{IP}]>", "<@{T}:{u}@{X}>", "source route", _NMAP),
    Case("R10", "bare bang path", "<{s}@[{IP}]>", "<{X}!{u}>", "UUCP bang path", _NMAP),
    Case("R11", "bang path at IP", "<{s}@[{IP}]>", "<{X}!{u}@[{IP}]>", "UUCP bang path", _NMAP),
    Case("R12", "bang path at host", "<{s}@[{IP}]>", "<{X}!{u}@{T}>", "UUCP bang path", _NMAP),
    Case("R13", "IP literal of target", "<{s}@[{IP}]>", "<{u}@[{IP}]>", "control: local IP literal", _NMAP, relay=False),
    Case("P1", "multi-hop bang path", "<{s}@{T}>", "<{X}!{X}!{u}@{T}>", "bang path resolved twice", _POSTFIX),
    Case("P2", "multi-percent", "<{s}@{T}>", "<{u}%{X}%{T}@{T}>", "percent hack resolved twice", _POSTFIX),
    Case("P3", "literal then domain", "<{s}@{T}>", "<{u}@[{XIP}]@{D}>", "IP literal inside @ routing", _POSTFIX),
    Case("P4", "percent literal", "<{s}@{T}>", "<{u}%[{XIP}]@{D}>", "IP literal inside percent hack", _POSTFIX),
    Case("P5", "bang literal", "<{s}@{T}>", "<[{XIP}]!{u}@{D}>", "IP literal inside bang path", _POSTFIX),
    Case("P6", "percent to outside, null rest", "<{s}@{T}>", "<{u}%{X}%@{D}>", "percent hack with null domain", _POSTFIX),
    Case("P7", "null domain", "<{s}@{T}>", "<{u}@>", "resolve_null_domain", _POSTFIX),
    Case("P8", "numeric domain", "<{s}@{T}>", "<{u}@{IP}>", "resolve_numeric_domain", _POSTFIX),
    Case("N1", "upper-case percent hack", "<{s}@{T}>", "<{u}%{X}@{T}>", "case-sensitive checks", _NEW, case="upper"),
    Case("N2", "mixed-case percent hack", "<{s}@{T}>", "<{u}%{X}@{T}>", "case-sensitive checks", _NEW, case="mixed"),
    Case("N3", "no angle brackets", "{s}@{T}", "{u}@{X}", "lenient path parsing", _NEW),
    Case("N4", "no angle brackets, percent", "{s}@{T}", "{u}%{X}@{T}", "lenient path parsing", _NEW),
    Case("N5", "trailing-dot domain", "<{s}@{T}.>", "<{u}@{X}.>", "trailing dot in domain", _NEW),
    Case("N6", "trailing-dot percent", "<{s}@{T}>", "<{u}%{X}@{D}.>", "trailing dot on a local domain", _NEW),
    Case("N7", "IPv6 literal sender", "<{s}@[IPv6:::1]>", "<{u}@{X}>", "IPv6 literal trust", _NEW),
    Case("N8", "percent hack at IPv6 literal", "<{s}@{T}>", "<{u}%{X}@[IPv6:::1]>", "IPv6 literal as local", _NEW),
    Case("N9", "quoted bang at host", "<{s}@{T}>", '<"{X}!{u}"@{T}>', "quoted bang path", _NEW),
    Case("N10", "source route list", "<{s}@{T}>", "<@{T},@[{IP}]:{u}@{X}>", "multi-hop source route", _NEW),
    Case("N11", "upper-case sender at host", "<{s}@{T}>", "<{u}@{X}>", "case-sensitive own-name sender check", _NEW, case="upper"),
    Case("N12", "outside IP literal", "<{s}@{T}>", "<{u}@[{XIP}]>", "relay to a domain literal", _NEW),
    Case("N13", "source route via IPv6 literal", "<{s}@{T}>", "<@[IPv6:::1]:{u}@{X}>", "IPv6 literal in a source route", _NEW),
    Case("N14", "quoted percent at host", "<{s}@{T}>", '<"{u}%{X}"@{T}>', "quoted percent hack", _NEW),
    Case("N15", "percent hack at own domain", "<{s}@{D}>", "<{u}%{X}@{D}>", "percent hack via the mail domain", _NEW),
    Case("V1", "lower-case verbs", "<{s}@{X}>", "<{u}@{X}>", "verb matching", _NEW, verbs="lower"),
    Case("V2", "mixed-case verbs", "<{s}@{X}>", "<{u}@{X}>", "verb matching", _NEW, verbs="mixed"),
    Case("V3", "mixed-case verbs, percent hack", "<{s}@{T}>", "<{u}%{X}@{T}>", "verb matching", _NEW, verbs="mixed"),
    Case("V4", "space after colon", "<{s}@{X}>", "<{u}@{X}>", "lenient command parsing", _NEW, colon_space=True),
    Case("V5", "space after colon, bang path", "<{s}@{T}>", "<{X}!{u}@{T}>", "lenient command parsing", _NEW, colon_space=True),
)


@dataclass(frozen=True)
class Smuggle:
    """An end-of-data variant: `ending` is sent where a client would send CRLF.CRLF."""

    id: str
    name: str
    ending: bytes
    bare: bool  # holds a bare CR or LF (Postfix smtpd_forbid_bare_newline territory)
    source: str


_SEC = "SEC Consult SMTP smuggling (CVE-2023-51764/51765/51766)"

SMUGGLING: tuple[Smuggle, ...] = (
    Smuggle("M1", "<LF>.<LF>", b"\n.\n", True, _SEC),
    Smuggle("M2", "<LF>.<CR><LF>", b"\n.\r\n", True, _SEC),
    Smuggle("M3", "<CR>.<CR>", b"\r.\r", True, _SEC),
    Smuggle("M4", "<CR><LF>.<CR>", b"\r\n.\r", True, _SEC),
    Smuggle("M5", "<CR>.<LF>", b"\r.\n", True, _SEC),
    Smuggle("M6", "<CR><LF><NUL>.<CR><LF>", b"\r\n\x00.\r\n", False, _SEC),
    Smuggle("M7", "<CR><LF>.<NUL><CR><LF>", b"\r\n.\x00\r\n", False, _SEC),
    Smuggle("M8", "<CR><LF>.<CR><CR><LF>", b"\r\n.\r\r\n", True, "Postfix 3.7 (REFERENCES.md section 6)"),
)


def by_id(ids: list[str] | tuple[str, ...]) -> tuple[Case, ...]:
    """The cases named (case-insensitive), in catalogue order; unknown ids raise KeyError."""
    wanted = {i.upper() for i in ids}
    unknown = wanted - {c.id for c in CASES}
    if unknown:
        raise KeyError(", ".join(sorted(unknown)))
    return tuple(c for c in CASES if c.id in wanted)
