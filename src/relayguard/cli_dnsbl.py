"""`relayguard dnsbl ...`: the DNS blacklist commands (people-facing output).

Part of the CLI: mounted by cli.py as the `dnsbl` sub-app, imported by nothing else.
Commands: `check` (the multi-list checker, issue 6). The list administration commands
(nominate/add/remove/show/entries/import/export) join this module.

Exit codes (DESIGN.md): 0 clean / success, 1 listed (at or above the threshold), 2 usage, input
or connection error (for `check`: a target the lists could not decide on because some did not
answer).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import config as config_mod
from . import log
from .dnsbl.checker import Checker, Target, TargetError, parse_target
from .dnsbl.client import parse_nameservers
from .dnsbl.sites import Site, SiteError, parse_sites
from .dnsbl.verdict import CheckResult, Status, Verdict, code_meaning
from .cli_app import ConfigOpt, _fail, _settings  # one definition for the whole CLI
from .hostport import parse_hostport

dnsbl_app = typer.Typer(no_args_is_help=True, help="DNS blacklists: check addresses against many lists; run relayguard's own list.")

console = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print the results as JSON")]


# check ------------------------------------------------------------------------------------------

_STATUS_STYLE = {Status.LISTED: "bold red", Status.CLEAN: "green", Status.ERROR: "yellow", Status.UNKNOWN: "magenta",
                 Status.SKIPPED: "dim"}
_VERDICT_STYLE = {Verdict.LISTED: "bold red", Verdict.CLEAN: "bold green", Verdict.UNKNOWN: "bold magenta"}


def _table(result: CheckResult, sites: list[Site]) -> Table:
    title = Text.assemble((result.target, "bold"), "  ", (result.verdict.value.upper(), _VERDICT_STYLE[result.verdict]),
                          f"  score {result.score} (threshold {result.threshold})")
    table = Table(title=title, title_justify="left", caption=f"{len(result.answers)} lists in {result.elapsed * 1000:.0f} ms",
                  caption_justify="left")
    table.add_column("list", no_wrap=True)
    table.add_column("answer", no_wrap=True)
    table.add_column("meaning", ratio=2)
    table.add_column("TXT", overflow="fold", ratio=3)
    table.add_column("weight", justify="right")
    table.add_column("ms", justify="right")
    matched = {m.site: m for m in result.matches}
    for a in result.answers:
        codes = a.codes.listed + a.codes.errors
        answer = Text("+".join(codes) if codes else a.status.value, _STATUS_STYLE[a.status])
        if a.codes.ignored:
            answer.append(f" (ignored {'+'.join(a.codes.ignored)})", "dim")
        meaning = "; ".join(code_meaning(a.zone, c) for c in codes) or a.detail
        if codes and a.detail:
            meaning += f" ({a.detail})"
        if a.codes.ignored:
            meaning = (meaning + "; " if meaning else "") + "answers outside 127/8 ignored"
        weights = [f"{s.weight:+d}" for s in sites if s.zone == a.zone and s in matched]
        latency = "cache" if a.cached else "local" if a.local else f"{a.latency * 1000:.0f}"
        table.add_row(a.zone, answer, meaning, a.reason, " ".join(weights) or "", latency)
    return table


async def _check(checker: Checker, targets: list[Target]) -> list[CheckResult]:
    return await checker.check_many(targets)


@dnsbl_app.command("check")
def check(
    targets: Annotated[list[str], typer.Argument(help="IP addresses (v4 or v6) or domain names", show_default=False)],
    zone: Annotated[Optional[list[str]], typer.Option("--zone", "-z", help="a list to ask, postscreen syntax "
                    "(zone, zone=127.0.0.[2..11]*3, zone*-2); repeatable; default: reject.dnsbl_sites, else reject.check_sites")] = None,
    nameserver: Annotated[Optional[list[str]], typer.Option("--nameserver", "-n", help="DNS server IP[:PORT]; repeatable; "
                          "default: reject.dns_servers, delivery.dns_servers, else the system resolver")] = None,
    threshold: Annotated[Optional[int], typer.Option(help="listed at this summed weight; default: reject.threshold")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="seconds per list; default: reject.timeout")] = None,
    health: Annotated[bool, typer.Option("--health/--no-health", help="probe the RFC 5782 test points and skip unhealthy lists")] = True,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check IPs or domains against many DNSBLs at once: exit 1 when listed, 0 when clean."""
    settings = _settings(config)
    r = settings.reject
    try:
        sites = parse_sites(zone) if zone else parse_sites(r.dnsbl_sites or r.check_sites)
    except SiteError as e:
        raise _fail(f"--zone: {e}") from None
    if not sites:
        raise _fail("no lists to ask: give --zone or set [reject] dnsbl_sites / check_sites")
    try:
        parsed = [parse_target(t) for t in targets]
    except TargetError as e:
        raise _fail(str(e)) from None
    if threshold is not None and threshold < 1:
        raise _fail("--threshold must be 1 or more")
    if timeout is not None and timeout <= 0:
        raise _fail("--timeout must be positive")
    servers = nameserver or r.dns_servers or settings.delivery.dns_servers
    wait = timeout or r.timeout
    try:
        parse_nameservers(servers)  # fail early on a bad server or no system resolver
    except ValueError as e:
        raise _fail(f"--nameserver: {e}") from None
    log.setup("error")  # the table says what the warnings would (error codes, ignored answers, skipped lists)
    checker = Checker(sites, threshold=threshold or r.threshold, nameservers=servers, timeout=wait,
                      health_check=health, min_ttl=0)
    results = asyncio.run(_check(checker, parsed))
    if as_json:
        print(json.dumps([res.as_dict() for res in results], indent=2))
    else:
        for res in results:
            console.print(_table(res, sites))
    for h in checker.health.values():
        if h.healthy is False:
            err.print(f"warning: {h.zone} skipped: {h.reason}", highlight=False, markup=False, soft_wrap=True)
    if any(res.verdict is Verdict.LISTED for res in results):
        raise typer.Exit(1)
    undecided = [res for res in results if res.verdict is Verdict.UNKNOWN]
    if undecided:
        for res in undecided:
            err.print(f"{res.target}: undecided: no answer from {', '.join(res.unknown_zones())}",
                      highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2)


