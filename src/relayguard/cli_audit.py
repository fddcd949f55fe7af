"""`relayguard audit MTA PATH`: the command-line face of the configuration audit (people-facing output).

Part of the CLI: mounted by cli.py, imported by nothing else. The audit itself is audit/
(`relayguard.audit.audit`). Exit codes (DESIGN.md): 0 no open-relay finding, 1 at least one
open-relay finding, 2 usage error or a file that cannot be read or parsed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .audit import MTAS, AuditError, Report, Severity, audit as run_audit

console = Console()
err = Console(stderr=True)

_STYLE = {Severity.OPEN_RELAY: "bold red", Severity.WEAKNESS: "yellow", Severity.INFO: "dim"}
_VERDICT = {"open-relay": ("OPEN RELAY", "bold red"), "weakness": ("no open relay found, weaknesses to fix", "bold yellow"),
            "clean": ("no open relay found", "bold green")}


def _fail(message: str) -> typer.Exit:
    err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(2)


def audit(
    mta: Annotated[str, typer.Argument(help="postfix, sendmail, exim or qmail", metavar="MTA")],
    path: Annotated[Path, typer.Argument(help="the configuration: /etc/postfix, sendmail.mc or .cf, Exim's configure, /var/qmail")],
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
    mta_version: Annotated[Optional[str], typer.Option("--mta-version", help="the MTA's release, e.g. 3.7.11, for version-dependent rules")] = None,
    tcprules: Annotated[Optional[Path], typer.Option("--tcprules", help="qmail: the tcprules source that sets RELAYCLIENT (tcp.smtp)")] = None,
) -> None:
    """Read an MTA's configuration and say whether, and why, it relays for strangers (exit 1 if it does)."""
    if mta.lower() not in MTAS:
        raise _fail(f"unknown MTA {mta!r}: expected one of {', '.join(MTAS)}")
    try:
        report = run_audit(mta, path, mta_version=mta_version, tcprules=tcprules)
    except AuditError as e:
        raise _fail(f"audit error: {e}") from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report)
    if report.open_relay:
        raise typer.Exit(1)


def _print(report: Report) -> None:
    table = Table(title=f"{report.mta} configuration audit: {report.path}", show_lines=True, expand=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("where / setting", overflow="fold", ratio=2)
    table.add_column("why / fix", overflow="fold", ratio=3)
    for f in report.findings:
        where = Text(f.where, style="bold")
        if f.service:
            where.append(f"  [{f.service}]", style="dim")
        where.append("\n" + f.setting)
        body = Text(f.why)
        body.append("\nfix: ", style="bold")
        body.append(f.fix)
        table.add_row(Text(f.severity.value, style=_STYLE[f.severity]), where, body)
    if report.findings:
        console.print(table)
    text, style = _VERDICT[report.verdict]
    counts = ", ".join(f"{sum(1 for f in report.findings if f.severity == s)} {s.value}" for s in Severity)
    console.print(Text(f"{report.mta}: {text} ({counts})", style=style))
