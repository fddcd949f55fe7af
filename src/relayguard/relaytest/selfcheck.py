"""Self-check: `relayguard serve` runs the relay battery against its own SMTP listeners.

At start-up (and every `[relaytest] self_check_interval` seconds when that is above 0) each
`[smtp] listen` address is tested in probe mode from a source address that is not trusted:
`self_check_from` when set, else 127.0.0.2 for an IPv4 loopback listener and the listener's own
address otherwise. A source inside `[relay] trusted_networks` would make the test meaningless,
so that listener is skipped with a warning. Each verdict is logged as `event=selfcheck`
(`critical` for an open relay, `warning` when the listener could not be tested) and the last
run is written to `<data_dir>/selfcheck.json` for `relayguard status`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from pathlib import Path

from .. import log, metrics
from ..config import Settings
from ..hostport import parse_hostport
from .prober import RelayTestOptions, check_target
from .result import TargetResult, Verdict

STATUS_FILE = "selfcheck.json"


def plan(settings: Settings) -> list[tuple[str, str, str]]:
    """(target, source address, why skipped or "") for each SMTP listener."""
    out = []
    trusted = settings.relay.networks()
    for addr in settings.smtp.listen:
        host, port = parse_hostport(addr)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            out.append((addr, "", "listener is a host name, not an address"))
            continue
        if ip.is_unspecified:
            ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
        source = settings.relaytest.self_check_from
        if not source:
            if ip.version == 4 and ip.is_loopback:
                source = "127.0.0.2" if str(ip) != "127.0.0.2" else "127.0.0.3"
            else:
                source = str(ip)
        target = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        src = ipaddress.ip_address(source)
        why = f"source {source} is in trusted_networks" if any(src in net for net in trusted) else ""
        out.append((target, source, why))
    return out


def _outside_domain(settings: Settings) -> str:
    local = set(settings.domains.local)
    for domain in (settings.relaytest.canary_domain, "example.com", "example.net", "relaytest.invalid"):
        if domain not in local:
            return domain
    return "relaytest.invalid"


async def self_check_once(settings: Settings) -> list[TargetResult]:
    results: list[TargetResult] = []
    entries: list[dict[str, object]] = []
    for target, source, why in plan(settings):
        if why:
            log.event("selfcheck", logging.WARNING, target=target, verdict="skipped", reason=why)
            metrics.selfcheck(target, "skipped")
            entries.append({"target": target, "source": source, "verdict": "skipped", "reason": why, "relays": []})
            continue
        options = RelayTestOptions(mode="probe", helo="selfcheck.relayguard.invalid", canary_domain=_outside_domain(settings),
                                   timeout=settings.relaytest.timeout, bind=source,
                                   connections=settings.relaytest.connections)
        r = await check_target(target, options)
        results.append(r)
        relays = [c.id for c in r.relays]
        level = {Verdict.OPEN: logging.CRITICAL, Verdict.UNREACHABLE: logging.WARNING}.get(r.verdict, logging.INFO)
        log.event("selfcheck", level, target=target, source=source, verdict=r.verdict.value,
                  relays=",".join(relays) or "-", reason=r.reason)
        metrics.selfcheck(target, r.verdict.value, r.elapsed)
        entries.append({"target": target, "source": source, "verdict": r.verdict.value, "reason": r.reason, "relays": relays})
    write_status(settings, entries)
    metrics.selfcheck_done(r.verdict.value for r in results)
    return results


def write_status(settings: Settings, entries: list[dict[str, object]]) -> None:
    path = Path(settings.server.data_dir) / STATUS_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"at": time.time(), "listeners": entries}, indent=2), encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        log.event("selfcheck-status-failed", logging.WARNING, path=path, error=e)


def read_status(settings: Settings) -> dict[str, object] | None:
    """The last self-check as written by `serve`, or None."""
    try:
        return json.loads((Path(settings.server.data_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


async def run_forever(settings: Settings) -> None:
    interval = settings.relaytest.self_check_interval
    while True:
        try:
            await self_check_once(settings)
        except Exception as e:  # a failed check must never take the server down
            log.event("selfcheck", logging.ERROR, verdict="error", error=e)
        if interval <= 0:
            return
        await asyncio.sleep(interval)


def start_self_check(settings: Settings) -> asyncio.Task[None] | None:
    """Called by `serve` once its listeners are up; None when `[relaytest] self_check` is off."""
    if not settings.relaytest.self_check:
        return None
    return asyncio.get_running_loop().create_task(run_forever(settings))