# The list itself (issue 5): nominate, add, remove, removal requests, show, entries, import, export.
# Exit codes: 0 done and not listed, 1 listed (after the command), 2 usage, input, refused or store error.

import getpass as _getpass  # noqa: E402
import time as _time  # noqa: E402
from datetime import timedelta as _timedelta  # noqa: E402

from .dnsbl import lifecycle as _lc  # noqa: E402
from .dnsbl import store as _store  # noqa: E402
from .dnsbl import zonefiles as _zf  # noqa: E402

_ACTION_STYLE = {"listed": "bold red", "already-listed": "bold red", "still-listed": "bold red", "untestable": "bold red",
                 "changed": "bold red", "referred": "bold red", "awaiting-confirmation": "bold yellow",
                 "not-listed": "bold green", "delisted": "bold green", "expired": "bold green", "cooldown": "yellow",
                 "pending": "yellow", "queued": "yellow", "rate-limited": "bold magenta", "refused": "bold magenta"}


def _open_store(settings: config_mod.Settings) -> _store.Store:
    try:
        return _store.Store(settings.store.url, txt=settings.dnsbl.txt)
    except _store.StoreError as e:
        raise _fail(str(e)) from None


def _lifecycle(settings: config_mod.Settings, store: _store.Store) -> _lc.Lifecycle:
    mailer = None
    if settings.dnsbl.removal_confirm:
        via = settings.dnsbl.mail_via or (settings.smtp.listen[0] if settings.smtp.listen else "")
        if via:
            host, port = parse_hostport(via, 25)
            mailer = _lc.SMTPMailer(host, port)
    return _lc.Lifecycle(store, _lc.Policy.from_settings(settings), _lc.options_from_settings(settings), mailer=mailer)


def _requester(given: str) -> str:
    if given:
        return given
    try:
        return f"{_getpass.getuser()} (cli)"
    except Exception:
        return "cli"


def _answer_exit(a: _lc.Answer) -> int:
    if a.action in ("rate-limited", "refused"):
        return 2
    return 1 if a.listed else 0


def _print_answer(a: _lc.Answer, as_json: bool) -> None:
    if as_json:
        print(json.dumps(a.to_json(), indent=2))
        return
    console.print(Text.assemble((a.ip, "bold"), "  ", (a.action.upper(), _ACTION_STYLE.get(a.action, "bold"))))
    console.print(a.message, highlight=False, markup=False, soft_wrap=True)
    if a.effective_at is not None:
        console.print(f"takes effect everywhere by {_lc._when(a.effective_at)} (now + TTL + negative TTL)",
                      highlight=False, style="dim")
    if a.test_run_id is not None:
        console.print(f"test run #{a.test_run_id}; the transcript: relayguard dnsbl show {a.ip} --transcript",
                      highlight=False, style="dim")


