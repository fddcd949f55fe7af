"""RFC 5321 path parsing and Postfix-style address resolution.

Pure functions. The SMTP session parses MAIL/RCPT arguments here, then asks
`resolve` where a recipient really goes before the relay rule looks at it:
relay tricks (`u%x@us`, `u@x@us`, `x!u@us`, `"u@x"@us`) only become visible
once the address is resolved the way a downstream MTA would read it.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Collection
from dataclasses import dataclass

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_ROUTING = "@!%"
_MAX_PATH_OCTETS = 256  # RFC 5321 4.5.3.1.3, angle brackets included
_MAX_REWRITES = 64  # each rewrite shortens the local part; this only caps the work
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_ROUTE_HOP = re.compile(r"\[[^\]]*\]|[^,:]*")
_INET_ATON_PART = re.compile(r"0x[0-9a-f]*|[0-9]+")
# What _is_control accepts, for whole strings; and the all-ASCII forms of a Dot-string and an
# LDH label, checked first because almost every address is all ASCII (the MTA's hot path).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ASCII_DOT_STRING = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
_LDH = re.compile(r"[A-Za-z0-9-]+")


class AddressError(ValueError):
    """A path or address the server refuses; carries the SMTP reply to give."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.enhanced = enhanced
        self.text = text


@dataclass(frozen=True)
class Mailbox:
    """A parsed path: dequoted local part and the domain as written."""

    local: str
    domain: str

    def __str__(self) -> str:
        return _format(self.local, self.domain)

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain


@dataclass(frozen=True)
class Resolved:
    """Where an address goes after the resolver has stripped our own domains."""

    local: str
    domain: str
    is_local: bool
    routed: bool

    def __str__(self) -> str:
        return _format(self.local, self.domain)


def _is_control(ch: str) -> bool:
    """C0/C1 controls, DEL, line/paragraph separators and lone surrogates.

    U+2028/2029 count because str.splitlines() breaks on them, so they could
    split a reply or header line somewhere downstream.
    """
    o = ord(ch)
    return o < 32 or 127 <= o <= 159 or o in (0x2028, 0x2029) or 0xD800 <= o <= 0xDFFF


def _is_atext(ch: str) -> bool:
    """RFC 5321 atext, widened by RFC 6531 to any non-ASCII character."""
    return ch in _ATEXT or (not ch.isascii() and not _is_control(ch))


def _is_dot_string(text: str, extra: str = "") -> bool:
    if _ASCII_DOT_STRING.fullmatch(text):
        return True
    return all(atom and all(_is_atext(c) or c in extra for c in atom) for atom in text.split("."))


def _format(local: str, domain: str) -> str:
    """Canonical text: the local part is quoted only when a Dot-string cannot carry it."""
    if local and not _is_dot_string(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}" if domain else local


def _scan_quoted(text: str, start: int) -> tuple[str, int] | None:
    """Dequote the Quoted-string opening at text[start]; (content, end) or None if unterminated."""
    out = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            i += 1
            if i == len(text):
                break
            ch = text[i]
        out.append(ch)
        i += 1
    return None


