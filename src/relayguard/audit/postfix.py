"""Postfix reader: main.cf + master.cf -> the effective value of any parameter, per smtpd service.

Pure: text in, values out. It follows Postfix's own rules (postconf(5), master(5)):

- main.cf: `name = value`; a line starting with whitespace continues the previous one;
  lines whose first non-blank is `#` are comments; the last definition wins. A logical line
  that starts with whitespace is ignored (Postfix warns); a line without `=` is fatal.
- master.cf: `service type private unpriv chroot wakeup maxproc command [args]`, with
  `-o name=value` or `-o { name = value }` overriding main.cf for that service only.
- `$name`, `${name}`, `$(name)`, `${name?value}`, `${name:value}`, `${name?{a}:{b}}` and the
  3.x relational form `${{$compatibility_level} <level {2} ? {a} : {b}}` are expanded; the
  built-in defaults (`postconf -d`, with their compatibility_level dependent values) fill
  everything not set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .model import AuditError
from .postfix_defaults import DEFAULTS_TEXT, NEWER

_NAME_CHARS = re.compile(r"[A-Za-z0-9_]+")
_SERVICE_TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
HOST_NAME_DEFAULT = "localhost.localdomain"  # what the audit assumes when myhostname is not set


def _load_defaults() -> dict[str, str]:
    table: dict[str, str] = {}
    for line in DEFAULTS_TEXT.splitlines():
        if " = " in line or line.endswith(" ="):
            name, _, value = line.partition(" =")
            table[name.strip()] = value.strip()
    for name, value in NEWER.items():
        table.setdefault(name, value)
    return table


DEFAULTS = _load_defaults()


@dataclass(frozen=True)
class Setting:
    """Where a parameter's raw value comes from: a main.cf line, a master.cf -o, or the default."""

    name: str
    value: str
    file: str
    line: int | None  # None for a built-in default

    @property
    def is_default(self) -> bool:
        return self.line is None


@dataclass
class MainCf:
    file: str
    settings: dict[str, Setting] = field(default_factory=dict)
    ignored: list[tuple[int, str]] = field(default_factory=list)  # (line, text) Postfix skips


@dataclass
class Service:
    name: str
    type: str
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str
    command: str
    args: list[str]
    overrides: dict[str, Setting]
    file: str
    line: int

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"

    @property
    def is_smtpd(self) -> bool:
        return self.command.rsplit("/", 1)[-1] == "smtpd"


def _logical_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(first line number, joined text, starts_with_whitespace) per logical line."""
    current: list[object] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t":
            if current is None:
                current = [number, stripped, True]
            else:
                current[1] = f"{current[1]} {stripped}"
            continue
        if current is not None:
            yield current[0], current[1], current[2]  # type: ignore[misc]
        current = [number, raw.rstrip(), False]
    if current is not None:
        yield current[0], current[1], current[2]  # type: ignore[misc]


def parse_main_cf(text: str, file: str) -> MainCf:
    main = MainCf(file)
    for number, logical, orphan in _logical_lines(text):
        if orphan:
            main.ignored.append((number, logical))
            continue
        name, eq, value = logical.partition("=")
        name = name.strip()
        if not eq or not name or any(c.isspace() for c in name):
            raise AuditError(file, number, f"missing '=' after attribute name: {logical.strip()!r}")
        main.settings[name] = Setting(name, value.strip(), file, number)
    return main


def _split_master(text: str, file: str, line: int) -> list[str]:
    """Whitespace-separated fields; `{ ... }` is one field (braces kept), as master(5) reads it."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        if text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth:
                raise AuditError(file, line, f"missing '}}' in {text[i:]!r}")
            out.append(text[i:j + 1])
            i = j + 1
            continue
        j = i
        while j < len(text) and not text[j].isspace():
            j += 1
        out.append(text[i:j])
        i = j
    return out


def parse_master_cf(text: str, file: str) -> list[Service]:
    services: list[Service] = []
    for number, logical, _ in _logical_lines(text):
        fields = _split_master(logical, file, number)
        if len(fields) < 8:
            raise AuditError(file, number, f"bad field count ({len(fields)} fields; expected service type private unpriv chroot wakeup maxproc command)")
        name, kind = fields[0], fields[1]
        if kind not in _SERVICE_TYPES:
            raise AuditError(file, number, f"invalid type field {kind!r} (expected one of {', '.join(_SERVICE_TYPES)})")
        args = fields[8:]
        overrides: dict[str, Setting] = {}
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "-o" or (arg.startswith("-o") and len(arg) > 2):
                if arg == "-o":
                    if i + 1 >= len(args):
                        raise AuditError(file, number, f"service {name}: -o without a name=value")
                    item = args[i + 1]
                    i += 2
                else:
                    item = arg[2:]
                    i += 1
                if item.startswith("{") and item.endswith("}"):
                    item = item[1:-1].strip()
                pname, eq, pvalue = item.partition("=")
                if not eq or not pname.strip():
                    raise AuditError(file, number, f"service {name}: -o {item!r}: missing '='")
                overrides[pname.strip()] = Setting(pname.strip(), pvalue.strip(), file, number)
            else:
                i += 1
        services.append(Service(name, kind, *fields[2:7], fields[7], args, overrides, file, number))
    return services


