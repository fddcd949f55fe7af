"""The `relayguard` command: one Typer app; each capability mounts its sub-commands here.

cli.py holds the entry point (`main`), which runs this app, or plain `relaytest` invocations
without it (see there why).
"""

from __future__ import annotations

import asyncio
import getpass
import importlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from . import config as config_mod
from . import log
from .mta.queue import CorruptEntry, QueueEntry
from .mta.queue_dir import QueueDir

if TYPE_CHECKING:  # mta.users is imported when a `user` command runs: it hashes a dummy password (50 ms)
    from .mta.users import UserDB

# The capabilities with heavy dependencies (SQLAlchemy, dnspython, FastAPI, cryptography...) live in
# cli_*.py modules imported only when their command runs (or `relayguard --help` lists them), so
# that a command does not pay for the others' imports.
LAZY_COMMANDS = {  # command name -> (module, attribute: a command function or a Typer sub-app)
    "relaytest": ("relayguard.cli_app", "relaytest"),  # the open-relay tester, issue 4: below (see there)
    "trace": ("relayguard.cli_trace", "trace"),  # trace a spam to its origin, issue 7
    "audit": ("relayguard.cli_audit", "audit"),  # configuration audit, issue 8
    "policyd": ("relayguard.cli_dnsbl", "policyd"),  # Postfix policy server, issue 6
    "dnsbl": ("relayguard.cli_dnsbl", "dnsbl_app"),  # DNSBL checks and administration, issues 5 and 6
}


class _LazyGroup(TyperGroup):
    """The top-level group: the commands of LAZY_COMMANDS are imported and built on first use."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        """Commands, then the lazy ones, then sub-apps (`user`, `queue`), as the help always listed them."""
        eager = [n for n in super().list_commands(ctx) if n not in LAZY_COMMANDS]
        groups = [n for n in eager if isinstance(self.commands[n], TyperGroup)]
        return [*(n for n in eager if n not in groups), *LAZY_COMMANDS, *groups]

    def resolve_command(self, ctx: typer.Context, args: list[str]):  # -> (name, Command, args)
        if args and args[0] not in self.commands and args[0] not in LAZY_COMMANDS:
            for name in LAZY_COMMANDS:  # an unknown command: load them all for "Did you mean ...?"
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: typer.Context, cmd_name: str):  # -> the click Command or None
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, attr = LAZY_COMMANDS[cmd_name]
            target = getattr(importlib.import_module(module), attr)
            if not isinstance(target, typer.Typer):
                target, function = typer.Typer(), target
                target.command(cmd_name)(function)
            command = typer.main.get_command(target)
            command.name = cmd_name
            self.commands[cmd_name] = command
        return super().get_command(ctx, cmd_name)


app = typer.Typer(cls=_LazyGroup, no_args_is_help=True, add_completion=False,
                  help="relayguard: a relay-safe mail server and anti-spam toolkit.")
user_app = typer.Typer(no_args_is_help=True, help="SMTP AUTH users.")
app.add_typer(user_app, name="user")
queue_app = typer.Typer(no_args_is_help=True, help="The outbound mail queue.")
app.add_typer(queue_app, name="queue")

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("-c", "--config", help="TOML configuration file")]


def _fail(message: str) -> typer.Exit:
    """Print an error for people (unwrapped, so file:line stays on one line) and exit 2."""
    err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(2)


def _settings(path: Path | None) -> config_mod.Settings:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        raise _fail(f"configuration error:\n{e}") from None


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run every enabled service in one process (SIGHUP reloads, SIGTERM drains and stops)."""
    from .service import serve as run

    settings = _settings(config)
    try:
        log.setup_from(settings.server)  # level, [server] log_file, log_format
        asyncio.run(run(settings, config))
    except OSError as e:
        raise _fail(f"cannot start: {e}") from None


