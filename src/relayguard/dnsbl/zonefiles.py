"""Zone data files: import of plain and rbldnsd lists, export for rbldnsd and BIND-style servers.

Import (`parse_lines`, pure): one entry a line, the superset rbldnsd's ip4set, ip4tset,
ip6tset and ip6trie datasets read (rbldnsd(8) "DATASET TYPES AND FORMATS"): plain addresses and
CIDRs; IPv4 prefixes (``127.0.0`` = /24, ``127/8``) and ranges (``127.0.0.1-255``,
``10.0.0.0-10.0.3.255``); ip6tset's four-word /64s (``2001:db8:1:2``); default values
``:127.0.0.2:TXT`` (``:2:`` short form); per-entry values (``IP :A:TXT``, ``IP :A``, ``IP :A:``
for no TXT, ``IP TXT``); ``$n`` and ``$=`` substitutions; ``#`` and ``;`` comments. ``$SOA``,
``$NS``, ``$TTL`` and other directives are read past (the zone's come from the configuration).
Exclusions (``!IP``) have no place in the store: they are counted and reported, never dropped
silently; the RFC 5782 test point 127.0.0.2 (and ::ffff:7f00:2) is skipped, since every zone
answers it anyway. A 1,000,000-line ip4tset parses in a few seconds (a fast path for bare addresses).

Export (`write_rbldnsd`, `write_bind`): files written atomically (a temporary name in the same
folder, fsync, rename), so rbldnsd, which reloads on a changed mtime, never reads half a file.
rbldnsd gets four datasets for one zone: ``ip4tset`` (single IPv4 addresses with the default
answer: the bulk, in half ip4set's memory), ``ip4trie`` (networks, and addresses with their own
answer or inside a listed network: longest prefix wins, as in relayguard's server), ``ip6tset``
(/64s with the default answer) and ``ip6trie`` (other IPv6 entries).
The BIND zone lists single addresses as names and networks as wildcards (expanded to octet or
nibble boundaries), with a wildcard added under every name that would otherwise hide one.
"""

from __future__ import annotations

import ipaddress
import os
from bisect import bisect_right
import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO

from .store import Entry

_QUAD = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\Z")
_DIRECTIVES = ("SOA", "NS", "TTL", "TIMESTAMP", "MAXRANGE4")
TEST_POINTS = (("127.0.0.2/32", "RFC 5782 test point"), ("::ffff:7f00:2/128", "RFC 5782 test point"))


@dataclass
class LineError:
    line: int
    text: str
    why: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.why}"


@dataclass
class Parsed:
    entries: list[Entry] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    exclusions: list[LineError] = field(default_factory=list)  # "!IP" lines, not imported
    directives: int = 0
    test_points: int = 0  # RFC 5782 test entries: every zone answers them anyway, not imported
    lines: int = 0


def _a_value(text: str) -> str:
    """rbldnsd A value: '2' -> 127.0.0.2, '1.2' -> 127.0.1.2, '127.0.0.3' as is."""
    parts = text.strip().split(".")
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"bad A value {text!r}")
    parts = ["127", "0", "0", "0"][: 4 - len(parts)] + parts
    a = ipaddress.IPv4Address(".".join(str(int(p)) for p in parts))
    return str(a)


def _parse_value(value: str, default_code: str, default_txt: str | None) -> tuple[str, str | None]:
    """`:A:TXT`, `:A`, `:A:` or `TXT` -> (code, txt); txt None = the default."""
    if value.startswith(":"):
        a, sep, txt = value[1:].partition(":")
        code = _a_value(a) if a.strip() else default_code
        if not sep:
            return code, default_txt
        return code, txt.strip()
    return default_code, value


