"""The `relayguard` command: one Typer app; each capability mounts its sub-commands here."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import config as config_mod
from . import log
from .mta.users import UserDB, UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="relayguard: a relay-safe mail server and anti-spam toolkit.")
user_app = typer.Typer(no_args_is_help=True, help="SMTP AUTH users.")
app.add_typer(user_app, name="user")

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
    """Run every enabled service (SMTP, submission) in one process."""
    from .service import serve as run

    settings = _settings(config)
    log.setup(settings.server.log_level)
    try:
        asyncio.run(run(settings))
    except OSError as e:
        raise _fail(f"cannot start: {e}") from None


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


def _users(config: Path | None) -> UserDB:
    try:
        return UserDB(_settings(config).users_path)
    except UserError as e:
        raise _fail(str(e)) from None


@user_app.command("add")
def user_add(address: str, config: ConfigOpt = None,
             password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from standard input")] = False) -> None:
    """Add a user or change a password (asked twice, or read from stdin)."""
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


def main() -> None:
    app()