@app.command("check-config")
def check_config(config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Validate the configuration without starting anything, then warn about risky settings."""
    from .check_config import findings
    from .relaytest.selfcheck import read_status
    from .service import tls_context

    settings = _settings(config)
    found = findings(settings, read_status(settings))
    if settings.tls.cert:
        try:
            tls_context(settings)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise _fail(f"tls: cannot load {settings.tls.cert} / {settings.tls.key}: {e}") from None
    if as_json:
        print(json.dumps([{"severity": f.severity.value, "key": f.key, "text": f.text} for f in found], indent=2))
    else:
        for f in found:
            console.print(f"{f.severity.value:10} {f.key}: {f.text}", highlight=False, markup=False)
        source = str(config) if config else config_mod.DEFAULT_FILE if Path(config_mod.DEFAULT_FILE).exists() else "built-in defaults"
        console.print(f"{source}: valid" + (f", {len(found)} finding(s)" if found else ""), highlight=False)
    if any(f.severity.value in ("open-relay", "weakness") for f in found):
        raise typer.Exit(1)


@app.command()
def status(config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What runs where, queue and listing counts, the last self-check; exit 1 when unhealthy."""
    from .status import gather

    report = gather(_settings(config))
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        table = Table("service", "address", "state", title="relayguard " + ("healthy" if report["healthy"] else "UNHEALTHY"))
        for x in report["listeners"]:
            table.add_row(x["service"], x["address"], "up" if x["up"] else "[red]down[/red]")
        console.print(table)
        q, st = report["queue"], report["store"]
        console.print(f"queue: {q['pending']} pending, {q['held']} held, {q['corrupt']} corrupt", highlight=False)
        console.print(f"store {st['url']}: " + (f"{st['listed']} listed" if st["healthy"] else f"[red]{st['error']}[/red]"))
        checks = (report["self_check"] or {}).get("listeners", [])
        for c in checks:
            console.print(f"self-check {c.get('target')}: {c.get('verdict')}", highlight=False)
        if not checks:
            console.print("self-check: none recorded")
    if not report["healthy"]:
        raise typer.Exit(1)


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="where to set up")] = Path("."),
         hostname: Annotated[str, typer.Option(help="the server's host name")] = "") -> None:
    """Write a commented config, a self-signed TLS pair and the data folders."""
    from .mta.store import Store
    from .mta.tlsutil import write_self_signed
    from .sample_config import sample_config

    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / config_mod.DEFAULT_FILE
    if cfg.exists():
        raise _fail(f"{cfg}: exists already; not overwritten")
    name = hostname or config_mod.ServerSettings().hostname
    data = directory / "var"
    Store(data).prepare()
    write_self_signed(data / "tls" / "cert.pem", data / "tls" / "key.pem", name)
    cfg.write_text(sample_config(name), encoding="utf-8")
    console.print(f"wrote {cfg}, {data}/tls/cert.pem, {data}/tls/key.pem and the data folders under {data}")


# Mounted through LAZY_COMMANDS (as it was when it lived in cli_relaytest.py, so its options and
# help stay as they were); cli_relaytest.py has the command itself, which cli.main also runs
# without this app for plain command lines (start-up time, issue 4).
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
    config: ConfigOpt = None,
) -> None:
    """Open-relay test of one or many SMTP servers with every known relay trick."""
    from .cli_relaytest import run  # the command itself, with its output (cli.main may call it directly)

    raise typer.Exit(run(targets=targets, input_file=input_file, mode=mode, starttls=starttls,
                         canary_listen=canary_listen, canary_domain=canary_domain, canary_maildir=canary_maildir,
                         as_json=as_json, transcript=transcript, concurrency=concurrency, connections=connections,
                         timeout=timeout, confirm_timeout=confirm_timeout, rate=rate, time_limit=time_limit,
                         smuggling=smuggling, smuggle_rcpt=smuggle_rcpt, case=case, helo=helo, bind=bind,
                         list_cases=list_cases, config=config))


def _users(config: Path | None) -> UserDB:
    from .mta.users import UserDB, UserError

    try:
        return UserDB(_settings(config).users_path)
    except UserError as e:
        raise _fail(str(e)) from None


