"""`relayguard trace`: the command-line face of the trace (people-facing output).

Part of the CLI: mounted by cli.py, imported by nothing else. The trace itself is trace/
(`parse_received`, `analyse`, `investigate`, `build_report`). Exit codes (DESIGN.md): 0 traced,
nothing listed; 1 the origin or the abused relay is listed; 2 usage or input error.
"""

from __future__ import annotations

import email
import email.policy
import ipaddress
import json
import socket
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import config as config_mod
from .trace.arf import FEEDBACK_TYPES, build_report, human_text, report_for
from .trace.chain import Chain, TrustConfig, analyse_message
from .trace.contacts import AbuseOverrides, ContactFinder, HttpRdap, OverrideError
from .trace.investigate import Investigation, Listing, ListingLookup, investigate

console = Console()
err = Console(stderr=True)

_SEVERITY_STYLE = {"warning": "yellow", "info": "cyan"}


def _fail(message: str) -> typer.Exit:
    err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(2)


def file_list_lookup(path: Path) -> ListingLookup:
    """A local list as a listing lookup, the zone being the file's name: one IP or CIDR per line,
    '#' comments, rbldnsd ip4set lines too (`1.2.3.0/24 :127.0.0.2:reason`, `!1.2.3.4` excludes)."""
    nets, excluded = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(f"{path}: cannot read: {e}") from None
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(("$", ":")):
            continue
        token, _, reason = line.partition(" ")
        head, colon, rest = token.partition(":")
        if colon and "." in head:  # 1.2.3.4:127.0.0.2:reason (no space); IPv6 keys have no dot there
            token, reason = head, rest + " " + reason
        exclude = token.startswith("!")
        try:
            net = ipaddress.ip_network(token.lstrip("!"), strict=False)
        except ValueError:
            raise _fail(f"{path}:{n}: {token!r} is not an IP address or network") from None
        if exclude:
            excluded.append(net)
        else:
            value = reason.strip().removeprefix(":")
            _answer, sep, text = value.partition(":")  # rbldnsd ":A:TXT"
            nets.append((net, text.strip() if sep else value))
    zone = path.name

    def lookup(ip: str) -> list[Listing]:
        addr = ipaddress.ip_address(ip)
        if any(addr.version == x.version and addr in x for x in excluded):
            return []
        return [Listing(ip, zone, str(net), reason) for net, reason in nets if net.version == addr.version and addr in net]

    return lookup


def system_reverse(timeout: float = 5.0) -> Callable[[str], str | None]:
    """Reverse DNS through the system resolver, each lookup bounded by `timeout` (a daemon thread
    that overruns is left behind, so a slow resolver never holds the command up)."""

    def reverse(ip: str) -> str | None:
        box: list[str] = []

        def work() -> None:
            try:
                box.append(socket.gethostbyaddr(ip)[0])
            except OSError:
                pass

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(timeout)
        return box[0] if box else None

    return reverse


def _relay_table(chain: Chain) -> Table:
    table = Table(title="Relay chain, newest first", title_justify="left")
    for col in ("#", "trust", "from IP", "reverse DNS", "HELO", "by", "with", "date"):
        table.add_column(col, overflow="fold")
    for r in chain.relays:
        role = []
        if r is chain.origin:
            role.append("origin")
        if r is chain.abused_relay:
            role.append("relay")
        trust = Text("trusted", "green") if r.trusted else Text("untrusted", "red")
        if r.msa:
            trust.append(" msa", "green")
        if role:
            trust.append(" " + "+".join(role), "bold magenta")
        date = r.hop.date.strftime("%Y-%m-%d %H:%M:%S %z") if isinstance(r.hop.date, datetime) else (r.hop.date or "")
        ip = r.ip + (" (private)" if r.private else "")
        table.add_row(str(r.index) if not r.synthetic else r.header, trust, ip, r.hop.rdns, r.hop.helo, r.hop.by,
                      r.hop.with_ + (f" ({r.hop.auth})" if r.hop.auth and r.hop.auth != r.hop.with_ else ""), date)
    return table


def _print(inv: Investigation, lists_used: bool, arf_note: str) -> None:
    chain = inv.chain
    console.print(f"{chain.received_count} Received field(s), {len(chain.relays)} relay(s), "
                  f"{len(chain.skipped)} without relay information, {len(chain.unparseable)} unreadable; "
                  f"trust {'inferred' if chain.inferred else 'from the configured networks'}", highlight=False)
    if chain.relays:
        console.print(_relay_table(chain))
    console.print(Text("Findings", style="bold"))
    for f in chain.findings:
        console.print(Text.assemble(("  " + f.severity.ljust(8), _SEVERITY_STYLE.get(f.severity, "")), f.message))
    console.print(Text("Listings", style="bold"))
    if not lists_used:
        console.print("  no list configured (the multi-list DNSBL check is not wired in yet; use --list FILE)")
    elif not inv.listings:
        console.print(f"  none of {', '.join(chain.untrusted_public_ips()) or 'the (no) untrusted public addresses'} is listed")
    for ip, xs in inv.listings.items():
        for x in xs:
            console.print(Text.assemble("  ", (ip, "bold red"), f" listed on {x.zone}", f" ({x.reason})" if x.reason else ""))
    console.print(Text("Abuse contacts", style="bold"))
    if not inv.contacts or not any(inv.contacts.values()):
        console.print("  none found")
    for ip, cs in inv.contacts.items():
        for c in cs:
            console.print(f"  {ip}: {c.address} ({c.source}: {c.target})", highlight=False)
    for e in inv.errors:
        console.print(Text.assemble(("  lookup error: ", "yellow"), e))
    if arf_note:
        console.print(arf_note, highlight=False)