def _ip_literal(domain: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in an RFC 5321 address literal; general literals are not routable here."""
    if len(domain) < 3 or domain[0] != "[" or domain[-1] != "]":
        return None
    body = domain[1:-1]
    try:
        if body[:5].lower() == "ipv6:":
            # A zone index names an interface of the sender's host, not a destination.
            return None if "%" in body else ipaddress.IPv6Address(body[5:])
        return ipaddress.IPv4Address(body)
    except ValueError:
        return None


def _valid_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and (_LDH.fullmatch(label) is not None
             or (not label.isascii() and all((c.isalnum() or c == "-") if c.isascii() else not _is_control(c)
                                             for c in label)))
    )


def _valid_domain(domain: str) -> bool:
    """RFC 5321 Domain (U-labels allowed, one trailing dot tolerated) or IP literal."""
    if domain.startswith("["):
        return _ip_literal(domain) is not None
    name = domain[:-1] if domain.endswith(".") else domain
    return 0 < len(name) <= 253 and all(_valid_label(label) for label in name.split("."))


def _is_numeric(name: str) -> bool:
    """A name that resolvers would read as an IPv4 address (incl. inet_aton forms like 0x7f.1)."""
    labels = name.split(".")
    last = labels[-1]
    if last.isascii() and last.isdigit():
        return True
    return len(labels) <= 4 and all(_INET_ATON_PART.fullmatch(label) for label in labels)


def normalise_domain(domain: str) -> str:
    """Comparable form: lowercase, one trailing dot stripped, IP literals in canonical text.

    Invalid literals are only lowercased: they cannot equal a valid configured domain.
    """
    if domain.startswith("["):
        ip = _ip_literal(domain)
        if ip is None:
            return domain.lower()
        return f"[{ip}]" if ip.version == 4 else f"[IPv6:{ip.compressed}]"
    domain = domain.lower()
    return domain[:-1] if domain.endswith(".") else domain


def split_path_and_params(arg: str) -> tuple[str, dict[str, str | None]]:
    """Split a MAIL/RCPT argument into the path text and its ESMTP parameters.

    Quotes are honoured while looking for the end of the path, so '>' or spaces
    inside a quoted local part do not cut it short. A path without angle
    brackets runs to the first space outside quotes (Postfix is as lenient).
    """
    text = arg.lstrip(" ")
    if not text:
        raise AddressError(501, "5.5.4", "Missing address")
    bracketed = text[0] == "<"
    i, end = 0, len(text)
    while i < len(text):
        ch = text[i]
        if ch == '"':
            scanned = _scan_quoted(text, i)
            if scanned is None:
                raise AddressError(501, "5.5.4", "Unbalanced quote in address")
            i = scanned[1]
            continue
        if bracketed and ch == ">":
            end = i + 1
            break
        if not bracketed and ch == " ":
            end = i
            break
        i += 1
    else:
        if bracketed:
            raise AddressError(501, "5.5.4", "Unbalanced '<' in address")
    path, rest = text[:end], text[end:]
    if rest and rest[0] != " ":
        raise AddressError(501, "5.5.4", "Bad parameter syntax")
    params: dict[str, str | None] = {}
    for token in rest.split(" "):
        if not token:
            continue
        keyword, eq, value = token.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (eq and not _valid_param_value(value)):
            raise AddressError(501, "5.5.4", "Bad parameter syntax")
        key = keyword.upper()
        if key in params:
            raise AddressError(501, "5.5.4", f"Duplicate parameter {key}")
        params[key] = value if eq else None
    return path, params


def _valid_param_value(value: str) -> bool:
    """RFC 5321 esmtp-value (RFC 6531 adds non-ASCII): no space, '=' or controls."""
    return bool(value) and " " not in value and "=" not in value and not _CONTROL.search(value)


def parse_path(path_text: str, *, allow_null: bool) -> Mailbox:
    """Parse '<...>' or a bare address (RFC 5321 4.1.2) into a Mailbox.

    allow_null marks a reverse-path (MAIL FROM, where RFC 2505 says '<>' must
    be accepted), so its errors carry the sender code 5.1.7; forward-paths get
    5.1.3. Source routes are dropped (RFC 5321 3.3). Routing characters in the
    local part are left for `resolve` to judge; unquoted '@', '[' and ']' are
    tolerated there (Postfix reads `u@x@us` too) so those tricks reach it.
    """
    if allow_null:
        error = (501, "5.1.7", "Bad sender address syntax")
    else:
        error = (501, "5.1.3", "Bad recipient address syntax")
    if path_text == "<>":
        if allow_null:
            return Mailbox("", "")
        raise AddressError(*error)
    box = _parse(path_text)
    if box is None:
        raise AddressError(*error)
    return box


def _parse(text: str) -> Mailbox | None:
    if _CONTROL.search(text):
        return None
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">":
        inner = text[1:-1]
    else:
        inner = text
    if len(f"<{inner}>".encode()) > _MAX_PATH_OCTETS:
        return None
    if inner.startswith("@"):
        inner = _strip_route(inner)
        if inner is None:
            return None
    return _parse_mailbox(inner)


def _strip_route(inner: str) -> str | None:
    """Drop an A-d-l ('@a,@b:'), checking each hop's syntax; None if malformed."""
    i = 0
    while i < len(inner) and inner[i] == "@":
        end = _ROUTE_HOP.match(inner, i + 1).end()
        if end >= len(inner) or not _valid_domain(inner[i + 1 : end]):
            return None
        if inner[end] == ":":
            return inner[end + 1 :]
        if inner[end] != ",":
            return None
        i = end + 1
    return None


def _parse_mailbox(text: str) -> Mailbox | None:
    if text.startswith('"'):
        scanned = _scan_quoted(text, 0)
        if scanned is None:
            return None
        local, end = scanned
        rest = text[end:]
        if rest and rest[0] != "@":
            return None
        has_domain, domain = bool(rest), rest[1:]
    else:
        local, at, domain = text.rpartition("@")
        has_domain = bool(at)
        if not has_domain:
            local = domain
            domain = ""
        if not _is_dot_string(local, extra="@[]"):
            return None
    if not local or (has_domain and not _valid_domain(domain)):
        return None
    return Mailbox(local, domain)


def resolve(box: Mailbox, local_domains: Collection[str]) -> Resolved:
    """Postfix trivial-rewrite resolution: strip our own domains, then follow the routing they hid.

    While the domain is ours (or absent, as Postfix appends the local
    $myorigin), the local part is rewritten: rightmost '@' first, then a bang
    path 'site!user' -> user@site (leftmost '!'), then the rightmost '%'. What
    remains is the real destination; any '@ ! %' still in its local part means
    the next MTA may route it further, so it is flagged routed. Null and
    numeric domains are refused (resolve_null_domain / resolve_numeric_domain
    = no in Postfix).
    """
    local, domain = box.local, normalise_domain(box.domain)
    for _ in range(_MAX_REWRITES):
        if domain and domain not in local_domains:
            break
        if "@" in local:
            local, _, domain = local.rpartition("@")
        elif "!" in local:
            domain, _, local = local.partition("!")
        elif "%" in local:
            local, _, domain = local.rpartition("%")
        else:
            break
        domain = normalise_domain(domain)
    if (
        not local
        or _CONTROL.search(local)
        or not _valid_domain(domain)
        or domain.endswith(".")
        or (not domain.startswith("[") and _is_numeric(domain))
    ):
        raise AddressError(501, "5.1.3", "Bad address syntax")
    return Resolved(
        local=local,
        domain=domain,
        is_local=domain in local_domains,
        routed=any(c in local for c in _ROUTING),
    )
