"""`relayguard trace`: the command-line face of the trace (people-facing output).

Part of the CLI: mounted by cli.py, imported by nothing else. The trace itself is trace/
(`parse_received`, `analyse`, `investigate`, `build_report`, `send_report`); the lists are the
DNSBL checker and relayguard's own list (trace/lists.py); `--nominate` hands the relay to the
blacklist's lifecycle (dnsbl/lifecycle.py). Exit codes (DESIGN.md): 0 traced, nothing listed;
1 the origin or the abused relay is listed (after a nomination too); 2 usage, input or connection
error (the report could not be sent, the nomination could not be made).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import getpass
import ipaddress
import json
import socket
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import config as config_mod
from . import log
from .dnsbl.checker import Checker
from .dnsbl.client import parse_nameservers
from .dnsbl.sites import SiteError, parse_sites
from .hostport import parse_hostport
from .trace.arf import FEEDBACK_TYPES, build_report, human_text, report_for
from .trace.chain import Chain, TrustConfig, analyse_message
from .trace.contacts import AbuseOverrides, ContactFinder, HttpRdap, OverrideError
from .trace.investigate import Investigation, Listing, ListingLookup, investigate
from .trace.lists import DnsblLookup, store_lookup
from .trace.submit import (
    SendError,
    SendResult,
    nomination_reason,
    nomination_target,
    send_report,
)

if TYPE_CHECKING:
    from .dnsbl.lifecycle import Lifecycle
    from .dnsbl.store import Store

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


def dns_reverse(nameservers: list[str], timeout: float = 5.0) -> Callable[[str], str | None]:
    """Reverse DNS (PTR) asked of the given servers ("ip[:port]"), the ones the DNSBLs use, so that a
    configured resolver is used for both; None when there is no PTR record or no answer."""
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    servers = parse_nameservers(nameservers)
    resolver.nameservers = [host for host, _ in servers]
    resolver.nameserver_ports = {host: port for host, port in servers}
    resolver.lifetime = timeout

    def reverse(ip: str) -> str | None:
        try:
            answer = resolver.resolve_address(ip, lifetime=timeout)
        except (dns.exception.DNSException, ValueError):
            return None
        return next((r.target.to_text(omit_final_dot=True) for r in answer), None)

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


def _print(inv: Investigation, lists: list[str], notes: list[str], actions: list[Text]) -> None:
    chain = inv.chain
    console.print(f"{chain.received_count} Received field(s), {len(chain.relays)} relay(s), "
                  f"{len(chain.skipped)} without relay information, {len(chain.unparseable)} unreadable; "
                  f"trust {'inferred' if chain.inferred else 'from the configured networks'}", highlight=False)
    if chain.relays:
        console.print(_relay_table(chain))
    console.print(Text("Findings", style="bold"))
    for f in chain.findings:
        console.print(Text.assemble(("  " + f.severity.ljust(8), _SEVERITY_STYLE.get(f.severity, "")), f.message))
    console.print(Text.assemble(("Listings", "bold"), f" (asked: {', '.join(lists)})" if lists else ""))
    if not lists:
        console.print("  no list configured: set [reject] dnsbl_sites or give --zone (DNSBLs), --list FILE (local "
                      "lists); relayguard's own list is read from its store when there is one", highlight=False,
                      markup=False)
    elif not inv.listings:
        ips = chain.untrusted_public_ips()
        console.print(f"  none of {', '.join(ips)} is listed" if ips else "  no untrusted public address to look up",
                      highlight=False, markup=False)
    for ip, xs in inv.listings.items():
        for x in xs:
            detail = ": ".join(v for v in (x.answer, x.reason) if v)
            console.print(Text.assemble("  ", (ip, "bold red"), f" listed on {x.zone}", f" ({detail})" if detail else ""))
    for n in notes:
        console.print(Text.assemble(("  note: ", "yellow"), n))
    console.print(Text("Abuse contacts", style="bold"))
    if not inv.contacts or not any(inv.contacts.values()):
        console.print("  none found")
    for ip, cs in inv.contacts.items():
        for c in cs:
            console.print(f"  {ip}: {c.address} ({c.source}: {c.target})", highlight=False, markup=False)
    for e in inv.errors:
        console.print(Text.assemble(("  lookup error: ", "yellow"), e))
    for line in actions:
        console.print(line)


def _sqlite_file(url: str) -> Path | None:
    """The file of a sqlite:/// store URL (None for PostgreSQL or an in-memory database)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _submission_server(settings: config_mod.Settings) -> str:
    """relayguard's own submission listener (else its SMTP listener), as seen from this host."""
    listen = [*settings.smtp.submission_listen, *settings.smtp.listen]
    if not listen:
        return ""
    host, port = parse_hostport(listen[0])
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _requester() -> str:
    try:
        return f"{getpass.getuser()} (trace)"
    except Exception:  # noqa: BLE001 - no user name on this system
        return "trace"


