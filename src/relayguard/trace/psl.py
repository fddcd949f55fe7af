"""Registered domains (the part of a host name an organisation registers), from the Public Suffix List.

The list comes bundled with the `publicsuffixlist` package; nothing is downloaded at run time.
Without that package a small built-in fallback (the last two labels, three under a handful of
well-known second-level suffixes) keeps the trace working, less precisely.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

__all__ = ["registered_domain", "is_ip_literal"]

_FALLBACK_SECOND_LEVEL = {
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "net.uk", "co.jp", "ne.jp", "or.jp", "ac.jp",
    "com.au", "net.au", "org.au", "edu.au", "co.nz", "net.nz", "org.nz", "com.br", "net.br",
    "com.cn", "net.cn", "org.cn", "co.in", "net.in", "co.za", "com.mx", "com.tr", "co.kr",
    "com.tw", "com.hk", "com.sg", "com.ar", "com.ru", "co.il", "com.pl",
}


@lru_cache(maxsize=1)
def _psl():  # type: ignore[no-untyped-def]
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError:  # pragma: no cover - exercised only where the package is missing
        return None
    return PublicSuffixList()


def is_ip_literal(name: str) -> bool:
    text = name.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4096)
def registered_domain(host: str) -> str:
    """'mail.example.co.uk' -> 'example.co.uk'; "" for IP literals, bare suffixes and junk."""
    name = host.strip().rstrip(".").lower()
    if not name or "." not in name or is_ip_literal(name) or len(name) > 253:
        return ""
    if any(not label or len(label) > 63 for label in name.split(".")):
        return ""
    psl = _psl()
    if psl is not None:
        try:
            return psl.privatesuffix(name) or ""
        except Exception:  # noqa: BLE001 - odd input (e.g. unusual Unicode) is "no domain", not a crash
            return ""
    labels = name.split(".")
    if name in _FALLBACK_SECOND_LEVEL:
        return ""
    if len(labels) >= 3 and ".".join(labels[-2:]) in _FALLBACK_SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])