def trace(
    source: Annotated[str, typer.Argument(metavar="FILE.eml|-", help="the message (- reads standard input)")],
    config: Annotated[Optional[Path], typer.Option("-c", "--config", help="TOML configuration file")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    arf: Annotated[Optional[Path], typer.Option("--arf", metavar="OUT.eml", help="write an RFC 5965 abuse report")] = None,
    trusted: Annotated[Optional[list[str]], typer.Option("--trusted", metavar="CIDR", help="trusted network (repeatable)")] = None,
    internal: Annotated[Optional[list[str]], typer.Option("--internal", metavar="CIDR", help="internal network (repeatable)")] = None,
    msa: Annotated[Optional[list[str]], typer.Option("--msa", metavar="CIDR", help="MSA network (repeatable)")] = None,
    originating: Annotated[Optional[list[str]], typer.Option("--originating-header", metavar="NAME",
                                                             help="header naming the sender's address, e.g. X-Originating-IP")] = None,
    lists: Annotated[Optional[list[Path]], typer.Option("--list", metavar="FILE",
                                                        help="local list of IPs/CIDRs to check untrusted addresses against")] = None,
    contacts_file: Annotated[Optional[Path], typer.Option("--contacts", metavar="FILE",
                                                          help="abuse.net style 'domain: address' overrides")] = None,
    network: Annotated[Optional[bool], typer.Option("--network/--no-network",
                                                    help="RDAP abuse contacts and reverse DNS over the network")] = None,
    reporter: Annotated[str, typer.Option("--reporter", metavar="ADDR", help="From address of the report")] = "",
    to: Annotated[Optional[list[str]], typer.Option("--to", metavar="ADDR", help="send the report here instead of the contacts found")] = None,
    headers_only: Annotated[bool, typer.Option("--headers-only", help="attach only the original's header (text/rfc822-headers)")] = False,
    feedback_type: Annotated[str, typer.Option("--feedback-type", help="abuse, fraud, virus or other")] = "abuse",
) -> None:
    """Trace a message to its origin: relay chain, trust, listings, abuse contacts; --arf writes the report."""
    try:
        settings = config_mod.load(config)
    except config_mod.ConfigError as e:
        raise _fail(f"configuration error:\n{e}") from None
    ts = settings.trace
    if feedback_type not in FEEDBACK_TYPES:
        raise _fail(f"--feedback-type: {feedback_type!r} is not one of {', '.join(FEEDBACK_TYPES)}")
    try:
        trust = TrustConfig.from_strings(
            trusted=[*ts.trusted_networks, *(trusted or [])], internal=[*ts.internal_networks, *(internal or [])],
            msa=[*ts.msa_networks, *(msa or [])], originating_headers=[*ts.originating_ip_headers, *(originating or [])],
            max_skew_seconds=ts.max_time_skew)
    except ValueError as e:
        raise _fail(str(e)) from None

    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as e:
        raise _fail(f"{source}: cannot read: {e.strerror or e}") from None
    if not raw.strip():
        raise _fail(f"{source}: empty input")
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    if not msg.get_all("Received"):
        raise _fail(f"{source}: no Received field: nothing to trace (is this a whole message with its header?)")
    chain = analyse_message(msg, trust)

    overrides = AbuseOverrides()
    path = contacts_file or (Path(ts.abuse_contacts_file) if ts.abuse_contacts_file else None)
    if path is not None:
        try:
            overrides = AbuseOverrides.load(path)
        except OverrideError as e:
            raise _fail(str(e)) from None
    online = ts.network_lookups if network is None else network
    finder = ContactFinder(overrides, HttpRdap(ts.rdap_url) if online else None)
    lookups = [file_list_lookup(p) for p in lists or []]
    inv = investigate(chain, lookups=lookups, reverse=system_reverse() if online else None, contacts=finder)

    arf_note = ""
    if arf is not None:
        sender = reporter or ts.reporter or f"postmaster@{settings.server.hostname}"
        recipients = list(to or []) or [c.address for c in inv.recipients()]
        report = report_for(inv, raw, feedback_type=feedback_type)
        data = build_report(raw, report, sender=sender, recipients=recipients, human=human_text(inv),
                            headers_only=headers_only)
        try:
            arf.write_bytes(data)
        except OSError as e:
            raise _fail(f"{arf}: cannot write: {e.strerror or e}") from None
        arf_note = (f"abuse report written to {arf}, to {', '.join(recipients)}" if recipients
                    else f"abuse report written to {arf}; no contact found: give one with --to")

    if as_json:
        out = inv.to_dict()
        out["arf"] = str(arf) if arf is not None else None
        print(json.dumps(out, indent=2, default=str))
    else:
        _print(inv, bool(lookups), arf_note)
    raise typer.Exit(1 if inv.listed else 0)