# The stock master.cf smtpd line, assumed when a configuration comes without master.cf.
DEFAULT_MASTER = "smtp      inet  n       -       y       -       -       smtpd\n"


def _level(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts) or (0,)


class ExpandError(ValueError):
    pass


class PostfixConfig:
    """main.cf settings, master.cf services and the defaults, with Postfix's expansion."""

    def __init__(self, main: MainCf, services: list[Service], master_file: str, master_found: bool,
                 config_directory: str = "/etc/postfix") -> None:
        self.config_directory = config_directory  # what $config_directory means (postconf -c DIR)
        self.main = main
        self.services = services
        self.master_file = master_file
        self.master_found = master_found
        self.undefined: dict[str, Setting] = {}  # $name used but never defined -> where

    # -- raw values -----------------------------------------------------------------

    def setting(self, name: str, service: Service | None = None) -> Setting:
        """Where `name`'s raw value comes from for `service` (or main.cf when None)."""
        if service is not None and name in service.overrides:
            return service.overrides[name]
        if name in self.main.settings:
            return self.main.settings[name]
        return Setting(name, self._default(name), self.main.file, None)

    def is_set(self, name: str, service: Service | None = None) -> bool:
        return not self.setting(name, service).is_default

    def known(self, name: str) -> bool:
        return name in DEFAULTS or name in ("myhostname", "mydomain", "mynetworks", "mail_version", "config_directory", "process_id", "process_name", "mail_release_date", "service_name")

    def _default(self, name: str) -> str:
        if name == "myhostname":
            return HOST_NAME_DEFAULT
        if name == "mydomain":
            host = self._expand_raw("myhostname", None)
            return host.split(".", 1)[1] if "." in host else "localdomain"
        if name == "mynetworks":
            # Postfix computes this from mynetworks_style and the host's interfaces; the
            # audit cannot know the interfaces, so it keeps loopback and reports the style.
            return "127.0.0.0/8 [::1]/128"
        if name == "config_directory":
            return self.config_directory
        return DEFAULTS.get(name, "")

    def _lookup(self, name: str, service: Service | None) -> str | None:
        if name == "service_name":  # set by master(8) for each service
            return service.name if service is not None else ""
        if service is not None and name in service.overrides:
            return service.overrides[name].value
        if name in self.main.settings:
            return self.main.settings[name].value
        if self.known(name) or name in DEFAULTS:
            return self._default(name)
        return None

    # -- expansion ------------------------------------------------------------------

    def value(self, name: str, service: Service | None = None) -> str:
        """The fully expanded value, as `postconf -x` (main) or `postconf -Px` (service) shows it."""
        return self._expand_raw(name, service)

    def _expand_raw(self, name: str, service: Service | None) -> str:
        raw = self._lookup(name, service)
        if raw is None:
            return ""
        where = self.setting(name, service)
        try:
            return self.expand(raw, service, (name,))
        except ExpandError as e:
            raise AuditError(where.file, where.line, f"{name}: {e}") from None

    def expand(self, text: str, service: Service | None = None, stack: tuple[str, ...] = ()) -> str:
        if len(stack) > 20:
            raise ExpandError("unreasonable macro call nesting: " + " -> ".join(stack))
        out: list[str] = []
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if c != "$" or i + 1 >= n:
                out.append(c)
                i += 1
                continue
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
            elif nxt in "{(":
                close = _matching(text, i + 1)
                if close < 0:
                    raise ExpandError(f"truncated macro reference: {text[i:]!r}")
                out.append(self._inner(text[i + 2:close], service, stack))
                i = close + 1
            else:
                m = _NAME_CHARS.match(text, i + 1)
                if not m:
                    out.append("$")
                    i += 1
                    continue
                out.append(self._ref(m.group(0), service, stack))
                i = m.end()
        return "".join(out)

    def _ref(self, name: str, service: Service | None, stack: tuple[str, ...]) -> str:
        if name in stack:
            raise ExpandError("unreasonable macro call nesting: " + " -> ".join((*stack, name)))
        raw = self._lookup(name, service)
        if raw is None:
            owner = stack[0] if stack else name
            self.undefined.setdefault(name, self.setting(owner, service))
            return ""
        return self.expand(raw, service, (*stack, name))

    def _inner(self, inner: str, service: Service | None, stack: tuple[str, ...]) -> str:
        if inner.startswith("{"):
            return self._relational(inner, service, stack)
        m = _NAME_CHARS.match(inner)
        if not m:
            raise ExpandError(f"bad macro reference: ${{{inner}}}")
        name, rest = m.group(0), inner[m.end():]
        if not rest:
            return self._ref(name, service, stack)
        op, arg = rest[0], rest[1:]
        if op not in "?:":
            raise ExpandError(f"bad macro reference: ${{{inner}}}")
        present = bool(self._ref(name, service, stack))
        if arg.startswith("{"):
            groups, tail = _brace_groups(arg)
            if tail.strip() or not groups or len(groups) > 2:
                raise ExpandError(f"bad macro reference: ${{{inner}}}")
            if op == "?":
                chosen = groups[0] if present else (groups[1] if len(groups) > 1 else "")
            else:
                chosen = groups[0] if not present else (groups[1] if len(groups) > 1 else "")
            return self.expand(chosen, service, stack)
        chosen = arg if (present if op == "?" else not present) else ""
        return self.expand(chosen, service, stack)

    def _relational(self, inner: str, service: Service | None, stack: tuple[str, ...]) -> str:
        bad = ExpandError(f"bad relational expression: ${{{inner}}}")
        s = inner.strip()
        close = _matching(s, 0)
        if close < 0:
            raise bad
        left, rest = s[1:close], s[close + 1:].lstrip()
        m = re.match(r"(==level|!=level|<=level|>=level|<level|>level|==|!=|<=|>=|<|>)", rest)
        if not m:
            raise bad
        op, rest = m.group(1), rest[m.end():].lstrip()
        close = _matching(rest, 0) if rest.startswith("{") else -1
        if close < 0:
            raise bad
        right, rest = rest[1:close], rest[close + 1:].lstrip()
        if not rest.startswith("?"):
            raise bad
        groups, tail = _brace_groups(rest[1:])
        if not groups or tail.strip():
            raise bad
        left = self.expand(left, service, stack).strip()
        right = self.expand(right, service, stack).strip()
        if op.endswith("level"):
            a: object = _level(left)
            b: object = _level(right)
            op = op[: -len("level")]
        else:
            a, b = left, right
        result = {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]  # type: ignore[operator]
        chosen = groups[0] if result else (groups[1] if len(groups) > 1 else "")
        return self.expand(chosen, service, stack)

    # -- convenience ----------------------------------------------------------------

    @property
    def compatibility_level(self) -> str:
        return self.value("compatibility_level") or "0"

    def smtpd_services(self) -> list[Service]:
        return [s for s in self.services if s.is_smtpd]

    def referenced_names(self) -> set[str]:
        """Every $name used anywhere (main.cf values, master.cf arguments)."""
        texts = [s.value for s in self.main.settings.values()]
        for svc in self.services:
            texts.extend(o.value for o in svc.overrides.values())
            texts.extend(svc.args)
        names: set[str] = set()
        for text in texts:
            names.update(re.findall(r"\$\{?\(?([A-Za-z0-9_]+)", text))
        return names


