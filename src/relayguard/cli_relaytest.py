"""`relayguard relaytest`: the command-line face of the open-relay tester (people-facing output).

Part of the CLI: mounted by cli.py, imported by nothing else. The tester itself is
relaytest/ (prober.py has the Python API). Exit codes (DESIGN.md): 0 every target closed or
auth-required, 1 some target open, 2 usage error or some target unreachable; 130 when
interrupted with Ctrl-C before an open relay was found (what was done is printed first).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from . import config as config_mod
from .relaytest import prober
from .relaytest.catalogue import CASES
from .relaytest.result import Outcome, TargetResult, Verdict

console = Console()
err = Console(stderr=True)

_VERDICT_STYLE = {Verdict.OPEN: "bold red", Verdict.CLOSED: "bold green", Verdict.AUTH_REQUIRED: "bold yellow",
                  Verdict.UNREACHABLE: "bold magenta"}
_OUTCOME_STYLE = {Outcome.REFUSED: "green", Outcome.ACCEPTED_RCPT: "red", Outcome.ACCEPTED_DATA: "red",
                  Outcome.RELAYED: "bold red", Outcome.ERROR: "yellow"}


def _fail(message: str) -> typer.Exit:
    err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(2)


def _title(r: TargetResult) -> Text:
    return Text.assemble((r.target, "bold"), "  ", (r.verdict.value.upper(), _VERDICT_STYLE[r.verdict]), "  ", r.reason)


def _reply_text(code: int, enhanced: str, text: str) -> str:
    return f"{code} {enhanced + ' ' if enhanced else ''}{text}"


def _table(r: TargetResult) -> Table | Text:
    if not r.cases and not r.smuggling:
        return _title(r)
    caption = f"{r.banner}  {r.tls}".strip() + f"  ({r.elapsed:.2f} s, {r.sessions} sessions)" if r.banner else None
    table = Table(title=_title(r), title_justify="left", caption=caption, caption_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("trick", ratio=2)
    table.add_column("MAIL FROM", overflow="fold", ratio=2)
    table.add_column("RCPT TO", overflow="fold", ratio=3)
    table.add_column("outcome", ratio=1)
    table.add_column("reply", overflow="fold", ratio=3)
    for c in r.cases:
        reply = c.last_reply
        shown = _reply_text(reply.code, reply.enhanced, reply.text) if reply else c.error
        style = _OUTCOME_STYLE[c.outcome] if c.relay or c.outcome is Outcome.REFUSED else "cyan"
        outcome = c.outcome.value + ("" if c.relay else " (control)")
        table.add_row(c.id, c.name, Text(c.mail_from.partition(":")[2].strip()), Text(c.rcpt_to.partition(":")[2].strip()),
                      Text(outcome, style), Text(shown))
    for m in r.smuggling:
        state = "error" if m.ends_data is None else ("ends DATA" if m.ends_data else "not end of DATA")
        if m.delivered:
            state += ", arrived"
        style = "yellow" if m.ends_data is None else ("red" if m.ends_data else "green")
        last = m.replies[-1].reply if m.replies and m.replies[-1].reply else None
        table.add_row(m.id, "smuggling " + m.name, "", "", Text(state, style),
                      Text(m.error or (_reply_text(last.code, last.enhanced, last.text) if last else "")))
    return table


def _transcript(r: TargetResult) -> None:
    console.rule(f"{r.target}: transcript")
    for line in r.setup:
        console.print(line, markup=False, highlight=False)
    for c in list(r.cases) + list(r.smuggling):
        console.print(f"--- {c.id} {c.name}", style="bold", markup=False, highlight=False)
        for line in c.transcript:
            console.print(line, markup=False, highlight=False)


def _summary(results: list[TargetResult]) -> Table:
    table = Table("target", "verdict", "relays", "reason", title=f"{len(results)} targets")
    for r in results:
        table.add_row(r.target, Text(r.verdict.value, _VERDICT_STYLE[r.verdict]), ", ".join(c.id for c in r.relays),
                      Text(r.reason))
    return table


def _show(results: list[TargetResult], as_json: bool, transcript: bool) -> None:
    if as_json:
        docs = [r.to_json() for r in results]
        # Many targets: one a line. json's fast C encoder cannot indent; indenting 200 targets'
        # transcripts (13 MB) took longer than testing them.
        print(json.dumps(docs, indent=2) if len(docs) < 2 else "[\n" + ",\n".join(map(json.dumps, docs)) + "\n]")
        return
    for r in results:
        console.print(_table(r))
        if transcript:
            _transcript(r)
    if len(results) > 1:
        console.print(_summary(results))


def _exit_code(results: list[TargetResult]) -> int:
    if any(r.verdict is Verdict.OPEN for r in results):
        return 1
    if any(r.verdict is Verdict.UNREACHABLE for r in results):
        return 2
    return 0


def relaytest(
    targets: Annotated[Optional[list[str]], typer.Argument(help="host, host:port or [IPv6]:port", show_default=False)] = None,
    input_file: Annotated[Optional[Path], typer.Option("-i", "--input", help="file of targets, one a line (# comments)")] = None,
    mode: Annotated[str, typer.Option(help="probe (MAIL/RCPT), data (send the message), confirm (wait for it at the canary)")] = "probe",
    starttls: Annotated[bool, typer.Option("--starttls", help="run the cases inside STARTTLS")] = False,
    canary_listen: Annotated[Optional[str], typer.Option(help="confirm mode: run the built-in canary receiver on IP:PORT")] = None,
    canary_domain: Annotated[Optional[str], typer.Option(help="the outside domain {X}; in confirm mode one whose mail reaches the canary")] = None,
    canary_maildir: Annotated[Optional[Path], typer.Option(help="confirm mode: watch this Maildir instead of a receiver")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results with every transcript as JSON")] = False,
    transcript: Annotated[bool, typer.Option("--transcript", help="print the raw dialogue")] = False,
    concurrency: Annotated[Optional[int], typer.Option(help="targets tested at once")] = None,
    connections: Annotated[Optional[int], typer.Option(help="sessions per target at once")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="seconds per stage (connect, greeting, each command)")] = None,
    confirm_timeout: Annotated[Optional[float], typer.Option(help="confirm mode: seconds to wait for arrivals")] = None,
    rate: Annotated[float, typer.Option(help="cases started per second per target (0 = no limit)")] = 0.0,
    time_limit: Annotated[float, typer.Option(help="seconds for the whole run (0 = none)")] = 0.0,
    smuggling: Annotated[bool, typer.Option("--smuggling", help="also probe the SMTP smuggling end-of-data variants (data/confirm)")] = False,
    smuggle_rcpt: Annotated[str, typer.Option(help="a local recipient of the target for --smuggling")] = "",
    case: Annotated[Optional[list[str]], typer.Option("--case", help="run only this case id (repeatable)")] = None,
    helo: Annotated[Optional[str], typer.Option(help="our EHLO name")] = None,
    bind: Annotated[str, typer.Option(help="local address to connect from")] = "",
    list_cases: Annotated[bool, typer.Option("--list", help="print the catalogue and exit")] = False,
    config: Annotated[Optional[Path], typer.Option("-c", "--config", help="TOML configuration file")] = None,
) -> None:
    """Open-relay test of one or many SMTP servers with every known relay trick."""
    if list_cases:
        _list(as_json)
        return
    try:
        settings = config_mod.load(config)
    except config_mod.ConfigError as e:
        raise _fail(f"configuration error:\n{e}") from None
    s = settings.relaytest
    names = list(targets or [])
    if input_file is not None:
        try:
            names += prober.read_targets(input_file.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as e:
            raise _fail(f"{input_file}: cannot read: {e}") from None
    if not names:
        raise _fail("no target given (TARGET... or -i FILE)")
    for name in names:
        try:
            prober.parse_target(name)
        except ValueError as e:
            raise _fail(f"{name!r}: not a target: {e}") from None
    options = prober.RelayTestOptions(
        mode=mode, helo=helo or s.helo, starttls=starttls, canary_domain=canary_domain or s.canary_domain,
        canary_listen=canary_listen if canary_listen is not None else s.canary_listen,
        canary_maildir=str(canary_maildir) if canary_maildir is not None else s.canary_maildir,
        cases=tuple(case or ()), timeout=timeout or s.timeout, confirm_timeout=confirm_timeout or s.confirm_timeout,
        connections=connections or s.connections, concurrency=concurrency or s.concurrency, rate=rate,
        time_limit=time_limit, smuggling=smuggling, smuggle_rcpt=smuggle_rcpt, bind=bind)
    try:
        options.check()
        canary = prober.make_canary(options)
        if options.canary_listen and options.mode == "confirm":
            config_mod.parse_hostport(options.canary_listen)
    except ValueError as e:
        raise _fail(str(e)) from None

    results: list[TargetResult] = []
    progress = Progress(TextColumn("relay test"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=len(names) < 2 or as_json)

    async def go() -> None:
        if canary is not None:
            await canary.start()
        try:
            task = progress.add_task("targets", total=len(names))
            await prober.run_async(names, options, canary=canary, results=results,
                                   on_result=lambda r: progress.advance(task))
        finally:
            if canary is not None:
                await canary.stop()

    interrupted = False
    try:
        with progress:
            asyncio.run(go())
    except KeyboardInterrupt:
        interrupted = True
    except OSError as e:  # the canary could not listen, the Maildir is missing
        raise _fail(f"cannot start the canary: {e}") from None
    if interrupted:
        done = [r for r in results if r.cases or r.error or r.complete]
        err.print(f"interrupted: {sum(r.complete for r in results)} of {len(results)} targets done", highlight=False)
        _show(done, as_json, transcript)
        raise typer.Exit(1 if any(r.verdict is Verdict.OPEN for r in done) else 130)
    _show(results, as_json, transcript)
    raise typer.Exit(_exit_code(results))


def _list(as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"id": c.id, "name": c.name, "mail_from": c.mail_from, "rcpt_to": c.rcpt_to, "probes": c.probes,
                           "source": c.source, "relay": c.relay, "case": c.case, "verbs": c.verbs,
                           "colon_space": c.colon_space} for c in CASES], indent=2))
        return
    table = Table("id", "trick", "MAIL FROM", "RCPT TO", "probes", "source", title=f"{len(CASES)} cases")
    for c in CASES:
        extra = ", ".join(x for x in (c.case and f"{c.case}-case addresses", c.verbs and f"{c.verbs}-case verbs",
                                      c.colon_space and "space after colon", not c.relay and "control") if x)
        table.add_row(c.id, c.name + (f" ({extra})" if extra else ""), Text(c.mail_from), Text(c.rcpt_to), c.probes, c.source)
    console.print(table)
