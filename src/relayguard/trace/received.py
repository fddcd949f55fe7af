"""The Received field parser: one field value in, one relay hop (or None) out.

Pure and fast; never raises, whatever it is given, and takes time linear in the input (the
text examined is capped, the regular expressions are written so they cannot backtrack
catastrophically).

Which part of a Received field means what differs from one MTA to the next: some write
`from HELO (RDNS [IP])`, others `from RDNS (HELO x) (IP)` or `from RDNS ([IP] helo=x)`, some
swap HELO and reverse DNS, and some record no relay at all (local handovers, fetchmail
pickups, content scanners). The rule order below follows the formats catalogued by
SpamAssassin's Received.pm (Apache License 2.0), whose test corpus this parser passes, and
adds today's formats (Microsoft 365/Exchange, Gmail, current Postfix, Exim, sendmail, qmail and
relayguard's own).

`parse_received(value)` returns None for a field that carries no relay information (the same
fields SpamAssassin skips) and for one it cannot understand; `classify_received` tells the two
apart, which the trust chain needs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

__all__ = ["Hop", "classify_received", "parse_received", "normalise_ip", "MAX_FIELD"]

#: Characters of a field examined at most (after unfolding); a real Received field is rarely
#: over 1,000. The date is looked for in the field's last characters either way.
MAX_FIELD = 2048


@dataclass(frozen=True)
class Hop:
    """One relay: `ip` handed the message to `by`. Strings are "" when the field does not say."""

    ip: str = ""
    rdns: str = ""
    helo: str = ""
    by: str = ""
    ident: str = ""
    envfrom: str = ""
    id: str = ""
    auth: str = ""
    with_: str = ""
    for_: str = ""
    #: timezone-aware when the field's date parses; the date's text when it does not; None when absent
    date: datetime | str | None = None
    #: TLS protocol and cipher when the field records them ("TLSv1.3 TLS_AES_256_GCM_SHA384")
    tls: str = ""
    #: the receiving MTA wrote "(may be forged)" or similar next to the reverse DNS name
    rdns_forged: bool = False
    raw: str = field(default="", compare=False, repr=False)


# --------------------------------------------------------------------------- patterns

_OCTET = r"(?:1\d\d|2[0-4]\d|25[0-5]|\d\d|\d)"
_IPV4 = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
_H = r"[0-9A-Fa-f]"
# IPv6 (optionally "IPv6:"-prefixed, optionally IPv4-mapped); loose here, validated afterwards.
_IPV6 = (
    rf"(?:[Ii][Pp][Vv]6:|(?<![0-9A-Fa-f:]))"
    rf"(?=[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:)(?:{_H}{{0,4}}:){{1,7}}(?:{_IPV4}|{_H}{{1,4}})?"
    rf"(?![0-9A-Fa-f:])"
)
IP = rf"(?:\b(?<!:){_IPV4}\b|{_IPV6})"
_LOCALHOST = r"(?:localhost(?:\.localdomain)?|\b(?<!:)127\.0\.0\.1\b|(?:[Ii][Pp][Vv]6:)?(?:0{0,4}:){2,7}(?:ffff:127\.0\.0\.1|0{0,3}1)(?![0-9A-Fa-f:]))"
_HELOCH = r"[-A-Za-z0-9.^+_&:=?!@%*$\\/]"
_GREET = r"(?:HELO|EHLO|LHLO)"


def _c(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern.replace("{IP}", IP).replace("{LOCALHOST}", _LOCALHOST).replace("{GREET}", _GREET), flags)


_WS = re.compile(r"\s+")
_DATE_AT_END = _c(
    r"[\s;]+(?:(?:Mon|T(?:ue|hu)|Wed|Fri|S(?:at|un)), )?\d+ (?:J(?:an|u[nl])|Feb|Ma[ry]|A(?:pr|ug)|Sep|Oct|Nov|Dec) \d+ \d+:\d+(?::\d+)? \S+$"
)
_ID = _c(r" id <?([^\s<>;]{3,})")
_HELO_EQ = _c(rf"\bhelo=({_HELOCH}+)(?:[^-A-Za-z0-9.^+_&:=?!@%*$\\/]|$)")
_HELO_KW = _c(rf"\b{_GREET} ({_HELOCH}+)(?:[^-A-Za-z0-9.^+_&:=?!@%*$\\/]|$)")
_BY = _c(r" by (\S+)(?:[^-A-Za-z0-9;.]|$)")
_ENVFROM = _c(r"(?:return-path:? |envelope-(?:sender|from)[ =])(\S+)\b", re.I)

_AUTH_RFC3848 = _c(r" with ((?:ES|L|UTF8S|UTF8L)MTPS?A|ASMTP|HTTPU?)(?: |;|$)", re.I)
_AUTH_GMAIL = _c(r" by mx\.google\.com with ESMTPS id [a-z0-9]{1,4}sm[0-9]{2,9}[a-z]{3}\.[0-9]{1,3}\.[0-9]{4}\.(?:[0-6][0-9]\.){4}[0-6][0-9]")
_AUTH_GMAIL_TLS = _c(r"\(version=([^ ]+) cipher=([^)]+)\)")
_AUTH_COURIER = _c(r"(?:\]\)|\)\]) \(AUTH: (LOGIN|PLAIN|DIGEST-MD5|CRAM-MD5) \S+(?:, [^)]*)?\) by ")
_AUTH_SM_OPEN = _c(r"\](?: \([^)]*\))?\)|\)\]")
_AUTH_GMX = _c(r"from \S* \((?:HELO|EHLO) (\S*)\) \[({IP})\] by (mail\.gmx\.(?:net|com)) \([^)]+\) with (?:ESMTP|SMTP)")
_AUTH_CRITPATH = _c(r"\(\d{1,2}\.\d\.\d{3}(?:\.\d{1,3})?\) \(authenticated as [^)]+\) id ")
_AUTH_POSTFIX = _c(r"\) \(Authenticated sender: \S+\) by \S+ \(Postfix\) with ")
_AUTH_VIA_HTTP = _c(r" \(via (HTTP.?)\)(?: |;|$)", re.I)

# relayguard's own field, first: it is the one read most.
_RELAYGUARD = _c(r"^(\S+) \((?:(\S+) )?\[({IP})\]\)(?: \(using [^()]*(?:\([^()]*\))?\))? by (\S+) \(relayguard\) with ")

_SQUIRREL = _c(r"({IP})\b(?![.-]).{10,80}by (\S+) with HTTP")
_AOL = _c(r"({IP}) by (\S+) \({IP}\) with HTTP \(WebMailUI\)")
_MS_SMTPSVC = _c(r"^(\S*) \(\[({IP})\][^)]{0,40}\) by (\S+) with Microsoft SMTPSVC")
_MS_PICKUP = _c(r"^mail pickup service by (\S+) with Microsoft SMTPSVC$")
_XMAIL = _c(r"^(\S+) \((\[?{IP}\]?)(?::\d+)\) by (\S+)(?: \(\S+\))? with \[XMail")
_XMAIL_ID = _c(r" id <(\S+)>")
_XMAIL_FROM = _c(r" from <(\S+)>")
_ECELERITY_1 = _c(r"^\(\[({IP}):\d+\] helo=(\S+)\) by (\S+) ")
_ECELERITY_2 = _c(r"^\S+ \(\[({IP}):\d+\]\) by (\S+) ")
_EXIM_LOCAL = _c(r"\bwith local(?:-\S+)? ")
_EXIM_1 = _c(r"^\[({IP})\] \((.*?)\) by (\S+) ")
_EXIM_2 = _c(r"^(\S+) \(\[({IP})\](.*?)\) by (\S+) ")
_EXIM_3 = _c(r"^(\S+) \[({IP})\](:\d+)? by (\S+) ")
_EXIM_P_RDNS = _c(r"^(\S+) ")
_EXIM_P_HELO = _c(r" \((\S+)\) ")
_EXIM_P_IP = _c(r" \[({IP})(?:\.\d+)?\] ")
_EXIM_P_BY = _c(r"by (\S+) ")
_SUB_HELO = _c(r"helo=(\S+)")
_SUB_IDENT = _c(r"ident=(\S*)")
_POSTFIX_1 = _c(r"^(\S+) \((\S+) \[({IP})\]\) by (\S+) ")
_POSTFIX_2 = _c(r"^(\S+) \((\S+)\[({IP})\]\) by (\S+) ")
_SCALIX = _c(r"^(\S+) \( ?({IP})\) by (\S+)")
_DOMINO = _c(r"^(\S+) \(\[({IP})\]\) by (\S+) \(Lotus")
_HTTP_NUMERIC = _c(r"^({IP}) \(\[{IP}\]\) by (\S+)")
_QMAIL_LDAP = _c(r" by \S+ \(qmail-\S+\) with ")
_SENDMAIL = _c(r"^(\S+) \((\S+) \[({IP})\](.*)\) by (\S+) \(")
_IDENT_PREFIX = _c(r"^(?:IDENT:)?([^@]*)@")
_EXCHANGE_55 = _c(r"^(\S+) \((\S+) \[({IP})\]\) by (\S+) with \S+ \(")
_HELO_BRACKET = _c(r"^(\S+) \(\[({IP})\] helo=(\S+)\) by (\S+) with ")
_ATTBI_UNKNOWN = _c(r"^(\S+) \(<unknown\S*>\[({IP})\]\) by (\S+) ")
_ATTBI = _c(r"^(\S+) \(((?=[^\s\[]+\.[^\s\[])[^\s\[]++)\[({IP})\]\) by (\S+) ")
_IDENT_AT_IP = _c(r"^(\S+) \((\S*)@\[({IP})\].*\) by (\S+) \(")
_HOTMAIL = _c(r"by (\S+\.hotmail\.msn\.com) ")
_FIRST_TOKEN = _c(r"^(\S+) ")
_QPSMTPD = _c(r"^(\S+) \({GREET} (\S*)\) \(({IP})\) by (\S+) \(qpsmtpd/\S+\) with (?:ESMTP|SMTP)")
_GMX = _c(r"^(\S+) \({GREET} (\S*)\) \[({IP})\] by (\S+) \([^)]+\) with (?:ESMTP|SMTP)")
_SMTPD_FOR = _c(r"^(\S+) \(\[({IP})\]\) by (\S+) via smtpd \(for \S+\) with SMTP\(")
_QMAIL_HEAD = _c(r"^\S+(?: \({GREET} \S*\))? \((?:\S+@)?\[?{IP}\]?\)(?: \(envelope-sender <\S+>\))? by \S+")
_QMAIL_PROTO = _c(r"(?<= )(?:SMTP|QMQP)(?! id )")
_QMAIL_A = _c(r"^(\S+) \({GREET} ([^ ()]*)\) \((\S*)@\[?({IP})\]?\)(?: \(envelope-sender <\S+>\))? by (\S+)")
_QMAIL_B = _c(r"^(\S+) \({GREET} ([^ ()]*)\) \(\[?({IP})\]?\)(?: \(envelope-sender <\S+>\))? by (\S+)")
_QMAIL_C = _c(r"^(\S+) \((\S*)@\[?({IP})\]?\)(?: \(envelope-sender <\S+>\))? by (\S+)")
_QMAIL_D = _c(r"^(\S+) \(\[?({IP})\]?\)(?: \(envelope-sender <\S+>\))? by (\S+)")
_YAHOO_HTTP = _c(r"^\[({IP})\] by (\S+) via HTTP$")
_SPACE_BRACKET = _c(r"^(\S+) \( \[({IP})\]\)(?:.*?)? by (\S+) ")
_PAREN_PAIR = _c(r"^\((\S+) \[({IP})\]\) by (\S+) ")
_BRACKET_BY = _c(r"^\[({IP})\] by (\S+) ")
_PAREN_IP_BY = _c(r"^\(\[?({IP})\]?\) by (\S+) ")
_MDAEMON = _c(r"^(\S+) \[({IP})\] by (\S+) \[(\S+)\] with ")
_SENDMAIL_NO_RDNS = _c(r"^(\S+) \(\[({IP})\]\) by (\S+) \(")
_GENERIC_RDNS_IP = _c(r"^(\S+) \((\S+) \[({IP})\]\)(?:.*?)? by (\S+)\b")
_GENERIC_IP_PORT = _c(r"^(\S+) \(\[({IP})(?:[.:]\d+)?\]\)(?:.*?)? by (\S+) ")
_FETCHMAIL = _c(r"^(\S+) (?:\[({IP})\] )?by (\S+) with \S+ \(fetchmail")
_QMAILISH_HELO = _c(r"^(\S+) \({GREET} ([^)]*)\) \((\S*@)?\[?({IP})\]?\).* by (\S+) ")
_QMAILISH = _c(r"^([^\s\[]\S*) \((\S*@)?\[?({IP})\]?\).* by (\S+) ")  # not "[ip] (ip)": HELO, not rDNS
_OUTBLAZE = _c(r"^\[({IP})\] by (\S+) with http for ")
_POP3 = _c(r"^(\S+) \[({IP})\] by (\S+) with POP3 ")
_SMAP = _c(r"^(\S+)\(({IP})\) by (\S+) via smap ")
_SMAP_HELO = _c(r"^(\S+)\(({IP}), (?:HELO|EHLO) (\S*)\) by (\S+) via smap ")
_POSTOFFICE = _c(r"^\[({IP})\] by (\S+) \(Post")
_ARGOSOFT = _c(r"^\[({IP})\] by (\S+) \(ArGoSoft")
_SMTPL = _c(r"^({IP}) by (\S+) \((?:SMTPL|InterScan)\b")
_BSMTP = _c(r"^\S+ by \S+ with BSMTP")
_SPIKE = _c(r"^(\S+) \((\S+) \[({IP})\]\) by (\S+) with ")
_YAHOO_PLAIN = _c(r"^(\S+) \({GREET} (\S*)\) \(([^\s)]++)[^)]*+\) by (\S+) with ")
_IDENT_STRIP = _c(r"([^@]*)@")
_COMMUNIGATE_ACCOUNT = _c(r"^\[({IP})\] \((?:account \S+ )?{GREET} (\S*)\) by (\S+) \(")
_COMMUNIGATE_VERIFIED = _c(r"^(\S+) \(\[({IP})\] verified\) by (\S+) \(")
_CIPHERTRUST = _c(r"^\(\[({IP})\]\) by (\S+) with ")
_NAME_PAREN_IP = _c(r"^([^\d]\S+) \(({IP})\) by (\S+) ")
_CONTENT_TECH = _c(r"^\S+ \(\S+\) by \S+ \(Content Technologies ")
_TWO_BRACKETS = _c(r"^(\S+) \(\[(\S+)\] \[(\S+)\]\) by (\S+) with ")
_IP_BY_WITH = _c(r"^({IP}) by (\S+) with ")
_RDNS_NOSPACE = _c(r"^(\S+) \((\S+)\[({IP})\]\) by (\S+) ")
_FSECURE = _c(r"^\[({IP})\]\S+ \({GREET} (\S*)\) by (\S+) ")
_IP_HELO = _c(r"^({IP}) \({GREET} (\S*)\) by (\S+) ")
_NAME_BRACKET = _c(r"^(\S+) \[({IP})\] by (\S+) ")
_CSMAP = _c(r"^(\S+)\(({IP})\) by (\S+) ")
_MAILGATE = _c(r"^\[({IP})\] by (\S+) \(MailGate ")
_UNVERIFIED = _c(r"^(\S+) \(unverified \[({IP})\]\) by (\S+) ")
_IP_COMMENT = _c(r"^({IP}) \([A-Za-z][^)]+\) by (\S+) with ")
_BRACKET_SUB = _c(r"^\[({IP})\] \(([^)]+)\) by (\S+) ")
_IDENT_IP = _c(r"^(\S+) \((?:\S+@)?({IP})\) by (\S+) with ")
_OBTUSE = _c(r"^(\S+)\(({IP})\)(?:, claiming to be \"(\S+)\")? via \S+ by (\S+),")
_YAHOO_LOGIN = _c(r"^(\S+) \((\S+)@({IP}) with login\) by (\S+\.yahoo\.com) with SMTP")
_EXCHANGE = _c(r"^(\S+) \((\S+ )?\[?({IP})(?:%\w+)?\]?\) by (\S+)(?: \([^()]*\))? with (?:Microsoft SMTP Server|mapi)\b")

_SKIPS_FROM = [
    _c(r"^\S+ \([^\s@]+@{LOCALHOST}\) by \S+ \("),
    _c(r"^\S+ \S+ by \S+ with local-e?smtp "),
    _c(r"^127\.0\.0\.1 \(AVG SMTP \S+ \[\S+\]\)"),
    _c(r"^(?=\S*\S@\S)\S++ by \S+ "),
    _c(r"^Unknown/Local \("),
    _c(r"^{LOCALHOST} \((?:\S+@)?{LOCALHOST}[)\[]"),
    _c(r"^\S+ \((?:\S+@)?{LOCALHOST}\) "),
    _c(r"^\S+ \((?=\S*\S@\S)\S++ \[{LOCALHOST}\]\) "),
    _c(r"^\(AUTH: \S+\) by \S+ with "),
    _c(r"^localhost \(localhost \[\[UNIX: localhost\]\]\) by "),
    _c(r"^\S+\.amazon\.com by \S+\.amazon\.com with ESMTP \(peer crosscheck: "),
    _c(r"^[^.]+ by \S+ with Novell_GroupWise"),
    _c(r"^no\.name\.available by \S+ via smtpd \(for "),
    _c(r"^\S+ by \S+ \(.{0,100}\) with qmail-scanner"),
    _c(r"^\S+ by \S+ with local"),
    _c(r"^\S+ by \S+ (?:with|via|for|\()"),
    _c(r"^\S+ (?:(?:with|via|for) \S+|\(unverified\)) by\b"),
]
_GUESS_HELO = _c(r"^(\S+)[^-A-Za-z0-9.]")
_SIMTA = _c(r"^(\S+) \((\S+) \[({IP})\]\) BY (\S+) ID (\S+)$")
_NAVGW = _c(r"^(\S*) \[({IP})\]\) by (\S+) \(NAVGW [^)]*\) with ")
_PAREN_LOCAL = _c(r"^\S+@localhost\) by \S+ ")
_JQUEUE = _c(r"^[^\s@]+@[^)]+\) by \S+\(jqueuemail\) id [^\s;]+")
_ANY_BRACKET_IP = _c(r"\[({IP})\]")

_IS_FROM = _c(r"^\(?from ", re.I)
_LOCAL_FOR = _c(r"\bwith local for\b")
_NO_RELAY = _c(r"^from (\S+) by [^\s;]+ ?;", re.I)
_BRACKETED_V4 = _c(r"^\[[\d.]+\]$")

# extras relayguard records beyond SpamAssassin's fields
_WITH = _c(r" with (?:\([^)]*\) )?(Microsoft SMTP Server|Microsoft SMTPSVC|[^\s;()]+)")
_FOR = _c(r" for <([^<>\s;]+)>| for ([^\s;<>()]+@[^\s;<>()]+)")
_TLS = [
    _c(r"\(using (TLSv?[\d.]+|SSLv\d) with cipher ([^\s()]+)"),
    _c(r"\(version=(TLS[\w.]*+|SSLv\d)(?:[,/]\S*+)? cipher=([^\s,)]+)"),
    _c(r"\((TLS1\.\d)\) tls (\S+)"),
    _c(r"\((TLSv1(?:\.\d)?|TLS-\d\.\d):([^:)\s]+):\d+\)"),
    _c(r"\(TLS: (TLSv[\d.]+)[^,)]*, \d+bits, ?([^\s,)]+)\)"),
    _c(r"with \(()([^\s()]+) encrypted\)"),  # qmail's TLS patch: cipher only
]
_VERSION_ID = re.compile(r"\d+(?:\.\d+){2,}")
_FORGED = _c(r"\(may be forged\)|softdnserr|RDNS failed", re.I)
_COMMENT = re.compile(r"\([^()]*\)")
_MINUS_ZERO = re.compile(r"[-]0000\b")
_IPV4_RE = re.compile(rf"^{_IPV4}$")

SKIP = "skip"
HOP = "hop"
UNPARSEABLE = "unparseable"


# --------------------------------------------------------------------------- helpers


def normalise_ip(text: str) -> str:
    """'[IPv6:2001:DB8::1]' -> '2001:db8::1', '::ffff:192.0.2.1' -> '192.0.2.1'; "" if not an IP."""
    ip = text.strip()
    if ip[:1] == "[":
        ip = ip[1:]
    if ip[-1:] == "]":
        ip = ip[:-1]
    if ip[:5].lower() == "ipv6:":
        ip = ip[5:]
    pct = ip.find("%")
    if pct >= 0:
        ip = ip[:pct]
    if not ip or len(ip) > 45:
        return ""
    if _IPV4_RE.match(ip):
        return ip
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        return str(mapped) if mapped else addr.compressed
    return str(addr)


_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_FAST_DATE = re.compile(
    r"^(?:[A-Za-z]{3}, ?)?(\d{1,2}) ([A-Za-z]{3}) (\d{4}) (\d{1,2}):(\d{2})(?::(\d{2}))? ?([+-])(\d\d)(\d\d)(?:$| \(|\s)"
)


def _parse_date(text: str) -> datetime | str | None:
    text = text.strip()
    if not text:
        return None
    m = _FAST_DATE.match(text)
    if m:
        month = _MONTHS.get(m.group(2).lower())
        if month:
            try:
                offset = timedelta(hours=int(m.group(8)), minutes=int(m.group(9)))
                tz = timezone(-offset if m.group(7) == "-" else offset)
                return datetime(int(m.group(3)), month, int(m.group(1)), int(m.group(4)), int(m.group(5)),
                                int(m.group(6) or 0), tzinfo=tz)
            except ValueError:
                pass  # out of range: the slow path decides
    cleaned = text
    for _ in range(4):  # nested comments, a few levels
        stripped = _COMMENT.sub(" ", cleaned)
        if stripped == cleaned:
            break
        cleaned = stripped
    cleaned = _WS.sub(" ", cleaned).strip()
    try:
        when = parsedate_to_datetime(cleaned)
    except (TypeError, ValueError, IndexError, OverflowError):
        return text[:200]
    if when.tzinfo is None:
        if _MINUS_ZERO.search(cleaned):
            return when.replace(tzinfo=timezone.utc)  # RFC 5322 3.3: UTC, local zone unknown
        return text[:200]  # no zone: the instant is unknown
    return when


def _unfold(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    if len(value) > 4 * MAX_FIELD:
        value = value[: 2 * MAX_FIELD] + " " + value[-2 * MAX_FIELD :]
    s = " ".join(value.split())
    if s[:9].lower() == "received:":
        s = s[9:].lstrip()
    return s


_CLOCK = re.compile(r"\d+:\d+(?::\d+)?")


def _ends_with_time_and_zone(s: str) -> bool:
    """Cheap precondition of _DATE_AT_END: '... HH:MM[:SS] ZONE' at the very end."""
    a = s.rfind(" ")
    if a <= 0:
        return False
    b = s.rfind(" ", 0, a)
    return _CLOCK.fullmatch(s, b + 1, a) is not None


def _sendmail_auth(s: str) -> bool:
    """SpamAssassin's 'Sendmail' authentication marker, checked in linear time:
    from ... `])`/`)]`/`] (x))` then ` ...(...authenticated...)... by`."""
    if not s.startswith("from "):
        return False
    m = _AUTH_SM_OPEN.search(s, 5)
    if not m or s[m.end() : m.end() + 1] != " ":
        # the regex wants a space right after; try later openings too (rare)
        pos = 5
        while m and s[m.end() : m.end() + 1] != " ":
            pos = m.start() + 1
            m = _AUTH_SM_OPEN.search(s, pos)
        if not m:
            return False
    p = s.find("(", m.end() + 1)
    if p < 0:
        return False
    a = s.find("authenticated", p + 1)
    if a < 0:
        return False
    c = s.find(")", a + 13)
    if c < 0:
        return False
    return s.find(" by", c + 1) >= 0


def _qmail_tail(rest: str) -> bool:
    """After `by HOST`: `( (...))* with (.* )?(SMTP|QMQP)` not followed by ` id `, linearly."""
    pos = rest.find(" with ")
    while pos >= 0:
        if pos == 0 or (rest.startswith(" (") and pos >= 4 and rest[pos - 1] == ")"):
            if _QMAIL_PROTO.search(rest, pos + 6):
                return True
            return False  # a later " with " sees a suffix of the same text: no better
        pos = rest.find(" with ", pos + 1)
    return False


def _sub_fields(sub: str) -> tuple[str | None, str | None]:
    helo = ident = None
    m = _SUB_HELO.search(sub)
    if m:
        helo = m.group(1)
        sub = sub[: m.start()] + sub[m.end() :]
    m = _SUB_IDENT.search(sub)
    if m:
        ident = m.group(1)
    return helo, ident


# --------------------------------------------------------------------------- the parser


def classify_received(value: object) -> tuple[str, Hop | None]:
    """('hop', Hop) for a relay; ('skip', None) for a field with no relay in it (local
    handover, scanner, fetchmail...); ('unparseable', None) for one nobody can read."""
    try:
        return _classify(value)
    except Exception:  # noqa: BLE001 - a parser for hostile input must not raise; treat as unreadable
        return UNPARSEABLE, None


def parse_received(value: object) -> Hop | None:
    """One Received field value (unfolded or not, with or without the 'Received:' name) ->
    a Hop, or None when the field carries no relay information (or cannot be read)."""
    kind, hop = classify_received(value)
    return hop if kind == HOP else None


def _classify(value: object) -> tuple[str, Hop | None]:
    full = _unfold(value)
    if not full:
        return UNPARSEABLE, None
    s = full[:MAX_FIELD]
    while s.endswith(";"):  # an invalid semicolon at the end
        s = s[:-2] if s.endswith(" ;") else s[:-1]

    if not _IS_FROM.match(s):
        return SKIP, None
    if "with local for" in s and _LOCAL_FOR.search(s):
        return SKIP, None
    m = _NO_RELAY.match(s)
    if m and not _BRACKETED_V4.match(m.group(1)):
        return SKIP, None

    if _ends_with_time_and_zone(s):
        m = _DATE_AT_END.search(s, max(0, len(s) - 200))
        if m:
            s = s[: m.start()]
    s = s.replace(")by ", ") by ", 1)

    ip = helo = rdns = by = ident = envfrom = auth = ""
    ident_id = ""
    m = _ID.search(s)
    if m:
        ident_id = m.group(1)
    m = _HELO_EQ.search(s) if "helo=" in s else None
    if m:
        helo = m.group(1)
    elif "LO " in s:
        m = _HELO_KW.search(s)
        if m:
            helo = m.group(1)
    m = _BY.search(s)
    if m:
        by = m.group(1)

    # authentication markers, first that applies
    has_by = " by " in s
    low = s.lower()
    m = _AUTH_RFC3848.search(s) if has_by and " with " in low else None
    if m:
        auth = m.group(1)
    elif " by mx.google.com with ESMTPS id " in s and _AUTH_GMAIL.search(s) and (g := _AUTH_GMAIL_TLS.search(s)):
        auth = f"GMail - transport={g.group(1)} cipher={g.group(2)}"
    elif s.startswith("from ") and "(AUTH: " in s and (c := _AUTH_COURIER.search(s)):
        auth = c.group(1)
    elif "authenticated" in s and _sendmail_auth(s):
        auth = "Sendmail"
    elif "mail.gmx." in s and _AUTH_GMX.search(s):
        auth = "GMX"
    elif " (authenticated as " in s and ") by " in s and _AUTH_CRITPATH.search(s, s.find(") by ")):
        auth = "CriticalPath"
    elif "(Authenticated sender: " in s and _AUTH_POSTFIX.search(s):
        auth = "Postfix"
    elif "CommuniGate Pro " in s and re.search(r"CommuniGate Pro (?:HTTP|SMTP)", s) and " (account " in s:
        auth = "Communigate"
    elif " with Microsoft Exchange Server HTTP-DAV" in s and re.search(r" with Microsoft Exchange Server HTTP-DAV\b", s):
        auth = "HTTP-DAV"
    elif has_by and "(via " in low and (v := _AUTH_VIA_HTTP.search(s)):
        auth = v.group(1)

    def done(ip_: str, by_: str) -> tuple[str, Hop]:
        return HOP, _finish(full, s, ip_, rdns, helo, by_, ident, envfrom, ident_id, auth)

    if s.startswith("from "):
        r = s[5:]
        if "return-path" in low or "envelope-" in low:
            m = _ENVFROM.search(r)
            if m:
                envfrom = m.group(1)

        m = _RELAYGUARD.match(r) if "(relayguard)" in r else None
        if m:
            helo, rdns = m.group(1), m.group(2) or ""
            return done(m.group(3), m.group(4))

        if " (SquirrelMail authenticated user " in r or " (NaSMail authenticated user " in r:
            m = _SQUIRREL.search(r)
            if m:
                return done(m.group(1), m.group(2))
        if "aol.com" in r and "with HTTP (WebMailUI)" in r:
            m = _AOL.search(r)
            if m:
                return done(m.group(1), m.group(2))

        if " SMTPSVC" in r:
            m = _MS_SMTPSVC.match(r)
            if m:
                helo = m.group(1)
                return done(m.group(2), m.group(3))
            if _MS_PICKUP.match(r):
                return SKIP, None
        elif "[XMail " in r:
            m = _XMAIL.match(r)
            if m:
                helo = m.group(1)
                x = _XMAIL_ID.search(r)
                if x:
                    ident_id = x.group(1)
                x = _XMAIL_FROM.search(r)
                if x:
                    envfrom = x.group(1)
                return done(m.group(2), m.group(3))
        elif "(ecelerity" in r and re.search(r"\(ecelerity\b", r):
            m = _ECELERITY_1.match(r)
            if m:
                helo = m.group(2)
                return done(m.group(1), m.group(3))
            m = _ECELERITY_2.match(r)
            if m:
                return done(m.group(1), m.group(2))
        elif "Exim" in r:
            if _EXIM_LOCAL.search(r):
                return SKIP, None
            m = _EXIM_1.match(r)
            if m:
                h, i = _sub_fields(m.group(2))
                if h is not None:
                    helo = h
                if i is not None:
                    ident = i
                return done(m.group(1), m.group(3))
            m = _EXIM_2.match(r)
            if m:
                rdns = helo = m.group(1)
                h, i = _sub_fields(m.group(3))
                if h is not None:
                    helo = h
                if i is not None:
                    ident = i
                return done(m.group(2), m.group(4))
            m = _EXIM_3.match(r)
            if m:
                rdns = helo = m.group(1)
                return done(m.group(2), m.group(4))
            m = _EXIM_P_RDNS.match(r)
            if m:
                rdns = m.group(1)
            m = _EXIM_P_HELO.search(r)
            if m:
                helo = m.group(1)
            m = _EXIM_P_IP.search(r)
            if m:
                ip = m.group(1)
            m = _EXIM_P_BY.search(r)
            if m:
                by = m.group(1)
                if ip:
                    return done(ip, by)
        elif " (Postfix) with" in r:
            m = _POSTFIX_1.match(r) or _POSTFIX_2.match(r)
            if m:
                helo, rdns = m.group(1), m.group(2)
                return done(m.group(3), m.group(4))
        elif "(Scalix SMTP Relay" in r:
            m = _SCALIX.match(r)
            if m:
                helo = m.group(1)
                return done(m.group(2), m.group(3))
        elif " (Lotus Domino " in r:
            m = _DOMINO.match(r)
            if m:
                helo = m.group(1)
                return done(m.group(2), m.group(3))

        if " with Microsoft SMTP Server" in r or " with mapi" in r:
            m = _EXCHANGE.match(r)
            if m:
                helo = m.group(1)
                if m.group(2):
                    rdns = m.group(2).strip()
                return done(m.group(3), m.group(4))

        if "with HTTP" in r and re.search(r"\bwith HTTP\b", r):
            m = _HTTP_NUMERIC.match(r)
            if m:
                return done(m.group(1), m.group(2))

        if not _QMAIL_LDAP.search(r):
            m = _SENDMAIL.match(r)
            if m:
                helo, rdns = m.group(1), m.group(2)
                x = _IDENT_PREFIX.match(rdns)
                if x:
                    ident, rdns = x.group(1), rdns[x.end() :]
                return done(m.group(3), m.group(5))

        m = _EXCHANGE_55.match(r)
        if m:
            helo, rdns = m.group(1), m.group(2)
            return done(m.group(3), m.group(4))
        m = _HELO_BRACKET.match(r)
        if m:
            rdns, helo = m.group(1), m.group(3)
            return done(m.group(2), m.group(4))
        m = _ATTBI_UNKNOWN.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))
        m = _ATTBI.match(r)
        if m:
            helo, rdns = m.group(1), m.group(2)
            return done(m.group(3), m.group(4))
        m = _IDENT_AT_IP.match(r)
        if m:
            helo, ident = m.group(1), m.group(2)
            return done(m.group(3), m.group(4))
        if ".hotmail.msn.com " in r:
            m = _HOTMAIL.search(r)
            if m:
                by = m.group(1)
                f = _FIRST_TOKEN.match(r)
                return done(f.group(1) if f else ip, by)
        m = _QPSMTPD.match(r) or _GMX.match(r)
        if m:
            rdns, helo = m.group(1), m.group(2)
            return done(m.group(3), m.group(4))
        m = _SMTPD_FOR.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))

        m = _QMAIL_HEAD.match(r) if " with " in r and ("SMTP" in r or "QMQP" in r) else None
        if m and _qmail_tail(r[m.end() :]):
            for pat, kind in ((_QMAIL_A, "a"), (_QMAIL_B, "b"), (_QMAIL_C, "c"), (_QMAIL_D, "d")):
                q = pat.match(r)
                if not q:
                    continue
                if kind == "a":
                    rdns, helo, ident, ip, by = q.group(1), q.group(2), q.group(3), q.group(4), q.group(5)
                elif kind == "b":
                    rdns, helo, ip, by = q.group(1), q.group(2), q.group(3), q.group(4)
                elif kind == "c":
                    helo = rdns = q.group(1)
                    ident, ip, by = q.group(2), q.group(3), q.group(4)
                else:
                    helo = rdns = q.group(1)
                    ip, by = q.group(2), q.group(3)
                break
            if rdns == "unknown":
                rdns = ""
            return done(ip, by)

        if r.endswith(" via HTTP"):
            m = _YAHOO_HTTP.match(r)
            if m:
                return done(m.group(1), m.group(2))
        for pat in (_SPACE_BRACKET,):
            m = pat.match(r)
            if m:
                return done(m.group(2), m.group(3))
        m = _PAREN_PAIR.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))
        m = _BRACKET_BY.match(r) or _PAREN_IP_BY.match(r)
        if m:
            return done(m.group(1), m.group(2))
        m = _MDAEMON.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(4))
        m = _SENDMAIL_NO_RDNS.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))
        m = _GENERIC_RDNS_IP.match(r)
        if m:
            helo = m.group(1)
            if m.group(2) != "softdnserr":
                rdns = m.group(2)
            return done(m.group(3), m.group(4))
        m = _GENERIC_IP_PORT.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))
        # (the "authenticated bits" sendmail form is covered by the two rules above)
        if "fetchmail" in r and _FETCHMAIL.match(r):
            return SKIP, None
        m = _QMAILISH_HELO.match(r)
        if m:
            rdns, helo = m.group(1), m.group(2)
            ident = (m.group(3) or "").removesuffix("@")
            return done(m.group(4), m.group(5))
        m = _QMAILISH.match(r)
        if m:
            rdns = helo = m.group(1)
            ident = (m.group(2) or "").removesuffix("@")
            return done(m.group(3), m.group(4))
        if " with http for " in r:
            m = _OUTBLAZE.match(r)
            if m:
                return done(m.group(1), m.group(2))
        if " with POP3 " in r:
            m = _POP3.match(r)
            if m:
                rdns = m.group(1)
                return done(m.group(2), m.group(3))
        if " via smap " in r:
            m = _SMAP.match(r)
            if m:
                rdns = m.group(1)
                return done(m.group(2), m.group(3))
        m = _SMAP_HELO.match(r)
        if m:
            rdns, helo = m.group(1), m.group(3)
            return done(m.group(2), m.group(4))
        if " (Post" in r:
            m = _POSTOFFICE.match(r)
            if m:
                return done(m.group(1), m.group(2))
        if " (ArGoSoft" in r:
            m = _ARGOSOFT.match(r)
            if m:
                return done(m.group(1), m.group(2))
        m = _SMTPL.match(r)
        if m:
            return done(m.group(1), m.group(2))
        if " with BSMTP" in r and _BSMTP.match(r):
            return SKIP, None
        m = _SPIKE.match(r)
        if m:
            helo, rdns = m.group(1), m.group(2)
            return done(m.group(3), m.group(4))
        m = _YAHOO_PLAIN.match(r)
        if m:
            rdns, helo, ip_ = m.group(1), m.group(2), m.group(3)
            for x in _IDENT_STRIP.finditer(ip_):
                ident = x.group(1)
            ip_ = _IDENT_STRIP.sub("", ip_)
            return done(ip_, m.group(4))
        m = _COMMUNIGATE_ACCOUNT.match(r)
        if m:
            helo = m.group(2)
            return done(m.group(1), m.group(3))
        if " (CommuniGate Pro" in r:
            m = _COMMUNIGATE_VERIFIED.match(r)
            if m:
                rdns = helo = m.group(1)
                return done(m.group(2), m.group(3))
        m = _CIPHERTRUST.match(r)
        if m:
            return done(m.group(1), m.group(2))
        m = _NAME_PAREN_IP.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))
        if _CONTENT_TECH.match(r):
            return SKIP, None
        m = _TWO_BRACKETS.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(4))
        m = _IP_BY_WITH.match(r)
        if m:
            return done(m.group(1), m.group(2))
        m = _RDNS_NOSPACE.match(r)
        if m:
            helo, rdns = m.group(1), m.group(2)
            return done(m.group(3), m.group(4))
        m = _FSECURE.match(r) or _IP_HELO.match(r)
        if m:
            helo = m.group(2)
            return done(m.group(1), m.group(3))
        m = _NAME_BRACKET.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))
        m = _CSMAP.match(r)
        if m:
            rdns = m.group(1)
            return done(m.group(2), m.group(3))
        m = _MAILGATE.match(r)
        if m:
            return done(m.group(1), m.group(2))
        m = _UNVERIFIED.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))
        m = _IP_COMMENT.match(r)
        if m:
            return done(m.group(1), m.group(2))
        m = _BRACKET_SUB.match(r)
        if m:
            h, i = _sub_fields(m.group(2))
            if h is not None:
                helo = h
            if i is not None:
                ident = i
            return done(m.group(1), m.group(3))
        m = _IDENT_IP.match(r)
        if m:
            rdns = m.group(1)
            return done(m.group(2), m.group(3))
        m = _OBTUSE.match(r)
        if m:
            rdns, helo = m.group(1), m.group(3) or ""
            return done(m.group(2), m.group(4))
        m = _YAHOO_LOGIN.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(3), m.group(4))

        if any(pat.match(r) for pat in _SKIPS_FROM) or "(LSMTP for" in r:
            return SKIP, None
        if not helo:
            m = _GUESS_HELO.match(r)
            if m:
                helo = m.group(1)

    elif s.startswith("FROM "):
        m = _SIMTA.match(s[5:])
        if m:
            helo, rdns, ident_id = m.group(1), m.group(2), m.group(5)
            return done(m.group(3), m.group(4))

    elif s.startswith("(from "):
        r = s[6:]
        m = _NAVGW.match(r)
        if m:
            helo = m.group(1)
            return done(m.group(2), m.group(3))
        if _PAREN_LOCAL.match(r) or _JQUEUE.match(r):
            return SKIP, None

    if not ip:
        m = _ANY_BRACKET_IP.search(s)
        if m:
            ip = m.group(1)
    if ip and by:
        return done(ip, by)
    return UNPARSEABLE, None


def _finish(full: str, s: str, ip: str, rdns: str, helo: str, by: str, ident: str, envfrom: str,
            id_: str, auth: str) -> Hop:
    if rdns.lower() == "unknown":
        rdns = ""
    if rdns.endswith(".") and len(rdns) > 1:
        rdns = rdns[:-1]  # Gmail writes the absolute name
    envfrom = envfrom.strip().lstrip("<").rstrip(">").strip()
    by = by.removesuffix(";")
    date: datetime | str | None = None
    semi = full.rfind(";")
    if semi >= 0:
        date = _parse_date(full[semi + 1 :][:300])
    else:
        m = _DATE_AT_END.search(full, max(0, len(full) - 200))
        if m:
            date = _parse_date(full[m.start() :].lstrip(" ;"))
    with_ = for_ = tls = ""
    bypos = s.find(" by ")
    m = _WITH.search(s, max(bypos, 0)) if " with " in s else None
    if m:
        with_ = m.group(1)
    m = _FOR.search(s, max(bypos, 0)) if " for " in s else None
    if m:
        for_ = m.group(1) or m.group(2) or ""
    if "TLS" in s or "SSL" in s:
        for pat in _TLS:
            t = pat.search(s)
            if t:
                tls = f"{t.group(1)} {t.group(2)}".strip()
                break
    if with_ in ("Microsoft SMTP Server", "mapi") and _VERSION_ID.fullmatch(id_):
        id_ = ""  # Exchange writes its build number there, not a queue id
    head = s[: bypos] if bypos > 0 else s
    return Hop(
        ip=normalise_ip(ip),
        rdns=rdns,
        helo=helo,
        by=by,
        ident=ident,
        envfrom=envfrom,
        id=id_,
        auth=auth,
        with_=with_,
        for_=for_,
        date=date,
        tls=tls,
        rdns_forged=bool(("forged)" in head or "RDNS" in head or "softdnserr" in head) and _FORGED.search(head)),
        raw=full,
    )