def _run_lifecycle(settings: config_mod.Settings, action) -> _lc.Answer:
    store = _open_store(settings)
    log.setup("error")

    async def go() -> _lc.Answer:
        async with _lifecycle(settings, store) as lc:
            return await action(lc)

    try:
        return asyncio.run(go())
    except _lc.LifecycleError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"cannot start the canary: {e}") from None
    finally:
        store.close()


@dnsbl_app.command("nominate")
def dnsbl_nominate(
    ip: Annotated[str, typer.Argument(help="the address to test (IPv4 or IPv6)")],
    reason: Annotated[str, typer.Option(help="why (kept with the nomination)")] = "",
    requester: Annotated[str, typer.Option(help="who asks; default: your user name")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask for a relay test (confirm mode); listed with 127.0.0.2 only when a relay is confirmed."""
    settings = _settings(config)
    a = _run_lifecycle(settings, lambda lc: lc.nominate(ip, requester=_requester(requester), source="cli", via="cli",
                                                          reason=reason))
    _print_answer(a, as_json)
    raise typer.Exit(_answer_exit(a))


@dnsbl_app.command("request-removal")
def dnsbl_request_removal(
    ip: Annotated[str, typer.Argument(help="the listed address")],
    contact: Annotated[str, typer.Option(help="where the answer (and the confirmation, when required) goes")] = "",
    reason: Annotated[str, typer.Option(help="what was fixed")] = "",
    requester: Annotated[str, typer.Option(help="who asks; default: the contact, else your user name")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask for removal: the host is re-tested now (after the e-mail confirmation, when required)."""
    settings = _settings(config)
    who = requester or contact or _requester("")
    a = _run_lifecycle(settings, lambda lc: lc.request_removal(ip, contact=contact, requester=who, source="cli",
                                                                reason=reason))
    _print_answer(a, as_json)
    raise typer.Exit(_answer_exit(a))


@dnsbl_app.command("confirm")
def dnsbl_confirm(
    token: Annotated[str, typer.Argument(help="the token from the confirmation mail")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Confirm a removal request; the re-test runs at once."""
    settings = _settings(config)
    a = _run_lifecycle(settings, lambda lc: lc.confirm_removal(token))
    _print_answer(a, as_json)
    raise typer.Exit(_answer_exit(a))


@dnsbl_app.command("retest")
def dnsbl_retest(
    ip: Annotated[str, typer.Argument(help="the address to test now")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """An administrator's test now, without limits or cool-down: lists, keeps or delists by its result."""
    settings = _settings(config)
    a = _run_lifecycle(settings, lambda lc: lc.retest(ip, actor=_requester("")))
    _print_answer(a, as_json)
    raise typer.Exit(_answer_exit(a))


@dnsbl_app.command("maintain")
def dnsbl_maintain(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Expire listings that are due and re-test listed hosts that are due (run it from cron, or let serve do it)."""
    settings = _settings(config)
    store = _open_store(settings)
    log.setup("error")

    async def go() -> list[_lc.Answer]:
        async with _lifecycle(settings, store) as lc:
            return await lc.maintain()

    try:
        answers = asyncio.run(go())
    except _lc.LifecycleError as e:
        raise _fail(str(e)) from None
    finally:
        store.close()
    if as_json:
        print(json.dumps([a.to_json() for a in answers], indent=2))
    elif not answers:
        console.print("nothing due")
    else:
        for a in answers:
            _print_answer(a, False)


def _parse_days(value: float | None, what: str) -> _timedelta | None:
    if value is None or value == 0:
        return None
    if value < 0:
        raise _fail(f"{what} must be positive (days)")
    return _timedelta(days=value)


@dnsbl_app.command("add")
def dnsbl_add(
    entry: Annotated[str, typer.Argument(help="an address or CIDR network")],
    reason: Annotated[str, typer.Option(help="why (required; kept in the audit log)")] = "",
    code: Annotated[str, typer.Option(help="the A record answered")] = _lc.LISTING_CODE,
    txt: Annotated[Optional[str], typer.Option(help="the TXT answered ($ = the IP); default: [dnsbl] txt")] = None,
    expires: Annotated[Optional[float], typer.Option(help="days until the listing expires; default: never")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List an address or network by hand (an administrator's decision, no test)."""
    settings = _settings(config)
    if not reason.strip():
        raise _fail("--reason is required")
    store = _open_store(settings)
    try:
        a = _lifecycle(settings, store).add(entry, reason=reason, actor=_requester(""), code=code, txt=txt,
                                            expires=_parse_days(expires, "--expires"))
    except _lc.LifecycleError as e:
        raise _fail(str(e)) from None
    finally:
        store.close()
    _print_answer(a, as_json)


@dnsbl_app.command("remove")
def dnsbl_remove(
    entry: Annotated[str, typer.Argument(help="a listed address or network")],
    reason: Annotated[str, typer.Option(help="why (required; kept in the audit log)")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delist an address or network by hand (no test)."""
    settings = _settings(config)
    if not reason.strip():
        raise _fail("--reason is required")
    store = _open_store(settings)
    try:
        a = _lifecycle(settings, store).remove(entry, reason=reason, actor=_requester(""))
    except _lc.LifecycleError as e:
        raise _fail(str(e)) from None
    finally:
        store.close()
    _print_answer(a, as_json)


def _host_table(h: _store.HostRecord, ip: str) -> Table:
    style = "bold red" if h.listed else "bold green"
    t = Table(title=Text.assemble((h.network, "bold"), "  ", (h.state.upper(), style)), title_justify="left",
              show_header=False)
    t.add_column("key", style="dim", no_wrap=True)
    t.add_column("value", overflow="fold")
    rows = [("answer", f"A {h.code}  TXT \"{h.txt.replace('$', ip)}\"" if h.listed else "NXDOMAIN"),
            ("reason", h.reason), ("source", h.source), ("first listed", _lc._when(h.first_listed)),
            ("last listed", _lc._when(h.last_listed)), ("delisted", _lc._when(h.delisted_at)),
            ("expires", _lc._when(h.expires_at)), ("next re-test", _lc._when(h.next_retest)),
            ("last tested", f"{_lc._when(h.last_tested)} {h.last_verdict}".strip())]
    for k, v in rows:
        if v and v != "-":
            t.add_row(k, v)
    return t


@dnsbl_app.command("show")
def dnsbl_show(
    ip: Annotated[str, typer.Argument(help="an address (or a listed network)")],
    transcript: Annotated[bool, typer.Option("--transcript", help="print the last test's per-case transcript")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One host: listed or not, its answer, reason, history, tests and requests. Exit 1 when listed."""
    settings = _settings(config)
    try:
        net = _store.canonical(ip)
    except ValueError as e:
        raise _fail(str(e)) from None
    store = _open_store(settings)
    try:
        host = store.get(net)
        single = net.prefixlen == net.max_prefixlen
        shown = str(net.network_address) if single else str(net)
        covering = [c for c in store.covering(shown) if c.network != str(net)] if single else []
        history = store.history(net)
        runs = store.test_runs(net, with_result=transcript)
        noms = store.nominations(net)
        removals = store.removal_requests(net)
    finally:
        store.close()
    listed = bool((host and host.listed) or covering)
    if as_json:
        print(json.dumps({
            "ip": shown, "listed": listed, "zone": settings.dnsbl.zone, "host": host.to_json() if host else None,
            "covering": [c.to_json() for c in covering], "history": [h.to_json() for h in history],
            "test_runs": [r.to_json() for r in runs], "nominations": [n.to_json() for n in noms],
            "removal_requests": [r.to_json() for r in removals]}, indent=2))
        raise typer.Exit(1 if listed else 0)
    if host is None and not covering:
        console.print(Text.assemble((shown, "bold"), "  ", ("NOT LISTED", "bold green"), "  never nominated or listed"))
        raise typer.Exit(0)
    if host is not None:
        console.print(_host_table(host, shown))
    for c in covering:
        console.print(Text.assemble("listed as part of ", (c.network, "bold red"), f": {c.reason}"), highlight=False)
    if history:
        t = Table(title="history", title_justify="left")
        for col in ("at", "action", "state", "by", "reason"):
            t.add_column(col, overflow="fold")
        for e in history:
            t.add_row(_lc._when(e.at), e.action, f"{e.old_state or '-'} -> {e.new_state}", e.actor, e.reason)
        console.print(t)
    if runs:
        t = Table(title="tests", title_justify="left")
        for col in ("#", "at", "trigger", "verdict", "relayed", "reason"):
            t.add_column(col, overflow="fold")
        for r in runs:
            t.add_row(str(r.id), _lc._when(r.started), r.trigger, r.verdict, ", ".join(r.relays) or "-", r.reason)
        console.print(t)
    if removals:
        t = Table(title="removal requests", title_justify="left")
        for col in ("#", "at", "contact", "state", "outcome"):
            t.add_column(col, overflow="fold")
        for r in removals:
            t.add_row(str(r.id), _lc._when(r.created), r.contact or r.requester, r.state, r.outcome)
        console.print(t)
    if transcript and runs and runs[0].result:
        console.print(f"transcript of test #{runs[0].id} ({runs[0].target}):", style="bold")
        for case in runs[0].result.get("cases", []):
            console.print(f"-- {case['id']} {case['name']}: {case['outcome']}", highlight=False, markup=False)
            for line in case.get("transcript", []):
                console.print("   " + line, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(1 if listed else 0)


@dnsbl_app.command("entries")
def dnsbl_entries(
    state: Annotated[str, typer.Option(help="listed, not-listed, pending or all")] = "listed",
    limit: Annotated[int, typer.Option(help="at most this many rows; 0 = all")] = 1000,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """All listings (or hosts in another state)."""
    settings = _settings(config)
    if state not in (*_store.STATES, "all"):
        raise _fail(f"--state must be one of {', '.join(_store.STATES)}, all")
    if limit < 0:
        raise _fail("--limit must be 0 or more")
    store = _open_store(settings)
    try:
        rows = store.entries(None if state == "all" else state, limit=limit or None)
        total = store.count(None if state == "all" else state)
    finally:
        store.close()
    if as_json:
        print(json.dumps({"total": total, "entries": [h.to_json() for h in rows]}, indent=2))
        return
    t = Table(title=f"{settings.dnsbl.zone}: {total} {state if state != 'all' else 'hosts'}", title_justify="left",
              caption=f"{len(rows)} shown" if len(rows) < total else None, caption_justify="left")
    for col in ("network", "state", "code", "source", "since", "expires", "next re-test", "reason"):
        t.add_column(col, overflow="fold")
    for h in rows:
        t.add_row(h.network, h.state, h.code if h.listed else "", h.source, _lc._when(h.last_listed),
                  _lc._when(h.expires_at), _lc._when(h.next_retest), h.reason)
    console.print(t)


@dnsbl_app.command("import")
def dnsbl_import(
    file: Annotated[Path, typer.Argument(help="plain IP/CIDR lines or an rbldnsd ip4set/ip4tset/ip6tset file; - = stdin")],
    reason: Annotated[str, typer.Option(help="kept with every imported entry; default: the file name")] = "",
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="import the good lines even when some are bad")] = False,
    expires: Annotated[Optional[float], typer.Option(help="days until the imported listings expire; default: never")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bulk load listings (e.g. moving from rbldnsd); nothing is imported when a line is bad, unless --skip-bad."""
    import hashlib
    import sys

    settings = _settings(config)
    exp = _parse_days(expires, "--expires")
    t0 = _time.monotonic()
    try:
        if str(file) == "-":
            data = sys.stdin.read()
            parsed = _zf.parse_lines(data.splitlines())
            digest = hashlib.sha256(data.encode()).hexdigest()
        else:
            parsed = _zf.read_file(file)
            h = hashlib.sha256()
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(f"{file}: cannot read: {e}") from None
    for bad in parsed.errors[:20]:
        err.print(f"{file}: {bad}", highlight=False, markup=False, soft_wrap=True)
    if len(parsed.errors) > 20:
        err.print(f"{file}: ... {len(parsed.errors) - 20} more bad lines", highlight=False, markup=False)
    if parsed.errors and not skip_bad:
        raise _fail(f"{file}: {len(parsed.errors)} bad line(s): nothing imported (fix them, or --skip-bad)")
    for ex in parsed.exclusions[:5]:
        err.print(f"{file}: {ex}", highlight=False, markup=False, soft_wrap=True)
    wide = [e.network for e in parsed.entries if int(e.network.rsplit("/", 1)[1]) < (8 if ":" not in e.network else 32)]
    if wide:
        raise _fail(f"{file}: {wide[0]} is too wide to list (at most a /8 for IPv4, /32 for IPv6): nothing imported")
    store = _open_store(settings)
    now = _store.utcnow()
    try:
        stats = store.bulk_import(parsed.entries, actor=_requester(""), reason=reason or f"imported from {file.name}",
                                  evidence={"file": str(file), "sha256": digest, "lines": parsed.lines},
                                  expires_at=now + exp if exp else None, now=now)
    finally:
        store.close()
    elapsed = _time.monotonic() - t0
    out = dict(stats.to_json(), entries=len(parsed.entries), bad_lines=len(parsed.errors),
               exclusions_skipped=len(parsed.exclusions), seconds=round(elapsed, 3))
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        console.print(f"{file}: {len(parsed.entries)} entries: {stats.added} added, {stats.relisted} listed again, "
                      f"{stats.changed} changed, {stats.unchanged} unchanged; {len(parsed.errors)} bad lines, "
                      f"{len(parsed.exclusions)} exclusions skipped ({elapsed:.1f} s)", highlight=False, soft_wrap=True)
        if stats.added or stats.relisted or stats.changed:
            eff = now + _timedelta(seconds=settings.dnsbl.ttl + settings.dnsbl.negative_ttl)
            console.print(f"takes effect everywhere by {_lc._when(eff)}", style="dim", highlight=False)
    if parsed.errors:
        raise typer.Exit(2)


@dnsbl_app.command("export")
def dnsbl_export(
    format: Annotated[str, typer.Option("--format", "-f", help="rbldnsd (ip4tset, ip4set, ip6tset, ip6trie files) or bind (a zone file)")] = "rbldnsd",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="folder (rbldnsd) or file (bind); default: [dnsbl] export_dir, else <data_dir>/dnsbl")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the listings as rbldnsd datasets or a BIND zone file, atomically (temp + rename)."""
    settings = _settings(config)
    if format not in ("rbldnsd", "bind"):
        raise _fail("--format must be rbldnsd or bind")
    d = settings.dnsbl
    folder = Path(d.export_dir) if d.export_dir else settings.data_path / "dnsbl"
    store = _open_store(settings)
    try:
        version, listed = store.listed_with_version()
    finally:
        store.close()
    meta = _zf.ZoneMeta(zone=d.zone, ttl=d.ttl, negative_ttl=d.negative_ttl, serial=max(version, 1),
                        nameservers=tuple(d.nameservers), hostmaster=d.hostmaster, default_txt=d.txt)
    try:
        if format == "rbldnsd":
            paths = _zf.write_rbldnsd(listed, output or folder, meta)
            out = {"format": format, "entries": len(listed), "serial": meta.serial,
                   "files": {k: str(v.resolve()) for k, v in paths.items()},
                   "rbldnsd": _zf.rbldnsd_command({k: v.resolve() for k, v in paths.items()}, d.zone)}
        else:
            path = output or folder / f"{d.zone}.zone"
            names = _zf.write_bind(listed, path, meta)
            out = {"format": format, "entries": len(listed), "serial": meta.serial, "names": names,
                   "file": str(path.resolve())}
    except OSError as e:
        raise _fail(f"cannot write the export: {e}") from None
    if as_json:
        print(json.dumps(out, indent=2))
        return
    if format == "rbldnsd":
        for kind, p in out["files"].items():  # type: ignore[union-attr]
            console.print(f"wrote {p}", highlight=False)
        console.print(f"{len(listed)} entries, serial {meta.serial}; serve them with:\n  {out['rbldnsd']}", highlight=False,
                      soft_wrap=True)
    else:
        console.print(f"wrote {out['file']}: {len(listed)} entries as {out['names']} names, serial {meta.serial}",
                      highlight=False)


# policyd (a top-level command, `relayguard policyd`, mounted by cli.py) --------------------------


def policyd(
    config: ConfigOpt = None,
    listen: Annotated[Optional[str], typer.Option(help="IP:PORT to listen on; default: policyd.listen")] = None,
) -> None:
    """Run the Postfix policy server alone (check_policy_service inet:127.0.0.1:10040)."""
    from .policyd import run

    settings = _settings(config)
    if listen is not None:
        try:
            parse_hostport(listen)
        except ValueError as e:
            raise _fail(f"--listen: {e}") from None
    try:
        log.setup_from(settings.server)  # level, [server] log_file, log_format
        asyncio.run(run(settings, listen))
    except OSError as e:
        raise _fail(f"cannot start: {e}") from None