def _ipv4_prefix(text: str) -> tuple[list[int], int]:
    """'127.0.0' -> ([127, 0, 0], 3)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        raise ValueError(f"{text!r} is not an IPv4 address or prefix")
    return [int(p) for p in parts], len(parts)


def _ipv4_networks(token: str) -> list[ipaddress.IPv4Network]:
    if "-" in token:
        left, right = token.split("-", 1)
        lo, n = _ipv4_prefix(left)
        hi_parts, m = _ipv4_prefix(right)
        if m == 1 and n > 1:  # "127.16-31": a suffix replacing the last given octet
            hi = lo[: n - 1] + hi_parts
        else:
            hi = hi_parts
        start = ipaddress.IPv4Address(bytes(lo + [0] * (4 - len(lo))))
        end = ipaddress.IPv4Address(bytes(hi + [255] * (4 - len(hi))))
        if end < start:
            raise ValueError(f"range {token!r} ends before it starts")
        return list(ipaddress.summarize_address_range(start, end))
    if "/" in token:
        addr, _, plen = token.partition("/")
        parts, _n = _ipv4_prefix(addr)
        if not plen.isdigit() or int(plen) > 32:
            raise ValueError(f"bad prefix length in {token!r}")
        return [ipaddress.IPv4Network((bytes(parts + [0] * (4 - len(parts))), int(plen)), strict=False)]
    parts, n = _ipv4_prefix(token)
    return [ipaddress.IPv4Network((bytes(parts + [0] * (4 - n)), 8 * n))]


def _ipv6_network(token: str) -> ipaddress.IPv6Network:
    addr, slash, plen = token.partition("/")
    groups = addr.split(":")
    if "::" not in addr and len(groups) < 8:  # ip6tset/ip6trie: trailing zero groups left out
        if not slash:
            plen = str(16 * len(groups))
        addr = addr + "::"
    elif not slash:
        plen = "128"
    try:
        return ipaddress.IPv6Network(f"{addr}/{plen}", strict=False)
    except ValueError as e:
        raise ValueError(f"{token!r} is not an IPv6 address or network: {e}") from None


def parse_token(token: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if ":" in token:
        return [_ipv6_network(token)]
    return list(_ipv4_networks(token))


def _subst(txt: str, variables: dict[str, str], base: str | None) -> str:
    if variables:
        txt = re.sub(r"\$([0-9])", lambda m: variables.get(m.group(1), m.group(0)), txt)
    if base is not None:
        txt = txt[1:] if txt.startswith("=") else base.replace("$=", txt)
    return txt


def parse_lines(lines: Iterable[str]) -> Parsed:
    """Entries of a plain or rbldnsd file; bad lines are collected, not raised."""
    out = Parsed()
    entries = out.entries
    default_code, default_txt = "127.0.0.2", None
    code_arg: str | None = None  # None while the file sets no default: the zone's default code
    variables: dict[str, str] = {}
    base: str | None = None
    n = 0
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if _QUAD.match(line):  # the fast path: a bare IPv4 address
            try:
                key = socket.inet_ntoa(socket.inet_pton(socket.AF_INET, line)) + "/32"
                if key == "127.0.0.2/32":
                    out.test_points += 1
                else:
                    entries.append(Entry(key, code_arg, default_txt))
                continue
            except OSError:
                pass  # e.g. leading zeros: the slow path says why
        head = line[:2]
        if head in ("#$", ";$", ":$"):
            line = line[1:]
        elif line[0] in "#;":
            continue
        if line[0] == "$":
            key, _, rest = line[1:].partition(" ")
            key = key.strip()
            if key.isdigit() and len(key) == 1:
                variables[key] = rest.strip()
            elif key == "=":
                base = rest.strip()
            elif key.upper() not in _DIRECTIVES:
                out.errors.append(LineError(n, raw.rstrip("\n"), f"unknown directive {line[:40]!r}"))
            out.directives += 1
            continue
        try:
            if line[0] == ":" and line[1:2] != ":":  # "::1" is an address
                default_code, default_txt = _parse_value(line, default_code, None)
                if default_txt is not None:
                    default_txt = _subst(default_txt, variables, base)
                code_arg = default_code
                continue
            if line[0] == "!":
                out.exclusions.append(LineError(n, raw.rstrip("\n"), f"exclusion {line!r}: not supported, not imported"))
                continue
            parts = line.split(None, 1)
            token = parts[0]
            for c in "#;":
                if c in token:
                    token = token.split(c, 1)[0]
            value = parts[1].strip() if len(parts) > 1 else ""
            if value[:1] in ("#", ";"):
                value = ""
            nets = parse_token(token)
            code, txt = code_arg, default_txt
            if value:
                code, txt = _parse_value(value, default_code, default_txt)
                if txt is not None and txt is not default_txt:
                    txt = _subst(txt, variables, base)
        except ValueError as e:
            out.errors.append(LineError(n, raw.rstrip("\n"), str(e)))
            continue
        for net in nets:
            key = str(_canonical(net))
            if key == "127.0.0.2/32":
                out.test_points += 1
                continue
            entries.append(Entry(key, code, txt))
    out.lines = n
    return out


def _canonical(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def read_file(path: str | Path) -> Parsed:
    with open(path, encoding="utf-8", errors="strict", newline=None) as f:
        return parse_lines(f)


# Export --------------------------------------------------------------------------------------


@dataclass
class ZoneMeta:
    zone: str
    ttl: int = 2100
    negative_ttl: int = 2100
    serial: int = 1
    nameservers: tuple[str, ...] = ()  # default ns1.<zone>
    hostmaster: str = ""  # default hostmaster.<zone>
    default_code: str = "127.0.0.2"
    default_txt: str = ""

    @property
    def ns(self) -> tuple[str, ...]:
        return tuple(n.rstrip(".") for n in self.nameservers) or (f"ns1.{self.zone}",)

    @property
    def rname(self) -> str:
        h = self.hostmaster or f"hostmaster.{self.zone}"
        if "@" in h:
            local, _, domain = h.partition("@")
            h = local.replace(".", "\\.") + "." + domain
        return h.rstrip(".")


def atomic_write(path: Path, writer) -> None:
    """Write through `writer(file)` to a temporary file beside `path`, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _rbl_txt(txt: str) -> str:
    return txt.replace("\n", " ")


