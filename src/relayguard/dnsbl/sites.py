"""DNSBL sites in Postfix postscreen syntax: `zone[=filter][*weight]` (pure).

Postfix (postscreen_dnsbl_sites): entries are separated by commas or whitespace. Without
`=filter` any listing answer counts; a filter has the form d.d.d.d where each d is a number or a
`[...]` pattern of `;`-separated numbers and `lo..hi` ranges (`127.0.0.[2..11]`,
`127.0.[2..15].[0;1]`). Without `*weight` the weight is 1; negative weights allowlist. One zone
may appear several times with different filters (list.dnswl.org=127.0.[2..15].0*-2 and
list.dnswl.org=127.0.[2..15].1*-3); one entry adds its weight at most once per lookup.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

# A well-known public set for `relayguard dnsbl check` when neither --zone nor [reject] dnsbl_sites
# is given (configurable as [reject] check_sites). Error answers (127.255.255.x, dnswl's
# 127.0.0.255) never match these filters. The MTA uses none of them unless configured.
DEFAULT_CHECK_SITES = (
    "zen.spamhaus.org=127.0.0.[2..11]*3",
    "bl.spamcop.net=127.0.0.2*2",
    "b.barracudacentral.org=127.0.0.2*2",
    "bl.mailspike.net=127.0.0.[2;10..14]",
    "psbl.surriel.com=127.0.0.2",
    "ix.dnsbl.manitu.net=127.0.0.2",
    "list.dnswl.org=127.0.[0..255].[0..3]*-2",
)

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMBER = re.compile(r"[0-9]{1,3}")


class SiteError(ValueError):
    """A dnsbl_sites entry that cannot be used; the message quotes the entry and says why."""


@dataclass(frozen=True)
class Filter:
    """Per octet, the allowed (lo, hi) ranges of an A answer (127.0.0.[2..11] -> 4 octet specs)."""

    octets: tuple[tuple[tuple[int, int], ...], ...]

    def matches(self, code: str | ipaddress.IPv4Address) -> bool:
        try:
            packed = ipaddress.IPv4Address(code).packed
        except ValueError:
            return False
        return all(any(lo <= b <= hi for lo, hi in spec) for b, spec in zip(packed, self.octets))

    def __str__(self) -> str:
        parts = []
        for spec in self.octets:
            if len(spec) == 1 and spec[0][0] == spec[0][1]:
                parts.append(str(spec[0][0]))
            else:
                parts.append("[" + ";".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in spec) + "]")
        return ".".join(parts)


@dataclass(frozen=True)
class Site:
    zone: str
    filter: Filter | None = None
    weight: int = 1

    def matches(self, code: str) -> bool:
        return self.filter is None or self.filter.matches(code)

    def __str__(self) -> str:
        text = self.zone
        if self.filter is not None:
            text += f"={self.filter}"
        if self.weight != 1:
            text += f"*{self.weight}"
        return text


def _number(text: str, entry: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise SiteError(f"{entry!r}: {text!r} is not a number 0-255")
    n = int(text)
    if n > 255:
        raise SiteError(f"{entry!r}: {n} is out of range 0-255")
    return n


def parse_filter(text: str, entry: str | None = None) -> Filter:
    """`127.0.0.[2..11]` -> Filter; SiteError with the reason otherwise."""
    entry = text if entry is None else entry
    parts, depth, current = [], 0, ""
    for c in text:  # split on the dots outside [...] (ranges hold dots too: [2..11])
        if c == "." and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += (c == "[") - (c == "]")
        if depth not in (0, 1):
            raise SiteError(f"{entry!r}: unbalanced brackets in filter {text!r}")
        current += c
    parts.append(current)
    if depth != 0:
        raise SiteError(f"{entry!r}: unbalanced brackets in filter {text!r}")
    if len(parts) != 4:
        raise SiteError(f"{entry!r}: filter {text!r} must have four dot-separated parts (d.d.d.d)")
    octets = []
    for part in parts:
        if part.startswith("[") or part.endswith("]"):
            if not (part.startswith("[") and part.endswith("]")):
                raise SiteError(f"{entry!r}: unbalanced brackets in {part!r}")
            body = part[1:-1]
            if not body:
                raise SiteError(f"{entry!r}: empty pattern []")
            spec = []
            for item in body.split(";"):
                if ".." in item:
                    lo_text, _, hi_text = item.partition("..")
                    lo, hi = _number(lo_text, entry), _number(hi_text, entry)
                    if lo > hi:
                        raise SiteError(f"{entry!r}: range {item!r} runs backwards")
                    spec.append((lo, hi))
                else:
                    n = _number(item, entry)
                    spec.append((n, n))
            octets.append(tuple(spec))
        else:
            n = _number(part, entry)
            octets.append(((n, n),))
    return Filter(tuple(octets))


def parse_zone(text: str, entry: str | None = None) -> str:
    """A DNS zone name, lower case, without the final dot."""
    entry = text if entry is None else entry
    zone = text.strip().lower().removesuffix(".")
    if not zone:
        raise SiteError(f"{entry!r}: no zone name")
    if len(zone) > 253:
        raise SiteError(f"{entry!r}: zone name longer than 253 characters")
    for label in zone.split("."):
        if not _LABEL.fullmatch(label):
            raise SiteError(f"{entry!r}: {label!r} is not a valid DNS label in zone {zone!r}")
    return zone


def parse_site(text: str) -> Site:
    """One entry: `zone`, `zone*-2`, `zone=127.0.0.[2..11]*3`."""
    entry = text.strip()
    if not entry:
        raise SiteError("empty dnsbl_sites entry")
    rest, star, weight_text = entry.partition("*")
    weight = 1
    if star:
        if not re.fullmatch(r"[+-]?[0-9]{1,6}", weight_text):
            raise SiteError(f"{entry!r}: weight {weight_text!r} is not an integer (zone*3, zone*-2)")
        weight = int(weight_text)
    zone_text, eq, filter_text = rest.partition("=")
    if eq and not filter_text:
        raise SiteError(f"{entry!r}: '=' without a filter (zone=127.0.0.2)")
    zone = parse_zone(zone_text, entry)
    return Site(zone, parse_filter(filter_text, entry) if eq else None, weight)


def parse_sites(values: Iterable[str]) -> list[Site]:
    """Every entry of a list whose items may each hold several entries (comma or whitespace)."""
    sites = []
    for value in values:
        for item in re.split(r"[,\s]+", value):
            if item:
                sites.append(parse_site(item))
    return sites


def zones(sites: Iterable[Site]) -> list[str]:
    """The distinct zones, in first-mention order: one query each."""
    return list(dict.fromkeys(s.zone for s in sites))