def _lifecycle(settings: config_mod.Settings, store: Store) -> Lifecycle:
    """The blacklist's lifecycle as `relayguard dnsbl nominate` builds it (no mailer: a nomination sends no mail)."""
    from .dnsbl import lifecycle as lc

    return lc.Lifecycle(store, lc.Policy.from_settings(settings), lc.options_from_settings(settings))


def _nominate(settings: config_mod.Settings, inv: Investigation, message_id: str, own_zone: str) -> dict[str, Any]:
    """Submit the relay (else the origin) for a relay test; the answer as JSON. The test decides
    the listing; a listing it makes is added to the investigation (exit 1, and the report says so)."""
    from .dnsbl import lifecycle as lc
    from .dnsbl.store import Store, StoreError

    target = nomination_target(inv)
    if target is None:
        raise _fail("--nominate: the trace found no public relay or origin to test")
    reason = nomination_reason(inv, target, message_id)
    try:
        store = Store(settings.store.url, txt=settings.dnsbl.txt)
    except StoreError as e:
        raise _fail(f"--nominate: {e}") from None
    log.setup("error")

    async def go() -> lc.Answer:
        async with _lifecycle(settings, store) as life:
            return await life.nominate(target.ip, requester=_requester(), source="cli", via="trace", reason=reason)

    try:
        answer = asyncio.run(go())
    except lc.LifecycleError as e:
        raise _fail(f"--nominate {target.ip}: {e}") from None
    except OSError as e:
        raise _fail(f"--nominate {target.ip}: cannot start the canary: {e}") from None
    finally:
        store.close()
    if answer.listed and not any(x.zone == own_zone for x in inv.listings.get(answer.ip, [])):
        host = answer.host
        code = host.code if host is not None else lc.LISTING_CODE
        txt = host.txt.replace("$", answer.ip) if host is not None else ""
        inv.listings.setdefault(answer.ip, []).append(Listing(answer.ip, own_zone, code, txt))
    out = answer.to_json()
    out["reason"] = reason
    return out


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
    zone: Annotated[Optional[list[str]], typer.Option("--zone", "-z", metavar="ZONE",
                                                      help="a DNSBL to ask, postscreen syntax; repeatable; default: reject.dnsbl_sites")] = None,
    nameserver: Annotated[Optional[list[str]], typer.Option("--nameserver", "-n", metavar="IP[:PORT]",
                                                            help="DNS server for the DNSBLs; default: reject.dns_servers, "
                                                            "delivery.dns_servers, else the system resolver")] = None,
    own_list: Annotated[bool, typer.Option("--own-list/--no-own-list",
                                           help="look the addresses up in relayguard's own relay list (the store)")] = True,
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
    nominate: Annotated[bool, typer.Option("--nominate", help="submit the abused relay (else the origin) to relayguard's "
                                           "blacklist for a relay test; the test decides the listing")] = False,
    send: Annotated[bool, typer.Option("--send", help="submit the abuse report to the contacts over SMTP")] = False,
    smtp: Annotated[str, typer.Option("--smtp", metavar="HOST:PORT",
                                      help="SMTP server for --send; default: relayguard's submission listener")] = "",
    smtp_user: Annotated[str, typer.Option("--smtp-user", metavar="USER", help="log in as USER (after STARTTLS)")] = "",
    smtp_password: Annotated[str, typer.Option("--smtp-password", metavar="PASSWORD", envvar="RELAYGUARD_SMTP_PASSWORD",
                                               help="password for --smtp-user (or RELAYGUARD_SMTP_PASSWORD)")] = "",
    smtp_verify: Annotated[Optional[bool], typer.Option("--smtp-verify/--smtp-no-verify",
                                                        help="check the server's TLS certificate (default: yes, "
                                                        "except on loopback)")] = None,
) -> None:
    """Trace a message to its origin: relay chain, trust, listings, abuse contacts; --arf writes the report,
    --send submits it, --nominate has the relay tested for the blacklist."""
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
    if smtp_password and not smtp_user:
        raise _fail("--smtp-password needs --smtp-user")
    smtp_server = smtp or _submission_server(settings)
    if send:
        try:
            smtp_host, smtp_port = parse_hostport(smtp_server, 587)
        except ValueError as e:
            raise _fail(f"--smtp: {e}") from None

    # the lists: DNSBLs (the checker), relayguard's own list (the store), local files
    r = settings.reject
    own_zone = settings.dnsbl.zone.lower().rstrip(".")
    try:
        sites = list(parse_sites(zone if zone else r.dnsbl_sites))
    except SiteError as e:
        raise _fail(f"--zone: {e}") from None
    resolvers = nameserver or r.dns_servers or settings.delivery.dns_servers  # DNSBLs and reverse DNS
    if resolvers or sites:
        try:
            parse_nameservers(resolvers)  # empty: the system's, needed only for the DNSBLs
        except ValueError as e:
            raise _fail(f"--nameserver: {e}") from None
    file_lookups = [(p.name, file_list_lookup(p)) for p in lists or []]
    dnsbl: DnsblLookup | None = None
    store = None
    notes: list[str] = []
    if own_list:
        db = _sqlite_file(settings.store.url)
        if db is not None and not db.exists():
            notes.append(f"relayguard's own list {own_zone}: no store at {db} (nothing listed yet)")
        else:
            from .dnsbl.store import Store, StoreError

            try:
                store = Store(settings.store.url, txt=settings.dnsbl.txt)
            except StoreError as e:
                notes.append(f"relayguard's own list {own_zone}: {e}")
        # the own zone is read from the store, not asked over DNS a second time
        sites = [s for s in sites if s.zone != own_zone or store is None]
    if sites:
        log.setup("error")  # the notes say what the checker's warnings would
        dnsbl = DnsblLookup(Checker(sites, threshold=r.threshold, nameservers=resolvers, timeout=r.timeout,
                                    health_check=r.health_check, min_ttl=0))

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
    lookups: list[ListingLookup] = []
    names: list[str] = []
    if dnsbl is not None:
        dnsbl.prefetch(chain.untrusted_public_ips())  # every list, every address, at once
        lookups.append(dnsbl)
        names += dnsbl.zones
        notes += dnsbl.notes
    if store is not None:
        lookups.append(store_lookup(store, own_zone))
        names.append(f"{own_zone} (relayguard's own list)")
    for name, lookup in file_lookups:
        lookups.append(lookup)
        names.append(name)
    try:
        reverse = (dns_reverse(resolvers, r.timeout) if resolvers else system_reverse()) if online else None
        inv = investigate(chain, lookups=lookups, reverse=reverse, contacts=finder)
    finally:
        if store is not None:
            store.close()

    actions: list[Text] = []
    message_id = " ".join(str(msg.get("Message-ID", "")).split())
    nomination = None
    if nominate:
        nomination = _nominate(settings, inv, message_id, own_zone)
        style = "bold red" if nomination["listed"] else "bold green"
        actions.append(Text.assemble(("Nominated ", "bold"), (nomination["ip"], "bold"), " for a relay test: ",
                                     (nomination["action"].upper(), style), f" ({nomination['message']})"))

    report_data: bytes | None = None
    recipients: list[str] = []
    sender = reporter or ts.reporter or f"postmaster@{settings.server.hostname}"
    if arf is not None or send:
        recipients = list(to or []) or [c.address for c in inv.recipients()]
        report = report_for(inv, raw, feedback_type=feedback_type)
        report_data = build_report(raw, report, sender=sender, recipients=recipients, human=human_text(inv),
                                   headers_only=headers_only)
    if arf is not None:
        assert report_data is not None
        try:
            arf.write_bytes(report_data)
        except OSError as e:
            raise _fail(f"{arf}: cannot write: {e.strerror or e}") from None
        actions.append(Text(f"abuse report written to {arf}, to {', '.join(recipients)}" if recipients
                            else f"abuse report written to {arf}; no contact found: give one with --to"))
    sent: SendResult | None = None
    send_error = ""
    if send:
        assert report_data is not None
        try:
            sent = send_report(report_data, sender=sender, recipients=recipients, host=smtp_host, port=smtp_port,
                               user=smtp_user, password=smtp_password, verify=smtp_verify,
                               helo=settings.server.hostname)
        except SendError as e:
            send_error = str(e)
            actions.append(Text.assemble(("report not sent: ", "bold red"), send_error))
        else:
            how = ", ".join(x for x in ("STARTTLS" if sent.tls else "", f"as {smtp_user}" if sent.authenticated else "") if x)
            actions.append(Text.assemble(("report sent", "bold green"), f" to {', '.join(sent.accepted)} via {sent.server}"
                                         + (f" ({how})" if how else "") + (f": {sent.reply}" if sent.reply else "")))
            for rcpt, why in sent.refused.items():
                actions.append(Text.assemble(("  refused: ", "bold red"), f"{rcpt}: {why}"))

    if as_json:
        out = inv.to_dict()
        out["lists"] = names
        out["notes"] = notes
        out["dnsbl"] = dnsbl.to_dict() if dnsbl is not None else {}
        out["arf"] = str(arf) if arf is not None else None
        out["nomination"] = nomination
        out["sent"] = (sent.to_dict() if sent is not None else {"error": send_error}) if send else None
        print(json.dumps(out, indent=2, default=str))
    else:
        _print(inv, names, notes, actions)
    if send and (send_error or (sent is not None and sent.refused)):
        if send_error:
            err.print(f"--send: {send_error}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2)
    raise typer.Exit(1 if inv.listed else 0)