RBLDNSD_FILES = ("ip4tset", "ip4trie", "ip6tset", "ip6trie")


def _overlapped(nets: list[tuple[int, int]]) -> set[int]:
    """Indexes of (first, last) intervals that overlap another one (nested, for prefixes)."""
    order = sorted(range(len(nets)), key=lambda i: (nets[i][0], -nets[i][1]))
    hit: set[int] = set()
    open_: list[int] = []  # a stack of enclosing intervals
    for i in order:
        first, last = nets[i]
        while open_ and nets[open_[-1]][1] < first:
            open_.pop()
        if open_:
            hit.add(i)
            hit.update(open_)
        open_.append(i)
    return hit


def split_rbldnsd(listed: Iterable[tuple[str, str, str]], meta: ZoneMeta) -> dict[str, list[str]]:
    """The dataset lines (without headers) each rbldnsd file gets.

    The "trivial" sets take the bulk: single IPv4 addresses (ip4tset) and IPv6 /64s (ip6tset)
    that answer the default and overlap no other entry. Everything else goes to the tries,
    which answer the longest matching prefix, as relayguard's own server does (rbldnsd answers
    from every dataset that matches, so an entry inside a network must not sit in a set)."""
    out: dict[str, list[str]] = {k: [] for k in RBLDNSD_FILES}
    v4_nets: list[ipaddress.IPv4Network] = []
    v4_singles: list[tuple[str, str, str]] = []
    v6: list[tuple[ipaddress.IPv6Network, str, str]] = []
    for network, code, txt in listed:
        addr, _, plen = network.partition("/")
        if ":" in addr:
            v6.append((ipaddress.IPv6Network(network), code, txt))
        elif plen == "32":
            v4_singles.append((addr, code, txt))
        else:
            net = ipaddress.IPv4Network(network)
            v4_nets.append(net)
            out["ip4trie"].append(f"{network} :{code}:{_rbl_txt(txt)}")
    bounds = sorted((int(n.network_address), int(n.broadcast_address)) for n in v4_nets)
    starts = [b[0] for b in bounds]
    ends_max: list[int] = []
    m = -1
    for _, last in bounds:
        m = max(m, last)
        ends_max.append(m)
    for addr, code, txt in v4_singles:
        inside = False
        if bounds:
            ip = int.from_bytes(socket.inet_aton(addr), "big")
            i = bisect_right(starts, ip) - 1
            inside = i >= 0 and ends_max[i] >= ip
        if not inside and code == meta.default_code and txt == meta.default_txt:
            out["ip4tset"].append(addr)
        else:
            out["ip4trie"].append(f"{addr}/32 :{code}:{_rbl_txt(txt)}")
    crowded = _overlapped([(int(n.network_address), int(n.broadcast_address)) for n, _, _ in v6])
    for i, (net, code, txt) in enumerate(v6):
        if net.prefixlen == 64 and i not in crowded and code == meta.default_code and txt == meta.default_txt:
            full = net.network_address.exploded.split(":")[:4]
            out["ip6tset"].append(":".join(g.lstrip("0") or "0" for g in full))
        else:
            out["ip6trie"].append(f"{net} :{code}:{_rbl_txt(txt)}")
    return out


def write_rbldnsd(listed: Iterable[tuple[str, str, str]], folder: Path, meta: ZoneMeta,
                  test_points: bool = True) -> dict[str, Path]:
    """Four dataset files `<zone>.<type>` in `folder`; returns {type: path}."""
    entries = list(listed)
    if test_points:  # RFC 5782 section 5, as relayguard's own DNS server answers them
        have = {n for n, _, _ in entries}
        entries += [(n, "127.0.0.2", why) for n, why in TEST_POINTS if n not in have]
    parts = split_rbldnsd(entries, meta)
    paths: dict[str, Path] = {}
    default = f":{meta.default_code}:{_rbl_txt(meta.default_txt)}"
    for kind in RBLDNSD_FILES:
        path = folder / f"{meta.zone}.{kind}"

        def write(f: TextIO, kind: str = kind) -> None:
            f.write(f"# {meta.zone} {kind}: written by relayguard (serial {meta.serial}); do not edit\n")
            if kind == "ip4tset":  # the first dataset on the command line carries SOA and NS
                f.write(f"$SOA {meta.negative_ttl} {meta.ns[0]} {meta.rname} {meta.serial} 3600 600 604800 "
                        f"{meta.negative_ttl}\n")
                f.write(f"$NS {meta.ttl} {' '.join(meta.ns)}\n")
            f.write(f"$TTL {meta.ttl}\n")
            if kind in ("ip4tset", "ip6tset"):
                f.write(default + "\n")
            lines = parts[kind]
            for i in range(0, len(lines), 65536):
                f.write("\n".join(lines[i:i + 65536]))
                f.write("\n")

        atomic_write(path, write)
        paths[kind] = path
    return paths