def _matching(text: str, start: int) -> int:
    """Index of the bracket closing the one at `start` ({ or ( ), or -1."""
    opener = text[start]
    closer = "}" if opener == "{" else ")"
    depth = 0
    for j in range(start, len(text)):
        if text[j] == opener:
            depth += 1
        elif text[j] == closer:
            depth -= 1
            if depth == 0:
                return j
    return -1


def _brace_groups(text: str) -> tuple[list[str], str]:
    """Leading `{...}` groups separated by whitespace (at most two joined by ':'), and the rest."""
    groups: list[str] = []
    i = 0
    text = text.strip()
    while i < len(text) and text[i] == "{":
        close = _matching(text, i)
        if close < 0:
            raise ExpandError(f"missing '}}' in {text!r}")
        groups.append(text[i + 1:close].strip())
        i = close + 1
        rest = text[i:].lstrip()
        if rest.startswith(":") and rest[1:].lstrip().startswith("{") and len(groups) == 1:
            i = len(text) - len(rest[1:].lstrip())
            continue
        return groups, text[i:]
    return groups, text[i:]


def read(main_text: str, main_file: str, master_text: str | None, master_file: str,
         config_directory: str = "/etc/postfix") -> PostfixConfig:
    main = parse_main_cf(main_text, main_file)
    found = master_text is not None
    services = parse_master_cf(master_text if found else DEFAULT_MASTER, master_file)  # type: ignore[arg-type]
    return PostfixConfig(main, services, master_file, found, config_directory)


def split_list(value: str) -> list[str]:
    """A Postfix list: separated by commas and/or whitespace; `{ ... }` stays one item."""
    items: list[str] = []
    buf: list[str] = []
    depth = 0
    for c in value:
        if c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        if depth == 0 and (c == "," or c.isspace()):
            if buf:
                items.append("".join(buf))
                buf = []
            continue
        buf.append(c)
    if buf:
        items.append("".join(buf))
    return items
