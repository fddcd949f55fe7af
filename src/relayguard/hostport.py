"""`host:port` strings (listen addresses, targets, smarthosts, name servers) -> (host, port).

Its own module, importing nothing heavier than `re`, so that code needing only this (the relay
tester, `relayguard relaytest`) does not load the configuration schema (pydantic) with it.
"""

from __future__ import annotations

import re


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """'127.0.0.1:25', '[::1]:25' or 'host:25' -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)|([^:\[\]]+)", value.strip())
    if not m:
        raise ValueError(f"{value!r} is not host:port")
    if m.group(5) is not None:
        if default_port is None:
            raise ValueError(f"{value!r} has no port (expected host:port)")
        return m.group(5), default_port
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return host, int(port)