def rbldnsd_command(paths: dict[str, Path], zone: str, listen: str = "127.0.0.1/53") -> str:
    datasets = " ".join(f"{zone}:{kind}:{paths[kind]}" for kind in RBLDNSD_FILES if kind in paths)
    return f"rbldnsd -n -b {listen} {datasets}"


# BIND ----------------------------------------------------------------------------------------


def _txt_strings(text: str) -> str:
    data = text.encode("utf-8")
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    out = []
    for c in chunks:
        s = c.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'"{s}"')
    return " ".join(out)


def _nodes(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[tuple[tuple[str, ...], bool]]:
    """(labels most significant first, is_leaf) for the names covering `net`: an address is one
    name; a network is a wildcard at each octet (IPv4) or nibble (IPv6) boundary it spans."""
    step = 8 if net.version == 4 else 4
    full = net.max_prefixlen
    if net.prefixlen == full:
        return [(_labels(net.network_address, full, step), True)]
    q = -(-net.prefixlen // step) * step
    subnets = [net] if q == net.prefixlen else list(net.subnets(new_prefix=q))
    out = []
    for s in subnets:
        if q == full:
            out.append((_labels(s.network_address, full, step), True))
        else:
            out.append((_labels(s.network_address, q, step), False))
    return out


def _labels(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int, step: int) -> tuple[str, ...]:
    if step == 8:
        return tuple(str(b) for b in addr.packed[: bits // 8])
    return tuple(addr.exploded.replace(":", "")[: bits // 4])


def bind_records(listed: Iterable[tuple[str, str, str]]) -> dict[tuple[tuple[str, ...], bool], tuple[int, str, str, str]]:
    """{(node labels, leaf): (prefixlen, code, txt, what $ stands for)}; longer prefixes win."""
    owners: dict[tuple[tuple[str, ...], bool], tuple[int, str, str, str]] = {}
    nets = sorted(((ipaddress.ip_network(n), c, t) for n, c, t in listed), key=lambda e: e[0].prefixlen)
    for net, code, txt in nets:
        shown = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        for node, leaf in _nodes(net):
            owners[(node, leaf)] = (net.prefixlen, code, txt, shown)
    # A name below a wildcard's node hides the wildcard for its siblings (the closest encloser
    # rule): give every such intermediate node a wildcard with the enclosing network's answer.
    wild = {node: v for (node, leaf), v in owners.items() if not leaf}
    added: dict[tuple[tuple[str, ...], bool], tuple[int, str, str, str]] = {}
    if wild:
        for (node, _leaf) in list(owners):
            for k in range(1, len(node)):
                anc = node[:k]
                if anc in wild or (anc, False) in added:
                    continue
                enclosing = next((anc[:j] for j in range(k - 1, 0, -1) if anc[:j] in wild), None)
                if enclosing is not None:
                    added[(anc, False)] = wild[enclosing]
    owners.update(added)
    return owners


def write_bind(listed: Iterable[tuple[str, str, str]], path: Path, meta: ZoneMeta, test_points: bool = True) -> int:
    """A master zone file for NSD, Knot or BIND; returns the number of owner names."""
    entries = list(listed)
    if test_points:
        have = {n for n, _, _ in entries}
        for net, why in TEST_POINTS:
            if net not in have:
                entries.append((net, "127.0.0.2", why))
    owners = bind_records(entries)

    def write(f: TextIO) -> None:
        z = meta.zone
        f.write(f"; {z}: written by relayguard (serial {meta.serial}); do not edit\n")
        f.write(f"$ORIGIN {z}.\n$TTL {meta.ttl}\n")
        f.write(f"@ {meta.negative_ttl} IN SOA {meta.ns[0]}. {meta.rname}. ( {meta.serial} 3600 600 604800 "
                f"{meta.negative_ttl} )\n")
        for ns in meta.ns:
            f.write(f"@ IN NS {ns}.\n")
        buf: list[str] = []
        for (node, leaf), (_plen, code, txt, shown) in sorted(owners.items(), key=lambda kv: (len(kv[0][0]), kv[0])):
            name = ".".join(reversed(node))
            if not leaf:
                name = "*." + name
            buf.append(f"{name} IN A {code}")
            if txt:
                buf.append(f"{name} IN TXT {_txt_strings(txt.replace('$', shown))}")
            if len(buf) >= 65536:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")

    atomic_write(path, write)
    return len(owners)