@user_app.command("add")
def user_add(address: str, config: ConfigOpt = None,
             password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from standard input")] = False) -> None:
    """Add a user or change a password (asked twice, or read from stdin)."""
    from .mta.users import UserError

    db = _users(config)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            raise _fail("passwords differ")
    if not password:
        raise _fail("empty password refused")
    try:
        db.set(address, password)
    except UserError as e:
        raise _fail(str(e)) from None
    console.print(f"user {address.lower()} saved in {db.path}")


@user_app.command("del")
def user_del(address: str, config: ConfigOpt = None) -> None:
    """Remove a user."""
    from .mta.users import UserError

    db = _users(config)
    try:
        db.delete(address)
    except UserError as e:
        raise _fail(str(e)) from None
    console.print(f"user {address.lower()} removed")


@user_app.command("list")
def user_list(config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List users (never their password hashes)."""
    names = sorted(_users(config).users)
    if as_json:
        print(json.dumps(names))
        return
    table = Table("user")
    for name in names:
        table.add_row(name)
    console.print(table)


def _queue(config: Path | None) -> QueueDir:
    return QueueDir(Path(_settings(config).server.data_dir) / "queue")


def _entry(q: QueueDir, queue_id: str) -> QueueEntry:
    try:
        return q.load(queue_id)
    except FileNotFoundError:
        raise _fail(f"{queue_id}: no such queue entry in {q.path}") from None
    except CorruptEntry as e:
        raise _fail(f"{queue_id}: unreadable queue entry: {e}") from None


def _entry_row(e: QueueEntry, size: int) -> dict[str, object]:
    return {
        "id": e.queue_id,
        "sender": e.mail_from,
        "size": size,
        "arrival": datetime.fromtimestamp(e.received, timezone.utc).isoformat(timespec="seconds"),
        "attempts": e.attempts,
        "next_attempt": datetime.fromtimestamp(e.next_attempt, timezone.utc).isoformat(timespec="seconds") if e.next_attempt else "now",
        "held": e.held,
        "recipients": [r.__dict__ for r in e.recipients],
    }


@queue_app.command("list")
def queue_list(config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every queued message with its recipients' states (like mailq)."""
    q = _queue(config)
    rows = []
    for queue_id in q.ids():
        try:
            rows.append(_entry_row(q.load(queue_id), q.message_path(queue_id).stat().st_size))
        except (FileNotFoundError, CorruptEntry):
            continue
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "arrival", "size", "sender", "recipients", "next attempt", title=f"{len(rows)} queued")
    for row in rows:
        rcpts = "\n".join(f"{r['address']} [{r['state']}] {r['reply']}".rstrip() for r in row["recipients"])  # type: ignore[union-attr]
        nxt = "held" if row["held"] else str(row["next_attempt"])
        table.add_row(str(row["id"]), str(row["arrival"]), str(row["size"]), str(row["sender"]) or "<>", rcpts, nxt)
    console.print(table)


@queue_app.command("show")
def queue_show(queue_id: str, config: ConfigOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One entry: envelope, recipient states and the message headers."""
    q = _queue(config)
    row = _entry_row(_entry(q, queue_id), q.message_path(queue_id).stat().st_size)
    data = q.message_path(queue_id).read_bytes()
    row["headers"] = data[: data.find(b"\r\n\r\n")].decode("utf-8", "replace")
    if as_json:
        print(json.dumps(row, indent=2))
        return
    for key, value in row.items():
        if key not in ("recipients", "headers"):
            console.print(f"[bold]{key}[/bold]: {value}", highlight=False)
    for r in row["recipients"]:  # type: ignore[union-attr]
        console.print(f"  {r['address']} [{r['state']}] {r['reply']}", highlight=False, markup=False)
    console.print(str(row["headers"]), highlight=False, markup=False)


@queue_app.command("flush")
def queue_flush(config: ConfigOpt = None) -> None:
    """Retry every deferred entry now (a running server picks it up within a second)."""
    q = _queue(config)
    count = 0
    for queue_id in q.ids():
        try:
            count += q.update(queue_id, lambda e: setattr(e, "next_attempt", 0.0)) is not None
        except CorruptEntry:
            pass  # the running queue moves it aside on the rescan this triggers
    q.request_flush()
    console.print(f"{count} entries scheduled for immediate delivery")


@queue_app.command("delete")
def queue_delete(queue_id: str, config: ConfigOpt = None) -> None:
    """Remove an entry without delivering or bouncing it."""
    if not _queue(config).delete(queue_id):
        raise _fail(f"{queue_id}: no such queue entry")
    console.print(f"{queue_id} deleted")


def _set_held(config: Path | None, queue_id: str, held: bool) -> None:
    q = _queue(config)
    _entry(q, queue_id)

    def change(e: QueueEntry) -> None:
        e.held = held
        e.next_attempt = 0.0 if not held else e.next_attempt

    if q.update(queue_id, change) is None:
        raise _fail(f"{queue_id}: no such queue entry")
    q.request_flush()
    console.print(f"{queue_id} {'held' if held else 'released'}")


@queue_app.command("hold")
def queue_hold(queue_id: str, config: ConfigOpt = None) -> None:
    """Keep an entry in the queue without delivery attempts until released."""
    _set_held(config, queue_id, True)


@queue_app.command("release")
def queue_release(queue_id: str, config: ConfigOpt = None) -> None:
    """Release a held entry for immediate delivery."""
    _set_held(config, queue_id, False)
