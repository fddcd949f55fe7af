"""Postfix lookup tables the relay rules look into (access(5), cidr_table(5), regexp/pcre_table(5)).

Only tables whose text the audit can read are parsed: `hash:`, `btree:`, `lmdb:`, `cdb:`,
`dbm:`, `sdbm:` and `texthash:` through their postmap source file (the name without `.db`),
`cidr:`, `regexp:`, `pcre:`, `inline:{...}` and `static:`. Database and network tables
(mysql, ldap, tcp, socketmap, ...) are reported as unreadable, and rules treat them as
"could say OK".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import nets
from .model import AuditError
from .postfix import split_list
from .source import Source, locate

POSTFIX_HOMES = ("/etc/postfix", "/usr/local/etc/postfix")
_FILE_TYPES = {"hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash"}


@dataclass(frozen=True)
class Entry:
    key: str  # the lookup key, network or /pattern/
    action: str
    line: int | None
    kind: str  # "key", "cidr", "regexp", "static"
    negate: bool = False
    flags: str = ""

    @property
    def permits(self) -> bool:
        """OK, an all-numerical result, or a `permit...` restriction as the action (access(5))."""
        first = self.action.strip().split(None, 1)[0].rstrip(",").lower() if self.action.strip() else ""
        return first == "ok" or first.isdigit() or first == "permit"

    def regex(self) -> re.Pattern[str] | None:
        """The entry's pattern as a Python regex (regexp tables are case-insensitive by default)."""
        if self.kind != "regexp":
            return None
        flags = re.IGNORECASE
        for f in self.flags:
            if f == "i":
                flags ^= re.IGNORECASE
            elif f == "x":
                flags |= re.VERBOSE
            elif f == "m":
                flags |= re.MULTILINE
        try:
            return re.compile(self.key, flags)
        except re.error:
            return None


@dataclass
class Table:
    spec: str
    type: str
    file: str  # where it was read from (or the spec when inline / unreadable)
    entries: list[Entry] = field(default_factory=list)
    readable: bool = True
    reason: str = ""  # why it could not be read

    def permitting(self) -> list[Entry]:
        return [e for e in self.entries if e.permits and not e.negate]


def _logical(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t" and out:
            out[-1] = (out[-1][0], f"{out[-1][1]} {stripped}")
        else:
            out.append((number, stripped))
    return out


def parse_access(text: str, file: str) -> list[Entry]:
    entries = []
    for number, line in _logical(text):
        parts = line.split(None, 1)
        if len(parts) < 2:
            raise AuditError(file, number, f"expected format: key whitespace value, got {line!r}")
        entries.append(Entry(parts[0], parts[1], number, "key"))
    return entries


def parse_cidr(text: str, file: str) -> list[Entry]:
    entries = []
    for number, line in _logical(text):
        word = line.split(None, 1)
        if word[0].lower() in ("if", "endif"):
            if word[0].lower() == "if" and len(word) > 1:
                _network(word[1].lstrip("!"), file, number)
            continue
        if len(word) < 2:
            raise AuditError(file, number, f"expected format: network/prefix result, got {line!r}")
        negate = word[0].startswith("!")
        key = word[0].lstrip("!")
        _network(key, file, number)
        entries.append(Entry(key, word[1], number, "cidr", negate))
    return entries


def _network(text: str, file: str, line: int) -> nets.Network:
    try:
        return nets.parse_network(text)
    except ValueError:
        raise AuditError(file, line, f"bad network pattern {text!r}") from None


_REGEXP_START = re.compile(r"(!?)(\S)")


def parse_regexp(text: str, file: str) -> list[Entry]:
    entries = []
    for number, line in _logical(text):
        word = line.split(None, 1)
        if word[0].lower() == "endif":
            continue
        is_if = word[0].lower() == "if"
        body = word[1] if is_if and len(word) > 1 else line
        m = _REGEXP_START.match(body)
        if not m or m.group(2).isalnum():
            raise AuditError(file, number, f"expected /pattern/ result, got {line!r}")
        delim = m.group(2)
        i = m.end()
        j = i
        while j < len(body):
            if body[j] == "\\":
                j += 2
                continue
            if body[j] == delim:
                break
            j += 1
        if j >= len(body):
            raise AuditError(file, number, f"missing closing {delim!r} in {line!r}")
        pattern = body[i:j]
        rest = body[j + 1:]
        fm = re.match(r"[A-Za-z]*", rest)
        flags = fm.group(0) if fm else ""
        result = rest[len(flags):].strip()
        if is_if:
            continue
        if not result:
            raise AuditError(file, number, f"missing result after the pattern in {line!r}")
        entries.append(Entry(pattern, result, number, "regexp", bool(m.group(1)), flags))
    return entries


def _inline(body: str) -> list[Entry]:
    inner = body.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    entries = []
    for item in split_list(inner):
        item = item.strip()
        if item.startswith("{") and item.endswith("}"):
            item = item[1:-1].strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        entries.append(Entry(key.strip(), value.strip(), None, "key"))
    return entries


def load(spec: str, source: Source) -> Table:
    """Read the table named `spec` (`hash:/etc/postfix/access`) from the audited tree."""
    spec = spec.strip()
    inner = spec
    while inner.lower().startswith("proxy:"):
        inner = inner[len("proxy:"):]
    kind, sep, name = inner.partition(":")
    kind = kind.lower()
    if not sep:
        return Table(spec, "", spec, readable=False, reason="not a type:name table")
    if kind == "inline":
        return Table(spec, kind, spec, _inline(name))
    if kind == "static":
        value = name.strip()
        if value.startswith("{") and value.endswith("}"):
            value = value[1:-1].strip()
        return Table(spec, kind, spec, [Entry("*", value, None, "static")])
    if kind == "fail":
        return Table(spec, kind, spec, [])
    if kind in _FILE_TYPES or kind in ("cidr", "regexp", "pcre"):
        ref = name
        if kind in _FILE_TYPES and ref.endswith(".db"):
            ref = ref[:-3]
        path = locate(source, ref, POSTFIX_HOMES)
        if path is None:
            return Table(spec, kind, ref, readable=False, reason=f"{ref} is not in the audited folder")
        text = source.read(path)
        if text is None:
            return Table(spec, kind, str(path), readable=False, reason=f"{path} cannot be read")
        if kind == "cidr":
            entries = parse_cidr(text, str(path))
        elif kind in ("regexp", "pcre"):
            entries = parse_regexp(text, str(path))
        else:
            entries = parse_access(text, str(path))
        return Table(spec, kind, str(path), entries)
    return Table(spec, kind, spec, readable=False, reason=f"a {kind}: table cannot be read from files")
